"""The catalogue of saved dumps: their names, their identity, their info.json.

A saved dump is a directory ``<crash time>-<boot id>`` in the dump directory with
``info.json`` beside the core; whatever else is there (``.tmp-*`` of an
interrupted save, the lock file) is not a dump.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dumpsaver import format as fmt

INFO = "info.json"
DMESG = "dmesg.txt"
TMP_PREFIX = ".tmp-"


def dump_name(h: fmt.Header) -> str:
    """``<crash time>-<boot id>``: both from numbers, so always a safe file name."""
    t = datetime.fromtimestamp(h.crash_time_ns / 1e9, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{t}-{h.boot_id.hex}"


def identity(h: fmt.Header) -> str:
    """What tells one crash from another: the dump id, the crash time, and the header's
    own CRC (over sizes, counts and the meta data's CRC: the panic string and log).

    The dump id alone is not enough: a writer may repeat it (the simulator does for the
    same seed), and a different crash under a saved dump's id must still be saved."""
    return f"{h.dump_id}/{h.crash_time_ns}/{h.encode()[-fmt.CRC.size :].hex()}"


def is_saved_as(info: dict[str, Any], h: fmt.Header) -> bool:
    """Does the saved dump described by ``info`` hold the dump of header ``h``?"""
    if "identity" in info:
        return bool(info["identity"] == identity(h))
    # info.json written before the identity was recorded: id and crash time must agree
    crash = datetime.fromtimestamp(h.crash_time_ns / 1e9, UTC).isoformat()
    return info.get("dump_id") == str(h.dump_id) and info.get("crash_time") == crash


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
