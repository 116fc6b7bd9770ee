"""The status model: what ``dumpsaver status`` and ``list`` show, gathered from the
dump areas, the saved dumps, the disk, the memory, the state and systemd.

Read-only but for one thing: the self-test's first verdict replaces its record
(dumpsaver.selftest).  Every string that came from a dump is escaped here.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dumpsaver import arm, hotplug, pmem, restart, selftest, state
from dumpsaver.boot import Where
from dumpsaver.catalogue import saved_dumps
from dumpsaver.config import Config
from dumpsaver.errors import DumpsaverError, Exit, NoPermissionError
from dumpsaver.locate import LocateMethod
from dumpsaver.sanitize import clean_text
from dumpsaver.save import open_dump
from dumpsaver.sizes import human


@dataclass
class SavedDump:
    """One saved dump as status and list show it (every string escaped)."""

    id: str
    crash_time: Any
    panic: str
    size: Any  # info.json's file_size: an int unless the file was tampered with
    complete: Any
    format: Any
    kernel: str = ""  # the crashed kernel's release
    host: str = ""
    save_time: Any = None
    dropped_at_panic: int = 0  # selected pages the panic side had no room for
    saved_pages: int = 0
    incomplete_reasons: list[str] = field(default_factory=list)
    dump_id: str = ""


@dataclass
class Area:
    method: str
    source: str
    ranges: list[list[int]]
    header: int
    release: str  # what releasing it does
    dump: str = "waiting"  # or why there is none (escaped)
    size: int = 0  # bytes in all its ranges
    access: str = ""  # how it is read: /dev/mem, /dev/pmemN, /dev/daxN.M (memmap=!)
    # memmap=!: bytes of the dump range online as movable RAM now (None: not memmap=!),
    # and the memory blocks of it that are not
    given_back: int | None = None
    not_movable: list[str] = field(default_factory=list)
    advice: str | None = None  # memmap=! that would give more back
    mem_total: int | None = None  # memmap=!: MemTotal now (bytes), given_back included


@dataclass
class Waiting:
    dump_id: str
    crash_time: str
    panic: str
    bytes_in_memory: int
    pages: int
    memory_bytes: int
    truncated_at_panic: bool
    crash_ts: float = 0.0  # seconds since the epoch
    dropped_at_panic: int = 0


@dataclass
class Memory:
    total_bytes: int
    dump_area_bytes: int  # the areas found, reserved while a dump waits
    dump_area_share: float | None


@dataclass
class Filesystem:
    free_bytes: int
    fstype: str | None
    device: str | None
    mountpoint: str | None


@dataclass
class Selftest:
    ok: bool
    verdict: str
    result: str
    dump_id: str
    judged_at: str | None


@dataclass
class Status:
    config: str
    dump_dir: str
    areas: list[Area] = field(default_factory=list)
    waiting: Waiting | None = None
    memory: Memory | None = None
    boot_time: str = ""
    boot_ts: float = 0.0
    dumps: list[SavedDump] = field(default_factory=list)
    free_bytes: int | None = None
    filesystem: Filesystem | None = None
    minfree: int = 0
    failed_attempts: dict[str, Any] | None = None  # state.json as recorded
    max_attempts: int = 0
    restart: str = ""
    selftest: Selftest | None = None
    unit: dict[str, Any] | None = None  # restart.unit_last_run()
    locate_error: str | None = None
    # The panic-side module's state (arm.ArmedState as a dict; status --json "armed"),
    # and whether it counts in the verdict: only an area that is not the kernel's own
    # mcore interface (memmap=, a configured region) needs the module to catch a crash.
    panic_side: dict[str, Any] | None = None
    needs_module: bool = False
    verdict: str = ""  # "ready to catch a crash", or what stands in the way
    verdict_exit: int = 0  # dumpsaver status's exit code (errors.Exit)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["armed"] = out.pop("panic_side")
        if out["locate_error"] is None:
            del out["locate_error"]
        return out


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def summary(name: str, info: dict[str, Any]) -> SavedDump:
    kernel, pages = info.get("kernel"), info.get("pages")
    kernel = kernel if isinstance(kernel, dict) else {}
    pages = pages if isinstance(pages, dict) else {}
    reasons = info.get("incomplete_reasons")
    return SavedDump(clean_text(name, 200), info.get("crash_time"),
                     clean_text(str(info.get("panic", "")), 300), info.get("file_size"),
                     info.get("complete"), info.get("format"),
                     clean_text(str(kernel.get("release", "")), 65),
                     clean_text(str(kernel.get("nodename", "")), 65), info.get("save_time"),
                     _int(pages.get("dropped_at_panic")), _int(pages.get("saved")),
                     [clean_text(str(r), 300) for r in reasons]
                     if isinstance(reasons, list) else [],
                     clean_text(str(info.get("dump_id", "")), 100))


def judge(s: Status) -> tuple[Exit, str]:
    """status's verdict: will a crash be caught?  The first that applies wins."""
    fa = s.failed_attempts or {}
    count = fa.get("count")
    if s.waiting is not None and isinstance(count, int) and count >= s.max_attempts \
            and fa.get("dump_id") == s.waiting.dump_id:
        return Exit.GAVE_UP, (f"gave up saving dump {s.waiting.dump_id} after {count} "
                              "failed attempts; it stays in memory")
    if s.waiting is not None:
        return Exit.DUMP_WAITING, f"dump {s.waiting.dump_id} is waiting to be saved"
    if not s.areas:
        return Exit.NOT_READY, "NOT ready: no dump area, a crash would not be caught"
    if s.needs_module and s.panic_side is not None and not s.panic_side["armed"]:
        return Exit.NOT_ARMED, "NOT ready: the kernel side is not armed"
    size = sum(a.size for a in s.areas)
    return Exit.OK, f"ready to catch a crash ({human(size)} dump area)"


