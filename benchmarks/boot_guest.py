#!/usr/bin/env python3
"""What dumpsaver.service costs at boot in the QEMU guest, against a bare interpreter
started by the same unit at the same point of the boot.

    sudo .venv/bin/python benchmarks/boot_guest.py [--rounds 2] [--deb DEB] [--work DIR]

The e2e guest (tests/e2e/image.py: Debian 12, dumpsaver from its .deb, 1 GiB, TCG, the
e2e command line with ``memmap=16M$0x30000000``, so every boot peeks at the region) boots
once per contender and round, in one QEMU process (the guest reboots itself).  Each boot
runs dumpsaver.service as installed, with only its ExecStart= replaced by a drop-in:

- ``dumpsaver``: ``dumpsaver save`` (no drop-in: the shipped unit);
- ``python``: ``/usr/bin/python3 -c pass``; ``python -S``: ``/usr/bin/python3 -S -c pass``;
- ``true``: ``/bin/true`` (what the unit's sandbox and fork cost by themselves);
- a last boot runs ``python3 -X importtime /usr/bin/dumpsaver save`` (its stderr is kept).

Same unit, same sandbox, same ordering, a cold page cache in every boot (a new kernel):
the unit's ExecMainStart -> ExecMainExit (systemctl show, as tests/e2e/test_boot.py
records it) is the figure.  Every boot is a separate sample; contenders are interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import image  # noqa: E402
import qemu  # noqa: E402

CONTENDERS = {
    "dumpsaver": None,
    "python": "/usr/bin/python3 -c pass",
    "python -S": "/usr/bin/python3 -S -c pass",
    "true": "/bin/true",
}
IMPORTTIME = "/usr/bin/python3 -X importtime /usr/bin/dumpsaver save"

SCENARIO = r"""#!/bin/sh
# $1: run number (= boot number), $2: its evidence directory.  @PLAN@: one ExecStart
# per boot, "-" for the unit as shipped; after the last, power off.
d="$2"
n="$1"
journalctl -b -o cat -u dumpsaver.service > "$d/unit-journal" 2>&1
cat /proc/loadavg > "$d/loadavg"
systemctl show dumpsaver.service -p CPUUsageNSec > "$d/cpu" 2>&1
if [ "$n" = 1 ]; then
    # by hand after the boot, @ROUNDS@ interleaved rounds: each contender with a cold page
    # cache (drop_caches, as at boot) and then warm
    python3 - "$d" @ROUNDS@ <<'PY'
import json, subprocess, sys, time
C = {"dumpsaver": ["/usr/bin/dumpsaver", "save"], "python": ["/usr/bin/python3", "-c", "pass"],
     "python -S": ["/usr/bin/python3", "-S", "-c", "pass"]}
out = {f"{k} {w}": [] for k in C for w in ("cold", "warm")}
for i in range(int(sys.argv[2])):
    for k, cmd in C.items():
        for w in ("cold", "warm"):
            if w == "cold":
                subprocess.run(["sync"])
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")
            t0 = time.monotonic()
            r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out[f"{k} {w}"].append(round((time.monotonic() - t0) * 1000, 1))
            assert r.returncode == 0, (cmd, r.returncode)
with open(sys.argv[1] + "/by-hand.json", "w") as f:
    json.dump(out, f)
PY
fi
set -- @PLAN@
total=$#
shift "$n" 2>/dev/null || set --
dir=/etc/systemd/system/dumpsaver.service.d
mkdir -p "$dir"
if [ "$n" -ge "$total" ]; then
    systemctl poweroff
    exit 0
fi
next="$1"
if [ "$next" = - ]; then
    rm -f "$dir/bench.conf"
else
    printf '[Service]\nExecStart=\nExecStart=%s\n' "$(echo "$next" | tr '_' ' ')" \
        > "$dir/bench.conf"
