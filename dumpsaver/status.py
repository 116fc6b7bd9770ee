"""The status model: what ``dumpsaver status`` and ``list`` show, gathered from the
dump areas, the saved dumps, the disk, the memory, the state and systemd.

Read-only but for one thing: the self-test's first verdict replaces its record
(dumpsaver.selftest).  Every string that came from a dump is escaped here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil

from dumpsaver import restart, selftest, state
from dumpsaver.boot import Where
from dumpsaver.catalogue import saved_dumps
from dumpsaver.config import Config
from dumpsaver.errors import DumpsaverError
from dumpsaver.sanitize import clean_text
from dumpsaver.save import open_dump


def summary(name: str, info: dict[str, Any]) -> dict[str, Any]:
    """One saved dump as status and list show it (every string escaped)."""
    return {"id": clean_text(name, 200), "crash_time": info.get("crash_time"),
            "panic": clean_text(str(info.get("panic", "")), 300), "size": info.get("file_size"),
            "complete": info.get("complete"), "format": info.get("format")}


def saved(dest: Path) -> list[dict[str, Any]]:
    return [summary(n, i) for n, i in saved_dumps(dest)]


def filesystem(path: Path) -> dict[str, Any] | None:
    """Free space and the file system holding ``path`` (None when it does not exist)."""
    try:
        free = psutil.disk_usage(str(path)).free
    except OSError:
        return None
    real = os.path.realpath(path)
    best = None
    for part in psutil.disk_partitions(all=True):
        mp = part.mountpoint
        if (real == mp or real.startswith(mp.rstrip("/") + "/")) and (
            best is None or len(mp) > len(best.mountpoint)
        ):
            best = part
    if best is None:
        return {"free_bytes": free, "fstype": None, "device": None, "mountpoint": None}
    return {"free_bytes": free, "fstype": best.fstype, "device": best.device,
            "mountpoint": best.mountpoint}


def collect(cfg: Config, where: Where) -> dict[str, Any]:
    out: dict[str, Any] = {"config": cfg.source, "dump_dir": str(where.dest)}
    areas = []
    waiting: dict[str, Any] | None = None
    try:
        cands = where.candidates(cfg)
    except DumpsaverError as e:
        cands = []
        out["locate_error"] = e.message
    for cand in cands:
        entry: dict[str, Any] = {
            "method": cand.method, "source": cand.source,
            "ranges": [[r.start, r.end] for r in cand.ranges], "header": cand.header,
            "release": cand.release_action,
        }
        try:
            mem, dump = open_dump(cand, where.mem)
        except DumpsaverError as e:
            entry["dump"] = clean_text(e.message, 300)
        else:
            with mem:
                h = dump.header
                entry["dump"] = "waiting"
                if waiting is None:
                    waiting = {
                        "dump_id": str(h.dump_id),
                        "crash_time": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                    time.gmtime(h.crash_time_ns / 1e9)),
                        "panic": clean_text(dump.meta.panic, 300),
                        "bytes_in_memory": h.dir_offset + h.dir_bytes,
                        "pages": h.nr_entries,
                        "memory_bytes": h.mem_pages * h.page_size,
                        "truncated_at_panic": h.truncated,
                    }
        areas.append(entry)
    out["areas"] = areas
    out["waiting"] = waiting
    total = psutil.virtual_memory().total
    reserved = sum(r.end - r.start for c in cands for r in c.ranges)
    out["memory"] = {"total_bytes": total, "dump_area_bytes": reserved,
                     "dump_area_share": round(reserved / total, 6) if total else None}
    out["boot_time"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(psutil.boot_time()))
    found = saved_dumps(where.dest)  # read once: listed here, judged by the self-test below
    out["dumps"] = [summary(n, i) for n, i in found]
    fs = filesystem(where.dest)
    out["free_bytes"] = fs["free_bytes"] if fs else None
    out["filesystem"] = fs
    out["minfree"] = cfg.minfree
    out["failed_attempts"] = state.load(where.state_dir) or None
    out["max_attempts"] = cfg.max_attempts
    out["restart"] = cfg.restart
    v = selftest.report(where.state_dir, [(where.dest / n, i) for n, i in found])
    out["selftest"] = None if v is None else {
        "ok": v.ok, "verdict": str(v.result), "result": v.text, "dump_id": v.dump_id,
        "judged_at": v.time or None,
    }
    out["unit"] = None
    try:
        out["unit"] = restart.unit_last_run()
    except Exception:  # no systemd here, or an old pystemd: status still works
        out["unit"] = None
    return out
