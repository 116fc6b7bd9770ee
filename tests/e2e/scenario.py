"""One scenario: a sparse copy of the session image with its script, one QEMU process
(the guest warm-resets between its boots and powers off at the end), and what it left on
the guest's disk, read after QEMU exited."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import evidence
import image as guest_image
import qemu
from evidence import Boot


@dataclass
class Scenario:
    name: str
    workdir: Path
    run: qemu.BootRun
    image: Path
    root_e2e: Path | None
    dumps: Path | None
    state: Path | None
    boots: list[Boot] = field(default_factory=list)

    def run_dir(self, n: int) -> Path:
        assert self.root_e2e is not None, "the runner never wrote /root/e2e"
        return self.root_e2e / f"run-{n}"

    def runs(self) -> int:
        if self.root_e2e is None or not (self.root_e2e / "runs").exists():
            return 0
        return int((self.root_e2e / "runs").read_text())

    def units(self, n: int) -> dict[str, dict[str, str]]:
        """`systemctl show` of dumpsaver.service and sysinit.target in run n."""
        out: dict[str, dict[str, str]] = {}
        for block in (self.run_dir(n) / "units").read_text().split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if "Id" in props:
                out[props["Id"]] = props
        return out

    def status(self, n: int) -> dict[str, Any] | None:
        text = (self.run_dir(n) / "status.json").read_text()
        return json.loads(text) if text.strip() else None

    def explain(self) -> str:
        return (
            f"scenario {self.name}: qemu rc={self.run.returncode} "
            f"timed_out={self.run.timed_out} {self.run.seconds:.0f}s "
            f"kernel boots={self.run.kernel_boots} runner runs={self.runs()}\n"
            f"evidence in {self.workdir}\n--- serial tail ---\n{self.run.tail()}"
        )


def run_scenario(
    guest: guest_image.GuestImage,
    workdir: Path,
    name: str,
    files: dict[str, str],
    timings: dict[str, float],
    *,
    append: list[str] | None = None,
    memory: int = 1024,
    timeout: float | None = None,
) -> Scenario:
    wd = workdir / name
    wd.mkdir(parents=True, exist_ok=True)
    disk = wd / "disk.img"
    img = guest_image.scenario_image(guest, disk, files)
    t0 = time.monotonic()
    run = qemu.boot(
        img.image, img.kernel, img.initrd, wd,
        timeout=timeout or qemu.scenario_timeout(), append=append, memory=memory,
    )  # fmt: skip
    timings[f"{name}_qemu_s"] = round(time.monotonic() - t0, 1)
    out = wd / "disk"
    sc = Scenario(
        name=name,
        workdir=wd,
        run=run,
        image=disk,
        root_e2e=guest_image.rdump(disk, "/root/e2e", out),
        dumps=guest_image.rdump(disk, "/var/dumps", out),
        state=guest_image.rdump(disk, "/var/lib/dumpsaver", out),
    )
    journal = guest_image.rdump(disk, "/var/log/journal", out)
    if journal is not None:
        sc.boots = evidence.boots(evidence.read_journal(journal))
    if run.kernel_boots:
        timings[f"{name}_s_per_boot"] = round(run.seconds / run.kernel_boots, 1)
    return sc
