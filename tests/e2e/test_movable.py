"""Nothing reserved while healthy: the dump region is movable RAM between crashes.

A 2 GiB guest boots with ``memmap=272M!0x3F000000``: every boot the range is legacy
persistent memory, kept from the page allocator, until dumpsaver.service gives it back
(namespace to devdax, device to system-ram, onlined movable) once no dump waits there,
and dumpsaver-arm.service arms the module over the memory blocks kmem added.  One QEMU
process, four boots:

- boot 1 (fresh): given back, armed; offlining the range while armed fails; a user-space
  load holds pages in the range (pagemap, and the module's own count); ``echo c``;
- boot 2: the crash reboot kept RAM; the namespace is devdax again; dumpsaver.service
  saves the dump read through ``/dev/dax0.0``, gives the range back, restarts cleanly;
- boot 3: given back, armed again; the load fills the range with user data (its first
  page, where a header would be, too); a clean ``systemctl reboot``;
- boot 4: no dump (user data is not one), given back, armed; then the module
  refuses what is not online movable RAM (the whole pmem range, boot RAM, the range
  onlined in another zone); power off.

The saved dump is read on the host by crash with the kernel's debug vmlinux.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import debug_tools
import evidence
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
LOAD_MIB = 300

SCRIPT = f"""\
#!/bin/sh
# $1: run number (one per boot that reaches multi-user), $2: its evidence directory
d="$2"
P="python3 /e2e/pmem-e2e.py"
kmem() {{ python3 -c 'import json,sys; print(*json.load(open(sys.argv[1]))["kmem"])' \\
    "$d/facts.json"; }}
collect() {{
    $P facts "$d"
    cat /proc/iomem > "$d/iomem"
    grep -A6 'zone  *Movable' /proc/zoneinfo > "$d/zoneinfo-movable" 2>&1
    for f in /sys/kernel/dumpsaver/*; do echo "== ${{f##*/}}"; cat "$f"; done \\
        > "$d/kmod-sysfs" 2>&1
    systemctl show dumpsaver-arm.service -p ActiveState,Result > "$d/arm-unit" 2>&1
    journalctl -b -o cat -u dumpsaver.service -u dumpsaver-arm.service > "$d/ds-journal" 2>&1
    ndctl list -N -v > "$d/ndctl-list" 2>&1
    daxctl list -M > "$d/daxctl-list" 2>&1
}}
load() {{
    $P load "$d" {LOAD_MIB} > "$d/load.out" 2>&1 &
    i=0; while [ ! -e "$d/load-ready" ] && [ $i -lt 600 ]; do sleep 0.5; i=$((i+1)); done
    cat /sys/kernel/dumpsaver/estimate > "$d/estimate" 2>&1
}}
case "$1" in
1)
    collect
    daxctl offline-memory dax0.0 > "$d/offline-while-armed" 2>&1
    echo "rc=$?" >> "$d/offline-while-armed"
    cat /sys/kernel/dumpsaver/armed > "$d/armed-after-offline"
    journalctl -b -k -o short-monotonic --no-pager > "$d/kernel-log" 2>&1
    load
    sync
    echo c > /proc/sysrq-trigger
    ;;
2)
    collect
    load
    sync
    systemctl reboot
    ;;
