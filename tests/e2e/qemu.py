"""Boot the e2e guest in QEMU until it powers itself off (or a hard timeout hits)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

RESERVED_START = 0x30000000
RESERVED_SIZE = 16 << 20


def memmap(start: int, size: int, kind: str = "$") -> str:
    """The kernel parameter that reserves [start, start + size) in every boot: ``$``
    reserved memory, ``!`` legacy persistent memory (given back as RAM by daxctl)."""
    return f"memmap={size >> 20}M{kind}{start:#x}"


def cmdline(start: int = RESERVED_START, size: int = RESERVED_SIZE, kind: str = "$") -> list[str]:
    return [
        "console=ttyS0",
        "root=/dev/vda",
        "rw",
        memmap(start, size, kind),
        "panic=1",
        # (6.1 has no panic_on_oops= boot parameter: it is the sysctl, or oops=panic)
        "oops=panic",
        "mitigations=off",
        "loglevel=4",
    ]


MEMMAP = memmap(RESERVED_START, RESERVED_SIZE)
CMDLINE = cmdline()


@dataclass
class BootRun:
    """What one QEMU process did: it may span several guest boots (warm resets)."""

    returncode: int | None
    timed_out: bool
    seconds: float
    serial: Path

    @property
    def serial_text(self) -> str:
        return self.serial.read_text(errors="replace")

    @property
    def kernel_boots(self) -> int:
        """Guest boots: systemd's banner, once per (re)boot, on the serial console.

        (The kernel's own "Linux version" line is hidden by loglevel=4, which keeps the
        serial console, slow under TCG, quiet.)
        """
        return len(re.findall(r"Welcome to \S*Debian", self.serial_text))

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.serial_text.splitlines()[-lines:])


def qemu_binary() -> str | None:
    return shutil.which(os.environ.get("DUMPSAVER_E2E_QEMU", "qemu-system-x86_64"))


def scenario_timeout() -> float:
    """Hard limit for one QEMU process (all boots of a scenario), DUMPSAVER_E2E_TIMEOUT."""
    return float(os.environ.get("DUMPSAVER_E2E_TIMEOUT", "600"))


def accel() -> str:
    """tcg unless DUMPSAVER_E2E_ACCEL says otherwise (kvm only where a runner has it)."""
    return os.environ.get("DUMPSAVER_E2E_ACCEL", "tcg")


def qemu_command(
    image: Path,
    kernel: Path,
    initrd: Path,
    serial: Path,
    monitor: Path,
    *,
    memory: int = 1024,
    append: list[str] | None = None,
) -> list[str]:
    qemu = qemu_binary()
    if qemu is None:
        raise FileNotFoundError("qemu-system-x86_64")
    acc = accel()
    cpu = "host" if acc == "kvm" else "qemu64"
    # A list, never a shell: the "$" in memmap= must reach the kernel as is.
    return [
        qemu,
        "-machine", f"q35,accel={acc}",
        "-cpu", cpu,
        "-smp", "2",
        "-m", str(memory),
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-serial", f"file:{serial}",
        "-monitor", f"unix:{monitor},server=on,wait=off",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", " ".join(CMDLINE if append is None else append),
        "-drive", f"file={image},if=virtio,format=raw,cache=unsafe",
    ]  # fmt: skip


def boot(
    image: Path,
    kernel: Path,
    initrd: Path,
    workdir: Path,
    *,
    timeout: float,
    append: list[str] | None = None,
    memory: int = 1024,
) -> BootRun:
    """Run QEMU until the guest powers off; kill it after ``timeout`` seconds.

    No ``-no-reboot``: a guest reboot or panic resets the machine (RAM kept) and the
    same QEMU process goes on with the next boot.  Only a poweroff ends it.
    """
    serial = workdir / "serial.log"
    monitor = workdir / "monitor.sock"
    cmd = qemu_command(image, kernel, initrd, serial, monitor, append=append, memory=memory)
    (workdir / "qemu-cmd").write_text("\n".join(cmd) + "\n")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        out, _ = proc.communicate()
    (workdir / "qemu-output").write_bytes(out or b"")
    return BootRun(proc.returncode, timed_out, time.monotonic() - t0, serial)
