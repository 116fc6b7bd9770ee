"""The catalogue of saved dumps: their names, their identity, their info.json (what
is written there: build_info; what is read back: saved_dumps).

A saved dump is a directory ``<crash time>-<boot id>`` in the dump directory with
``info.json`` beside the core; whatever else is there (``.tmp-*`` of an
interrupted save, the lock file) is not a dump.
"""

from __future__ import annotations

import json
import os
import resource
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dumpsaver import format as fmt
from dumpsaver.decode import Dump, Scan
from dumpsaver.errors import NoPermissionError
from dumpsaver.locate import Candidate
from dumpsaver.sanitize import clean_text

INFO = "info.json"
DMESG = "dmesg.txt"
UPLOADED = "uploaded.json"  # written by dumpsaver upload once a target confirmed the dump
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
    except PermissionError as e:
        raise NoPermissionError(f"{name}/{INFO}", e) from None
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
    except PermissionError as e:  # refused, never "no saved dumps"
        raise NoPermissionError(str(dest), e) from None
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
        "identity": identity(h),
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
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "cpus": len(m.prstatus),
    }
