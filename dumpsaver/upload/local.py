"""The local side of an upload: which saved dumps are still to send, their panic
signature, the lock, the ``uploaded.json`` marker, and deleting a dump once sent.

The marker lives in the dump's own directory, so it goes wherever the dump goes
and retention (retention.retention_order) sees it: ``uploaded.json`` maps each target's
URL to what it holds ("full", or "summary": info.json and dmesg.txt only).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dumpsaver import catalogue, retention, save
from dumpsaver.errors import EXIT_BUSY, DumpsaverError
from dumpsaver.sanitize import clean_text

log = logging.getLogger("dumpsaver")

MARKER = catalogue.UPLOADED
LOCK = "upload.lock"


@dataclass(frozen=True)
class LocalDump:
    name: str  # the directory name: <crash time>-<boot id>
    dir: Path
    info: dict[str, Any]

    @property
    def vmcore(self) -> Path:
        return self.dir / str(self.info.get("file") or "vmcore")

    @property
    def dmesg(self) -> Path:
        return self.dir / catalogue.DMESG

    @property
    def release(self) -> str:
        kernel = self.info.get("kernel")
        rel = kernel.get("release", "") if isinstance(kernel, dict) else ""
        return clean_text(str(rel), 65) or "unknown"

    def dmesg_text(self) -> str:
        try:
            with open(self.dmesg, "rb") as f:
                return f.read(4 << 20).decode(errors="replace")
        except OSError:
            return ""

    def signature(self) -> tuple[str, str]:
        return panic_signature(str(self.info.get("panic", "")), self.dmesg_text())


# -- the panic signature -------------------------------------------------------------

_HEX = re.compile(r"\b(0x)?[0-9a-f]{6,}\b|0x[0-9a-f]+")
_NUM = re.compile(r"\d+")
_RIP = re.compile(r"\b(?:RIP|PC is at|pc :|NIP)[: ]\s*(?:[0-9a-f]{4}:)?\[?<?([A-Za-z_][\w.]*)\+0x")


def panic_signature(panic: str, dmesg: str = "") -> tuple[str, str]:
    """(16 hex digits, the text they stand for): the panic message with addresses,
    numbers, CPUs and PIDs taken out, and the function the crash happened in (the
    first RIP/PC line of the log).  Two machines hit by the same bug share it."""
    text = _NUM.sub("N", _HEX.sub("X", panic.strip().lower()))
    text = " ".join(text.split())[:300]
    m = _RIP.search(dmesg)
    if m:
        text += f" at {m.group(1)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16], text


def host_name(configured: str) -> str:
    name = configured or socket.gethostname().split(".")[0]
    safe = re.sub(r"[^A-Za-z0-9.-]", "_", name)[:63].strip(".")
    return safe or "unknown"


# -- which dumps wait ------------------------------------------------------------------


def read_marker(dump_dir: Path) -> dict[str, Any]:
    try:
        fd = os.open(dump_dir / MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as f:
            data = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return {}
    targets = data.get("targets") if isinstance(data, dict) else None
    return targets if isinstance(targets, dict) else {}


def load_json(path: Path) -> dict[str, Any]:
    """A small JSON state file; {} when missing or damaged (then the work is redone)."""
    try:
        data = json.loads(path.read_bytes()[: 1 << 22])
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def saved(dest: Path) -> list[LocalDump]:
    return [LocalDump(n, dest / n, i) for n, i in catalogue.saved_dumps(dest)]


def pending(dest: Path, urls: dict[str, str]) -> list[tuple[LocalDump, list[str]]]:
    """Saved dumps (oldest first) with the targets that do not hold them yet.

    ``urls`` maps a target's name to its URL for a dump name with ``{name}`` in it."""
    out = []
    for d in saved(dest):
        have = read_marker(d.dir)
        missing = [t for t, url in urls.items() if url.format(name=d.name) not in have]
        if missing:
            out.append((d, missing))
    return out


# -- the lock, the marker, deleting ----------------------------------------------------


@contextlib.contextmanager
def upload_lock(state_dir: Path) -> Iterator[None]:
    """One uploader at a time (a timer run and one by hand would send every part twice)."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(state_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as e:
        raise DumpsaverError(f"cannot open the upload lock in {state_dir}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DumpsaverError("another dumpsaver upload is running",
                                 hint="it sends what is left; see dumpsaver upload --check",
                                 exit_code=EXIT_BUSY) from None
        yield
    finally:
        os.close(fd)


def mark(dest: Path, name: str, url: str, record: dict[str, Any]) -> bool:
    """Record that ``url`` holds dump ``name`` (durably); False if the dump is gone
    (retention removed it while it was being sent: the store has it anyway)."""
    dest_fd = save.ensure_dest(dest)
    try:
        with save.locked(dest_fd, dest, wait=60):
            try:
                dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=dest_fd)
            except FileNotFoundError:
                return False
            try:
                targets = read_marker(dest / name)
                targets[url] = {**record, "time": datetime.now(UTC).isoformat()}
                tmp = MARKER + ".tmp"
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dfd)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=dfd)
                with os.fdopen(fd, "w") as f:
                    json.dump({"targets": targets}, f, indent=1)
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(tmp, MARKER, src_dir_fd=dfd, dst_dir_fd=dfd)
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        os.close(dest_fd)
    return True


def delete(dest: Path, name: str) -> None:
    """Delete a dump that every target holds in full: out of sight first (a .tmp-*
    the next save removes), then its files; under the dump directory's lock."""
    dest_fd = save.ensure_dest(dest)
    try:
        with save.locked(dest_fd, dest, wait=60):
            doomed = f"{catalogue.TMP_PREFIX}uploaded-{name}"
            try:
                os.rename(name, doomed, src_dir_fd=dest_fd, dst_dir_fd=dest_fd)
                retention.rmtree_at(dest_fd, doomed)
                os.fsync(dest_fd)
            except FileNotFoundError:
                return
            except OSError as e:
                log.warning("uploaded dump %s not deleted: %s", name, e.strerror)
    finally:
        os.close(dest_fd)


def store_info(d: LocalDump, host: str, mode: str, **extra: Any) -> bytes:
    """The info.json that goes to the store: the local one and where it came from."""
    sig, text = d.signature()
    up = {"host": host, "kernel_release": d.release, "signature": sig, "signature_text": text,
          "mode": mode, "uploaded": datetime.now(UTC).isoformat(), **extra}
    return json.dumps({**d.info, "upload": up}, indent=1).encode() + b"\n"
