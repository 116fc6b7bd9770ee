#!/usr/bin/env python3
"""What a boot without a dump costs: ``dumpsaver save`` against a bare start of the same
interpreter, side by side (interleaved rounds, medians and ranges, load average kept).

    .venv/bin/python benchmarks/boot.py [--rounds 30] [--tree DIR ...] [--json FILE]

Contenders, each its own process as the boot job is:

- ``python -c pass`` and ``python -S -c pass`` of the same interpreter (the yardsticks);
- ``dumpsaver save``: the package's launcher (three lines, as packaging/debian/rules and
  the RPM spec install it) run by Debian's /usr/bin/python3, this tree on PYTHONPATH and
  its modules compiled, as the unit runs it, on
  this machine's own /proc/cmdline and /sys (so: no dump interface, no memmap= here), with
  a configuration that sets only settings that cannot make a dump appear;
- the memmap= peek: the same decision with a ``memmap=16M$ADDR`` reservation of zeros (a
  command line, /proc/iomem and a memory file made in a temp directory), which reads the
  first bytes of the region: what every boot of a machine set up for dumpsaver does;
- ``--tree DIR``: the same dumpsaver contenders from another source tree (e.g. ``git
  archive OLD dumpsaver | tar -x -C DIR``), for before/after figures, plus its
  ``dumpsaver save`` through the console script Debian's installer generates (it imports
  re), which the .deb installed before.

``-X importtime`` of the entry point is printed at the end (``--importtime``).
Ratios, not absolute times, are what compare: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAFE_CONFIG = "dump_dir: /var/dumps\nformat: kdump\nminfree: 64M\n"
REGION = 0x2000000
PEEK = ("from dumpsaver import cli; import sys; "
        "sys.exit(0 if cli.surely_no_dump(config={cfg!r}, sysfs_header='/nonexistent', "
        "cmdline={cmd!r}, iomem={iomem!r}, mem={mem!r}) else 9)")


def load() -> tuple[float, float, float]:
    return os.getloadavg()


def fixture(d: Path) -> dict[str, str]:
    cfg, cmd, iomem, mem = d / "dumpsaver.yaml", d / "cmdline", d / "iomem", d / "mem"
    cfg.write_text(SAFE_CONFIG)
    cmd.write_text(f"root=/dev/vda ro quiet memmap=16M${REGION:#x}\n")
    iomem.write_text(f"00100000-{REGION - 1:08x} : System RAM\n"
                     f"{REGION:08x}-{REGION + (16 << 20) - 1:08x} : Reserved\n")  # fmt: skip
    with open(mem, "wb") as f:
        f.truncate(REGION + (16 << 20))
    return {"cfg": str(cfg), "cmd": str(cmd), "iomem": str(iomem), "mem": str(mem)}


LAUNCHER = "#!{py} -s\nimport sys\nfrom dumpsaver.cli import main\nsys.exit(main())\n"
#: The console script Debian's installer wrote before packaging/debian/rules replaced it.
INSTALLER = ("#!{py}\n# -*- coding: utf-8 -*-\nimport re\nimport sys\n"
             "from dumpsaver.cli import main\nif __name__ == \"__main__\":\n"
             "    sys.argv[0] = re.sub(r\"(-script\\.pyw|\\.exe)?$\", \"\", sys.argv[0])\n"
             "    sys.exit(main())\n")


def contenders(py: str, fx: dict[str, str], trees: list[Path], tmp: Path) -> dict[
        str, tuple[list[str], dict[str, str]]]:  # fmt: skip
    """Every contender runs ``py`` with the tree on PYTHONPATH (the yardsticks too, so that
    the search path is the same), from compiled modules, as a packaged install does."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "NOTIFY_SOCKET", "PYTHONDONTWRITEBYTECODE")}
    env["DUMPSAVER_CONFIG"] = fx["cfg"]
    env["PYTHONPATH"] = str(trees[0])
    launcher = tmp / "dumpsaver"  # what packaging/debian/rules and the RPM spec install
    launcher.write_text(LAUNCHER.format(py=py))
    installer = tmp / "dumpsaver-installer"
    installer.write_text(INSTALLER.format(py=py))
    out = {
        "python -c pass": ([py, "-c", "pass"], env),
        "python -S -c pass": ([py, "-S", "-c", "pass"], env),
    }
    nocfg = {**fx, "cfg": fx["cfg"] + ".missing"}
    for i, t in enumerate(trees):
        subprocess.run([py, "-m", "compileall", "-q", str(t / "dumpsaver")], check=True,
                       stdout=subprocess.DEVNULL, env=env)
        tenv = {**env, "PYTHONPATH": str(t)}
        tag = "" if i == 0 else f" [{t.name}]"
        out["dumpsaver save" + tag] = ([py, "-s", str(launcher), "save"], tenv)
        if i:  # an older tree: also as the .deb used to install it
            out["dumpsaver save, installer script" + tag] = ([py, str(installer), "save"], tenv)
        out["memmap= peek" + tag] = ([py, "-c", PEEK.format(**fx)], tenv)
        out["memmap= peek, no config" + tag] = ([py, "-c", PEEK.format(**nocfg)], tenv)
    return out


def run_once(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    # cwd "/": ``-c`` puts the current directory first on sys.path
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/")
    took = time.perf_counter() - t0
    if r.returncode not in (0, 9) or (r.returncode == 9 and "PYTHONPATH" not in env):
        raise SystemExit(f"{cmd[:3]} failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default="/usr/bin/python3",
                    help="the interpreter, as the package's launcher runs (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--tree", type=Path, action="append", default=[],
                    help="another source tree to measure the same way (before/after; its "
                    "modules are compiled there)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--importtime", action="store_true", help="print -X importtime of the "
                    "memmap= peek")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        fx = fixture(Path(td))
        cons = contenders(a.python, fx, [HERE.parent, *a.tree], Path(td))
        la0 = load()
        times: dict[str, list[float]] = {k: [] for k in cons}
        names = list(cons)
        for n in names:  # warm the page cache once
            run_once(*cons[n])
        for i in range(a.rounds):
            for n in names[i % len(names):] + names[:i % len(names)]:  # rotate the order
                times[n].append(run_once(*cons[n]))
        la1 = load()
        if a.importtime:
            cmd, env = cons["memmap= peek"]
            r = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], env=env, cwd="/",
                               capture_output=True, text=True, check=False)
            print(r.stderr)
    bare = statistics.median(times["python -c pass"])
    rows = {}
    print(f"{a.python}, {a.rounds} interleaved rounds, load average {la0[0]:.2f} before, "
          f"{la1[0]:.2f} after (2 cores)")
    print(f"{'contender':44} {'median ms':>9} {'range ms':>13} {'x python -c pass':>17}")
    for n, ts in times.items():
        med = statistics.median(ts)
        q = sorted(ts)
        lo, hi = q[len(q) // 10], q[-1 - len(q) // 10]  # 10th-90th percentile
        rows[n] = {"median_ms": round(med * 1000, 2), "p10_ms": round(lo * 1000, 2),
                   "p90_ms": round(hi * 1000, 2), "ratio": round(med / bare, 2)}
        print(f"{n:44} {med * 1000:9.1f} {lo * 1000:6.1f}-{hi * 1000:<6.1f} {med / bare:17.2f}")
    if a.json:
        a.json.write_text(json.dumps({"python": a.python, "rounds": a.rounds,
                                      "loadavg_before": la0, "loadavg_after": la1,
                                      "contenders": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
