#!/usr/bin/python3
"""Guest side of the memmap=SIZE!ADDR scenario (test_movable.py), run by its script.

dumpsaver.service gives the range back and dumpsaver-arm.service arms the module over
it; this records what the kernel shows and plays the user (each subcommand writes its
findings into the run's evidence directory D):

  facts D             the kmem range (/proc/iomem "System RAM (kmem)"), its memory
                      blocks' state and zone, the dax device, meminfo; facts.json
  arm D TAG START SIZE
                      load dumpsaver.ko (the DKMS one) over [START, START+SIZE) with the
                      parameters `dumpsaver arm` computes; the module's sysfs state in
                      arm-TAG.json (armed or not, and why)
  load D MIB          hold MIB MiB of anonymous memory filled with a pattern (more, 16 MiB
                      at a time, until the range's first page, the header's place, is one
                      of them, up to twice MIB); count (pagemap) the pages in the kmem
                      range; touch D/load-ready and sleep
"""

from __future__ import annotations

import ctypes
import json
import mmap
import struct
import subprocess
import sys
import time
from pathlib import Path

DAX = Path("/sys/bus/dax/devices/dax0.0")
NS = Path("/sys/bus/nd/devices/namespace0.0")


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        out[k] = int(v.split()[0])
    return out


def run(d: Path, name: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    (d / name).write_text(
        f"$ {' '.join(cmd)}\nrc={r.returncode} "
        f"seconds={time.monotonic() - t0:.2f}\n{r.stdout}{r.stderr}"
    )
    return r


def kmem_range() -> tuple[int, int] | None:
    for line in Path("/proc/iomem").read_text().splitlines():
        if "System RAM (kmem)" in line:
            a, b = line.split(":", 1)[0].strip().split("-")
            return int(a, 16), int(b, 16) + 1 - int(a, 16)
    return None


def blocks(start: int, size: int) -> dict[str, dict[str, str]]:
    mem = Path("/sys/devices/system/memory")
    bs = int((mem / "block_size_bytes").read_text(), 16)
    out = {}
    for n in range(start // bs, (start + size) // bs):
        b = mem / f"memory{n}"
        out[b.name] = {
            a: (b / a).read_text().strip() for a in ("state", "valid_zones") if (b / a).exists()
        }
    return out


def facts(d: Path) -> None:
    out: dict[str, object] = {"uptime": uptime(), "meminfo": meminfo()}
    kr = kmem_range()
    out["kmem"] = kr
    if kr:
        out["blocks"] = blocks(*kr)
    for a in ("resource", "size", "align"):
        f = DAX / a
        out[f"dax_{a}"] = f.read_text().strip() if f.exists() else None
    drv = DAX / "driver"
    out["dax_driver"] = drv.resolve().name if drv.exists() else None
    out["ns_mode"] = (NS / "mode").read_text().strip() if (NS / "mode").exists() else None
    (d / "facts.json").write_text(json.dumps(out, indent=1))


def arm(d: Path, tag: str, start: int, size: int) -> None:
    from dumpsaver import arm as A

    p = A.KernelPaths()
    p.post_notifiers.write_text("Y\n")
    subprocess.run(["rmmod", "dumpsaver"], capture_output=True, check=False)
    params = A.module_params(
        (start, size),
        boot_id=p.boot_id.read_text().strip(),
        notes=A.crash_notes(p.cpus),
        image=A.kernel_image(p.iomem),
    )
    r = run(d, f"arm-{tag}.out", "modprobe", "dumpsaver", *params)
    st: dict[str, object] = {"rc": r.returncode, "start": start, "size": size}
    for a in ("armed", "reason", "mode", "region"):
        f = p.state / a
        st[a] = f.read_text().strip() if f.exists() else None
    (d / f"arm-{tag}.json").write_text(json.dumps(st, indent=1))


def _pfns(buf: mmap.mmap, n: int) -> list[int]:
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(addr // 4096 * 8)
        raw = f.read(n * 8)
    return [e & ((1 << 55) - 1) for (e,) in struct.iter_unpack("<Q", raw) if e >> 63]


def _fill(mib: int) -> tuple[mmap.mmap, int]:
    buf = mmap.mmap(-1, mib << 20)
    chunk = (b"USERDATA" + b"\x5a" * 4088) * 256  # user data: no dump's magic
    for i in range(mib):
        buf[i << 20 : (i + 1) << 20] = chunk
    return buf, mib << 8


def load(d: Path, mib: int) -> None:
    kr = kmem_range()
    lo, hi = (kr[0] // 4096, (kr[0] + kr[1]) // 4096) if kr else (0, 0)
    held = [_fill(mib)]
    pfns = _pfns(*held[0])
    total = mib
    while kr and lo not in pfns and total < mib + 64:
        held.append(_fill(16))
        pfns += _pfns(*held[-1])
        total += 16
    inside = [p for p in pfns if lo <= p < hi]
    (d / "load.json").write_text(
        json.dumps(
            {
                "mib": total,
                "present": len(pfns),
                "in_region": len(inside),
                "first_pfn_in_region": kr is not None and lo in inside,
                "kmem": kr,
            },
            indent=1,
        )
    )
    (d / "load-ready").write_text("1\n")
    while True:
        time.sleep(60)
        for buf, _ in held:
            buf[0:1] = b"M"


def main() -> int:
    cmd, d = sys.argv[1], Path(sys.argv[2])
    if cmd == "facts":
        facts(d)
    elif cmd == "arm":
        arm(d, sys.argv[3], int(sys.argv[4], 0), int(sys.argv[5], 0))
    elif cmd == "load":
        load(d, int(sys.argv[3]))
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
