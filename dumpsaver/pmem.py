"""Legacy persistent memory (``memmap=SIZE!ADDR``) as the kernel shows it in sysfs.

With ``memmap=SIZE!ADDR`` on the command line the kernel keeps that RAM away from
the page allocator early in every boot and presents it as an nvdimm region
(``nd_e820``).  Between crashes the saver gives it back as hot-plugged movable RAM
(dumpsaver.hotplug); across the crash reboot it is reserved again, and the
namespace then comes back as it was left: devdax, because its info block lies in
the metadata kmem never adds.

The rule both sides share (docs/sysfs-abi.md, "Legacy persistent memory"):

    the dump range is the whole memory blocks inside the device-dax range,
    exactly what kmem hot-adds; the dump header sits at its start.

:func:`dump_range` is that rule, the only place it is computed.  The kernel
module is armed over that range (dumpsaver.arm), the saver reads it there.

The sysfs tree read here (every path a field of :class:`PmemPaths`):

- ``/sys/bus/nd/devices/regionN/{resource,size}``: the region, ``%#llx`` / ``%llu``;
- ``/sys/bus/nd/devices/namespaceN.M/{resource,size,mode,holder}``: ``mode`` is
  ``raw``, ``memory`` (fsdax; also a fresh legacy namespace), ``dax`` or ``safe``
  (btt); ``holder`` names the claiming pfn/dax/btt device; its block device is a
  ``block/pmemN`` child of the namespace or of the holder;
- ``/sys/bus/dax/devices/daxN.M/{resource,size,target_node,align}`` and its
  ``driver`` link (``device_dax``: ``/dev/daxN.M`` exists; ``kmem``: System RAM);
- ``/sys/devices/system/memory/block_size_bytes`` (hex without 0x) and
  ``memoryK/{phys_index,state,valid_zones}``.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dumpsaver.errors import DumpsaverError
from dumpsaver.physmem import MAX_PHYS, Range

#: The kernel modules that present a legacy pmem range and its devdax form, in load
#: order (Debian 12's 6.1 kernel: drivers/nvdimm/nd_e820.ko, nd_pmem.ko,
#: drivers/dax/dax_pmem.ko, device_dax.ko, kmem.ko).  udev loads them by coldplug
#: only after sysinit.target: the boot job loads them itself.
MODULES = ("nd_e820", "nd_pmem", "dax_pmem", "device_dax", "kmem")

#: Longest sysfs attribute read here; a longer one is not the kernel's.
_ATTR_LIMIT = 4096


#: Runs a command (argv); returns its standard output, raises DumpsaverError on failure.
Runner = Callable[[Sequence[str]], str]


@dataclass(frozen=True)
class PmemPaths:
    """Where the kernel shows persistent memory and memory blocks, and the tools that
    reconfigure them (``runner``: None runs them for real, dumpsaver.hotplug.run)."""

    nd: Path = Path("/sys/bus/nd/devices")
    dax: Path = Path("/sys/bus/dax/devices")
    memory: Path = Path("/sys/devices/system/memory")
    dev: Path = Path("/dev")
    meminfo: Path = Path("/proc/meminfo")
    ndctl: str = "ndctl"
    daxctl: str = "daxctl"
    modprobe: str = "modprobe"
    runner: Runner | None = field(default=None, compare=False)


class Mode(enum.StrEnum):
    """A namespace's ``mode`` attribute."""

    RAW = "raw"
    FSDAX = "memory"
    DEVDAX = "dax"
    SECTOR = "safe"


