"""Interruption campaign: SIGKILL the saver at a point, rerun it, judge the result.

The kill points are dumpsaver.faults.checkpoint() names (DUMPSAVER_KILL_AT=name[:n]); the
saver runs in a forked child (``dumpsaver save`` through cli.main, exactly as the
command line does, without paying for a new interpreter per run) or, for timed
kills, as a real subprocess killed after a random delay.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dumpsaver import format as fmt
from dumpsaver.errors import DumpsaverError

from .harness import Sim, read_elf_pages

#: Every checkpoint of a successful save, in the order they are passed.
PHASES = (
    "locate", "header", "locked", "scan", "mkdir", "dmesg", "write-page", "fsync-core",
    "info", "fsync-dir", "rename", "fsync-dest", "release", "release-sysfs", "retention",
    "state-clear",
)


def save_argv(m: Sim, dest: Path, state: Path, config: Path, *,
              locate: str = "sysfs") -> list[str]:  # fmt: skip
    """``locate="memmap"``: find the dump through memmap= and /proc/iomem files written
    next to the machine instead of sysfs (no release attribute: the header is the
    only thing released)."""
    if locate == "memmap":
        a = m.area[0]
        cmdline, iomem = m.dir / "cmdline", m.dir / "iomem"
        cmdline.write_text(f"root=/dev/vda memmap={a.end - a.start}${a.start:#x}\n")
        top = m.manifest["memory"]  # RAM goes on above the reservation, as on a machine
        iomem.write_text(f"00000000-{a.start - 1:08x} : System RAM\n"
                         f"{a.start:08x}-{a.end - 1:08x} : Reserved\n"
                         f"{a.end:08x}-{top - 1:08x} : System RAM\n")  # fmt: skip
        where = ["--sysfs", str(m.dir / "no-sysfs"), "--cmdline", str(cmdline),
                 "--iomem", str(iomem)]  # fmt: skip
    else:
        where = ["--sysfs", str(m.sysfs), "--cmdline", "/dev/null"]
    return ["--config", str(config), "save", "--mem", str(m.mem), *where,
            "--dest", str(dest), "--state-dir", str(state), "--no-restart"]  # fmt: skip


def run_forked(argv: list[str], kill_at: str | None = None, timeout: float = 60,
               pre: Callable[[], None] | None = None) -> int:  # fmt: skip
    """cli.main(argv) in a forked child; the exit status, or -signal if it was killed.
    ``pre`` runs in the child first (e.g. to arm a kill inside a library call)."""
    from dumpsaver import cli, faults

    _preload()
    pid = os.fork()
    if pid == 0:  # child
        rc = 99
        try:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 1)
            os.dup2(null, 2)
            if kill_at:
                os.environ["DUMPSAVER_KILL_AT"] = kill_at
            else:
                os.environ.pop("DUMPSAVER_KILL_AT", None)
            faults.hits.clear()
            if pre is not None:
                pre()
            rc = cli.main(argv)
        except BaseException:
            rc = 98
        finally:
            os._exit(rc)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -999  # hung
        time.sleep(0.002)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _preload() -> None:
    """Import in the parent what every child needs, so forks do not pay for it."""
    import importlib

    for name in ("yaml", "dumpsaver.cli", "dumpsaver.config", "dumpsaver.journal",
                 "dumpsaver.save", "dumpsaver.state", "dumpsaver.locate",
                 "dumpsaver.writers.elf", "dumpsaver.elfnote", "dumpsaver.sanitize"):  # fmt: skip
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def run_timed(argv: list[str], delay: float) -> int:
    """``dumpsaver save`` as a real process, SIGKILLed after ``delay`` seconds."""
    env = {k: v for k, v in os.environ.items() if k != "DUMPSAVER_KILL_AT"}
    p = subprocess.Popen([sys.executable, "-m", "dumpsaver", *argv], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        p.wait(delay)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
    return p.wait()


@dataclass
class Tally:
    points: int = 0  # kills that really happened
    not_reached: int = 0
    by_phase: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    saved_twice: int = 0
    half_visible: int = 0
    released_before_durable: int = 0
    rerun_failed: int = 0
    release_not_finished: int = 0
    hung: int = 0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["problems"] = self.problems[:20]
        return d


def header_magic(m: Sim) -> bytes:
    with open(m.mem, "rb") as f:
        f.seek(m.header_paddr)
        return f.read(8)


def visible_dumps(dest: Path) -> list[Path]:
    if not dest.is_dir():
        return []
    return sorted(p for p in dest.iterdir() if not p.name.startswith("."))


def check_visible(m: Sim, dest: Path, truth: dict[int, bytes]) -> list[str]:
    """Every visible dump directory must be whole: info.json, dmesg.txt and a vmcore
    of the announced size whose pages are the ground truth."""
    bad = []
    for d in visible_dumps(dest):
        try:
            info = json.loads((d / "info.json").read_text())
            size = (d / info["file"]).stat().st_size
            if size != info["file_size"]:
                bad.append(f"{d.name}: vmcore {size} bytes, info says {info['file_size']}")
                continue
            if not (d / "dmesg.txt").is_file():
                bad.append(f"{d.name}: no dmesg.txt")
            if info.get("format") == "kdump":
                pages = read_kdump_pages(d / info["file"])
            else:
                pages = read_elf_pages(d / info["file"], m.page_size)
            zero = bytes(m.page_size)
            for pfn, page in pages.items():
                if truth.get(pfn) != page and not (page == zero and truth.get(pfn) is None):
                    bad.append(f"{d.name}: page {pfn} differs from the ground truth")
                    break
            if info["complete"] and len(pages) != len(truth):
                bad.append(f"{d.name}: complete but {len(pages)} of {len(truth)} pages")
        except (OSError, ValueError, KeyError, AssertionError, TypeError, DumpsaverError) as e:
            bad.append(f"{d.name}: {type(e).__name__}: {e}")
    return bad


def read_kdump_pages(path: Path) -> dict[int, bytes]:
    """{pfn: page} through the independent kdump-compressed reader of tests/test_kdump.py."""
    from ..test_kdump import KdumpFile

    kf = KdumpFile.open(path)
    return {pfn: kf.page(pfn, desc) for pfn, desc in kf.descs().items()}


def one_point(
    m: Sim, work: Path, kill_at: str | None, tally: Tally, truth: dict[int, bytes],
    *, then_kill_at: str | None = None, delay: float | None = None, fmt_name: str = "elf",
    locate: str = "sysfs",
) -> None:
    """Kill at ``kill_at`` (or after ``delay`` seconds), optionally kill the rerun too,
    then rerun to the end and judge."""
    dest, state = work / "dest", work / "state"
    config = work / "config.yaml"
    if not config.exists():
        config.write_text(f"minfree: 0\nformat: {fmt_name}\n")
    argv = save_argv(m, dest, state, config, locate=locate)
    ok_codes = (0, 4) if m.manifest["truncated"] else (0,)
    label = kill_at or f"timed:{delay:.3f}"
    rc = run_timed(argv, delay) if delay is not None else run_forked(argv, kill_at)
    if rc == -999:
        tally.hung += 1
        tally.problems.append(f"{label}: the saver hung")
    if rc != -signal.SIGKILL:
        if rc in ok_codes:
            tally.not_reached += 1  # the save finished before the point: nothing to judge
        else:
            tally.problems.append(f"{label}: exit {rc} without being killed")
        return
    tally.points += 1
    phase = (kill_at or "timed").split(":")[0]
    tally.by_phase[phase] = tally.by_phase.get(phase, 0) + 1
    # what a crash at this moment leaves behind
    bad = check_visible(m, dest, truth)
    if bad:
        tally.half_visible += 1
        tally.problems += [f"{label}: {b}" for b in bad]
    if header_magic(m) == fmt.SAVED_MAGIC and not visible_dumps(dest):
        tally.released_before_durable += 1
        tally.problems.append(f"{label}: released with no saved dump")
    if then_kill_at:
        run_forked(argv, then_kill_at)
        bad = check_visible(m, dest, truth)
        if bad:
            tally.half_visible += 1
            tally.problems += [f"{label}+{then_kill_at}: {b}" for b in bad]
    rc = run_forked(argv)
    if rc not in ok_codes:
        tally.rerun_failed += 1
        tally.problems.append(f"{label}: rerun exit {rc}")
    rc2 = run_forked(argv)  # and once more: nothing left to do
    if rc2 != 0:
        tally.rerun_failed += 1
        tally.problems.append(f"{label}: second rerun exit {rc2}")
    dumps = visible_dumps(dest)
    ids = []
    for d in dumps:
        try:
            ids.append(json.loads((d / "info.json").read_text())["dump_id"])
        except (OSError, ValueError, KeyError):
            ids.append(None)
    want = m.manifest["dump_id"]
    n = ids.count(want)
    if n == 0:
        tally.lost += 1
        tally.problems.append(f"{label}: dump lost")
    elif n > 1:
        tally.saved_twice += 1
        tally.problems.append(f"{label}: saved {n} times")
    bad = check_visible(m, dest, truth)
    if bad:
        tally.half_visible += 1
        tally.problems += [f"{label} (after rerun): {b}" for b in bad]
    leftovers = [p.name for p in dest.iterdir() if p.name.startswith(".tmp-")]
    if leftovers:
        tally.problems.append(f"{label}: left {leftovers}")
        tally.half_visible += 1
    if header_magic(m) != fmt.SAVED_MAGIC:
        tally.problems.append(f"{label}: the header was not invalidated after the save")
        tally.rerun_failed += 1
    rel = m.sysfs / "release"
    if locate == "sysfs" and rel.exists() and rel.read_text().strip() != "1":
        tally.release_not_finished += 1
        tally.problems.append(f"{label}: the sysfs release was never written")


def points_for(m: Sim, *, every_page: bool = True, extra_n: Iterable[int] = (2,)) -> list[str]:
    """The kill points of one save: every phase, every page of the writer's loop."""
    pts = [p for p in PHASES if p != "write-page"]
    pages = m.manifest["saved_pages"]
    if every_page:
        pts += [f"write-page:{n}" for n in range(1, pages + 1)]
    else:
        pts += [f"write-page:{n}" for n in sorted({1, 2, pages // 2, pages})]
    pts += [f"locate:{n}" for n in extra_n]  # not reached: there is one candidate
    return pts


def campaign(
    machines: list[Sim], work: Path, *, every_page: bool = True, pairs: int = 0,
    timed: int = 0, seed: int = 0, fmt_name: str = "elf", tally: Tally | None = None,
    locate: str = "sysfs",
) -> Tally:
    tally = tally if tally is not None else Tally()
    rng = random.Random(seed)
    n = 0
    for m in machines:
        truth = m.truth_pages()
        plan: list[tuple[str | None, str | None, float | None]] = [
            (p, None, None) for p in points_for(m, every_page=every_page)
        ]
        all_pts = points_for(m, every_page=True)
        plan += [(rng.choice(all_pts), rng.choice(all_pts), None) for _ in range(pairs)]
        if timed:
            t_full = _time_full_save(m, work / "timing")
            plan += [(None, None, rng.uniform(0, t_full)) for _ in range(timed)]
        for kill_at, then, delay in plan:
            n += 1
            case = work / f"case{n}"
            mm = m.copy(case / "machine")
            one_point(mm, case, kill_at, tally, truth, then_kill_at=then, delay=delay,
                      fmt_name=fmt_name, locate=locate)
            _rm(case)
    return tally


def _time_full_save(m: Sim, work: Path) -> float:
    mm = m.copy(work / "machine")
    config = work / "config.yaml"
    config.write_text("minfree: 0\n")
    t0 = time.monotonic()
    run_timed(save_argv(mm, work / "dest", work / "state", config), 600)
    t = time.monotonic() - t0
    _rm(work)
    return t


def _rm(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)