def saved(dest: Path) -> list[SavedDump]:
    return [summary(n, i) for n, i in saved_dumps(dest)]


def filesystem(path: Path) -> Filesystem | None:
    """Free space and the file system holding ``path`` (None when it does not exist)."""
    import psutil  # here, not at the top: every save imports this module (10 ms)

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
        return Filesystem(free, None, None, None)
    return Filesystem(free, best.fstype, best.device, best.mountpoint)


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def collect(cfg: Config, where: Where) -> Status:
    import psutil  # as in filesystem()

    out = Status(cfg.source, str(where.dest))
    try:
        cands = where.candidates(cfg)
    except DumpsaverError as e:
        cands = []
        out.locate_error = e.message
    for cand in cands:
        area = Area(cand.method, cand.source, [[r.start, r.end] for r in cand.ranges],
                    cand.header, cand.release_action,
                    size=sum(r.end - r.start for r in cand.ranges),
                    access=cand.device_note)
        if cand.pmem is not None:
            try:
                area.given_back, area.not_movable = hotplug.movable_state(cand.pmem)
                p = cand.pmem
                area.mem_total = pmem.mem_total(p.paths.meminfo)
                area.advice = pmem.advice(p.span, p.dump if p.dax else None, p.block_size) \
                    if p.dax is not None else None
            except DumpsaverError as e:
                area.given_back, area.not_movable = 0, [clean_text(e.message, 300)]
        try:
            mem, dump = open_dump(cand, where.mem)
        except NoPermissionError:
            raise  # refused: never "no dump"
        except DumpsaverError as e:
            area.dump = clean_text(e.message, 300)
        else:
            with mem:
                h = dump.header
                if out.waiting is None:
                    out.waiting = Waiting(
                        str(h.dump_id), _utc(h.crash_time_ns / 1e9),
                        clean_text(dump.meta.panic, 300), h.dir_offset + h.dir_bytes,
                        h.nr_entries, h.mem_pages * h.page_size, h.truncated,
                        h.crash_time_ns / 1e9, h.nr_dropped,
                    )
        out.areas.append(area)
    total = psutil.virtual_memory().total
    # memmap=! memory given back is RAM again: only what is still held counts
    reserved = sum(r.end - r.start for c in cands for r in c.ranges) \
        - sum(a.given_back or 0 for a in out.areas)
    out.memory = Memory(total, reserved, round(reserved / total, 6) if total else None)
    out.boot_ts = psutil.boot_time()
    out.boot_time = _utc(out.boot_ts)
    found = saved_dumps(where.dest)  # read once: listed here, judged by the self-test below
    out.dumps = [summary(n, i) for n, i in found]
    out.filesystem = filesystem(where.dest)
    out.free_bytes = out.filesystem.free_bytes if out.filesystem else None
    out.minfree = cfg.minfree
    out.failed_attempts = state.load(where.state_dir) or None
    out.max_attempts = cfg.max_attempts
    out.restart = cfg.restart
    v = selftest.report(where.state_dir, [(where.dest / n, i) for n, i in found])
    if v is not None:
        out.selftest = Selftest(v.ok, str(v.result), v.text, v.dump_id, v.time or None)
    out.panic_side = arm.armed_state(estimate=True).as_dict()
    out.needs_module = any(c.method != LocateMethod.SYSFS for c in cands)
    try:
        out.unit = restart.unit_last_run()
    except Exception:  # no systemd here, or an old pystemd: status still works
        out.unit = None
    exit_code, out.verdict = judge(out)
    out.verdict_exit = int(exit_code)
    return out


def crash_ts(d: SavedDump) -> float | None:
    """A saved dump's crash time in seconds since the epoch (None if info.json has none)."""
    try:
        return datetime.fromisoformat(str(d.crash_time)).timestamp()
    except ValueError:
        return None


def select(dumps: list[SavedDump], match: str | None = None, *, since: float | None = None,
           until: float | None = None) -> list[SavedDump]:  # fmt: skip
    """The saved dumps a person asked for, oldest first: ``match`` is ``latest``, a prefix
    of the name, or a dump id; ``since``/``until`` bound the crash time."""
    out = [d for d in dumps
           if (since is None or (crash_ts(d) or 0) >= since)
           and (until is None or (crash_ts(d) or 0) <= until)]
    if match is None:
        return out
    if match == "latest":
        return out[-1:]
    return [d for d in out if d.id.startswith(match) or d.dump_id == match]
