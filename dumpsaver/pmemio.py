"""Reading and writing a dump area through the device that holds it.

The same confined interface as dumpsaver.physmem.PhysMem (read/write/check against
the allowed physical ranges, the ``on_access`` hook), so decode, save and release
do not care which device it is:

- /dev/mem for memmap=$ reservations and configured regions (PhysMem itself);
- /dev/pmemN, a block device, for a legacy pmem namespace in fsdax or raw mode:
  ``pread`` at ``paddr - namespace start``;
- /dev/daxN.M, a character device, for a namespace in devdax mode: device-dax has
  no read(); it is mmapped whole (its size is a multiple of its ``align``) and
  ``paddr - dax resource`` is the offset into the mapping.

/dev/mem refuses both (STRICT_DEVMEM: the range is claimed by a driver), which is
why the pmem devices are the way in; they also work where /dev/mem is locked down.
"""

from __future__ import annotations

import mmap
import os
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from dumpsaver.errors import DumpsaverError, NoDumpError
from dumpsaver.physmem import PhysMem, Range
from dumpsaver.pmem import PmemArea

if TYPE_CHECKING:
    from dumpsaver.locate import Candidate


class OffsetMem(PhysMem):
    """A block device (/dev/pmemN) whose offset 0 is physical address ``base``; every
    write is flushed through its page cache to the memory."""

    def __init__(self, path: str, allowed: Sequence[Range], base: int, *,
                 writable: bool = False,
                 on_access: Callable[[int, int], None] | None = None) -> None:
        super().__init__(path, allowed, writable=writable, on_access=on_access, base=base)
        if any(r.start < base for r in self.allowed):
            self.close()
            raise DumpsaverError(f"{path}: an allowed range starts below its base {base:#x}")

    def write(self, start: int, data: bytes | memoryview) -> None:
        super().write(start, data)
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise DumpsaverError(f"cannot flush {self.path}: {e.strerror}") from e


#: Every open device-dax mapping, so that giving the device back can unmap them first.
_LIVE: weakref.WeakSet[DaxMem] = weakref.WeakSet()


def unmap_all(path: str) -> int:
    """Unmap every mapping of ``path`` (before daxctl unbinds device_dax from it: the
    boot job still holds the dump it saved open); later reads fail with an error.
    The number unmapped."""
    n = 0
    for m in list(_LIVE):
        if m.path == path and not m.map.closed:
            m.map.close()
            n += 1
    return n


class DaxMem(PhysMem):
    """A device-dax character device (/dev/daxN.M), mmapped whole; its offset 0 is
    physical address ``base`` and it is ``size`` bytes long."""

    def __init__(self, path: str, allowed: Sequence[Range], base: int, size: int, *,
                 writable: bool = False,
                 on_access: Callable[[int, int], None] | None = None) -> None:
        super().__init__(path, allowed, writable=writable, on_access=on_access, base=base)
        span = Range(base, base + size)
        for r in self.allowed:
            if not span.contains(r.start, r.size):
                self.close()
                raise DumpsaverError(f"{path} covers {span}: {r} lies outside it")
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        try:
            self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, prot)
        except (OSError, ValueError) as e:
            self.close()
            why = e.strerror if isinstance(e, OSError) else str(e)
            raise DumpsaverError(f"cannot map {path} ({size} bytes): {why}") from e
        _LIVE.add(self)

    def close(self) -> None:
        m = getattr(self, "map", None)
        if m is not None and not m.closed:
            m.close()
        super().close()

    def _mapped(self) -> mmap.mmap:
        if self.map.closed:
            raise DumpsaverError(f"{self.path} is no longer mapped (given back to the system)")
        return self.map

    def read(self, start: int, length: int) -> bytes:
        self.begin(start, length)
        off = start - self.base
        return self._mapped()[off : off + length]

    def write(self, start: int, data: bytes | memoryview) -> None:
        if not self.writable:
            raise DumpsaverError(f"{self.path} is open read-only")
        self.begin(start, len(data))
        off = start - self.base
        # Device-dax is memory: a store is in RAM once made, with no page cache to
        # flush, and msync() fails there (EINVAL: the device has no fsync).
        self._mapped()[off : off + len(data)] = bytes(data)


def area_path(cand: Candidate, mem_path: str) -> str:
    """The device a candidate is read through (/dev/mem for all but pmem)."""
    if cand.pmem is None:
        return mem_path
    dev = cand.pmem.device()
    if dev is None:
        raise _unreadable(cand.pmem)
    return dev[0]


def _unreadable(area: PmemArea) -> NoDumpError:
    if area.given_back:
        return NoDumpError(f"{area.describe()}: the range is System RAM now, no dump waits "
                           "there")
    return NoDumpError(f"{area.describe()}: no device to read it through")


def open_area(cand: Candidate, mem_path: str, *, writable: bool = False,
              on_access: Callable[[int, int], None] | None = None) -> PhysMem:
    """Open the device holding ``cand``, confined to its ranges."""
    return open_pmem(cand.pmem, cand.ranges, writable=writable, on_access=on_access) \
        if cand.pmem is not None else \
        PhysMem(mem_path, cand.ranges, writable=writable, on_access=on_access)


def open_pmem(area: PmemArea, ranges: Sequence[Range], *, writable: bool = False,
              on_access: Callable[[int, int], None] | None = None) -> PhysMem:
    dev = area.device()
    if dev is None:
        raise _unreadable(area)
    path, base, is_dax = dev
    if is_dax:
        assert area.dax is not None
        return DaxMem(path, ranges, base, area.dax.range.size, writable=writable,
                      on_access=on_access)
    return OffsetMem(path, ranges, base, writable=writable, on_access=on_access)


def find_header(area: PmemArea, magic: bytes) -> int | None:
    """Before the namespace is devdax the dump range is not known exactly: the header
    of a dump (``magic``) can only sit on a memory-block boundary of the probe range.
    The first boundary holding ``magic``, or None."""
    r = area.dump
    if r is None or area.device() is None:
        return None
    with open_pmem(area, [r]) as mem:
        for addr in range(r.start, r.end, area.block_size):
            if holds_header(mem, addr, r.end, magic):
                return addr
    return None


def holds_header(mem: PhysMem, addr: int, end: int, magic: bytes) -> bool:
    """Whether a dump header its own CRC vouches for begins at ``addr`` (before ``end``).
    The magic alone is not enough in memory that held user pages: a page that merely
    begins with it is someone's data (docs/sysfs-abi.md)."""
    from dumpsaver import format as fmt
    from dumpsaver.errors import UnverifiedHeaderError

    if mem.read(addr, len(magic)) != magic:
        return False
    try:
        fixed = mem.read(addr, min(fmt.FIXED_SIZE, end - addr))
        size = fmt.peek_header_size(fixed)
        fmt.decode_header(mem.read(addr, min(size, end - addr)))
    except UnverifiedHeaderError:
        return False
    except DumpsaverError:
        return True  # verified, but wrong in a later check: a dump to look at, kept
    return True
