#!/usr/bin/env python3
"""Crash to service, and memory while healthy: dumpsaver against Debian's kdump-tools in
the same QEMU guest (same image, kernel, 2 GiB of RAM, an idle system after boot).

    sudo .venv/bin/python benchmarks/crash_to_service.py [--runs 2] [--work DIR]

One guest image holds both: dumpsaver and dumpsaver-dkms from this tree's .debs (DKMS
builds the module in the image, as in tests/e2e/test_realcrash.py) and Debian's
kdump-tools, kexec-tools and makedumpfile with their defaults (a rootfs variant of
tests/e2e/image.py, cached like the base one).  Which one is active is chosen by the
kernel command line only, as a user would:

- ``dumpsaver``: ``memmap=64M$0x30000000``; dumpsaver-arm.service loads the module at
  boot.  ``echo c > /proc/sysrq-trigger``: the module writes the dump into the region,
  ``panic=1`` resets keeping RAM, dumpsaver.service saves it early in the next boot and
  reboots cleanly, and the third boot reaches multi-user.target.
- ``kdump``: ``crashkernel=384M-:128M``, the default of kdump-tools'
  /etc/default/grub.d/kdump-tools.cfg (the guest boots with -kernel, so it is passed
  here); kdump-tools.service runs ``kdump-config load`` (kexec -p).  The same crash
  boots the capture kernel, which runs kdump-tools-dump.service (``makedumpfile -F -c -d
  31`` into /var/crash, its defaults), then ``reboot -f``; the next boot reaches
  multi-user.target.
- ``dumpsaver-kdump``: the same with ``format: kdump`` (dumpsaver's default is ELF; this
  saves kdump-compressed, the format makedumpfile -c writes).
- ``dumpsaver-continue``: the same with ``restart: continue``: the boot that saved the
  dump goes on to multi-user.target instead of rebooting (as FreeBSD's savecore and
  systemd-pstore do; the default stays the clean restart).
- ``none``: neither reservation, for MemTotal's baseline (one boot, no crash).

Crash to service is timed on the host: every line of the serial console is stamped with
the host's clock as it appears; from the ``Kernel panic`` line to systemd's ``Reached
target ... Multi-User System`` of the boot after the dump was saved.  The guest's own
journal (boot-relative) gives the pieces.  kexec-tools' reboot handling (LOAD_KEXEC,
default on) is turned off in the image so that every restart goes through the same reset.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import image  # noqa: E402
import qemu  # noqa: E402

KDUMP = image.Variant(
    "kdump-tools",
    ("kdump-tools", "kexec-tools", "makedumpfile"),
    hook=r"""
# kdump-tools' initrd for the capture kernel, built as its kernel hook does (before the
# modules are stripped: it takes them from here); reboots through the reset, not kexec
chroot "$root" /etc/kernel/postinst.d/kdump-tools "$rel" >&2
test -s "$root/var/lib/kdump/initrd.img-$rel"
sed -i 's/^LOAD_KEXEC=.*/LOAD_KEXEC=false/' "$root/etc/default/kexec"
""",
)
MEMORY_MB = 2048
RESULTS = HERE / "crash-to-service.json"
REGION = (0x30000000, 64 << 20)
CRASHKERNEL = "crashkernel=384M-:128M"  # kdump-tools 1.8.1's grub.d default

SCENARIO = r"""#!/bin/sh
# $1: run number (one per boot that reaches multi-user), $2: its evidence directory
d="$2"
cat /proc/meminfo > "$d/meminfo"
dmesg | grep -iE 'crashkernel|memmap|user-defined|reserved' > "$d/dmesg-reserve" 2>&1
systemctl show dumpsaver.service dumpsaver-arm.service kdump-tools.service \
    -p Id,ActiveState,Result,ExecMainStartTimestampMonotonic,ExecMainExitTimestampMonotonic \
    > "$d/bench-units" 2>&1
kdump-config status > "$d/kdump-status" 2>&1
dumpsaver status > "$d/dumpsaver-status" 2>&1
ls -laR /var/crash /var/dumps > "$d/dumps.ls" 2>&1
case "$1" in
1)
    if [ "@CRASH@" = yes ]; then
        sync
        echo c > /proc/sysrq-trigger
    fi
    systemctl poweroff
    ;;
