"""Bad input: a clear error or a salvage, never a traceback or a hang."""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import Any

import pytest

from dumpsaver import format as fmt
from dumpsaver.errors import EXIT_CORRUPT, FormatError, OutsideAreaError

from .conftest import Sim, entry_paddr, header_of, logical_paddr, run_cli, save_sim


def poke(sim: Sim, paddr: int, data: bytes) -> None:
    with open(sim.mem, "r+b") as f:
        f.seek(paddr)
        f.write(data)


def rewrite_header(sim: Sim, **changes: Any) -> fmt.Header:
    """Change header fields and re-seal the checksum: a hostile but well-formed header."""
    h = dataclasses.replace(header_of(sim), **changes)
    poke(sim, sim.header_paddr, h.encode())
    return h


def read_entry(sim: Sim, h: fmt.Header, index: int) -> fmt.Entry:
    with open(sim.mem, "rb") as f:
        f.seek(entry_paddr(h, index))
        raw = f.read(fmt.ENTRY.size)
    e, _problem = fmt.check_entry(raw, 0, h, -1)
    assert e is not None
    return e


def save_error(sim: Sim, tmp_path: Path) -> str:
    r = run_cli("save", *sim.cli_args(tmp_path / "dumps"), "--no-restart")
    assert r.returncode == EXIT_CORRUPT, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    assert sim.magic() == fmt.MAGIC, "nothing may be released when nothing was saved"
    assert not list((tmp_path / "dumps").glob("2*")) if (tmp_path / "dumps").exists() else True
    return lines[0]


def test_truncated_header(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim()
    h = header_of(sim)
    with pytest.raises(FormatError, match="truncated"):
        fmt.decode_header(h.encode()[:100])
    with pytest.raises(FormatError, match="truncated"):
        fmt.decode_header(h.encode()[:-8])


def test_bad_magic_means_no_dump(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim()
    poke(sim, sim.header_paddr, b"GARBAGE!")
    r = run_cli("save", *sim.cli_args(tmp_path / "dumps"), "--no-restart")
    assert r.returncode == 0 and "no dump" in r.stdout


def test_bad_header_checksum(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim()
    poke(sim, sim.header_paddr + 48, b"\xff")  # the crash time, under the checksum
    assert "checksum" in save_error(sim, tmp_path)


def test_bad_version(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim()
    poke(sim, sim.header_paddr + 8, (7).to_bytes(4, "little"))
    assert "version 7" in save_error(sim, tmp_path)


def test_extent_outside_the_reserved_area(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim()
    h = header_of(sim)
    far = fmt.Extent(0x1000, 0x1000)  # real data, but not reserved: must never be read
    rewrite_header(sim, extents=(*h.extents, far))
    assert "outside the reserved dump area" in save_error(sim, tmp_path)


def test_section_outside_the_area(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim()
    h = header_of(sim)
    rewrite_header(sim, dir_offset=h.area_bytes - 8)
    assert "outside the dump area" in save_error(sim, tmp_path)


@pytest.mark.parametrize("field", ["nr_entries", "meta_bytes", "data_bytes", "mem_pages"])
def test_huge_lengths(make_sim, tmp_path, field) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim()
    rewrite_header(sim, **{field: 2**63})
    save_error(sim, tmp_path)


def test_directory_entry_pointing_outside_is_damage(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim()
    h = header_of(sim)
    i = next(i for i in range(h.nr_entries) if not read_entry(sim, h, i).zero)
    e = read_entry(sim, h, i)
    evil = dataclasses.replace(e, offset=h.area_bytes + (1 << 30))  # re-sealed entry CRC
    poke(sim, entry_paddr(h, i), evil.encode())
    res = save_sim(sim, tmp_path / "dumps")
    assert res.status == "incomplete"
    assert res.info["pages"]["damaged"] == 1
    assert "page data lies outside the data section" in res.info["damage"]
    assert e.pfn in res.info["damaged_pfns_sample"]


def test_decompression_bomb(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A page whose stream expands far beyond a page: bounded, reported, the rest saved."""
    sim = make_sim()
    h = header_of(sim)
    bomb = zlib.compress(bytes(64 << 20), 9)  # 64 MiB of zeros in ~64 KiB
    i = next(i for i in range(h.nr_entries) if not read_entry(sim, h, i).zero)
    e = read_entry(sim, h, i)
    # Put the bomb in place of the page, truncated to the page's stored length, CRC re-sealed.
    stored = bomb[: e.length]
    poke(sim, logical_paddr(h, e.offset), stored)
    poke(sim, entry_paddr(h, i), dataclasses.replace(e, crc=fmt.page_crc(stored)).encode())
    res = save_sim(sim, tmp_path / "dumps")
    assert res.status == "incomplete"
    assert res.info["damage"] == {"page does not decompress": 1}


def test_page_checksum_mismatch_is_salvaged(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim()
    h = header_of(sim)
    i = next(i for i in range(h.nr_entries) if not read_entry(sim, h, i).zero)
    e = read_entry(sim, h, i)
    poke(sim, logical_paddr(h, e.offset) + 3, b"\x00\x01\x02")
    res = save_sim(sim, tmp_path / "dumps")
    assert res.status == "incomplete"
    assert res.info["damage"] == {"page checksum mismatch": 1}
    assert res.info["complete"] is False and res.info["incomplete_reasons"]
    # every other page is saved byte for byte; the damaged one is absent, not zeros
    drgn = pytest.importorskip("drgn")
    prog = drgn.Program()
    prog.set_core_dump(str(res.dump_dir / "vmcore"))  # type: ignore[operator]
    with pytest.raises(drgn.FaultError):
        prog.read(e.pfn * 4096, 4096, True)
    for pfn in sim.saved_pfns():
        if pfn != e.pfn:
            assert prog.read(pfn * 4096, 4096, True) == sim.truth(pfn)


def test_outside_area_error_is_a_format_error() -> None:
    assert issubclass(OutsideAreaError, FormatError)
