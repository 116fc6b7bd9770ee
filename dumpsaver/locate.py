"""Find the dump area: the sysfs shim over whatever this machine offers.

In order of preference:

(a) the kernel's mcore sysfs interface (docs/sysfs-abi.md): the header address,
    the ranges reserved early in boot, and a ``release`` attribute;
(p) ``memmap=SIZE!ADDR`` legacy persistent memory, found through the nvdimm sysfs
    tree (dumpsaver.pmem) and read through /dev/pmemN or /dev/daxN.M
    (dumpsaver.pmemio); released by giving the range back to the page allocator
    as movable RAM (dumpsaver.hotplug);
(b) ``memmap=SIZE$ADDR`` reservations on the kernel command line, each checked
    against /proc/iomem (it must show as Reserved: never read System RAM or
    device memory);
(c) regions named in the configuration, checked the same way.

For (b) and (c) the header sits at the start of a region; there is no release
attribute, so releasing means invalidating the header in memory.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dumpsaver import early, pmem
from dumpsaver.errors import DumpsaverError
from dumpsaver.physmem import Range, merge_ranges

MAX_SYSFS_RANGES = 65536


class LocateMethod(enum.StrEnum):
    SYSFS = "sysfs"
    PMEM = "pmem"
    MEMMAP = "memmap"
    CONFIG = "config"


@dataclass(frozen=True)
class Candidate:
    """A place a dump may be: reserved ``ranges``, the header at ``header``."""

    method: LocateMethod
    source: str  # human description of where this came from
    ranges: tuple[Range, ...]
    header: int
    release: Path | None = None  # sysfs release attribute
    #: The end of this boot's System RAM in /proc/iomem (None: not known).  The crashed
    #: kernel ran on the same machine: a header claiming more memory is not believed.
    ram_end: int | None = None
    #: memmap=! persistent memory: the namespace, its device and its dump range.
    pmem: pmem.PmemArea | None = None

    @property
    def device_note(self) -> str:
        """How the area is read, for status and the journal."""
        if self.pmem is not None:
            return self.pmem.describe()
        return "read through the physical memory device (/dev/mem by default)"

    @property
    def release_action(self) -> str:
        if self.pmem is not None:
            return ("overwrites the dump header's magic, then gives the range back to the "
                    "page allocator as movable RAM (devdax, then kmem, online_movable)")
        if self.release is not None:
            return f"writes 1 to {self.release}: the kernel frees the dump's pages"
        return (
            "overwrites the dump header's magic in memory (the reservation stays until a "
            "boot without it)"
        )


_read_attr = pmem.read_text


def _hex(text: str, what: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise DumpsaverError(f"bad {what}: {text[:40]!r}") from None


def from_sysfs(root: Path) -> Candidate | None:
    """Parse the sysfs tree; None when the kernel has no mcore interface or no dump."""
    if not (root / "header").exists():
        return None
    version = _read_attr(root / "version").strip() if (root / "version").exists() else "1"
    if version != "1":
        raise DumpsaverError(f"{root}: unsupported interface version {version[:20]!r}")
    header = _hex(_read_attr(root / "header").strip(), f"{root}/header")
    ranges = []
    for line in _read_attr(root / "ranges").splitlines():
        line = line.strip()
        if not line:
            continue
        a, sep, b = line.partition("-")
        if not sep:
            raise DumpsaverError(f"{root}/ranges: bad line {line[:60]!r}")
        start, last = _hex(a, "range start"), _hex(b, "range end")
        if last < start:
            raise DumpsaverError(f"{root}/ranges: bad line {line[:60]!r}")
        ranges.append(Range(start, last + 1))
        if len(ranges) > MAX_SYSFS_RANGES:
            raise DumpsaverError(f"{root}/ranges: too many ranges")
    if not ranges:
        return None
    release = root / "release"
    return Candidate(
        LocateMethod.SYSFS, str(root), tuple(merge_ranges(ranges)), header,
        release if release.exists() else None,
    )


def parse_memmap(cmdline: str, sep: str = "$") -> list[Range]:
    """The ``memmap=SIZE$ADDR`` (reserve) entries of a kernel command line; with
    ``sep="!"`` the ``memmap=SIZE!ADDR`` (legacy persistent memory) ones."""
    return [Range(a, b) for kind, a, b in early.memmap_items(cmdline) if kind == sep]


def parse_memmap_pmem(cmdline: str) -> list[Range]:
    """The ``memmap=SIZE!ADDR`` entries: RAM the kernel presents as persistent memory."""
    return parse_memmap(cmdline, "!")


def parse_iomem(text: str) -> list[tuple[Range, str]]:
    """Top-level and nested /proc/iomem entries as (range, name)."""
    return [(Range(a, b), name) for a, b, name in early.iomem_items(text)]


def ram_end(iomem: Path) -> int | None:
    """The highest System RAM address + 1 in ``iomem``, or None (unreadable, hidden)."""
    try:
        entries = parse_iomem(_read_attr(iomem))
    except DumpsaverError:
        return None
    ends = [r.end for r, name in entries if name == "System RAM"]
    return max(ends) if ends and max(ends) > 1 else None


def check_reserved(want: Range, iomem: list[tuple[Range, str]], iomem_path: Path) -> None:
    if iomem and all(r.start == 0 and r.end == 1 for r, _ in iomem):
        raise DumpsaverError(
            f"{iomem_path} shows no addresses (not root?)", hint="run dumpsaver as root"
        )
    for r, name in iomem:
        if name == "Reserved" and r.contains(want.start, want.size):
            return
    raise DumpsaverError(
        f"region {want} is not marked Reserved in {iomem_path}: refusing to read it",
        hint="reserve it with memmap=SIZE$ADDR on the kernel command line",
    )


def candidates(
    *,
    sysfs: Path,
    cmdline: Path | None,
    iomem: Path,
    use_memmap: bool,
    regions: Iterable[tuple[int, int]] = (),
    pmem_paths: pmem.PmemPaths | None = None,
    notes: list[str] | None = None,
) -> list[Candidate]:
    """Every place a dump may be, best first (see the module docstring).

    ``pmem_paths``: where the nvdimm sysfs tree is (default: the real one); ``notes``
    collects why a memmap=! range has no candidate (yet)."""
    found: list[Candidate] = []
    ram = ram_end(iomem) if iomem.exists() else None
    c = from_sysfs(sysfs)
    if c is not None:
        found.append(dataclasses.replace(c, ram_end=ram))
    want: list[tuple[LocateMethod, str, Range]] = []
    text = ""
    if use_memmap and cmdline is not None:
        try:
            text = _read_attr(cmdline)
        except DumpsaverError:
            text = ""
    pmem_ranges = parse_memmap_pmem(text)
    if pmem_ranges:
        got = pmem.find(pmem_paths or pmem.PmemPaths(), pmem_ranges)
        if notes is not None:
            notes.extend(got.missing)
        for area in got.areas:
            found.append(pmem_candidate(area, ram))
    if text:
        for r in parse_memmap(text):
            want.append((LocateMethod.MEMMAP, f"memmap= on the kernel command line ({cmdline})", r))
    for start, size in regions:
        r = Range(start, start + size)
        want.append((LocateMethod.CONFIG, "regions in the configuration", r))
    if want:
        io = parse_iomem(_read_attr(iomem)) if iomem.exists() else []
        for method, source, r in want:
            check_reserved(r, io, iomem)
            found.append(Candidate(method, f"{r} from {source}", (r,), r.start, ram_end=ram))
    return found


def pmem_candidate(area: pmem.PmemArea, ram: int | None = None) -> Candidate:
    """The candidate of a legacy pmem area: its dump range, the header at its start
    (before the namespace is devdax: on the first block boundary holding a header)."""
    from dumpsaver import pmemio
    from dumpsaver.format import MAGIC

    source = f"memmap=! persistent memory {area.span} ({area.namespace})"
    r = area.dump or area.span
    header = r.start
    if area.dax is None and area.dump is not None:
        header = pmemio.find_header(area, MAGIC) or header
    return Candidate(LocateMethod.PMEM, source, (r,), header, ram_end=ram, pmem=area)
