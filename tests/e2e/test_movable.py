"""Nothing reserved while healthy: the dump region is movable RAM between crashes.

A 2 GiB guest boots with ``memmap=272M!0x3F000000``: every boot the range is legacy
persistent memory, kept from the page allocator.  One QEMU process, four boots:

- boot 1: the range is given back (namespace to devdax, device to system-ram, onlined
  movable: MemTotal before and after); the module refuses the wrong ranges (the range
  while it is not RAM, boot RAM, a range only partly RAM) and arms over the memory
  blocks kmem added; offlining them while armed fails; a user-space load holds pages in
  the range (counted by pagemap, and by the module's estimate); ``echo c``;
- boot 2: the crash reboot kept RAM; the namespace is devdax again; the dump is read
  through ``/dev/dax0.0``, saved by ``dumpsaver save``; the range is given back again;
  a clean ``systemctl reboot``;
- boot 3: given back, armed again; the load fills the range with pages that each start
  with the dump magic; a clean reboot;
- boot 4: no dump (the magic alone is not a dump), given back, armed; then the range
  onlined as Normal memory is refused; power off.

The saved dump is read on the host by crash with the kernel's debug vmlinux.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import debug_tools
import image as guest_image
import pytest
import qemu
import readers
from scenario import Scenario, run_scenario

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
PMEM_START = 0x3F000000  # 16 MiB below a memory block boundary: devdax's metadata there
PMEM_SIZE = 272 << 20  # the blocks at 0x40000000 and 0x48000000 come back whole
MEMORY_MIB = 2048
APPEND = qemu.cmdline(PMEM_START, PMEM_SIZE, "!")
BOOT_RAM = (0x10000000, 16 << 20)
LOAD_MIB = 200

SCRIPT = f"""\
#!/bin/sh
# $1: run number (one per boot that reaches multi-user), $2: its evidence directory
d="$2"
P="python3 /e2e/pmem-e2e.py"
kmem() {{ python3 -c 'import json,sys; print(*json.load(open(sys.argv[1]))["kmem"])' \\
    /root/e2e/run-1/giveback.json; }}
collect() {{
    cat /proc/meminfo > "$d/meminfo"
    cat /proc/iomem > "$d/iomem"
    grep -A6 'zone  *Movable' /proc/zoneinfo > "$d/zoneinfo-movable" 2>&1
    for f in /sys/kernel/dumpsaver/*; do echo "== ${{f##*/}}"; cat "$f"; done \\
        > "$d/kmod-sysfs" 2>&1
    journalctl -b -k -o short-monotonic --no-pager > "$d/kernel-log" 2>&1
}}
load() {{
    $P load "$d" {LOAD_MIB} > "$d/load.out" 2>&1 &
    i=0; while [ ! -e "$d/load-ready" ] && [ $i -lt 600 ]; do sleep 0.5; i=$((i+1)); done
    cat /sys/kernel/dumpsaver/estimate > "$d/estimate" 2>&1
}}
save_by_hand() {{  # until dumpsaver reads /dev/dax itself: copy, then save the copy
    $P head "$d" region-head
    $P copy "$d" /root/phys.img > "$d/copy.out" 2>&1
    dumpsaver save --mem /root/phys.img --cmdline /root/cmdline --iomem /root/iomem \\
        --no-restart > "$d/save.out" 2>&1
    echo $? > "$d/save.rc"
    rm -f /root/phys.img
}}
case "$1" in
1)
    $P arm "$d" unreleased {PMEM_START:#x} {PMEM_SIZE}
    $P arm "$d" bootram {BOOT_RAM[0]:#x} {BOOT_RAM[1]}
    $P giveback "$d"
    set -- $(kmem)
    $P arm "$d" partly {PMEM_START:#x} {PMEM_SIZE}
    $P arm "$d" movable "$1" "$2"
    daxctl offline-memory dax0.0 > "$d/offline-while-armed" 2>&1
    echo "rc=$?" >> "$d/offline-while-armed"
    cat /sys/kernel/dumpsaver/armed > "$d/armed-after-offline"
    collect
    load
    sync
    echo c > /proc/sysrq-trigger
    ;;
2)
    save_by_hand
    $P giveback "$d"
    collect
    sync
    systemctl reboot
    ;;
3)
    $P giveback "$d"
    set -- $(kmem)
    $P arm "$d" movable "$1" "$2"
    collect
    load
    sync
    systemctl reboot
    ;;
*)
    save_by_hand
    $P giveback "$d"
    set -- $(kmem)
    $P arm "$d" movable "$1" "$2"
    collect
    rmmod dumpsaver
    daxctl offline-memory dax0.0 > "$d/offline-disarmed" 2>&1
    echo "rc=$?" >> "$d/offline-disarmed"
    daxctl online-memory --no-movable dax0.0 > "$d/online-normal" 2>&1
    $P arm "$d" normal "$1" "$2"
    sync
    systemctl poweroff
    ;;