*)
    systemctl poweroff
    ;;
esac
"""

PANIC = "Kernel panic - not syncing"
# e2e-runner.service (After=multi-user.target) prints this as it starts: multi-user.target
# was reached (systemd prints no "Reached target" for it on the console here)
SERVICE = re.compile(r"e2e-runner: run \d+")
WELCOME = re.compile(r"Welcome to \S*Debian")


def log(msg: str) -> None:
    print(f"[crash-to-service] {msg}", file=sys.stderr, flush=True)


def cmdline(kind: str) -> list[str]:
    base = [w for w in qemu.cmdline(*REGION) if not w.startswith("memmap=")]
    if kind.startswith("dumpsaver"):
        return [*base, qemu.memmap(*REGION)]
    if kind == "kdump":
        return [*base, CRASHKERNEL]
    return base


class SerialStamper(threading.Thread):
    """Tail the serial log file, stamping each complete line with time.monotonic()."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.lines: list[tuple[float, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        buf = b""
        while not self.path.exists() and not self.stop.is_set():
            time.sleep(0.02)
        with open(self.path, "rb") as f:
            while True:
                chunk = f.read(65536)
                if chunk:
                    now = time.monotonic()
                    buf += chunk
                    *done, buf = buf.split(b"\n")
                    self.lines += [(now, ln.decode(errors="replace")) for ln in done]
                elif self.stop.is_set():
                    break
                else:
                    time.sleep(0.02)


def boot(img: image.GuestImage, wd: Path, append: list[str], timeout: float) -> dict[str, Any]:
    serial, monitor = wd / "serial.log", wd / "monitor.sock"
    serial.unlink(missing_ok=True)
    cmd = qemu.qemu_command(img.image, img.kernel, img.initrd, serial, monitor,
                            memory=MEMORY_MB, append=append)
    (wd / "qemu-cmd").write_text("\n".join(cmd) + "\n")
    st = SerialStamper(serial)
    st.start()
    t0 = time.monotonic()
    la0 = os.getloadavg()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        timed_out = True
    t1 = time.monotonic()
    st.stop.set()
    st.join(5)
    (wd / "qemu-output").write_bytes(out or b"")
    (wd / "serial-stamped.txt").write_text(
        "".join(f"{t - t0:9.3f} {ln}\n" for t, ln in st.lines))
    return {"t0": t0, "seconds": round(t1 - t0, 1), "timed_out": timed_out,
            "rc": proc.returncode, "lines": st.lines, "loadavg_before": la0,
            "loadavg_after": os.getloadavg()}


def first(lines: list[tuple[float, str]], pred: Any, after: float = -1.0) -> float | None:
    for t, ln in lines:
        if t > after and pred(ln):
            return t
    return None


