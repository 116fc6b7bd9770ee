"""Write-behind: the writers ask the kernel to start writing a dump file out while it is
still being written (dumpsaver.writers.WriteBehind)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from dumpsaver.writers import WriteBehind


def _recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int, int]]:
    calls: list[tuple[int, int, int, int]] = []
    real = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append((fd, offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    return calls


def test_hints_cover_what_was_written_since_the_last(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recorded(monkeypatch)
    fd = os.open(tmp_path / "core", os.O_WRONLY | os.O_CREAT)
    try:
        wb = WriteBehind(fd, every=1 << 20, background=False)
        chunk = bytes(256 << 10)
        at = 8192
        for _ in range(4):  # 1 MiB ascending from 8 KiB: one hint for exactly that
            os.pwrite(fd, chunk, at)
            wb.wrote(at, len(chunk))
            at += len(chunk)
        assert calls == [(fd, 8192, 1 << 20, os.POSIX_FADV_DONTNEED)]
        os.pwrite(fd, b"h" * 64, 0)  # a header rewritten low in the file ...
        wb.wrote(0, 64)
        os.pwrite(fd, chunk * 4, at)  # ... and the next MiB: the hint spans both
        wb.wrote(at, 4 * len(chunk))
        assert calls[1] == (fd, 0, at + (1 << 20), os.POSIX_FADV_DONTNEED)
        wb.wrote(at + (1 << 20), 100)  # below the threshold: no hint yet
        assert len(calls) == 2
    finally:
        os.close(fd)


def test_hints_leave_the_file_as_written(tmp_path: Path) -> None:
    """Dropping clean pages from the cache must never lose a byte: read back after."""
    path = tmp_path / "core"
    data = os.urandom(3 << 20)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        wb = WriteBehind(fd, every=512 << 10)
        for off in range(0, len(data), 128 << 10):
            os.pwrite(fd, data[off : off + (128 << 10)], off)
            wb.wrote(off, 128 << 10)
        wb.close()
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == data


def test_background_hints_come_from_another_thread(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """By default the hints are given by a thread of their own (the call can wait for
    the disk's queue); close() waits for every one asked for, and they are the same."""
    threads: list[str] = []
    calls = _recorded(monkeypatch)
    recorded = os.posix_fadvise

    def which(fd: int, offset: int, length: int, advice: int) -> None:
        threads.append(threading.current_thread().name)
        recorded(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", which)
    fd = os.open(tmp_path / "core", os.O_WRONLY | os.O_CREAT)
    try:
        wb = WriteBehind(fd, every=64 << 10)
        chunk = bytes(32 << 10)
        for i in range(8):
            os.pwrite(fd, chunk, i * len(chunk))
            wb.wrote(i * len(chunk), len(chunk))
        wb.close()
        assert calls == [(fd, i * (64 << 10), 64 << 10, os.POSIX_FADV_DONTNEED) for i in range(4)]
        assert threads and threading.current_thread().name not in threads
        assert not any(t.name == "write-behind" for t in threading.enumerate())
    finally:
        os.close(fd)


def test_a_pipe_turns_the_hints_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """posix_fadvise on a pipe fails (ESPIPE): no error, and no further calls."""
    calls = _recorded(monkeypatch)
    r, w = os.pipe()
    try:
        wb = WriteBehind(w, every=10, background=False)
        wb.wrote(0, 10)
        wb.wrote(10, 10)
        wb.wrote(20, 10)
        assert len(calls) == 1
    finally:
        os.close(r)
        os.close(w)
