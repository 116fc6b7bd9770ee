"""Figures for docs/kernel-module.md, measured in the e2e guest (not part of CI's run).

Opt-in with ``DUMPSAVER_E2E_FIGURES=1`` (one boot per figure, a minute each under TCG):

- ``reserved-2g``: the 2 GiB guest of test_movable.py with a ``memmap=272M$0x3F000000``
  reservation of the same size instead: MemTotal and MemAvailable while healthy and armed,
  against test_movable.py's boot 3 (the same range given back as movable RAM);
- ``estimate-1g``, ``estimate-4g``: the module's estimate (kernel pages kept, their size
  compressed) just after boot in a 1 GiB and a 4 GiB guest: the region size they need.

Each writes its numbers to timings.json (``figures_*``) and checks only that the module
armed and answered.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import image as guest_image
import pytest
import qemu
from scenario import run_scenario

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.figures,  # tools/test.sh deselects these by marker: CI skips nothing
    pytest.mark.skipif(
        os.environ.get("DUMPSAVER_E2E_FIGURES") != "1",
        reason="figures for the docs, one boot each: DUMPSAVER_E2E_FIGURES=1",
    ),
]

SCRIPT = """\
#!/bin/sh
d="$2"
cat /proc/meminfo > "$d/meminfo"
for f in /sys/kernel/dumpsaver/*; do echo "== ${f##*/}"; cat "$f"; done > "$d/kmod-sysfs" 2>&1
cat /sys/kernel/dumpsaver/estimate > "$d/estimate" 2>&1
cat /sys/kernel/dumpsaver/estimate > "$d/estimate2" 2>&1
systemctl poweroff
"""

CASES = {
    "reserved-2g": (2048, qemu.cmdline(0x3F000000, 272 << 20, "$")),
    "estimate-1g": (1024, qemu.cmdline(0x30000000, 64 << 20, "$")),
    "estimate-4g": (4096, qemu.cmdline(0x30000000, 128 << 20, "$")),
}


def _pairs(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        k, _, v = line.replace(":", " ").partition(" ")
        v = v.strip().split(" ")[0]
        if v.isdigit():
            out[k] = int(v)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_figure(
    case: str,
    real_guest: guest_image.GuestImage,
    e2e_workdir: Path,
    e2e_timings: dict[str, Any],
) -> None:
    memory, append = CASES[case]
    sc = run_scenario(real_guest, e2e_workdir, f"fig-{case}", {"/e2e/scenario.sh": SCRIPT},
                      e2e_timings, append=append, memory=memory)  # fmt: skip
    assert sc.run.returncode == 0 and sc.runs() == 1, sc.explain()
    d = sc.run_dir(1)
    assert "== armed\n1\n" in (d / "kmod-sysfs").read_text(), (d / "kmod-sysfs").read_text()
    mem = _pairs((d / "meminfo").read_text())
    key = case.replace("-", "_")
    for k in ("MemTotal", "MemAvailable", "MemFree"):
        e2e_timings[f"figures_{key}_{k}_kb"] = mem[k]
    for name in ("estimate", "estimate2"):
        est = _pairs((d / name).read_text())
        assert est["kept_pages"] > 0, est
        for k in ("kept_pages", "estimate_bytes", "kernel_text", "kernel_data", "page_table"):
            e2e_timings[f"figures_{key}_{name}_{k}"] = est[k]