def meminfo(text: str) -> dict[str, int]:
    out = {}
    for ln in text.splitlines():
        k, _, v = ln.partition(":")
        if v.strip().endswith("kB"):
            out[k] = int(v.split()[0])
    return out


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def figures(kind: str, run: dict[str, Any], evidence: Path | None) -> dict[str, Any]:
    lines = [(t, ANSI.sub("", ln)) for t, ln in run["lines"]]
    f: dict[str, Any] = {"kind": kind, "qemu_s": run["seconds"], "timed_out": run["timed_out"],
                         "loadavg_before": [round(x, 2) for x in run["loadavg_before"]],
                         "loadavg_after": [round(x, 2) for x in run["loadavg_after"]]}
    welcomes = [t for t, ln in lines if WELCOME.search(ln)]
    f["boots"] = len(welcomes)
    panic = first(lines, lambda ln: PANIC in ln)
    if panic is not None:
        f["panic_at_s"] = round(panic - run["t0"], 1)
        # the boots after the panic (systemd's banner): dumpsaver's save boot and the
        # clean one after it; kdump's capture kernel and the boot after it
        after = [round(t - panic, 1) for t in welcomes if t > panic]
        f["boots_after_panic_s"] = after
        service = first(lines, lambda ln: bool(SERVICE.search(ln)), after=panic)
        f["panic_to_service_s"] = round(service - panic, 1) if service else None
        marks = {"makedumpfile_start_s": "running makedumpfile -F",
                 "makedumpfile_saved_s": "saved vmcore in",
                 "capture_reboot_s": "reboot: Restarting system",
                 "dumpsaver_started_s": "Starting dumpsaver.service",
                 "dumpsaver_stopped_s": "Stopped dumpsaver.service",
                 "capture_dump_unit_s": "Starting kdump-tools-dump.service",
                 "reboot_target_s": "Reached target reboot.target"}
        for key, text in marks.items():
            t = first(lines, lambda ln, text=text: text in ln, after=panic)
            if t is not None:
                f[key] = round(t - panic, 1)
        for _t, ln in lines:
            m = re.search(r"dumpsaver: (\d+) of (\d+) pages in (\d+) KiB in (\d+) ms", ln)
            if m:
                f["module_report"] = m.group(0)
    if evidence is not None:
        run1 = evidence / "run-1"
        if (run1 / "meminfo").exists():
            mi = meminfo((run1 / "meminfo").read_text())
            f["MemTotal_kB"] = mi.get("MemTotal")
            f["MemAvailable_kB"] = mi.get("MemAvailable")
        for name in ("dmesg-reserve", "kdump-status", "dumpsaver-status"):
            p = run1 / name
            if p.exists():
                f[name.replace("-", "_")] = p.read_text()[-1500:]
        for info in sorted(evidence.parent.glob("dumps/*/info.json")):
            d = json.loads(info.read_text())
            f["dumpsaver_save_s"] = d.get("duration_s")
            f["dumpsaver_file_bytes"] = d.get("file_size")
            f["dumpsaver_format"] = d.get("format")
        for core in sorted(evidence.parent.glob("crash/*/dump.*")):
            f["kdump_file_bytes"] = core.stat().st_size
        last = sorted(evidence.glob("run-*"))
        if last and (last[-1] / "dumps.ls").exists():
            f["dumps_ls"] = (last[-1] / "dumps.ls").read_text()[-2500:]
    return f


def reanalyze(work: Path) -> list[dict[str, Any]]:
    """The figures again from what earlier runs left in WORK (serial-stamped.txt, the
    evidence), e.g. after a change to figures()."""
    out = []
    for wd in sorted(p for p in work.iterdir() if (p / "serial-stamped.txt").exists()):
        lines = []
        for ln in (wd / "serial-stamped.txt").read_text(errors="replace").splitlines():
            t, _, text = ln.strip().partition(" ")
            try:
                lines.append((float(t), text))
            except ValueError:
                continue
        kind = wd.name.rsplit("-", 1)[0]
        run = {"lines": lines, "t0": 0.0, "seconds": None, "timed_out": None,
               "loadavg_before": [], "loadavg_after": []}
        ev = wd / "disk" / "e2e"
        f = figures(kind, run, ev if ev.exists() else None)
        f["run_dir"] = wd.name
        out.append(f)
    return out


