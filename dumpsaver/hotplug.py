"""Giving a ``memmap=!`` range back to the page allocator as movable RAM, and the
boot-time preparation that makes the range visible at all.

Giving back (only once no unsaved dump waits there: a saved dump's header is
invalidated first, and this module checks again before it touches anything):

1. the namespace to devdax, when it is not already (a fresh boot, or RAM cleared
   by firmware): ``ndctl create-namespace -f -e namespaceN.M --mode=devdax``.  This
   writes devdax's info block at 4 KiB of the namespace, in the metadata kmem
   never adds: the next crash reboot finds the namespace as devdax again, with
   the same device-dax range, hence the same dump range (dumpsaver.pmem.dump_range);
2. the device to System RAM: ``daxctl reconfigure-device --mode=system-ram
   daxN.M``.  kmem hot-adds the whole memory blocks inside the device range and
   daxctl onlines them in ZONE_MOVABLE (its default), so only user and page-cache
   pages live there: the pages a dump never keeps;
3. check what the kernel shows: every memory block of the dump range online and
   Movable; MemTotal before and after.

Why the tools and not their sysfs interfaces (docs/sysfs-abi.md says it too):
turning a namespace into devdax is a sequence on the nd bus (claim the region's
dax seed, set its namespace, uuid and alignment, bind, write the info block)
whose details ndctl keeps right across kernel versions; daxctl likewise knows
the dax bus's driver-override and memory-block onlining policy.  Debian ships
both (76.1).  What the saver relies on, it reads back from sysfs itself.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dumpsaver import pmem
from dumpsaver.errors import DumpsaverError
from dumpsaver.physmem import Range
from dumpsaver.sizes import human


def run(argv: Sequence[str]) -> str:
    """Run a tool; its last line of error output becomes the one-line error."""
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise DumpsaverError(f"{argv[0]} is not installed",
                             hint="apt install ndctl daxctl (needed to give memmap=! "
                             "memory back)") from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DumpsaverError(f"cannot run {argv[0]}: {e}") from None
    if r.returncode:
        err = [ln for ln in (r.stderr or r.stdout).strip().splitlines() if ln.strip()]
        raise DumpsaverError(f"{' '.join(argv[:3])}: "
                             f"{err[-1][:300] if err else f'exit status {r.returncode}'}")
    return r.stdout


def _runner(paths: pmem.PmemPaths) -> pmem.Runner:
    return paths.runner or run


@dataclass
class GiveBack:
    """What giving a range back did, for the journal and ``status``."""

    namespace: str
    dump: Range | None = None
    onlined: int = 0  # bytes of the dump range online in ZONE_MOVABLE now
    not_movable: list[str] = field(default_factory=list)  # blocks that are not
    mem_total_before: int | None = None
    mem_total_after: int | None = None
    steps: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        text = f"{self.namespace}: {human(self.onlined)} online as movable RAM"
        if self.dump is not None:
            text += f" ({self.dump})"
        if self.mem_total_before is not None and self.mem_total_after is not None:
            text += (f", MemTotal {self.mem_total_before >> 10} -> "
                     f"{self.mem_total_after >> 10} kB")
        if self.not_movable:
            text += "; NOT movable: " + ", ".join(self.not_movable[:4])
        return text


def refuse_if_dump(area: pmem.PmemArea, magic: bytes) -> None:
    """Never give back a range that holds a dump header not invalidated by a save."""
    from dumpsaver import pmemio

    if area.device() is None or area.dump is None:
        raise DumpsaverError(f"{area.describe()}: cannot read it to check for a waiting dump, "
                             "so it is not given back", hint="modprobe nd_pmem dax_pmem "
                             "device_dax (dumpsaver-pmem.service does at boot)")
    if area.dax is not None:
        with pmemio.open_pmem(area, [area.dump]) as mem:
            found = pmemio.holds_header(mem, area.dump.start, area.dump.end, magic)
        at = area.dump.start if found else None
    else:
        at = pmemio.find_header(area, magic)
    if at is not None:
        raise DumpsaverError(f"a dump waits unsaved at {at:#x} in {area.namespace}: "
                             "not giving the range back", hint="save it first: dumpsaver save")


def give_back(area: pmem.PmemArea, *, magic: bytes) -> GiveBack:
    """Give ``area``'s dump range to the page allocator, online movable (see the module
    docstring).  ``magic``: a dump header's magic, to refuse a waiting dump."""
    paths = area.paths
    run_ = _runner(paths)
    began = time.monotonic()
    out = GiveBack(area.namespace, mem_total_before=pmem.mem_total(paths.meminfo))
    if not area.given_back:
        refuse_if_dump(area, magic)
    if area.mode != pmem.Mode.DEVDAX:
        argv = [paths.ndctl, "create-namespace", "-f", "-e", area.namespace, "--mode=devdax"]
        run_(argv)
        out.steps.append(" ".join(argv))
        area = _again(area)
    if area.dax is None:
        raise DumpsaverError(f"{area.namespace} is devdax but shows no dax device in "
                             f"{paths.dax}", hint="modprobe dax_pmem device_dax")
    if area.dax.driver != "kmem":
        from dumpsaver import pmemio

        pmemio.unmap_all(str(paths.dev / area.dax.name))  # no reader keeps it mapped
        argv = [paths.daxctl, "reconfigure-device", "--mode=system-ram", area.dax.name]
        run_(argv)
        out.steps.append(" ".join(argv))
        area = _again(area)
    out.dump = area.dump
    if area.dump is not None:
        for b in pmem.memory_blocks(paths, area.dump):
            if b.online_movable:
                out.onlined += b.range.size
            else:
                out.not_movable.append(f"memory{b.index} {b.state} {b.zones}")
    out.mem_total_after = pmem.mem_total(paths.meminfo)
    out.seconds = time.monotonic() - began
    return out


