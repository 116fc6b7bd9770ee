#!/usr/bin/env python3
"""The long reliability campaign (docs/reliability.md).  Run from the repository:

    .venv/bin/python tools/reliability.py all            # everything below, ~30 min on 2 cores
    .venv/bin/python tools/reliability.py interrupt      # >= 1,000 kill points + timed kills
    .venv/bin/python tools/reliability.py corruption --cases 100000
    .venv/bin/python tools/reliability.py fuzz           # fuzz/run.sh long

Figures are printed and written as JSON to --out (default
/tmp/dumpsaver-reliability/figures.json).  Exit status 1 if any figure that must be
zero is not.  The fast versions of the same checks run in the normal pytest run
(tests/reliability/).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dumpsaver.codecs import Codec, available  # noqa: E402
from tests.reliability import harness as H  # noqa: E402
from tests.reliability import interrupt as I  # noqa: E402

#: (memory, profile, seed, codec): small to mid-size machines of different shapes.
INTERRUPT_MACHINES = [
    (1 << 20, "idle", 7, Codec.ZLIB), (512 << 10, "idle", 6, Codec.ZLIB),
    (1 << 20, "idle", 6, Codec.ZLIB), (2 << 20, "idle", 3, Codec.ZSTD),
    (4 << 20, "busy", 1, Codec.LZ4), (8 << 20, "idle", 2, Codec.ZLIB),
]
CORRUPTION_MACHINES = [
    (1 << 20, "idle", 7, Codec.ZLIB), (512 << 10, "idle", 6, Codec.ZLIB),
    (2 << 20, "idle", 3, Codec.ZLIB), (4 << 20, "busy", 1, Codec.ZSTD),
    (2 << 20, "busy", 5, Codec.LZ4),
]


def _machines(specs: list[tuple[int, str, int, Codec]], root: Path) -> list[H.Sim]:
    out = []
    for i, (mem, prof, seed, codec) in enumerate(specs):
        if not available(codec):
            print(f"skipping a {codec.label} machine: module not installed", file=sys.stderr)
            continue
        out.append(H.make_machine(root / f"m{i}", memory=mem, profile=prof, seed=seed,
                                  codec=codec))  # fmt: skip
    return out


def interrupt(work: Path, pairs: int, timed: int) -> dict[str, Any]:
    t0 = time.monotonic()
    ms = _machines(INTERRUPT_MACHINES, work / "machines")
    t = I.campaign(ms, work / "cases", every_page=True, pairs=pairs, timed=timed)
    # and the kdump-compressed writer: every point of three machines, some pairs
    k = I.campaign(ms[:3], work / "kdump", every_page=True, pairs=pairs // 5, seed=1,
                   fmt_name="kdump")  # fmt: skip
    d = t.as_dict()
    d["kdump"] = k.as_dict()
    t.problems += k.problems
    for key in ("lost", "saved_twice", "half_visible", "released_before_durable",
                "rerun_failed", "release_not_finished", "hung"):  # fmt: skip
        setattr(t, key, getattr(t, key) + getattr(k, key))
    d["machines"] = len(ms)
    d["seconds"] = round(time.monotonic() - t0, 1)
    d["ok"] = not t.problems and all(getattr(t, k) == 0 for k in (
        "lost", "saved_twice", "half_visible", "released_before_durable", "rerun_failed",
        "release_not_finished", "hung"))  # fmt: skip
    return d


def corruption(work: Path, cases: int) -> dict[str, Any]:
    t0 = time.monotonic()
    ms = _machines(CORRUPTION_MACHINES, work / "machines")
    per = -(-cases // len(ms))
    total: dict[str, Any] = {"cases": 0, "escaped": 0, "problems": 0, "outside_accesses": 0,
                             "refused": 0, "opened": 0, "pages_checked": 0,
                             "pages_damaged_reported": 0, "max_seconds": 0.0, "accesses": 0,
                             "by_kind": {}, "by_region": {}, "examples": []}  # fmt: skip
    for i, m in enumerate(ms):
        fig = H.run_corruption(m, work, per, first_seed=1_000_000 * (i + 1), save_every=200,
                               spy=(i == 0))  # fmt: skip
        for k in ("cases", "escaped", "problems", "outside_accesses", "refused", "opened",
                  "pages_checked", "pages_damaged_reported", "accesses"):  # fmt: skip
            total[k] += fig[k]
        total["max_seconds"] = max(total["max_seconds"], fig["max_seconds"])
        for k in ("by_kind", "by_region"):
            for kk, v in fig[k].items():
                total[k][kk] = total[k].get(kk, 0) + v
        total["examples"] += fig["examples"][:5]
        print(f"  machine {i}: {fig['cases']} cases, {fig['problems']} problems", file=sys.stderr)
    total["machines"] = len(ms)
    total["seconds"] = round(time.monotonic() - t0, 1)
    total["ok"] = total["escaped"] == total["problems"] == total["outside_accesses"] == 0
    return total


def fuzz(work: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    env = {**os.environ, "FUZZ_WORK": str(work / "fuzz")}
    p = subprocess.run([str(ROOT / "fuzz" / "run.sh"), "long"], env=env, capture_output=True,
                       text=True)  # fmt: skip
    runs = {}
    for name in ("fuzz_header", "fuzz_entry", "fuzz_meta", "fuzz_dump", "fuzz_locate"):
        log = work / "fuzz" / f"{name}.log"
        text = log.read_text() if log.exists() else ""
        done = [ln for ln in text.splitlines() if ln.startswith("Done ")]
        rss = [ln.split("rss: ")[1].split()[0] for ln in text.splitlines() if "rss: " in ln]
        runs[name] = {"done": done[-1] if done else None, "peak_rss": rss[-1] if rss else None}
    return {
        "exit": p.returncode, "harnesses": runs, "ok": p.returncode == 0,
        "seconds": round(time.monotonic() - t0, 1), "stderr_tail": p.stderr[-2000:],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("what", choices=("all", "interrupt", "corruption", "fuzz"))
    ap.add_argument("--cases", type=int, default=100_000, help="corruption cases")
    ap.add_argument("--pairs", type=int, default=100, help="kill-pairs per machine")
    ap.add_argument("--timed", type=int, default=100, help="timed kills per machine")
    ap.add_argument("--out", type=Path, default=Path("/tmp/dumpsaver-reliability"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    figures: dict[str, Any] = {}
    fig_file = a.out / "figures.json"
    if fig_file.exists():
        figures = json.loads(fig_file.read_text())
    with tempfile.TemporaryDirectory(prefix="dumpsaver-rel-", dir=shm) as d:
        work = Path(d)
        if a.what in ("all", "interrupt"):
            figures["interrupt"] = interrupt(work / "interrupt", a.pairs, a.timed)
        if a.what in ("all", "corruption"):
            figures["corruption"] = corruption(work / "corruption", a.cases)
        if a.what in ("all", "fuzz"):
            figures["fuzz"] = fuzz(a.out)
    fig_file.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    return 0 if all(f.get("ok") for f in figures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
