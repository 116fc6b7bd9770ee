"""Physical memory access that never leaves the reserved ranges.

Reading device memory through /dev/mem can hang a machine, so every read and
write is checked against the ranges the locator found reserved *before* it is
made.  A plain file (the simulator's image) stands in for /dev/mem in tests.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from dumpsaver.errors import DumpsaverError, NoPermissionError, OutsideAreaError

#: Physical addresses are below 2^63: /dev/mem offsets are a signed 64-bit off_t, and
#: no machine has memory up there.  A range beyond it is refused where it is read.
MAX_PHYS = 1 << 63


@dataclass(frozen=True, order=True)
class Range:
    """A physical byte range [start, end), below MAX_PHYS."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"bad range [{self.start:#x}, {self.end:#x})")
        if self.end > MAX_PHYS:
            raise DumpsaverError(
                f"physical range [{self.start:#x}, {self.end:#x}) lies beyond the physical "
                "address space (2^63)"
            )

    @property
    def size(self) -> int:
        return self.end - self.start

    def contains(self, start: int, length: int) -> bool:
        return self.start <= start and start + length <= self.end

    def __str__(self) -> str:
        return f"[{self.start:#x}, {self.end:#x})"


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    out: list[Range] = []
    for r in sorted(ranges):
        if out and r.start <= out[-1].end:
            out[-1] = Range(out[-1].start, max(out[-1].end, r.end))
        else:
            out.append(r)
    return out


class PhysMem:
    """pread/pwrite on a memory device, confined to ``allowed`` ranges.

    ``on_access`` (for tests) is called with (offset, length) of every access
    actually made, so a test can prove nothing outside the ranges was touched.
    """

    def __init__(
        self,
        path: str,
        allowed: Sequence[Range],
        *,
        writable: bool = False,
        on_access: Callable[[int, int], None] | None = None,
        base: int = 0,
    ) -> None:
        self.path = path
        #: The physical address at the device's offset 0 (0 for /dev/mem; a pmem
        #: namespace's start for /dev/pmemN, dumpsaver.pmemio).
        self.base = base
        self.allowed = merge_ranges(allowed)
        self._starts = [r.start for r in self.allowed]
        self.writable = writable
        self.on_access = on_access
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags)
        except PermissionError as e:
            raise NoPermissionError(f"the memory device {path}", e) from e
        except OSError as e:
            raise DumpsaverError(f"cannot open memory device {path}: {e.strerror}") from e

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PhysMem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self, start: int, length: int) -> None:
        i = bisect.bisect_right(self._starts, start) - 1
        if length < 0 or start < 0 or i < 0 or not self.allowed[i].contains(start, length):
            raise OutsideAreaError(
                f"access to physical [{start:#x}, {start + length:#x}) is outside the reserved "
                "dump area"
            )

    def begin(self, start: int, length: int) -> None:
        """Check an access before it is made, and report it to ``on_access``."""
        self.check(start, length)
        if self.on_access is not None:
            self.on_access(start, length)

    def read(self, start: int, length: int) -> bytes:
        self.begin(start, length)
        chunks = []
        got = 0
        while got < length:
            try:
                b = os.pread(self.fd, length - got, start - self.base + got)
            except OSError as e:
                raise DumpsaverError(
                    f"cannot read {self.path} at {start + got:#x}: {e.strerror}"
                ) from e
            if not b:
                raise DumpsaverError(
                    f"{self.path} ends before {start + length:#x} (short read at {start + got:#x})"
                )
            chunks.append(b)
            got += len(b)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def write(self, start: int, data: bytes | memoryview) -> None:
        if not self.writable:
            raise DumpsaverError(f"{self.path} is open read-only")
        self.begin(start, len(data))
        view = memoryview(data)
        done = 0
        while done < len(view):
            try:
                done += os.pwrite(self.fd, view[done:], start - self.base + done)
            except OSError as e:
                raise DumpsaverError(
                    f"cannot write {self.path} at {start + done:#x}: {e.strerror}"
                ) from e


class LogicalStream:
    """The dump's logical byte stream laid over its physical extents, in order.

    ``extents`` are (paddr, length) pairs; every access is checked twice: against
    the stream's length here and against the reserved ranges in PhysMem.
    """

    def __init__(self, mem: PhysMem, extents: Sequence[tuple[int, int]]) -> None:
        self.mem = mem
        self.extents = list(extents)
        self._logical: list[int] = []
        pos = 0
        for _paddr, length in self.extents:
            self._logical.append(pos)
            pos += length
        self.size = pos

    def _pieces(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise OutsideAreaError(
                f"dump offset [{offset:#x}, {offset + length:#x}) beyond the dump area "
                f"({self.size:#x} bytes)"
            )
        i = bisect.bisect_right(self._logical, offset) - 1
        while length > 0:
            paddr, elen = self.extents[i]
            within = offset - self._logical[i]
            n = min(length, elen - within)
            yield paddr + within, n
            offset += n
            length -= n
            i += 1

    def read(self, offset: int, length: int) -> bytes:
        parts = [self.mem.read(p, n) for p, n in self._pieces(offset, length)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        done = 0
        for p, n in self._pieces(offset, len(data)):
            self.mem.write(p, view[done : done + n])
            done += n