def dump_range(dax: Range, block_size: int) -> Range | None:
    """THE rule: the whole memory blocks inside the device-dax range ``dax`` (what
    kmem hot-adds, what the module is armed over, where the header sits first).
    None when no whole block fits."""
    if block_size <= 0 or block_size & (block_size - 1):
        raise DumpsaverError(f"bad memory block size {block_size:#x}")
    start = -(-dax.start // block_size) * block_size
    end = dax.end // block_size * block_size
    return Range(start, end) if end > start else None


def probe_range(namespace: Range, block_size: int) -> Range | None:
    """Before the namespace is devdax (a fresh boot, or firmware cleared the info
    block) the device-dax range is not known yet: it starts after devdax's metadata,
    past the namespace's first byte.  The dump range is then one of the block-aligned
    tails of this range (the header sits on a block boundary)."""
    return dump_range(Range(namespace.start + 1, namespace.end), block_size)


#: ndctl's alignment of a legacy pmem region (it refuses others) and devdax's own.
REGION_ALIGN = 16 << 20
_DAX_ALIGN = 2 << 20


def headroom(size: int) -> int:
    """Room to leave below the first block for devdax's metadata: its page structures
    (``--map=dev``, 64 bytes per 4 KiB page) plus the info block's 2 MiB, rounded up to
    the region alignment (docs/sysfs-abi.md, "Choosing SIZE and ADDR")."""
    need = size // 64 + _DAX_ALIGN
    return -(-need // REGION_ALIGN) * REGION_ALIGN


def advice(namespace: Range, dump: Range | None, block_size: int) -> str | None:
    """When the dump range is smaller than the whole blocks the namespace spans (the
    metadata took a block), the memmap= that would give all of them back."""
    want = dump_range(namespace, block_size)
    if want is None or (dump is not None and dump.size >= want.size):
        return None
    h = headroom(want.size + REGION_ALIGN)
    if want.start < h:
        return None
    got = "nothing" if dump is None else f"{dump.size >> 20} MiB"
    return (f"only {got} of the {want.size >> 20} MiB in whole memory blocks comes back "
            f"(devdax keeps its metadata in the first one): memmap="
            f"{(want.size + h) >> 20}M!{want.start - h:#x} would give back all of it")


@dataclass(frozen=True)
class DaxDevice:
    name: str  # daxN.M
    range: Range
    driver: str | None  # device_dax, kmem, or None (not bound)
    target_node: int
    align: int


@dataclass(frozen=True)
class MemoryBlock:
    index: int
    range: Range
    state: str  # online, offline, going-offline
    zones: str  # valid_zones: the zone when online, the choices when offline

    @property
    def online_movable(self) -> bool:
        return self.state == "online" and self.zones == "Movable"


@dataclass(frozen=True)
class PmemArea:
    """One legacy pmem namespace and how its dump range is reached."""

    region: str
    namespace: str
    span: Range  # the namespace
    mode: str
    block_size: int
    paths: PmemPaths
    block_dev: str | None = None  # pmemN when fsdax/raw
    dax: DaxDevice | None = None
    #: The dump range by the rule; with no dax device yet, the range probed for it.
    dump: Range | None = None

    @property
    def given_back(self) -> bool:
        """The dump range is System RAM now (kmem): no dump can wait there."""
        return self.dax is not None and self.dax.driver == "kmem"

    def device(self) -> tuple[str, int, bool] | None:
        """(device path, physical address of its offset 0, is device-dax), or None
        when there is no device to read the range through."""
        if self.mode == Mode.DEVDAX and self.dax is not None and self.dax.driver == "device_dax":
            return str(self.paths.dev / self.dax.name), self.dax.range.start, True
        if self.mode in (Mode.RAW, Mode.FSDAX) and self.block_dev is not None:
            return str(self.paths.dev / self.block_dev), self.span.start, False
        return None

    def describe(self) -> str:
        dev = self.device()
        how = (f"read through {dev[0]}" if dev else
               "given back to the system (kmem)" if self.given_back else "no device yet")
        return f"{self.namespace} ({self.mode}) of {self.region} {self.span}, {how}"


def read_text(path: Path, limit: int = 1 << 20) -> str:
    """A small kernel file (sysfs, /proc) as text; a one-line error when unreadable or
    longer than ``limit`` bytes (sysfs and locate read through it)."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise DumpsaverError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > limit:
        raise DumpsaverError(f"{path} is longer than {limit} bytes")
    return data.decode("ascii", "replace")


def read_attr(path: Path) -> str:
    """A sysfs attribute, stripped; a one-line error for anything unreadable or odd."""
    text = read_text(path, _ATTR_LIMIT).strip()
    if not text.isprintable():
        raise DumpsaverError(f"{path}: unexpected characters in {text[:40]!r}")
    return text


def _number(path: Path, base: int) -> int:
    text = read_attr(path)
    digits = text[2:] if base == 16 and text.lower().startswith("0x") else text
    if not digits or not all(c in "0123456789abcdefABCDEF"[: base if base == 16 else 10]
                             for c in digits):
        raise DumpsaverError(f"{path}: not a {'hex' if base == 16 else 'decimal'} number: "
                             f"{text[:40]!r}")
    value = int(digits, base)
    if value >= MAX_PHYS:
        raise DumpsaverError(f"{path}: {text[:40]!r} lies beyond the physical address space")
    return value


def _span(d: Path) -> Range:
    """``resource`` (hex) and ``size`` (decimal) of a region, namespace or dax device."""
    start, size = _number(d / "resource", 16), _number(d / "size", 10)
    if size == 0 or start + size > MAX_PHYS:
        raise DumpsaverError(f"{d}: bad range (resource {start:#x}, size {size})")
    return Range(start, start + size)


def block_size(paths: PmemPaths) -> int:
    """The memory block size (``block_size_bytes``: hex, no 0x)."""
    bs = _number(paths.memory / "block_size_bytes", 16)
    if bs < 4096 or bs & (bs - 1):
        raise DumpsaverError(f"{paths.memory}/block_size_bytes: bad block size {bs:#x}")
    return bs


def memory_blocks(paths: PmemPaths, r: Range) -> list[MemoryBlock]:
    """The memory blocks of ``r`` as sysfs shows them now (absent ones are left out)."""
    bs = block_size(paths)
    out = []
    for idx in range(r.start // bs, -(-r.end // bs)):
        d = paths.memory / f"memory{idx}"
        if not d.is_dir():
            continue
        if _number(d / "phys_index", 16) != idx:
            raise DumpsaverError(f"{d}/phys_index does not match the block's name")
        out.append(MemoryBlock(idx, Range(idx * bs, (idx + 1) * bs), read_attr(d / "state"),
                               read_attr(d / "valid_zones")))
    return out


def _driver(d: Path) -> str | None:
    link = d / "driver"
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return None


_NAME = re.compile(r"^(region|namespace|dax|pfn|btt)\d+(\.\d+)?$")


def _safe_name(name: str, what: Path) -> str:
    if not _NAME.match(name):
        raise DumpsaverError(f"{what}: unexpected device name {name[:40]!r}")
    return name


def dax_device(paths: PmemPaths, name: str) -> DaxDevice | None:
    d = paths.dax / _safe_name(name, paths.dax)
    if not d.is_dir():
        return None
    node_text = read_attr(d / "target_node") if (d / "target_node").exists() else "-1"
    if not re.fullmatch(r"-?\d{1,6}", node_text):
        raise DumpsaverError(f"{d}/target_node: not a node number: {node_text[:40]!r}")
    align = _number(d / "align", 10) if (d / "align").exists() else 0
    return DaxDevice(name, _span(d), _driver(d), int(node_text), align)


def _dax_of(paths: PmemPaths, holder: str) -> DaxDevice | None:
    """The device-dax instance of the nd dax device ``holder`` that claims a namespace: a
    child directory of it, also listed on the dax bus.  Its name is not the holder's
    (after a reboot 6.1 shows holder dax0.1 with device dax0.0 under it)."""
    hdir = paths.nd / _safe_name(holder, paths.nd)
    for child in sorted(hdir.glob("dax*")):
        if not re.fullmatch(r"dax\d+\.\d+", child.name) or not child.is_dir():
            continue
        bus = paths.dax / child.name
        if os.path.realpath(bus) != os.path.realpath(child):
            raise DumpsaverError(f"{bus} is not the device under {hdir}: refusing to use it")
        return dax_device(paths, child.name)
    return None


def _block_dev(d: Path) -> str | None:
    blocks = sorted(p.name for p in (d / "block").glob("pmem*")) if (d / "block").is_dir() \
        else []
    for b in blocks:
        if re.fullmatch(r"pmem\d+(\.\d+)?s?", b):
            return b
    return None


def area_of(paths: PmemPaths, region: str, bs: int | None = None) -> PmemArea | None:
    """The area of one nd region (its first namespace), or None when it has none yet."""
    rdir = paths.nd / _safe_name(region, paths.nd)
    rspan = _span(rdir)
    nss = sorted((p for p in rdir.glob("namespace*") if p.is_dir()), key=lambda p: p.name)
    if not nss:
        nss = sorted(p for p in paths.nd.glob(f"namespace{region[6:]}.*") if p.is_dir())
    for nsdir in nss:
        name = _safe_name(nsdir.name, rdir)
        if not (nsdir / "resource").exists() or _number(nsdir / "size", 10) == 0:
            continue  # the region's idle seed namespace
        span = _span(nsdir)
        if not rspan.contains(span.start, span.size):
            raise DumpsaverError(f"{name} {span} lies outside {region} {rspan}")
        mode = read_attr(nsdir / "mode")
        if mode not in set(Mode):
            raise DumpsaverError(f"{nsdir}/mode: unknown mode {mode[:40]!r}")
        holder = read_attr(nsdir / "holder") if (nsdir / "holder").exists() else ""
        size = bs or block_size(paths)
        if mode == Mode.SECTOR:
            raise DumpsaverError(
                f"{name} is in sector mode (btt): its block device remaps sectors, so the "
                "dump range cannot be read through it",
                hint=f"ndctl create-namespace -f -e {name} --mode=devdax")
        if mode == Mode.DEVDAX:
            dax = _dax_of(paths, holder) if holder else None
            if dax is None:  # dax_pmem not loaded yet: no device, no dump range known
                return PmemArea(region, name, span, mode, size, paths)
            if not span.contains(dax.range.start, dax.range.size):
                raise DumpsaverError(
                    f"{dax.name} {dax.range} is not inside {name} {span}: refusing to use it")
            dump = dump_range(dax.range, size)
            if dump is None:
                raise DumpsaverError(
                    f"{dax.name} {dax.range} holds no whole {size >> 20} MiB memory block",
                    hint="choose a larger memmap=SIZE!ADDR (docs/sysfs-abi.md)")
            return PmemArea(region, name, span, mode, size, paths, dax=dax, dump=dump)
        holder_dir = paths.nd / _safe_name(holder, nsdir) if holder else nsdir
        dev = _block_dev(holder_dir) or _block_dev(nsdir)
        return PmemArea(region, name, span, mode, size, paths, block_dev=dev,
                        dump=probe_range(span, size))
    return None


def regions(paths: PmemPaths) -> dict[Range, str]:
    """Every nd region's range -> its name."""
    out: dict[Range, str] = {}
    if not paths.nd.is_dir():
        return out
    for d in sorted(paths.nd.glob("region*")):
        if re.fullmatch(r"region\d+", d.name) and (d / "resource").exists():
            out[_span(d)] = d.name
    return out


@dataclass
class Found:
    """The areas found for the ``memmap=!`` ranges, and what is missing."""

    areas: list[PmemArea] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def find(paths: PmemPaths, wanted: list[Range]) -> Found:
    """The area of each ``memmap=!`` range (the region with exactly that range)."""
    out = Found()
    if not wanted:
        return out
    have = regions(paths)
    bs: int | None = None
    for r in wanted:
        name = have.get(r)
        if name is None:
            out.missing.append(f"no nvdimm region for memmap=! {r} in {paths.nd} "
                               "(nd_e820 not loaded yet?)")
            continue
        bs = bs or block_size(paths)
        area = area_of(paths, name, bs)
        if area is None:
            out.missing.append(f"{name} {r} has no namespace yet")
        else:
            out.areas.append(area)
    return out


def mem_total(meminfo: Path) -> int | None:
    """MemTotal in bytes, or None."""
    try:
        text = meminfo.read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"^MemTotal:\s+(\d+) kB", text, re.M)
    return int(m[1]) * 1024 if m else None
