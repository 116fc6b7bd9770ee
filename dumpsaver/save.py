"""Saving one dump: from a located dump to a durable directory in the dump directory,
then the release.  (The boot job around it, which dump and whether to try at all:
dumpsaver.boot.)

Order of events (nothing is released until the copy is durable):

    lock the area -> lock dest -> already saved? -> scan (pass one) -> space check
    -> write .tmp-ID/{vmcore,dmesg.txt,info.json} -> fsync files and dir
    -> rename to ID -> fsync dest -> release (invalidate header; sysfs release)
    -> retention (delete the oldest beyond the limits)

A rerun after an interruption at any point finds either a complete ID
directory (and only releases) or a stale .tmp-* (and removes it, then saves).
Any error while writing, expected or not, removes this run's .tmp-* at once.

The same orchestration for a pipe (``save --stdout``): ``stream_save``.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import json
import logging
import os
import stat
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dumpsaver import format as fmt
from dumpsaver.catalogue import (
    DMESG,
    INFO,
    TMP_PREFIX,
    build_info,
    dump_name,
    is_saved_as,
    saved_dumps,
)
from dumpsaver.config import Config
from dumpsaver.decode import Dump, Scan
from dumpsaver.errors import (
    EXIT_NO_SPACE,
    AlreadySavedError,
    BusyError,
    DestinationError,
    DumpsaverError,
)
from dumpsaver.faults import checkpoint
from dumpsaver.locate import Candidate
from dumpsaver.physmem import PhysMem
from dumpsaver.pmemio import area_path, open_area
from dumpsaver.release import release
from dumpsaver.retention import rmtree_at, vacuum
from dumpsaver.sanitize import clean_text
from dumpsaver.sizes import human
from dumpsaver.writers import Progress, Writer, Written, flat, get

log = logging.getLogger("dumpsaver")

DIR_MODE = 0o700
FILE_MODE = 0o600


class SaveStatus(enum.StrEnum):
    SAVED = "saved"
    INCOMPLETE = "incomplete"
    ALREADY_SAVED = "already-saved"


@dataclass
class Result:
    status: SaveStatus
    dump_dir: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    released: bool = False


# -- locks ------------------------------------------------------------------------------

#: struct flock (x86_64, aarch64): l_type, l_whence, l_start, l_len, l_pid
_FLOCK = struct.Struct("@hhqqi4x")
_MAX_OFF = (1 << 63) - 2


@contextlib.contextmanager
def area_locked(cand: Candidate, mem_path: str, wait: float) -> Iterator[None]:
    """Hold the dump area: an open-file-description write lock on the header's first
    byte of the memory device.  Two savers of one area conflict whatever their dump
    directories or state directories; savers of different areas do not.

    A device that cannot be opened for writing cannot be released through either:
    then there is nothing in memory to protect and no lock is taken."""
    try:
        fd = os.open(area_path(cand, mem_path), os.O_RDWR | os.O_CLOEXEC)
    except (OSError, DumpsaverError):
        yield
        return
    try:
        req = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, min(cand.header, _MAX_OFF), 1, 0)
        _retry_lock(lambda: fcntl.fcntl(fd, fcntl.F_OFD_SETLK, req), wait,
                    f"another dumpsaver is saving the dump of {cand.source}")
        yield
    finally:
        os.close(fd)  # the last close of the description drops the lock


def _retry_lock(take: Callable[[], object], wait: float, busy: str) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            take()
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if time.monotonic() >= deadline:
                raise BusyError(
                    busy, hint="wait for it to finish (dumpsaver save --wait SECONDS)"
                ) from None
            time.sleep(0.1)


def still_waiting(cand: Candidate, mem_path: str) -> None:
    """Under the area lock: is the dump still there?  A saver that waited for the lock
    (or opened the dump just before another one took it) may find it saved and
    released since: then it must neither save it again nor write into memory that may
    be the kernel's by now.  A sysfs area is gone once released (its directory with
    it); a memmap= area keeps its invalidated header."""
    if cand.release is not None and not cand.release.exists():
        raise AlreadySavedError(
            f"{cand.source}: the dump was saved and released by another dumpsaver"
        )
    with open_area(cand, mem_path) as mem:
        magic = mem.read(cand.header, len(fmt.MAGIC))
    if magic != fmt.MAGIC:
        raise AlreadySavedError(
            f"{cand.source}: the dump was saved by another dumpsaver (header invalidated)"
        )


@contextlib.contextmanager
def locked(dest_fd: int, dest: Path, wait: float) -> Iterator[None]:
    """Hold the dump directory (one writer of its .tmp-* and of retention at a time)."""
    try:
        fd = os.open(".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                     dir_fd=dest_fd)
    except OSError as e:  # a read-only or full /var, a symlink planted as .lock
        raise _space_error(e, dest, 0) from None
    try:
        _retry_lock(lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB), wait,
                    f"another dumpsaver is saving into {dest}")
        yield
    finally:
        os.close(fd)


# -- the dump directory -------------------------------------------------------------


def ensure_dest(dest: Path) -> int:
    """Create/open the dump directory safely; return an O_DIRECTORY fd (no symlinks)."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        try:
            os.makedirs(dest.parent, exist_ok=True)
            os.mkdir(dest, DIR_MODE)
        except OSError as e:
            raise DestinationError(
                f"cannot create {dest}: {e.strerror}",
                hint="is the file system read-only? (a dump_dir outside /var/dumps needs "
                "ReadWritePaths= in a drop-in for the sandboxed unit)"
                if e.errno == errno.EROFS else None,
            ) from None
        st = os.lstat(dest)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise DestinationError(f"{dest} is not a directory (symlinks are not followed)")
    if st.st_uid != os.geteuid():
        raise DestinationError(
            f"{dest} is owned by uid {st.st_uid}, not by us: refusing to write there",
            hint=f"chown root:root {dest} && chmod 700 {dest}",
        )
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise DestinationError(f"cannot open {dest}: {e.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.fchmod(fd, DIR_MODE)
    return fd


def _create(dir_fd: int, name: str) -> int:
    return os.open(
        name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
        dir_fd=dir_fd,
    )


def _write_small(dir_fd: int, name: str, data: bytes) -> None:
    fd = _create(dir_fd, name)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _space_error(e: OSError, dest: Path, need: int) -> DumpsaverError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        about = f" (about {human(need)} needed)" if need else ""
        return DumpsaverError(
            f"{dest} ran out of space while saving{about}: the dump stays in memory",
            hint="free space there or set dump_dir elsewhere, then run dumpsaver save",
            exit_code=EXIT_NO_SPACE,
        )
    hint = {
        errno.EROFS: "the file system is read-only: remount it read-write or set dump_dir "
        "elsewhere (the sandboxed unit then needs ReadWritePaths= for it in a drop-in), "
        "then run dumpsaver save",
        errno.EIO: "the disk reported an I/O error (see the kernel log): fix or replace it, "
        "or set dump_dir elsewhere, then run dumpsaver save",
    }.get(e.errno or 0, "fix the cause, then run dumpsaver save")
    return DumpsaverError(
        f"cannot write the dump into {dest}: {e.strerror}; the dump stays in memory", hint
    )



# -- save -----------------------------------------------------------------------------


def save(
    cfg: Config,
    cand: Candidate,
    dump: Dump,
    *,
    mem_path: str,
    dest: Path,
    fmt_name: str | None = None,
    keep: bool = False,
    wait: float = 0.0,
    progress: Progress | None = None,
    on_event: Callable[..., None] | None = None,
) -> Result:
    started = time.monotonic()
    event = on_event or (lambda kind, msg, **fields: log.info("%s", msg))
    writer = get(fmt_name or cfg.format)
    h = dump.header
    name = dump_name(h)
    with area_locked(cand, mem_path, wait):
        still_waiting(cand, mem_path)
        dest_fd = ensure_dest(dest)
        try:
            with locked(dest_fd, dest, wait):
                checkpoint("locked")
                return _save_locked(cfg, cand, dump, writer, name, dest, dest_fd, mem_path,
                                    keep=keep, started=started, progress=progress,
                                    event=event)
        finally:
            os.close(dest_fd)


def _save_locked(
    cfg: Config, cand: Candidate, dump: Dump, writer: Writer, name: str, dest: Path,
    dest_fd: int, mem_path: str, *, keep: bool, started: float, progress: Progress | None,
    event: Callable[..., None],
) -> Result:
    h = dump.header
    for other, info in saved_dumps(dest):
        if is_saved_as(info, h):
            event("saved", f"dump {h.dump_id} was already saved as {other}",
                  DUMP_DIR=str(dest / other))
            if not keep:
                release(cand, mem_path)
            return Result(SaveStatus.ALREADY_SAVED, dest / other, info, released=not keep)
    for stale in os.listdir(dest_fd):
        if stale.startswith(TMP_PREFIX):
            log.info("removing %s left by an interrupted save", clean_text(stale, 200))
            try:
                if stat.S_ISDIR(os.lstat(stale, dir_fd=dest_fd).st_mode):
                    rmtree_at(dest_fd, stale)
                else:  # a symlink or file planted under our name: never followed
                    os.unlink(stale, dir_fd=dest_fd)
            except OSError as e:
                raise _space_error(e, dest, 0) from None
    checkpoint("scan")
    scan = writer.prepare(dump)
    need = writer.estimate(dump, scan) + len(dump.meta.dmesg) + 65536
    st = os.statvfs(dest_fd)
    avail = st.f_bavail * st.f_frsize
    if avail < need + cfg.minfree:
        raise DumpsaverError(
            f"not enough space in {dest}: {human(need)} needed + {human(cfg.minfree)} "
            f"minfree, {human(avail)} available; the dump stays in memory",
            hint="free space there, lower minfree, or set dump_dir elsewhere",
            exit_code=EXIT_NO_SPACE,
        )
    tmp = TMP_PREFIX + name
    final = name
    while os.path.lexists(os.path.join(dest, final)):  # another crash at the same second
        final = f"{name}-{os.urandom(4).hex()}" if final != name else f"{name}-{h.dump_id.hex[:8]}"
    try:
        info = _write_dir(dest_fd, tmp, dump, scan, writer, cand, started, final, progress)
        checkpoint("rename")
        os.rename(tmp, final, src_dir_fd=dest_fd, dst_dir_fd=dest_fd)
        checkpoint("fsync-dest")
        os.fsync(dest_fd)
    except OSError as e:
        _remove_quietly(dest_fd, tmp)
        raise _space_error(e, dest, need) from None
    except BaseException:  # any other error (a bug, MemoryError): no .tmp-* left behind
        _remove_quietly(dest_fd, tmp)
        raise
    status = SaveStatus.SAVED if info["complete"] else SaveStatus.INCOMPLETE
    event(str(status), f"saved dump {final} ({human(info['file_size'])}, "
                       f"{'complete' if info['complete'] else 'INCOMPLETE'})",
          DUMP_DIR=str(dest / final), SIZE=int(info["file_size"]))
    checkpoint("release")
    if not keep:
        try:
            gave = release(cand, mem_path)
        except DumpsaverError as e:
            raise DumpsaverError(
                f"saved dump {final}, but could not release the dump area: {e.message}",
                hint="the next dumpsaver save finds the dump already saved and releases it",
            ) from None
        if gave is None:
            event("released", f"released the dump area ({cand.release_action})")
        else:
            event("released", f"released the dump area: gave back {gave.line()}",
                  ONLINED=gave.onlined, MEMTOTAL_BEFORE=gave.mem_total_before or 0,
                  MEMTOTAL_AFTER=gave.mem_total_after or 0)
    checkpoint("retention")
    vacuum(dest, dest_fd, cfg, protect=final)
    return Result(status, dest / final, info, released=not keep)


def _remove_quietly(dest_fd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        rmtree_at(dest_fd, name)


def _write_dir(
    dest_fd: int, tmp: str, dump: Dump, scan: Scan, writer: Writer, cand: Candidate,
    started: float, final: str, progress: Progress | None,
) -> dict[str, Any]:
    os.mkdir(tmp, DIR_MODE, dir_fd=dest_fd)
    checkpoint("mkdir")
    tmp_fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dest_fd)
    try:
        _write_small(tmp_fd, DMESG, clean_text(dump.meta.dmesg, None, keep_newlines=True).encode())
        checkpoint("dmesg")
        fd = _create(tmp_fd, writer.filename)
        try:
            written = writer.write(fd, dump, scan, progress)
            checkpoint("fsync-core")
            os.fsync(fd)
        finally:
            os.close(fd)
        info = build_info(dump, scan, cand=cand, fmt_name=writer.name, file_size=written.size,
                          started=started, name=final)
        info["file"] = writer.filename
        checkpoint("info")
        _write_small(tmp_fd, INFO, json.dumps(info, indent=1).encode() + b"\n")
        checkpoint("fsync-dir")
        os.fsync(tmp_fd)
    finally:
        os.close(tmp_fd)
    return info


# -- to a pipe --------------------------------------------------------------------------


def stream_save(
    cand: Candidate, dump: Dump, fd: int, *, mem_path: str, release_after: bool = False,
    wait: float = 0.0, progress: Progress | None = None,
) -> tuple[Written, Scan]:
    """``dumpsaver save --stdout [--release]``: stream the dump in makedumpfile's flattened
    form, then maybe release it.

    By default the dump stays in memory: a pipe proves nothing about the far side.
    With ``release_after`` the dump is released only after the last byte was written
    (and fsynced, when ``fd`` is a regular file); any error before that leaves it in
    memory.
    """
    with area_locked(cand, mem_path, wait):
        still_waiting(cand, mem_path)
        written, scan = flat.stream(dump, fd, progress)
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fsync(fd)
        if release_after:
            release(cand, mem_path)
    return written, scan


def open_dump(cand: Candidate, mem_path: str, *, force: bool = False) -> tuple[PhysMem, Dump]:
    """Open the dump of ``cand``; raises NoDumpError / AlreadySavedError / FormatError."""
    checkpoint("locate")
    mem = open_area(cand, mem_path)
    try:
        dump = Dump(mem, cand.header, force=force, ram_end=cand.ram_end)
    except BaseException:
        mem.close()
        raise
    checkpoint("header")
    return mem, dump
