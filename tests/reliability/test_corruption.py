"""(2) Corruption: seeded bit/byte flips, bursts, truncation, swapped and repeated
pages and entries, over header, meta, directory and page data.

Each case mutates one in-memory (tmpfs) copy of a simulated dump, runs the decoder
in-process (open, scan, pages) through a recording PhysMem, checks the result
against the ground truth and an oracle of which objects were touched, and undoes
the mutation.  Figures: docs/reliability.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dumpsaver import format as fmt
from dumpsaver.codecs import Codec, available
from dumpsaver.decode import Dump
from dumpsaver.errors import EXIT_CORRUPT, EXIT_INCOMPLETE, FormatError
from dumpsaver.physmem import PhysMem

from . import interrupt as I
from .harness import Recorder, Sim, make_machine, read_elf_pages, report, run_corruption


def _assert_clean(fig: dict[str, object]) -> None:
    assert fig["escaped"] == 0
    assert fig["outside_accesses"] == 0
    assert fig["problems"] == 0, fig["examples"]


# 10,000 cases in the normal run: 4,000 + 3,000 + 3,000 over the three machines.
SPLIT = {"m1": (0, 4000), "m2": (4000, 3000), "m3": (7000, 3000)}


@pytest.mark.parametrize("name", list(SPLIT))
def test_seeded_corruption(machines: dict[str, Sim], tmp_path: Path, name: str) -> None:
    first, n = SPLIT[name]
    fig = run_corruption(machines[name], tmp_path, n, first_seed=first, save_every=100)
    report(f"corruption-{name}", fig)
    _assert_clean(fig)
    assert fig["cases"] == n
    assert fig["refused"] > 0 and fig["opened"] > 0


@pytest.mark.parametrize("codec", [Codec.ZSTD, Codec.LZ4])
def test_seeded_corruption_other_codecs(tmp_path: Path, codec: Codec) -> None:
    if not available(codec):
        pytest.skip(f"{codec.label} module not installed")
    m = make_machine(tmp_path / "m", memory=512 << 10, seed=7, codec=codec)
    fig = run_corruption(m, tmp_path, 500, first_seed=20000, save_every=50)
    report(f"corruption-{codec.label}", fig)
    _assert_clean(fig)


@pytest.mark.long
def test_long_corruption(tmp_path: Path) -> None:
    """100,000 cases over bigger machines (about 10 minutes on 2 cores)."""
    total = {"cases": 0, "problems": 0, "escaped": 0, "outside_accesses": 0}
    for i, (mem, seed, codec) in enumerate([(4 << 20, 1, Codec.ZLIB), (2 << 20, 3, Codec.ZLIB),
                                           (2 << 20, 5, Codec.ZSTD)]):  # fmt: skip
        if not available(codec):
            continue
        m = make_machine(tmp_path / f"m{i}", memory=mem, seed=seed, codec=codec)
        fig = run_corruption(m, tmp_path, 33334, first_seed=100000 * (i + 1), save_every=500)
        report(f"corruption-long-{i}", fig)
        _assert_clean(fig)
        for k in total:
            total[k] += fig[k]  # type: ignore[operator]
    assert total["cases"] >= 100000


# -- the header is trusted for nothing until it passes every check --------------------


def _flip(m: Sim, logical: int, mask: int = 1) -> None:
    with open(m.mem, "r+b") as f:
        f.seek(m.header_paddr + logical)
        b = f.read(1)[0]
        f.seek(m.header_paddr + logical)
        f.write(bytes([b ^ mask]))


@pytest.mark.parametrize("where", [0, 9, 20, 36, 48, 88, 112, 144, 160, 200, 256, 260])
def test_bad_header_is_not_trusted_for_anything(machine: Sim, where: int) -> None:
    """A header failing any check: FormatError, and nothing read beyond the header
    block (the extents, directory and pages it describes are never touched)."""
    _flip(machine, where, 0x10)
    log: list[tuple[int, int]] = []
    rec = Recorder(list(machine.area), log=log)
    with (
        PhysMem(str(machine.mem), machine.candidate().ranges, on_access=rec) as mem,
        pytest.raises(FormatError),
    ):
        Dump(mem, machine.header_paddr)
    hb = fmt.FIXED_SIZE + fmt.EXTENT.size * len(machine.area) + fmt.CRC.size
    for start, length in log:
        assert machine.header_paddr <= start and start + length <= machine.header_paddr + hb


def test_bad_header_through_the_cli(machine: Sim, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """exit 6, one error line, nothing written, the dump left in memory untouched."""
    from dumpsaver import cli

    _flip(machine, 48)  # crash time: a plausible value, only the CRC tells
    before = machine.mem.read_bytes()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minfree: 0\n")
    rc = cli.main(I.save_argv(machine, tmp_path / "dest", tmp_path / "state", cfg))
    err = capsys.readouterr().err
    assert rc == EXIT_CORRUPT
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        next(ln for ln in err.splitlines() if ln.startswith("error:"))
    ]
    assert "checksum" in err and "--force" in err
    assert I.visible_dumps(tmp_path / "dest") == []
    assert machine.mem.read_bytes() == before  # not released, not "fixed"
    assert (machine.sysfs / "release").read_text() == ""


def test_force_salvages_a_header_with_only_a_bad_checksum(
    machine: Sim, tmp_path: Path
) -> None:
    """--force accepts a header whose only fault is its CRC; every other check still
    applies and every page is still verified by its own entry and page CRCs, so what
    is saved is genuine.  The dump is always marked incomplete, with the reason: a
    header that failed its checksum may have wrong counts (regression: a flipped
    nr_entries used to lose pages silently in a dump marked complete)."""
    _flip(machine, 48)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minfree: 0\n")
    argv = I.save_argv(machine, tmp_path / "dest", tmp_path / "state", cfg)
    assert I.run_forked(argv) == EXIT_CORRUPT
    assert I.run_forked([*argv, "--force"]) == EXIT_INCOMPLETE
    (d,) = I.visible_dumps(tmp_path / "dest")
    info = json.loads((d / "info.json").read_text())
    assert not info["complete"]
    assert any("--force" in r for r in info["incomplete_reasons"])
    truth = machine.truth_pages()
    pages = read_elf_pages(d / "vmcore", machine.page_size)
    assert pages.keys() == truth.keys()
    assert all(pages[p] == truth[p] for p in truth)


def test_forced_nr_entries_flip_is_marked_incomplete(machine: Sim) -> None:
    """Regression (corruption case seed 2487): --force with a flipped entry count."""
    _flip(machine, 88, 0x01)
    from dumpsaver.catalogue import build_info

    with PhysMem(str(machine.mem), machine.candidate().ranges) as mem:
        d = Dump(mem, machine.header_paddr, force=True)
        assert not d.header_ok
        s = d.scan()
        info = build_info(d, s, cand=machine.candidate(), fmt_name="elf",
                          file_size=0, started=0.0, name="x")  # fmt: skip
    assert s.good < machine.manifest["saved_pages"]
    assert not info["complete"]


def test_force_does_not_accept_an_implausible_header(machine: Sim, tmp_path: Path) -> None:
    """--force forgives the checksum only: a bad magic, version, page size, codec or
    a layout outside the area is still refused."""
    _flip(machine, 20, 0x80)  # page size 4096 -> 4224
    with (
        PhysMem(str(machine.mem), machine.candidate().ranges) as mem,
        pytest.raises(FormatError, match="page size"),
    ):
        Dump(mem, machine.header_paddr, force=True)


def test_elf_incomplete_flag_for_meta_damage(machine: Sim, tmp_path: Path) -> None:
    """Regression: a dump whose meta data failed its checksum was marked incomplete in
    info.json but not in the ELF header."""
    from .harness import layout_of, read_elf_incomplete

    lay = layout_of(machine)
    _flip(machine, lay.header.meta_offset + 3)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minfree: 0\n")
    argv = I.save_argv(machine, tmp_path / "dest", tmp_path / "state", cfg)
    assert I.run_forked(argv) == EXIT_INCOMPLETE
    (d,) = I.visible_dumps(tmp_path / "dest")
    assert read_elf_incomplete(d / "vmcore")


def test_elf_incomplete_flag_for_damage_in_pass_two(machine: Sim, tmp_path: Path) -> None:
    """Regression: a page that changes between pass one and pass two is written as
    zeros and counted; the ELF header (written before pass two) must say INCOMPLETE."""
    import os

    from dumpsaver.writers.elf import ElfWriter

    from .harness import layout_of, read_elf_incomplete

    lay = layout_of(machine)
    e = next(x for x in lay.entries if not x.zero)
    with PhysMem(str(machine.mem), machine.candidate().ranges) as mem:
        d = Dump(mem, machine.header_paddr)
        s = d.scan()
        assert s.nr_damaged == 0
        _flip(machine, lay.phys(e.offset) - machine.header_paddr)  # memory changes now
        d._win.cache.clear()  # as on a dump larger than the read cache
        fd = os.open(tmp_path / "vmcore", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            ElfWriter().write(fd, d, s, None)
        finally:
            os.close(fd)
    assert s.nr_damaged == 1
    assert read_elf_incomplete(tmp_path / "vmcore")
