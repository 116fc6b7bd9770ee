#!/usr/bin/python3
"""Guest side of the memmap=SIZE!ADDR scenario (test_movable.py), run by its script.

Subcommands (each records what it saw as files in the run's evidence directory D):

  giveback D          load the nvdimm/dax modules, wait for the namespace, make it
                      devdax when it is not, give the range back as movable RAM
                      (daxctl reconfigure-device --mode=system-ram); giveback.json
  arm D TAG START SIZE
                      load dumpsaver.ko (the DKMS one) over [START, START+SIZE) with the
                      parameters `dumpsaver arm` computes; the module's sysfs state in
                      arm-TAG.json (armed or not, and why)
  load D MIB          hold MIB MiB of anonymous memory whose every page starts with the
                      dump magic; count (pagemap) the pages in the kmem range; touch
                      D/load-ready and sleep
  head D NAME         the first bytes of the kmem range of run 1, read by mmap of
                      /dev/dax0.0 (before the range is given back)
  copy D OUT          copy the dump at the start of that range, read through /dev/dax0.0,
                      into a sparse file OUT at its physical offset, with a command line
                      and an iomem that name it as reserved memory, for `dumpsaver save`

The kmem range (the memory blocks kmem hot-added) is where the module writes.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

E2E = Path("/root/e2e")
DAX = Path("/sys/bus/dax/devices/dax0.0")
NS = Path("/sys/bus/nd/devices/namespace0.0")
MODULES = ["nd_e820", "nd_pmem", "dax_pmem", "device_dax", "kmem"]


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


def wait_for(paths: list[Path], seconds: float) -> Path | None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for p in paths:
            if p.exists():
                return p
        time.sleep(0.2)
    return None


def giveback(d: Path) -> None:
    facts: dict[str, object] = {"uptime_start": uptime(), "before": meminfo()}
    run(d, "modprobe", "modprobe", "-a", *MODULES)
    found = wait_for([Path("/dev/dax0.0"), Path("/dev/pmem0")], 60)
    facts["found"] = str(found)
    facts["ns_mode_at_boot"] = (NS / "mode").read_text().strip() if NS.exists() else None
    run(d, "ndctl-list", "ndctl", "list", "-N", "-R", "-v")
    if found != Path("/dev/dax0.0"):
        t0 = time.monotonic()
        r = run(
            d,
            "ndctl-create",
            "ndctl",
            "create-namespace",
            "-f",
            "-e",
            "namespace0.0",
            "--mode=devdax",
        )
        facts["devdax_s"] = round(time.monotonic() - t0, 2)
        facts["devdax_rc"] = r.returncode
    facts["dax_resource"] = (DAX / "resource").read_text().strip() if DAX.exists() else None
    facts["dax_size"] = (DAX / "size").read_text().strip() if DAX.exists() else None
    t0 = time.monotonic()
    r = run(d, "daxctl-reconfigure", "daxctl", "reconfigure-device", "--mode=system-ram", "dax0.0")
    facts["kmem_s"] = round(time.monotonic() - t0, 2)
    facts["kmem_rc"] = r.returncode
    facts["uptime_end"] = uptime()
    facts["after"] = meminfo()
    kr = kmem_range()
    facts["kmem"] = kr
    if kr:
        facts["blocks"] = blocks(*kr)
    (d / "giveback.json").write_text(json.dumps(facts, indent=1))
    run(d, "daxctl-list", "daxctl", "list", "-M", "-D")


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


def load(d: Path, mib: int) -> None:
    kr = kmem_range()
    n = mib << 8
    buf = mmap.mmap(-1, n * 4096)
    chunk = (b"MCOREDMP" + b"\x5a" * 4088) * 256  # every page starts with the magic
    for i in range(mib):
        buf[i << 20 : (i + 1) << 20] = chunk
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(addr // 4096 * 8)
        raw = f.read(n * 8)
    pfns = [e & ((1 << 55) - 1) for (e,) in struct.iter_unpack("<Q", raw) if e >> 63]
    inside = []
    if kr:
        lo, hi = kr[0] // 4096, (kr[0] + kr[1]) // 4096
        inside = [p for p in pfns if lo <= p < hi]
    (d / "load.json").write_text(
        json.dumps(
            {
                "pages": n,
                "present": len(pfns),
                "in_region": len(inside),
                "first_pfn_in_region": kr is not None and kr[0] // 4096 in inside,
                "kmem": kr,
            },
            indent=1,
        )
    )
    (d / "load-ready").write_text("1\n")
    while True:
        time.sleep(60)
        buf[0:1] = b"M"


def first_kmem() -> tuple[int, int]:
    facts = json.loads((E2E / "run-1" / "giveback.json").read_text())
    start, size = facts["kmem"]
    return start, size


def dax_map(start: int, size: int) -> mmap.mmap:
    res = int((DAX / "resource").read_text().strip(), 0)
    fd = os.open("/dev/dax0.0", os.O_RDONLY)
    try:
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ, offset=start - res)
    finally:
        os.close(fd)


def head(d: Path, name: str) -> None:
    if wait_for([Path("/dev/dax0.0")], 60) is None:
        (d / name).write_bytes(b"")
        return
    start, size = first_kmem()
    m = dax_map(start, size)
    (d / name).write_bytes(m[:256])


def copy(d: Path, out: Path) -> None:
    from dumpsaver import format as fmt

    start, size = first_kmem()
    m = dax_map(start, size)
    f = fmt.FIXED.unpack_from(m, 0)
    names = [
        "magic",
        "version",
        "header_size",
        "flags",
        "page_size",
        "codec",
        "excluded",
        "nr_cpus",
        "n_extents",
        "mem_pages",
        "crash_time_ns",
        "dump_id",
        "boot_id",
        "nr_entries",
        "nr_zero",
        "nr_dropped",
        "meta_offset",
        "meta_bytes",
        "data_offset",
        "data_bytes",
        "dir_offset",
    ]
    h = dict(zip(names, f, strict=False))
    end = min(
        size, -(-(h["dir_offset"] + h["nr_entries"] * fmt.ENTRY.size) // (1 << 20)) * (1 << 20)
    )
    t0 = time.monotonic()
    with open(out, "wb") as o:
        o.seek(start)
        for off in range(0, end, 1 << 20):
            o.write(m[off : off + (1 << 20)])
        o.truncate(start + size)
    (d / "copy.json").write_text(
        json.dumps(
            {
                "magic": h["magic"].decode(errors="replace"),
                "bytes": end,
                "start": start,
                "size": size,
                "seconds": round(time.monotonic() - t0, 2),
            }
        )
    )
    iomem = Path("/proc/iomem").read_text() + f"{start:x}-{start + size - 1:x} : Reserved\n"
    (out.parent / "iomem").write_text(iomem)
    (out.parent / "cmdline").write_text(f"memmap={size >> 20}M${start:#x}\n")


def main() -> int:
    cmd, d = sys.argv[1], Path(sys.argv[2])
    if cmd == "giveback":
        giveback(d)
    elif cmd == "arm":
        arm(d, sys.argv[3], int(sys.argv[4], 0), int(sys.argv[5], 0))
    elif cmd == "load":
        load(d, int(sys.argv[3]))
    elif cmd == "head":
        head(d, sys.argv[3])
    elif cmd == "copy":
        copy(d, Path(sys.argv[3]))
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