def scenario(guest: image.GuestImage, work: Path, kind: str, n: int, timeout: float,
             extra: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    wd = work / f"{kind}-{n}"
    wd.mkdir(parents=True, exist_ok=True)
    disk = wd / "disk.img"
    crash = "no" if kind == "none" else "yes"
    files = {"/e2e/scenario.sh": SCENARIO.replace("@CRASH@", crash), **extra}
    if kind == "dumpsaver-kdump":  # the same, saved kdump-compressed as makedumpfile -c does
        files["/etc/dumpsaver/dumpsaver.yaml"] = "format: kdump\n"
    if kind == "dumpsaver-continue":  # no restart after the save: boot on to multi-user
        files["/etc/dumpsaver/dumpsaver.yaml"] = "restart: continue\n"
    img = image.scenario_image(guest, disk, files)
    log(f"{kind} run {n}: booting ({' '.join(cmdline(kind))})")
    run = boot(img, wd, cmdline(kind), timeout)
    ev = image.rdump(disk, "/root/e2e", wd / "disk")
    f = figures(kind, run, ev)
    # the saved dump's size: dumpsaver's vmcore, kdump's dump.* file
    for guest_dir in ("/var/dumps", "/var/crash"):
        got = image.rdump(disk, guest_dir, wd / "disk")
        if got is not None:
            sizes = {str(p.relative_to(got)): p.stat().st_size for p in got.rglob("*")
                     if p.is_file() and p.stat().st_size > 1 << 20}
            if sizes:
                f[f"files_{guest_dir.strip('/').replace('/', '_')}"] = sizes
    disk.unlink(missing_ok=True)  # 2 GiB sparse each: keep the evidence, not the disk
    log(f"{kind} run {n}: {json.dumps({k: v for k, v in f.items() if not isinstance(v, str)})}")
    return f


def kdump_state(base: image.BaseRootfs) -> dict[str, str]:
    """kdump-config load deletes its initrd and rebuilds it when /etc/kdump/sysctl.conf
    differs from the copy it keeps (latest_sysctls-RELEASE), as on a first load.  In this
    guest the kernel modules are stripped after the initrds were built, so a rebuilt
    capture initrd has no virtio_blk and cannot find the root disk: give it the copy a
    first load would have left, so the initrd built with the image is used."""
    conf = (base.rootfs / "etc/kdump/sysctl.conf").read_text()
    return {f"/var/lib/kdump/latest_sysctls-{base.release}": conf}


def build(work: Path, deb: Path | None, dkms: Path | None,
          rebuild: bool) -> tuple[image.GuestImage, dict[str, str]]:  # fmt: skip
    base = image.build_rootfs(image.default_cache_dir(), variant=KDUMP)
    done = work / "session" / "base.img"
    if done.exists() and not rebuild:
        return image.GuestImage(done, base.kernel, base.initrd, base.release,
                                base.version), kdump_state(base)
    if deb is None:
        r = subprocess.run([str(REPO / "packaging" / "build-deb.sh"), str(work / "deb")],
                           capture_output=True, text=True, check=True)
        deb = Path(r.stdout.strip().splitlines()[-1])
    if dkms is None:
        dkms = sorted(deb.parent.glob("dumpsaver-dkms_*.deb"))[-1]
    guest = image.build_session_image(base, deb, work / "session", extra_debs=(dkms,))
    return guest, kdump_state(base)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/dumpsaver-crash-to-service"))
    ap.add_argument("--runs", type=int, default=2, help="crashes per contender")
    ap.add_argument("--only", default="none,dumpsaver,kdump")
    ap.add_argument("--deb", type=Path, help="dumpsaver .deb (default: build one)")
    ap.add_argument("--dkms-deb", type=Path)
    ap.add_argument("--timeout", type=float, default=900.0, help="per QEMU process")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--rebuild", action="store_true",
                    help="rebuild the session image (default: reuse WORK/session/base.img)")
    ap.add_argument("--json", type=Path, default=RESULTS)
    ap.add_argument("--reanalyze", action="store_true",
                    help="only recompute the figures from the runs kept in WORK")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.reanalyze:
        runs = reanalyze(a.work)
        for f in runs:
            print(json.dumps({k: v for k, v in f.items() if not isinstance(v, str)}))
        a.json.write_text(json.dumps({"memory_mb": MEMORY_MB, "region": REGION,
                                      "crashkernel": CRASHKERNEL, "accel": qemu.accel(),
                                      "runs": runs}, indent=1) + "\n")
        return 0
    t0 = time.monotonic()
    guest, extra = build(a.work, a.deb, a.dkms_deb, a.rebuild)
    log(f"image ready in {time.monotonic() - t0:.0f} s: {guest.image}")
    if a.build_only:
        return 0
    results: list[dict[str, Any]] = []
    kinds = [k for k in a.only.split(",") if k]
    for n in range(1, a.runs + 1):
        for kind in kinds:
            if kind == "none" and n > 1:
                continue
            results.append(scenario(guest, a.work, kind, n, a.timeout, extra))
            a.json.write_text(json.dumps({"memory_mb": MEMORY_MB, "region": REGION,
                                          "crashkernel": CRASHKERNEL, "accel": qemu.accel(),
                                          "runs": results}, indent=1) + "\n")
    for r in results:
        print(f"{r['kind']:10} panic->service {r.get('panic_to_service_s')} s, "
              f"MemTotal {r.get('MemTotal_kB')} kB, load {r['loadavg_before'][0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
