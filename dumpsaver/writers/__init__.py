"""Output formats, a family of interchangeable writers.

A writer takes an open Dump and the result of its scan (pass one) and streams
the dump into an open file descriptor with bounded memory.  ``estimate`` says
how many bytes the file will occupy, for the free-space check before writing.
"""

from __future__ import annotations

import enum
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from dumpsaver.decode import Dump, Scan

Progress = Callable[[int, int], None]  # (pages done, pages total)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """pwrite all of ``data`` at ``offset`` (pwrite may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


IOV_MAX = 1024  # pieces per pwritev (Linux's UIO_MAXIOV)

#: Bytes a writer puts out between two write-behind hints.
WRITE_BEHIND = 16 << 20


class WriteBehind:
    """Have the kernel write a dump file out while it is still being written, so that
    the fsync before the release finds little left to do.

    Without it every byte of the file waits for that fsync: a 185 MB ELF core of a
    1 GiB machine left 160 MB dirty and the fsync took 0.1 s on the development VM's
    virtio disk (a disk of 150 MB/s would take over a second, after all the CPU work).
    Python has no ``sync_file_range``; Linux's ``POSIX_FADV_DONTNEED`` starts
    asynchronous writeback of the range's dirty pages and drops its clean ones (which
    also keeps a boot's page cache free of the saved dump).  It is only a hint:
    durability still comes from the fsync, and an error turns the hints off.

    The call itself can wait: starting writeback blocks while the disk's queue is
    full (0.04-0.07 s in 4 calls per half of an ELF save, of which 0.01-0.015 s CPU).
    So with ``background`` a thread of its own makes the calls (posix_fadvise lets the
    GIL go), and the writer goes on decompressing; ``close`` waits for the last one.
    """

    def __init__(self, fd: int, every: int = WRITE_BEHIND, background: bool = True) -> None:
        self.fd = fd
        self.every = every
        self.background = background
        self.lo = -1  # the range written since the last hint
        self.hi = 0
        self.pending = 0  # bytes written since the last hint
        self._queue: queue.SimpleQueue[tuple[int, int] | None] | None = None
        self._thread: threading.Thread | None = None

    def wrote(self, offset: int, n: int) -> None:
        end = offset + n
        if self.lo < 0 or offset < self.lo:
            self.lo = offset
        self.hi = max(self.hi, end)
        self.pending += n
        if self.pending >= self.every:
            if not self.background:
                self._hint(self.lo, self.hi - self.lo)
            else:
                if self._queue is None:
                    self._queue = queue.SimpleQueue()
                    self._thread = threading.Thread(target=self._run, name="write-behind",
                                                    daemon=True)
                    self._thread.start()
                self._queue.put((self.lo, self.hi - self.lo))
            self.lo, self.hi, self.pending = -1, 0, 0

    def _hint(self, offset: int, length: int) -> None:
        if self.every >= NEVER:
            return
        try:
            os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            self.every = NEVER  # not a file that takes hints: stop asking

    def _run(self) -> None:
        q = self._queue
        assert q is not None
        while (item := q.get()) is not None:
            self._hint(*item)

    def close(self) -> None:
        """Wait for the hints given so far (before the fd is closed or reused)."""
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = self._queue = None


NEVER = 1 << 62  # WriteBehind.every once hints have failed


class FileSink:
    """A dump file being written: pwrite at any offset, with write-behind hints for
    what was written (one per process: a forked writer makes its own)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.behind = WriteBehind(fd)

    def close(self) -> None:
        """Wait for the write-behind hints still being given (the data is written)."""
        self.behind.close()

    def __enter__(self) -> FileSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        pwrite_all(self.fd, data, offset)
        self.behind.wrote(offset, len(data))

    def write_vec_at(self, offset: int, pieces: list[bytes | memoryview]) -> None:
        """pwritev the pieces one after the other from ``offset`` (no joining copy)."""
        for i in range(0, len(pieces), IOV_MAX):
            part = pieces[i : i + IOV_MAX]
            want = sum(len(x) for x in part)
            n = os.pwritev(self.fd, part, offset)
            if n < want:  # a short write (rare on a file): the rest one piece at a time
                pwrite_all(self.fd, memoryview(b"".join(part))[n:], offset + n)
            self.behind.wrote(offset, want)
            offset += want


@dataclass
class Written:
    size: int  # apparent file size
    pages: int  # pages written (zero pages included)


class Writer(Protocol):
    name: str
    filename: str

    def prepare(self, dump: Dump) -> Scan:
        """Pass one as this format needs it (a Scan still to be filled by ``write`` when
        the format needs no layout before the pages: ``Scan.done`` False)."""
        ...

    def estimate(self, dump: Dump, scan: Scan) -> int: ...

    def write(self, fd: int, dump: Dump, scan: Scan, progress: Progress | None) -> Written: ...


class OutputFormat(enum.StrEnum):
    """The ``format`` setting: which writer makes the saved core."""

    ELF = "elf"  # an ELF core like /proc/vmcore
    KDUMP = "kdump"  # makedumpfile's kdump-compressed format


def get(name: str) -> Writer:
    from dumpsaver.errors import ConfigError

    if name == OutputFormat.ELF:
        from dumpsaver.writers.elf import ElfWriter

        return ElfWriter()
    if name == OutputFormat.KDUMP:
        from dumpsaver.writers.kdump import KdumpWriter

        return KdumpWriter()
    raise ConfigError(f"unknown output format {name!r}", hint="use elf or kdump")
