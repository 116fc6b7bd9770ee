"""A real reset in the middle of the boot-time save (issue 9), beyond SIGKILL.

Boot 1 writes a dump into the memmap= RAM and panics.  Boot 2's dumpsaver.service
saves it, and the host resets the guest from the QEMU monitor (``system_reset``: RAM
kept, as after a watchdog or a second crash) at one moment of that save, seen on the
serial console (journald forwards to it from boot 2 on, by a drop-in written in boot 1):
while pages are written (the dump was just found), right after the rename (the
"saved" line), and after the release (during the restart request).  The next boot
must save the dump exactly once and complete, nothing half-written may look
complete, and the machine must not loop.  One QEMU process per moment.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import evidence
import image as guest_image
import pytest
import qemu
from test_boot import NOSPACE_SCENARIO

pytestmark = pytest.mark.e2e

DROPIN = """\
    mkdir -p /etc/systemd/journald.conf.d
    printf '[Journal]\\nForwardToConsole=yes\\nMaxLevelConsole=info\\n' \\
        > /etc/systemd/journald.conf.d/console.conf
"""
# test_boot's no-space script without its extra reboot: boot 1 writes the journald
# drop-in, simulates and panics; every later boot that reaches the runner powers off.
SCENARIO = NOSPACE_SCENARIO.replace("1)\n", "1)\n" + DROPIN, 1).replace(
    "2)\n    systemctl reboot\n    ;;\n", ""
)
assert DROPIN in SCENARIO and "systemctl reboot" not in SCENARIO

#: moment -> (the console line after which the host resets the guest, the first time it
#: appears; seconds to wait after it).  Under TCG the 16 MiB area's save takes about
#: 1.2 s from "found dump" to "saved dump", most of it writing pages.
MOMENTS = {
    "writing-pages": ("found dump", 0.6),
    "after-rename": ("saved dump", 0.0),
    "during-restart-request": ("released the dump area", 0.0),
}


@dataclass
class ResetRun:
    name: str
    workdir: Path
    returncode: int | None
    timed_out: bool
    reset_done: bool
    serial: Path
    dumps: Path | None
    root_e2e: Path | None

    @property
    def serial_text(self) -> str:
        return self.serial.read_text(errors="replace")

    def explain(self) -> str:
        tail = "\n".join(self.serial_text.splitlines()[-60:])
        return (f"{self.name}: rc={self.returncode} timed_out={self.timed_out} "
                f"reset={self.reset_done}\nevidence in {self.workdir}\n{tail}")  # fmt: skip


def _monitor(path: Path, command: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(command.encode() + b"\n")
        time.sleep(0.2)


def _run(
    guest: guest_image.GuestImage, workdir: Path, name: str, marker: str, delay: float
) -> ResetRun:
    wd = workdir / f"reset-{name}"
    wd.mkdir(parents=True, exist_ok=True)
    img = guest_image.scenario_image(guest, wd / "disk.img", {"/e2e/scenario.sh": SCENARIO})
    serial, monitor = wd / "serial.log", wd / "monitor.sock"
    cmd = qemu.qemu_command(img.image, img.kernel, img.initrd, serial, monitor)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + qemu.scenario_timeout()
    reset_done = timed_out = False
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                timed_out = True
                proc.kill()
                break
            if not reset_done and serial.exists():
                text = serial.read_text(errors="replace")
                if marker in text:
                    time.sleep(delay)
                    _monitor(monitor, "system_reset")
                    reset_done = True
                    (wd / "reset-at").write_text(f"{delay} s after {marker!r}\n")
            time.sleep(0.01)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    out = wd / "disk"
    return ResetRun(name, wd, proc.returncode, timed_out, reset_done, serial,
                    guest_image.rdump(img.image, "/var/dumps", out),
                    guest_image.rdump(img.image, "/root/e2e", out))  # fmt: skip


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_reset_mid_save_saves_once_and_complete(
    guest: guest_image.GuestImage, e2e_workdir: Path, e2e_timings: dict[str, float], moment: str
) -> None:
    r = _run(guest, e2e_workdir, moment, *MOMENTS[moment])
    (r.workdir / "summary.txt").write_text(r.explain())
    # Where the reset landed, as the next boot saw it (a figure: the timing is the host's).
    e2e_timings[f"reset_{moment}_left_tmp"] = int("left by an interrupted save" in r.serial_text)
    e2e_timings[f"reset_{moment}_found_saved"] = int("was already saved as" in r.serial_text)
    assert r.reset_done, r.explain()
    assert not r.timed_out and r.returncode == 0, r.explain()  # it powered off: no loop
    boots = qemu.BootRun(r.returncode, r.timed_out, 0.0, r.serial).kernel_boots
    # panic boot, the boot reset mid-save, then: the boot that finishes the save (or the
    # release) and restarts, and the last boot; or, when the reset came after the
    # release, the last boot at once.  No loop either way.
    assert boots in (3, 4), r.explain()
    assert r.dumps is not None and r.root_e2e is not None, r.explain()
    visible = [p for p in r.dumps.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(visible) == 1, [p.name for p in r.dumps.iterdir()]  # exactly once
    assert not [p for p in r.dumps.iterdir() if p.name.startswith(".tmp")]  # cleaned up
    d = visible[0]
    info = json.loads((d / "info.json").read_text())
    assert info["complete"] is True, info
    truth = r.root_e2e / "truth"
    manifest = json.loads((truth / "manifest.json").read_text())
    result = evidence.compare_with_truth(d / "vmcore", truth / "before.mem", manifest)
    assert result["found"] == result["expected"] > 0, result
    assert result["equal"] == result["expected"], result
    last = max(int(p.name.split("-")[1]) for p in r.root_e2e.glob("run-*"))
    assert (r.root_e2e / f"run-{last}" / "region-head").read_bytes()[:8] == b"MCORESVD"