fi
sync
systemctl reboot
"""


def log(msg: str) -> None:
    print(f"[boot-guest] {msg}", file=sys.stderr, flush=True)


def units(path: Path) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for block in path.read_text().split("\n\n"):
        props = dict(ln.split("=", 1) for ln in block.splitlines() if "=" in ln)
        if "Id" in props:
            out[props["Id"]] = props
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/dumpsaver-boot-guest"))
    ap.add_argument("--deb", type=Path, help="dumpsaver .deb (default: build one)")
    ap.add_argument("--rounds", type=int, default=2, help="boots per contender")
    ap.add_argument("--by-hand", type=int, default=10,
                    help="rounds of the by-hand series in the first boot")
    ap.add_argument("--label", default="", help="a name for this image (e.g. before)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--collect", action="store_true", help="only read what an earlier (or "
                    "stopped) run with the same options left in its disk image")
    ap.add_argument("--contenders", default=",".join(CONTENDERS),
                    help="which, in this order (dumpsaver first; default: %(default)s)")
    a = ap.parse_args()
    work = a.work / (a.label or "current")
    work.mkdir(parents=True, exist_ok=True)
    deb = a.deb
    if deb is None and not a.collect:
        r = subprocess.run([str(REPO / "packaging" / "build-deb.sh"), str(work / "deb")],
                           capture_output=True, text=True, check=True)
        deb = Path(r.stdout.strip().splitlines()[-1])
    names = [n for n in a.contenders.split(",") if n]
    assert names[0] == "dumpsaver" and set(names) <= set(CONTENDERS), names
    plan: list[str] = []  # the contender of boot k is plan[k-1]
    for i in range(a.rounds):
        plan += names[i % len(names):] + names[:i % len(names)]
    plan.append("importtime")
    words = ["-" if CONTENDERS.get(p) is None and p != "importtime" else
             (IMPORTTIME if p == "importtime" else str(CONTENDERS[p])).replace(" ", "_")
             for p in plan]  # fmt: skip
    # boot 1 runs the shipped unit: the first contender must be "dumpsaver"
    assert plan[0] == "dumpsaver"
    disk = work / "disk.img"
    la0 = os.getloadavg()
    t0 = time.monotonic()
    if not a.collect:
        assert deb is not None
        base = image.build_rootfs(image.default_cache_dir())
        guest = image.build_session_image(base, deb, work)
        img = image.scenario_image(guest, disk, {
            "/e2e/scenario.sh": SCENARIO.replace("@PLAN@", " ".join(words)).replace(
                "@ROUNDS@", str(a.by_hand))})
        log(f"{len(plan)} boots: {plan}")
        qemu.boot(img.image, img.kernel, img.initrd, work, timeout=a.timeout)
    took = time.monotonic() - t0
    la1 = os.getloadavg()
    shutil.rmtree(work / "disk", ignore_errors=True)  # debugfs does not overwrite
    ev = image.rdump(disk, "/root/e2e", work / "disk")
    if ev is None:
        log(f"no evidence in {disk}")
        return 1
    samples: dict[str, list[float]] = {p: [] for p in [*CONTENDERS, "importtime"]}
    per_boot = []
    for k, p in enumerate(plan, start=1):
        d = ev / f"run-{k}"
        if not (d / "units").exists():
            log(f"boot {k} ({p}) left no evidence")
            continue
        ds = units(d / "units")["dumpsaver.service"]
        ms = (int(ds["ExecMainExitTimestampMonotonic"]) -
              int(ds["ExecMainStartTimestampMonotonic"])) / 1000  # fmt: skip
        samples[p].append(ms)
        cpu = (d / "cpu").read_text().strip().partition("=")[2] if (d / "cpu").exists() else ""
        per_boot.append({"boot": k, "contender": p, "ms": round(ms, 1),
                         "result": ds.get("Result"),
                         "cpu_ms": round(int(cpu) / 1e6, 1) if cpu.isdigit() else None,
                         "start_s": int(ds["ExecMainStartTimestampMonotonic"]) / 1e6,
                         "guest_loadavg": (d / "loadavg").read_text().split()[:3]})
        if p == "importtime":
            (work / "importtime-at-boot.txt").write_text((d / "unit-journal").read_text())
    bare = statistics.median(samples["python"]) if samples["python"] else float("nan")
    rows = {}
    print(f"{a.label or 'current'}: {len(per_boot)} boots in {took:.0f} s, host load average "
          f"{la0[0]:.2f} before, {la1[0]:.2f} after (2 cores), accel {qemu.accel()}")
    for p, ms in samples.items():
        if not ms:
            continue
        med = statistics.median(ms)
        rows[p] = {"ms": [round(x, 1) for x in ms], "median_ms": round(med, 1),
                   "ratio_to_python": round(med / bare, 2)}
        print(f"  {p:12} median {med:8.1f} ms  all {[round(x) for x in ms]}  "
              f"x python -c pass {med / bare:.2f}")
    hand = {}
    if (ev / "run-1" / "by-hand.json").exists():
        raw = json.loads((ev / "run-1" / "by-hand.json").read_text())
        for w in ("cold", "warm"):
            b = statistics.median(raw[f"python {w}"])
            for k in ("dumpsaver", "python", "python -S"):
                ms = raw[f"{k} {w}"]
                med = statistics.median(ms)
                hand[f"{k} {w}"] = {"ms": ms, "median_ms": med, "ratio_to_python": round(
                    med / b, 2)}
                print(f"  by hand, {w:4} {k:10} median {med:7.1f} ms  range {min(ms):.0f}-"
                      f"{max(ms):.0f}  x python -c pass {med / b:.2f}")
    for b in per_boot:
        print(f"  boot {b['boot']}: {b['contender']:10} {b['ms']:8.1f} ms wall, "
              f"{b['cpu_ms']} ms CPU, started {b['start_s']:.1f} s after the kernel")
    out: dict[str, Any] = {"label": a.label, "by_hand": hand, "deb": str(deb),
                           "host_loadavg_before": la0,
                           "host_loadavg_after": la1, "qemu_s": round(took), "boots": per_boot,
                           "contenders": rows, "accel": qemu.accel()}
    (work / "boot-guest.json").write_text(json.dumps(out, indent=1) + "\n")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
