"""Resource bounds as functions of the dump area, whatever the header says.

Each case runs ``dumpsaver save`` in its own process (GNU time gives its peak RSS)
on a simulated machine, clean or with a CRC-valid hostile header, and records
peak RSS, wall time and disk blocks next to the area size in
.last-figures/bounds.json (docs/reliability.md quotes them).  The asserts are on
what does not depend on the machine's speed: disk blocks against the saved pages,
peak RSS against a fixed ceiling far below what the defects cost (530 MB for the
kdump bitmap at 2^32 pages, about 5 GB for a 63 MiB log of escape bytes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dumpsaver import format as fmt
from dumpsaver import simulate

from ..machine import Sim
from . import interrupt as I
from .crafted import Crafted, iomem_args
from .harness import load_machine, make_machine, report

FIGURES: dict[str, Any] = {}


GNU_TIME = "/usr/bin/time"


def _run_save(m: Sim, tmp: Path, *extra: str) -> dict[str, Any]:
    """``dumpsaver save`` in a process of its own, under GNU time: a child forked from
    pytest itself would inherit pytest's peak RSS (Linux keeps it across exec)."""
    if not os.access(GNU_TIME, os.X_OK):
        pytest.skip("GNU time is not installed (apt install time)")
    cfg = tmp / "c.yaml"
    cfg.write_text("minfree: 0\n")
    dest = tmp / "dest"
    rss = tmp / "rss"
    argv = [*I.save_argv(m, dest, tmp / "state", cfg), *extra]
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    t0 = time.monotonic()
    p = subprocess.run([GNU_TIME, "-f", "%M", "-o", str(rss), sys.executable, "-m", "dumpsaver",
                        *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, check=False)  # fmt: skip
    wall = time.monotonic() - t0
    files = [f for f in dest.rglob("*") if f.is_file()] if dest.exists() else []
    disk = sum(f.stat().st_blocks * 512 for f in files)
    area = sum(r.end - r.start for r in m.area)
    peak = int(rss.read_text().split()[-1])
    return {"rc": p.returncode, "err": p.stderr[-300:], "area_bytes": area, "peak_rss_kb": peak,
            "wall_s": round(wall, 2), "disk_bytes": disk,
            "saved_page_bytes": m.manifest["saved_pages"] * m.page_size}  # fmt: skip


RSS_CEILING_KB = 100 << 10  # a save is ~25 MB here; the defects cost 530 MB and more


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Sim:
    return make_machine(tmp_path_factory.mktemp("bounds") / "m", memory=8 << 20, seed=3,
                        profile="busy")  # fmt: skip


CASES = {
    "clean": ({}, False),
    "mem_pages=2^32": ({"mem_pages": 1 << 32}, True),
    "mem_pages=2^40,pfn-high": ({"mem_pages": 1 << 40}, False),
}


@pytest.mark.parametrize("fmt_name", ["elf", "kdump"])
@pytest.mark.parametrize("case", list(CASES))
def test_bounds_whatever_the_header_says(
    base: Sim, tmp_path: Path, case: str, fmt_name: str
) -> None:
    changes, evidence = CASES[case]
    m = base.copy(tmp_path / "m")
    c = Crafted(m)
    if changes:
        c.set_header(**changes)
    if case.endswith("pfn-high"):
        c.set_entry(len(c.entries) - 1, pfn=(1 << 40) - 1)
    where = iomem_args(m, tmp_path) if evidence else ["--iomem", str(tmp_path / "none")]
    if case.endswith("pfn-high") and fmt_name == "kdump":
        # No evidence of the machine's size and a page claimed at PFN 2^40 - 1: the bitmaps
        # would take 256 GiB, so the free-space check refuses and the dump stays in memory.
        fig = _run_save(m, tmp_path, "--format", fmt_name, *where)
        FIGURES[f"{case}-{fmt_name}"] = fig
        assert fig["rc"] == 5 and fig["disk_bytes"] == 0, fig
        assert I.header_magic(m) == fmt.MAGIC
        return
    fig = _run_save(m, tmp_path, "--format", fmt_name, *where)
    FIGURES[f"{case}-{fmt_name}"] = fig
    report("bounds", FIGURES)
    assert fig["rc"] == 0, fig
    assert fig["peak_rss_kb"] < RSS_CEILING_KB, fig
    # Disk: the saved pages (ELF holes for zero pages, kdump compressed), the headers,
    # and bitmaps for this machine's RAM at most.
    assert fig["disk_bytes"] <= fig["saved_page_bytes"] + (1 << 20), fig


def test_bounds_of_a_hostile_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 40 MiB log of escape bytes (the panic side told to write it): cut to 32 MiB,
    cleaned in linear time, peak RSS a bounded multiple of the 32 MiB."""
    real = simulate.panic_meta

    def meta(*a: Any, **kw: Any) -> fmt.MetaInfo:
        m = real(*a, **kw)
        m.dmesg = "\x1b" * (40 << 20)
        return m

    monkeypatch.setattr(simulate, "panic_meta", meta)
    monkeypatch.setattr(fmt, "MAX_LOG", 64 << 20)  # the encoder's cut, not the saver's
    simulate.simulate(tmp_path / "m", memory=96 << 20, profile="idle", seed=3)
    monkeypatch.undo()
    m = load_machine(tmp_path / "m")
    fig = _run_save(m, tmp_path)
    fig["log_bytes"] = 40 << 20
    FIGURES["log-40MiB-escapes"] = fig
    report("bounds", FIGURES)
    assert fig["rc"] == 0, fig
    (d,) = I.visible_dumps(tmp_path / "dest")
    assert (d / "dmesg.txt").stat().st_size == 4 * fmt.MAX_LOG  # "\x1b" is 4 characters
    assert fig["peak_rss_kb"] < 16 * fmt.MAX_LOG // 1024, fig  # ~5 GB before the fix
