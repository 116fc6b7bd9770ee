"""The saver: from a located dump to a durable directory in /var/dumps, then release.

Order of events (nothing is released until the copy is durable):

    lock dest -> open dump -> already saved? -> scan (pass one) -> space check
    -> write .tmp-ID/{vmcore,dmesg.txt,info.json} -> fsync files and dir
    -> rename to ID -> fsync dest -> release (invalidate header; sysfs release)
    -> retention (delete the oldest beyond the limits)

A rerun after an interruption at any point finds either a complete ID
directory (and only releases) or a stale .tmp-* (and removes it, then saves).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dumpsaver import format as fmt
from dumpsaver.config import Config
from dumpsaver.decode import Dump, Scan
from dumpsaver.errors import (
    EXIT_BUSY,
    EXIT_NO_SPACE,
    DumpsaverError,
    FormatError,
)
from dumpsaver.locate import Candidate
from dumpsaver.physmem import PhysMem
from dumpsaver.sanitize import clean_text
from dumpsaver.sizes import human
from dumpsaver.writers import Progress, get

log = logging.getLogger("dumpsaver")

TMP_PREFIX = ".tmp-"
INFO = "info.json"
DMESG = "dmesg.txt"
UPLOADED = "uploaded.json"  # written by dumpsaver upload once a target confirmed the dump
DIR_MODE = 0o700
FILE_MODE = 0o600


def checkpoint(name: str) -> None:
    """Fault injection for the interruption tests: DUMPSAVER_KILL_AT=name[:n] makes the
    process SIGKILL itself the n-th time (default 1st) it passes ``name``."""
    spec = os.environ.get("DUMPSAVER_KILL_AT")
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_hits: dict[str, int] = {}


def dump_name(h: fmt.Header) -> str:
    """``<crash time>-<boot id>``: both from numbers, so always a safe file name."""
    t = datetime.fromtimestamp(h.crash_time_ns / 1e9, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{t}-{h.boot_id.hex}"


@dataclass
class Result:
    status: str  # "saved", "incomplete", "already-saved", "none"
    dump_dir: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    released: bool = False


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
            raise DumpsaverError(
                f"cannot create {dest}: {e.strerror}",
                hint="is the file system read-only? (a dump_dir outside /var/dumps needs "
                "ReadWritePaths= in a drop-in for the sandboxed unit)"
                if e.errno == errno.EROFS else None,
            ) from None
        st = os.lstat(dest)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise DumpsaverError(f"{dest} is not a directory (symlinks are not followed)")
    if st.st_uid != os.geteuid():
        raise DumpsaverError(
            f"{dest} is owned by uid {st.st_uid}, not by us: refusing to write there",
            hint=f"chown root:root {dest} && chmod 700 {dest}",
        )
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.fchmod(fd, DIR_MODE)
    return fd


@contextlib.contextmanager
def locked(dest_fd: int, dest: Path, wait: float) -> Iterator[None]:
    try:
        fd = os.open(".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                     dir_fd=dest_fd)
    except OSError as e:  # a read-only or full /var, a symlink planted as .lock
        raise _space_error(e, dest, 0) from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DumpsaverError(
                        f"another dumpsaver is saving into {dest}",
                        hint="wait for it to finish (dumpsaver save --wait SECONDS)",
                        exit_code=EXIT_BUSY,
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


def read_info(dest_fd: int, name: str) -> dict[str, Any] | None:
    try:
        fd = os.open(f"{name}/{INFO}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dest_fd)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            data = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def saved_dumps(dest: Path) -> list[tuple[str, dict[str, Any]]]:
    """Saved dump directories with their info, oldest first (by crash time)."""
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        out = []
        for name in sorted(os.listdir(fd)):
            if name.startswith("."):
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            info = read_info(fd, name)
            if info is not None:
                out.append((name, info))
        out.sort(key=lambda x: (str(x[1].get("crash_time", "")), str(x[1].get("save_time", "")),
                                x[0]))
        return out
    finally:
        os.close(fd)


def _rmtree_at(dest_fd: int, name: str) -> None:
    """Remove dest/name without following symlinks (shutil.rmtree is symlink-safe with fds)."""
    shutil.rmtree(name, dir_fd=dest_fd)


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


# -- the dump's identity and report ---------------------------------------------------


def build_info(
    dump: Dump, scan: Scan, *, cand: Candidate, fmt_name: str, file_size: int, started: float,
    name: str,
) -> dict[str, Any]:
    h, m = dump.header, dump.meta
    reasons = []
    if h.truncated:
        reasons.append(
            f"the panic side ran out of dump space: {h.nr_dropped} selected pages were not saved"
        )
    if scan.nr_damaged:
        reasons.append(f"{scan.nr_damaged} damaged pages were left out")
    if not dump.header_ok:
        reasons.append(
            "the dump header failed its checksum and was accepted with --force: its counts "
            "may be wrong, pages may be missing"
        )
    if not dump.meta_ok:
        reasons.append("the meta data (panic string, registers, log) failed its checksum")
    excluded = {c.label: h.class_pages[c] for c in fmt.PageClass if c in h.excluded}
    return {
        "id": name,
        "dump_id": str(h.dump_id),
        "complete": not reasons,
        "incomplete_reasons": reasons,
        "panic": clean_text(m.panic, 4096),
        "crash_time": datetime.fromtimestamp(h.crash_time_ns / 1e9, UTC).isoformat(),
        "save_time": datetime.now(UTC).isoformat(),
        "boot_id": str(h.boot_id),
        "kernel": {k: clean_text(v, 65) for k, v in m.uts.items()},
        "format": fmt_name,
        "file": "vmcore",
        "file_size": file_size,
        "memory_bytes": h.mem_pages * h.page_size,
        "page_size": h.page_size,
        "codec": h.codec.label,
        "dump_bytes_in_memory": h.dir_offset + h.dir_bytes,
        "pages": {
            "saved": scan.good,
            "zero": scan.zero,
            "damaged": scan.nr_damaged,
            "dropped_at_panic": h.nr_dropped,
            "excluded_by_class": excluded,
        },
        "damage": dict(scan.damaged),
        "damaged_pfns_sample": scan.damaged_pfns,
        "found_by": cand.method,
        "duration_s": round(time.monotonic() - started, 3),
        "cpus": len(m.prstatus),
    }


# -- release --------------------------------------------------------------------------


def release(cand: Candidate, mem_path: str) -> None:
    """Invalidate the header in memory, then hand the pages back (sysfs)."""
    with PhysMem(mem_path, cand.ranges, writable=True) as mem:
        mem.write(cand.header, fmt.SAVED_MAGIC)
        if os.path.isfile(mem_path):  # an image file in tests; /dev/mem needs no fsync
            try:
                os.fsync(mem.fd)
            except OSError as e:
                raise DumpsaverError(
                    f"cannot invalidate the dump header in {mem_path}: {e.strerror}"
                ) from None
    checkpoint("release-sysfs")
    release_sysfs(cand)


def release_sysfs(cand: Candidate) -> None:
    """Hand the pages back to the kernel (sysfs ``release``); a no-op without one.

    Also called for a dump whose header is already invalidated: a save interrupted
    between invalidating the header and this write must still free the memory."""
    if cand.release is not None:
        try:
            with open(cand.release, "w") as f:
                f.write("1\n")
        except OSError as e:
            raise DumpsaverError(
                f"cannot release the dump via {cand.release}: {e.strerror}"
            ) from None


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
    dest_fd = ensure_dest(dest)
    try:
        with locked(dest_fd, dest, wait):
            checkpoint("locked")
            for other, info in saved_dumps(dest):
                if info.get("dump_id") == str(h.dump_id):
                    event("saved", f"dump {h.dump_id} was already saved as {other}",
                          DUMP_DIR=str(dest / other))
                    if not keep:
                        release(cand, mem_path)
                    return Result("already-saved", dest / other, info, released=not keep)
            for stale in os.listdir(dest_fd):
                if stale.startswith(TMP_PREFIX):
                    log.info("removing %s left by an interrupted save", clean_text(stale, 200))
                    try:
                        if stat.S_ISDIR(os.lstat(stale, dir_fd=dest_fd).st_mode):
                            _rmtree_at(dest_fd, stale)
                        else:  # a symlink or file planted under our name: never followed
                            os.unlink(stale, dir_fd=dest_fd)
                    except OSError as e:
                        raise _space_error(e, dest, 0) from None
            checkpoint("scan")
            scan = dump.scan()
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
            if os.path.lexists(os.path.join(dest, final)):
                final = f"{name}-{h.dump_id.hex[:8]}"
            try:
                info = _write_dir(dest_fd, tmp, dump, scan, writer, cand, started, final,
                                  progress)
                checkpoint("rename")
                os.rename(tmp, final, src_dir_fd=dest_fd, dst_dir_fd=dest_fd)
                checkpoint("fsync-dest")
                os.fsync(dest_fd)
            except OSError as e:
                with contextlib.suppress(OSError):
                    _rmtree_at(dest_fd, tmp)
                raise _space_error(e, dest, need) from None
            status = "saved" if info["complete"] else "incomplete"
            event(status, f"saved dump {final} ({human(info['file_size'])}, "
                          f"{'complete' if info['complete'] else 'INCOMPLETE'})",
                  DUMP_DIR=str(dest / final), SIZE=int(info["file_size"]))
            checkpoint("release")
            if not keep:
                try:
                    release(cand, mem_path)
                except DumpsaverError as e:
                    raise DumpsaverError(
                        f"saved dump {final}, but could not release the dump area: {e.message}",
                        hint="the next dumpsaver save finds the dump already saved and "
                        "releases it",
                    ) from None
                event("released", f"released the dump area ({cand.release_action})")
            checkpoint("retention")
            vacuum(dest, dest_fd, cfg, protect=final)
            return Result(status, dest / final, info, released=not keep)
    finally:
        os.close(dest_fd)


def _write_dir(
    dest_fd: int, tmp: str, dump: Dump, scan: Scan, writer: Any, cand: Candidate,
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


def vacuum(dest: Path, dest_fd: int, cfg: Config, protect: str) -> list[str]:
    """Delete the oldest saved dumps until keep_dumps and max_use hold (never ``protect``)."""
    dumps = saved_dumps(dest)
    sizes = {n: _du(dest_fd, n) for n, _ in dumps}
    removed = []
    while dumps:
        over_count = cfg.keep_dumps and len(dumps) > cfg.keep_dumps
        over_size = cfg.max_use and sum(sizes[n] for n, _ in dumps) > cfg.max_use
        if not (over_count or over_size):
            break
        victim = next((n for n in retention_order(dest_fd, [n for n, _ in dumps])
                       if n != protect), None)
        if victim is None:
            break
        log.info("retention: removing old dump %s", victim)
        # Out of sight first (atomically), then delete: an interrupted deletion leaves a
        # .tmp-* the next run removes, never a dump with some of its files gone.
        doomed = f"{TMP_PREFIX}old-{victim}"
        try:
            os.rename(victim, doomed, src_dir_fd=dest_fd, dst_dir_fd=dest_fd)
            checkpoint("retention-delete")
            _rmtree_at(dest_fd, doomed)
        except OSError as e:  # the new dump is saved: a failed cleanup is only a warning
            log.warning("retention: cannot remove %s: %s", victim, e.strerror)
            break
        removed.append(victim)
        dumps = [(n, i) for n, i in dumps if n != victim]
    return removed


def retention_order(dest_fd: int, names: list[str]) -> list[str]:
    """The order in which retention deletes: dumps a store holds in full (their
    uploaded.json says so) before those that exist only here; oldest first within
    each (``names`` is oldest first)."""
    def uploaded(name: str) -> bool:
        try:
            fd = os.open(f"{name}/{UPLOADED}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=dest_fd)
            with os.fdopen(fd, "rb") as f:
                targets = json.loads(f.read(1 << 20)).get("targets", {})
            return any(t.get("mode") == "full" for t in targets.values())
        except (OSError, ValueError, AttributeError):
            return False

    return sorted(names, key=lambda n: not uploaded(n))  # stable: age order kept


def _du(dest_fd: int, name: str) -> int:
    total = 0
    with contextlib.suppress(OSError):
        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dest_fd)
        try:
            for f in os.listdir(sub):
                st = os.stat(f, dir_fd=sub, follow_symlinks=False)
                total += st.st_blocks * 512
        finally:
            os.close(sub)
    return total


def open_dump(cand: Candidate, mem_path: str, *, force: bool = False) -> tuple[PhysMem, Dump]:
    checkpoint("locate")
    mem = PhysMem(mem_path, cand.ranges)
    try:
        dump = Dump(mem, cand.header, force=force)
    except FormatError:
        mem.close()
        raise
    checkpoint("header")
    return mem, dump