esac
"""

MODULE_LINE = re.compile(
    r"dumpsaver: (?P<written>\d+) of (?P<selected>\d+) pages in (?P<kib>\d+) KiB "
    r"in (?P<ms>\d+) ms(?P<truncated>, truncated[^\n]*)?"
)


@pytest.fixture(scope="module")
def movable(
    real_guest: guest_image.GuestImage, e2e_workdir: Path, e2e_timings: dict[str, float]
) -> Scenario:
    files = {
        "/e2e/scenario.sh": SCRIPT,
        "/e2e/pmem-e2e.py": (HERE / "guest" / "pmem-e2e.py").read_text(),
    }
    sc = run_scenario(real_guest, e2e_workdir, "real-movable", files, e2e_timings,
                      append=APPEND, memory=MEMORY_MIB,
                      timeout=qemu.scenario_timeout() * 1.5)  # fmt: skip
    (sc.workdir / "summary.txt").write_text(sc.explain())
    return sc


def jload(sc: Scenario, run: int, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((sc.run_dir(run) / name).read_text())
    return result


def kmem(sc: Scenario) -> tuple[int, int]:
    start, size = jload(sc, 1, "giveback.json")["kmem"]
    return start, size


def dumps(sc: Scenario) -> list[Path]:
    assert sc.dumps is not None, sc.explain()
    return [p for p in sc.dumps.iterdir() if p.is_dir()]


def test_four_boots(movable: Scenario) -> None:
    sc = movable
    assert not sc.run.timed_out, sc.explain()
    assert sc.run.returncode == 0, sc.explain()
    assert sc.run.kernel_boots == 4, sc.explain()
    assert "Kernel panic - not syncing: sysrq triggered crash" in sc.run.serial_text
    assert sc.runs() == 4, sc.explain()


@pytest.mark.parametrize("run", [1, 2, 3, 4])
def test_range_given_back_movable(movable: Scenario, run: int, e2e_timings: dict[str, Any]) -> None:
    """Every boot: the range comes back as whole memory blocks, all online Movable."""
    g = jload(movable, run, "giveback.json")
    assert g["kmem_rc"] == 0, (movable.run_dir(run) / "daxctl-reconfigure").read_text()
    start, size = g["kmem"]
    assert start == 0x40000000 and size == 256 << 20, g  # devdax metadata in the first 16 MiB
    assert g["blocks"] and all(b == {"state": "online", "valid_zones": "Movable"}
                               for b in g["blocks"].values()), g["blocks"]  # fmt: skip
    gained = g["after"]["MemTotal"] - g["before"]["MemTotal"]
    assert gained == size >> 10, g
    if run == 1:
        assert g["ns_mode_at_boot"] != "dax", g  # fresh: fsdax, made devdax here
    else:
        assert g["found"] == "/dev/dax0.0", g  # devdax again after every reboot
    for k in ("MemTotal", "MemAvailable"):
        e2e_timings[f"movable_run{run}_{k}_before_kb"] = g["before"][k]
        e2e_timings[f"movable_run{run}_{k}_after_kb"] = g["after"][k]
    e2e_timings[f"movable_run{run}_given_back_at_s"] = g["uptime_end"]
    e2e_timings[f"movable_run{run}_kmem_s"] = g["kmem_s"]


def test_module_refuses_what_is_not_online_movable(movable: Scenario) -> None:
    def arm(run: int, tag: str) -> dict[str, Any]:
        return jload(movable, run, f"arm-{tag}.json")

    st = arm(1, "unreleased")
    assert st["armed"] == "0" and "not reserved memory" in st["reason"], st
    st = arm(1, "bootram")
    assert st["armed"] == "0" and st["mode"] == "none" and "boot RAM" in st["reason"], st
    st = arm(1, "partly")
    assert st["armed"] == "0" and "partly System RAM" in st["reason"], st
    st = arm(4, "normal")
    assert st["armed"] == "0" and "not Movable" in st["reason"], st
    assert "rc=0" in (movable.run_dir(4) / "offline-disarmed").read_text()


def test_armed_over_movable_range_and_kept_online(
    movable: Scenario, e2e_timings: dict[str, Any]
) -> None:
    start, size = kmem(movable)
    for run in (1, 3, 4):
        st = jload(movable, run, "arm-movable.json")
        assert st["armed"] == "1" and st["mode"] == "movable", (run, st)
        assert st["region"] == f"{start:016x}-{start + size - 1:016x}", st
    # healthy and armed, the range given back (docs: against memmap=$ of the same size)
    for line in (movable.run_dir(3) / "meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        if k in ("MemTotal", "MemAvailable", "MemFree"):
            e2e_timings[f"movable_armed_{k}_kb"] = int(v.split()[0])
    # the memory hotplug notifier refuses to offline the range while armed
    offline = (movable.run_dir(1) / "offline-while-armed").read_text()
    assert "rc=0" not in offline, offline
    assert (movable.run_dir(1) / "armed-after-offline").read_text().strip() == "1"
    assert (
        "refusing to offline memory at 0x40000000"
        in (movable.run_dir(1) / "kernel-log").read_text()
    )


def test_user_pages_in_range_then_dump_written_there(
    movable: Scenario, e2e_timings: dict[str, Any]
) -> None:
    load = jload(movable, 1, "load.json")
    assert load["in_region"] > 0, load
    est = dict(line.split(" ", 1) for line in
               (movable.run_dir(1) / "estimate").read_text().splitlines())  # fmt: skip
    assert int(est["region_in_use"]) > 0, est
    serial = movable.run.serial_text
    start, _ = kmem(movable)
    assert f"writing the dump to 0x{start:016x} (256 MiB, movable RAM)" in serial, serial[-3000:]
    m = MODULE_LINE.search(serial)
    assert m and not m["truncated"] and m["written"] == m["selected"], serial[-3000:]
    e2e_timings["movable_load_pages_in_region"] = load["in_region"]
    e2e_timings["movable_region_in_use_pages"] = int(est["region_in_use"])
    e2e_timings["movable_kept_pages_2g"] = int(est["kept_pages"])
    e2e_timings["movable_estimate_bytes_2g"] = int(est["estimate_bytes"])
    e2e_timings["movable_dump_kib_2g"] = int(m["kib"])


def test_saved_through_dax_after_crash_reboot(movable: Scenario) -> None:
    head = (movable.run_dir(2) / "region-head").read_bytes()
    assert head[:8] == b"MCOREDMP", head[:16]
    assert (movable.run_dir(2) / "save.rc").read_text().strip() == "0", (
        movable.run_dir(2) / "save.out"
    ).read_text()
    found = dumps(movable)
    assert len(found) == 1, found
    inf = json.loads((found[0] / "info.json").read_text())
    assert inf["complete"] is True and inf["panic"] == "sysrq triggered crash", inf


def test_clean_reboot_with_user_data_in_range_is_no_dump(movable: Scenario) -> None:
    load = jload(movable, 3, "load.json")
    assert load["in_region"] > 0, load
    head = (movable.run_dir(4) / "region-head").read_bytes()
    # the load's pages (each starting with the magic) are what the range holds now
    assert head[:8] == b"MCOREDMP" and head[8:16] == b"\x5a" * 8, head[:16]
    assert len(dumps(movable)) == 1  # still only the crash's


def test_crash_reads_the_saved_dump(
    movable: Scenario, vmlinux: debug_tools.Vmlinux, crash_cmd: list[str]
) -> None:
    vmcore = dumps(movable)[0] / "vmcore"
    s = readers.run_crash(crash_cmd, vmlinux.path, vmcore,
                          {"bt": "bt", "log": "log", "ps": "ps"},
                          movable.workdir / "crash")  # fmt: skip
    assert "sysrq_handle_crash" in s["bt"], s["bt"] + s.stderr
    assert "sysrq triggered crash" in s["log"], s["log"][-2000:]
    assert readers.ps_has_systemd_pid1(s["ps"]), s["ps"][:2000]