def _again(area: pmem.PmemArea) -> pmem.PmemArea:
    new = pmem.area_of(area.paths, area.region, area.block_size)
    if new is None or new.namespace != area.namespace:
        raise DumpsaverError(f"{area.namespace} of {area.region} is gone after reconfiguring it")
    return new


def movable_state(area: pmem.PmemArea) -> tuple[int, list[str]]:
    """(bytes of the dump range online in ZONE_MOVABLE, the blocks that are not)."""
    if area.dump is None or not area.given_back:
        return 0, []
    good, bad = 0, []
    blocks = pmem.memory_blocks(area.paths, area.dump)
    have = {b.index for b in blocks}
    bs = area.block_size
    for idx in range(area.dump.start // bs, area.dump.end // bs):
        if idx not in have:
            bad.append(f"memory{idx} absent")
    for b in blocks:
        if b.online_movable:
            good += b.range.size
        else:
            bad.append(f"memory{b.index} {b.state} ({b.zones})")
    return good, bad


def load_modules(paths: pmem.PmemPaths) -> str | None:
    """Load the nd and dax modules (udev would, but only after sysinit.target); the
    error as a note, or None."""
    try:
        _runner(paths)([paths.modprobe, "-a", *pmem.MODULES])
    except DumpsaverError as e:
        return e.message
    return None


def wait_for(paths: pmem.PmemPaths, wanted: list[Range], timeout: float, *,
             sleep: Callable[[float], None] = time.sleep,
             clock: Callable[[], float] = time.monotonic) -> list[str]:
    """Wait (at most ``timeout`` seconds) until every ``memmap=!`` range has its area
    with a device node to read it through, or has been given back; the reasons for
    what is still missing (empty: all there)."""
    deadline = clock() + timeout
    while True:
        missing = _missing(paths, wanted)
        if not missing or clock() >= deadline:
            return missing
        sleep(0.1)


def _missing(paths: pmem.PmemPaths, wanted: list[Range]) -> list[str]:
    try:
        found = pmem.find(paths, wanted)
    except DumpsaverError as e:
        return [e.message]
    missing = list(found.missing)
    for a in found.areas:
        dev = a.device()
        if a.given_back:
            continue
        if dev is None:
            missing.append(f"{a.describe()}: waiting for its device")
        elif not os.path.exists(dev[0]):
            missing.append(f"{a.namespace}: {dev[0]} does not exist yet")
    return missing
