"""The structure-aware fuzzer (structured.py) beside the byte-flip campaign, and the
"no single bad page loses other pages" property for every field of a directory entry.

Figures go to .last-figures/structured-*.json; docs/reliability.md quotes them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dumpsaver import format as fmt
from dumpsaver.codecs import Codec, available

from ..machine import Sim
from . import structured
from .harness import make_machine, report


def _campaign(m: Sim, name: str, cases: int) -> None:
    fig = structured.campaign(m, cases)
    report(f"structured-{name}", fig)
    assert fig["escaped"] == 0, fig["examples"]
    assert fig["problems"] == 0, fig["examples"]
    assert fig["cases"] == cases and fig["opened"] > 0 and fig["refused"] > 0


def test_structured_fuzz_zlib(machines: dict[str, Sim]) -> None:
    _campaign(machines["m1"], "zlib", 1500)


def test_structured_fuzz_two_extents(machines: dict[str, Sim]) -> None:
    _campaign(machines["m2"], "two-extents", 500)


@pytest.mark.parametrize("codec", [Codec.ZSTD, Codec.LZ4])
def test_structured_fuzz_other_codecs(tmp_path: Path, codec: Codec) -> None:
    if not available(codec):
        pytest.skip(f"{codec.label} is not installed")
    _campaign(make_machine(tmp_path / "m", seed=7, codec=codec), codec.label, 500)


@pytest.mark.long
@pytest.mark.parametrize("codec", list(Codec))
def test_structured_fuzz_long(tmp_path: Path, codec: Codec) -> None:
    if not available(codec):
        pytest.skip(f"{codec.label} is not installed")
    m = make_machine(tmp_path / "m", memory=4 << 20, seed=3, codec=codec)
    _campaign(m, f"long-{codec.label}", 50000)


VALUES = {
    "pfn": lambda e, h: [0, e.pfn - 1, e.pfn + 1, e.pfn + 1000, h.mem_pages - 1, h.mem_pages,
                         h.mem_pages + 5, 1 << 40, (1 << 64) - 1],
    "offset": lambda e, h: [0, e.offset + 1, h.data_offset - 1, h.data_offset + h.data_bytes,
                            h.dir_offset, (1 << 64) - 1],
    "length": lambda e, h: [0, 1, e.length - 1, e.length + 1, h.page_size, h.page_size + 1,
                            0xFFFFFFFF],
    "crc": lambda e, h: [0, e.crc ^ 1, 0xFFFFFFFF],
    "flags": lambda e, h: [1, 2, 3, 4, 0x80000000, 0xFFFFFFFF],
}


@pytest.mark.parametrize("name", list(VALUES))
def test_no_single_bad_entry_loses_other_pages(machines: dict[str, Sim], name: str) -> None:
    """Every field of one entry, set to each hostile value with a valid entry CRC, at
    the start, middle and end of the directory: that page at most is lost."""
    runner = structured.Runner(machines["m1"])
    mut = runner.mut
    n = len(mut.entries)
    checked = 0
    try:
        for i in sorted({0, 1, n // 2, n - 3}):
            e = mut.entries[i]
            for v in VALUES[name](e, mut.h):
                v &= (1 << 64) - 1 if name in ("pfn", "offset") else 0xFFFFFFFF
                new = dataclasses.replace(e, **{name: v})
                at = mut.h.dir_offset + i * fmt.ENTRY.size
                mu = structured.Mutation("entry", f"entry[{i}].{name}={v:#x}",
                                         [(at, new.encode())], touched=i,
                                         claims=v if name == "pfn" else None)  # fmt: skip
                r = runner.run_mutation(mu)
                assert r.opened and not r.problems, (mu.what, r.problems, r.error)
                assert r.good >= n - 2, (mu.what, r.good, n)
                checked += 1
    finally:
        runner.close()
    report(f"single-entry-{name}", {"cases": checked, "entries": n})