*)
    collect
    set -- $(kmem)
    $P arm "$d" partly {PMEM_START:#x} {PMEM_SIZE}
    $P arm "$d" bootram {BOOT_RAM[0]:#x} {BOOT_RAM[1]}
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
    start, size = jload(sc, 1, "facts.json")["kmem"]
    return start, size


def dumps(sc: Scenario) -> list[Path]:
    assert sc.dumps is not None, sc.explain()
    return [p for p in sc.dumps.iterdir() if p.is_dir()]


GIVEN_BACK = re.compile(r"MemTotal (\d+) -> (\d+) kB")


def test_four_boots_three_reach_multi_user(movable: Scenario) -> None:
    sc = movable
    assert not sc.run.timed_out, sc.explain()
    assert sc.run.returncode == 0, sc.explain()
    assert sc.run.kernel_boots == 4, sc.explain()
    assert "Kernel panic - not syncing: sysrq triggered crash" in sc.run.serial_text
    assert sc.runs() == 3, sc.explain()  # boot 2 saved and restarted before multi-user
    assert len(sc.boots) == 4, [b.boot_id for b in sc.boots]


@pytest.mark.parametrize("boot", [1, 2, 3, 4])
def test_range_given_back_every_boot(
    movable: Scenario, boot: int, e2e_timings: dict[str, Any]
) -> None:
    """dumpsaver.service gives the range back in every boot (in boot 2 after the save):
    whole memory blocks, all online Movable, MemTotal up by exactly their size."""
    b = movable.boots[boot - 1]
    # after a save the give-back is the release's second step ("released")
    ev = b.event("released" if boot == 2 else "given-back")
    assert ev is not None, b.messages("dumpsaver.service")
    assert not b.has_event("give-back-failed"), b.messages("dumpsaver.service")
    m = GIVEN_BACK.search(ev["MESSAGE"])
    assert m, ev["MESSAGE"]
    before, after = int(m[1]), int(m[2])
    assert after - before == 256 << 10, ev["MESSAGE"]
    e2e_timings[f"movable_boot{boot}_MemTotal_before_kb"] = before
    e2e_timings[f"movable_boot{boot}_MemTotal_after_kb"] = after
    # seconds from kernel start until the range was RAM again
    e2e_timings[f"movable_boot{boot}_given_back_at_s"] = round(evidence.mono(ev) / 1e6, 1)
    if boot == 2:
        order = ["dump-found", "saved", "released", "restart-requested"]
        stamps = [evidence.mono(b.event(e)) for e in order]
        assert stamps == sorted(stamps), dict(zip(order, stamps, strict=True))
        return
    run = {1: 1, 3: 2, 4: 3}[boot]
    f = jload(movable, run, "facts.json")
    start, size = f["kmem"]
    assert start == 0x40000000 and size == 256 << 20, f  # devdax metadata in the first 16 MiB
    assert f["blocks"] and all(v == {"state": "online", "valid_zones": "Movable"}
                               for v in f["blocks"].values()), f["blocks"]  # fmt: skip
    assert f["dax_driver"] == "kmem", f
    for k in ("MemTotal", "MemAvailable", "MemFree"):
        e2e_timings[f"movable_run{run}_armed_{k}_kb"] = f["meminfo"][k]


@pytest.mark.parametrize("run", [1, 2, 3])
def test_armed_over_the_movable_range(movable: Scenario, run: int) -> None:
    start, size = kmem(movable)
    d = movable.run_dir(run)
    unit = dict(line.split("=", 1) for line in (d / "arm-unit").read_text().splitlines())
    assert unit == {"ActiveState": "active", "Result": "success"}, (d / "ds-journal").read_text()
    sysfs = (d / "kmod-sysfs").read_text()
    assert "== armed\n1\n" in sysfs and "== mode\nmovable\n" in sysfs, sysfs
    assert f"== region\n{start:016x}-{start + size - 1:016x}\n" in sysfs, sysfs


def test_offline_refused_while_armed(movable: Scenario) -> None:
    offline = (movable.run_dir(1) / "offline-while-armed").read_text()
    assert "rc=0" not in offline and "Device or resource busy" in offline, offline
    assert (movable.run_dir(1) / "armed-after-offline").read_text().strip() == "1"
    log = (movable.run_dir(1) / "kernel-log").read_text()
    assert "refusing to offline memory at 0x40000000" in log, log[-3000:]
    # once disarmed, the same offline goes through (boot 4)
    assert "rc=0" in (movable.run_dir(3) / "offline-disarmed").read_text()


def test_module_refuses_what_is_not_online_movable(movable: Scenario) -> None:
    def arm(tag: str) -> dict[str, Any]:
        return jload(movable, 3, f"arm-{tag}.json")

    st = arm("partly")
    assert st["armed"] == "0" and "partly System RAM" in st["reason"], st
    st = arm("bootram")
    assert st["armed"] == "0" and st["mode"] == "none" and "boot RAM" in st["reason"], st
    st = arm("normal")  # daxctl onlined it in the zone below: DMA32 in a 2 GiB guest
    assert st["armed"] == "0" and "not Movable" in st["reason"], st
    assert "at 0x40000000" in st["reason"], st


def test_user_pages_in_range_then_dump_written_there(
    movable: Scenario, e2e_timings: dict[str, Any]
) -> None:
    load = jload(movable, 1, "load.json")
    assert load["in_region"] > 0, load
    est = dict(line.split(" ", 1) for line in
               (movable.run_dir(1) / "estimate").read_text().splitlines())  # fmt: skip
    assert int(est["region_in_use"]) >= load["in_region"], (est, load)
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
    e2e_timings["movable_notifier_ms_tcg"] = int(m["ms"])


def test_saved_through_dax_after_crash_reboot(movable: Scenario) -> None:
    b = movable.boots[1]
    found = b.event("dump-found")
    assert found is not None, b.messages("dumpsaver.service")
    assert "dax0.0" in " ".join(b.messages("dumpsaver.service")), b.messages("dumpsaver.service")
    assert b.has_event("saved"), b.messages("dumpsaver.service")
    got = dumps(movable)
    assert len(got) == 1, got
    inf = json.loads((got[0] / "info.json").read_text())
    assert inf["complete"] is True and inf["panic"] == "sysrq triggered crash", inf
    assert inf["pages"]["saved"] == int(MODULE_LINE.search(movable.run.serial_text)["written"])


def test_clean_reboot_with_user_data_in_range_is_no_dump(movable: Scenario) -> None:
    load = jload(movable, 2, "load.json")
    assert load["in_region"] > 0, load
    b = movable.boots[3]
    for ev in ("dump-found", "saved", "failed"):
        assert not b.has_event(ev), (ev, b.messages("dumpsaver.service"))
    assert len(dumps(movable)) == 1  # still only the crash's
    # user data in the range, not a dump: given back again (whether the load held the
    # header's place, the first page, is recorded: in QEMU another owner kept it)
    assert b.has_event("given-back"), b.messages("dumpsaver.service")


def test_crash_reads_the_saved_dump(
    movable: Scenario, vmlinux: debug_tools.Vmlinux, crash_cmd: list[str]
) -> None:
    """As test_realcrash: bookworm's crash for bt and log, trixie's for ps (8.0.2 cannot
    build this kernel's task table).  trixie's bt stopped at panic on one of two of
    these dumps, where bookworm's unwound through sysrq_handle_crash: not asserted."""
    vmcore = dumps(movable)[0] / "vmcore"
    s = readers.run_crash(["crash"], vmlinux.path, vmcore, {"bt": "bt", "log": "log"},
                          movable.workdir / "crash")  # fmt: skip
    assert "sysrq_handle_crash" in s["bt"], s["bt"] + s.stderr
    assert "sysrq triggered crash" in s["log"], s["log"][-2000:]
    s = readers.run_crash(crash_cmd, vmlinux.path, vmcore, {"ps": "ps"},
                          movable.workdir / "crash-trixie")  # fmt: skip
    assert readers.ps_has_systemd_pid1(s["ps"]), s["ps"][:2000] + s.stderr
