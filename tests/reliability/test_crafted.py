"""Issue 9: hostile input that passes the checksums.

Each test builds a dump with correct CRCs (tests/reliability/crafted.py re-encodes
what it changes with the project's own format module) and shows that the defect
found by the outside review is gone: one bad page is one damaged page, a lying
header is refused at once or bounded by the machine, and nothing escapes as an
internal error.
"""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest

from dumpsaver import cli, config, early, locate, sanitize
from dumpsaver import format as fmt
from dumpsaver.codecs import Codec, CodecError, available, compressor, decompressor
from dumpsaver.decode import Dump
from dumpsaver.errors import ConfigError, Exit, FormatError
from dumpsaver.physmem import PhysMem, Range
from dumpsaver.writers import elf as elf_writer
from dumpsaver.writers.kdump import dumped_bitmap

from ..machine import Sim
from . import interrupt as I
from .crafted import Crafted, iomem_args
from .harness import Recorder, make_machine, read_elf_pages, report

PS = 4096


def _save(m: Sim, tmp: Path, *extra: str) -> tuple[int, dict[str, object] | None]:
    cfg = tmp / "c.yaml"
    cfg.write_text("minfree: 0\n")
    dest = tmp / "dest"
    rc = cli.main([*I.save_argv(m, dest, tmp / "state", cfg), *extra])
    assert not [p for p in dest.iterdir() if p.name.startswith(".tmp")] if dest.exists() else True
    dumps = I.visible_dumps(dest) if dest.exists() else []
    if not dumps:
        return rc, None
    (d,) = dumps
    return rc, json.loads((d / "info.json").read_text())


def _pages(m: Sim) -> tuple[int, dict[int, bytes]]:
    with PhysMem(str(m.mem), m.area) as mem:
        d = Dump(mem, m.header_paddr)
        s = d.scan()
        got = {pfn: page if page is not None else bytes(PS) for pfn, page in d.pages(s)}
        return s.nr_damaged, got


# -- 1. decompression bounded by the page size ------------------------------------------


def _zstd_terabyte(page: bytes) -> bytes:
    """A zstd frame of ``page`` whose header declares 1 TiB of content, single segment
    (so a decoder that believes it sizes its window and output by it)."""
    frame = compressor(Codec.ZSTD)(page)
    fhd = frame[4]
    single, dict_flag = (fhd >> 5) & 1, fhd & 3
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    fcs_len = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    dict_id = frame[5 + (0 if single else 1) : pos]  # the window descriptor goes
    head = frame[:4] + bytes([(3 << 6) | (1 << 5) | dict_flag]) + dict_id
    return head + (1 << 40).to_bytes(8, "little") + frame[pos + fcs_len :]


@pytest.mark.skipif(not available(Codec.ZSTD), reason="zstandard is not installed")
@pytest.mark.parametrize("fmt_name", ["elf", "kdump"])
def test_zstd_frame_claiming_a_terabyte_is_one_damaged_page(
    tmp_path: Path, fmt_name: str
) -> None:
    m = make_machine(tmp_path / "m", seed=7, codec=Codec.ZSTD)
    c = Crafted(m)
    page = m.truth(c.entries[0].pfn) if not c.entries[0].zero else bytes(range(256)) * 16
    bomb = _zstd_terabyte(page)
    with pytest.raises(CodecError):
        decompressor(Codec.ZSTD, PS)(bomb)
    i = c.stored_slot(len(bomb))
    c.set_stored(i, bomb)
    rc, info = _save(m, tmp_path, "--format", fmt_name)
    assert rc == 4 and info is not None
    assert info["pages"]["damaged"] == 1  # type: ignore[index]
    assert info["damage"] == {"page does not decompress": 1}


@pytest.mark.parametrize("codec", list(Codec))
def test_every_codec_is_bounded_by_one_page(codec: Codec) -> None:
    if not available(codec):
        pytest.skip(f"{codec.label} is not installed")
    big = bytes(64 << 20)  # 64 MiB of zeros compresses to a few KiB
    if codec is Codec.ZLIB:
        bomb = zlib.compress(big)
    elif codec is Codec.ZSTD:
        import zstandard

        bomb = zstandard.ZstdCompressor(write_content_size=False).compress(big)
    else:
        import lz4.block

        bomb = lz4.block.compress(big, store_size=False)
    tracemalloc.start()
    try:
        with pytest.raises(CodecError):
            decompressor(codec, PS)(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(bomb) + (1 << 20), peak  # a page or so, never the 64 MiB


# -- 2. overlapping extents -------------------------------------------------------------


def test_overlapping_extents_are_refused_at_once(machine: Sim, tmp_path: Path) -> None:
    c = Crafted(machine)
    a = c.header.extents[0]
    n = max(2, (c.header.meta_offset - fmt.FIXED_SIZE - 4) // fmt.EXTENT.size)
    c.set_header(extents=(a,) * n)  # the same range n times: an n-fold logical stream
    rec = Recorder(list(machine.area))
    mem = PhysMem(str(machine.mem), machine.area, on_access=rec)
    with mem, pytest.raises(FormatError, match="overlap"):
        Dump(mem, machine.header_paddr)
    assert rec.accesses <= 2  # the fixed header and the extent table, nothing more
    rc, info = _save(machine, tmp_path)
    assert rc == 6 and info is None
    assert I.header_magic(machine) == fmt.MAGIC  # still there for a fixed saver


# -- 3. ELF p_vaddr -----------------------------------------------------------------------


def _phdrs(path: Path) -> list[tuple[int, ...]]:
    data = path.read_bytes()
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    return [struct.unpack_from("<IIQQQQQQ", data, phoff + 56 * k) for k in range(phnum)]


def test_elf_high_pfn_gets_p_vaddr_zero_not_a_crash(machine: Sim, tmp_path: Path) -> None:
    c = Crafted(machine)
    high = 0x778000000 + 5  # the direct map's p_vaddr no longer fits 64 bits here
    c.set_header(mem_pages=1 << 40)
    last = len(c.entries) - 1
    c.set_entry(last, pfn=high)
    rc, info = _save(machine, tmp_path, "--iomem", str(tmp_path / "none"))
    assert rc == 0 and info is not None, rc
    (d,) = I.visible_dumps(tmp_path / "dest")
    loads = [p for p in _phdrs(d / "vmcore") if p[0] == 1]
    vaddr = {p[4] // PS: p[3] for p in loads}
    assert vaddr[high] == 0
    assert all(v == elf_writer.DIRECT_MAP + pfn * PS for pfn, v in vaddr.items() if pfn != high)
    pages = read_elf_pages(d / "vmcore", PS)
    assert pages[high] == machine.truth(c.lay.entries[last].pfn)


@pytest.mark.parametrize(
    ("lines", "want"),
    [
        ("KERNELOFFSET=0\n", elf_writer.DIRECT_MAP),
        ("KERNELOFFSET=0\nNUMBER(pgtable_l5_enabled)=1\n", elf_writer.DIRECT_MAP_L5),
        ("KERNELOFFSET=1a000000\n", None),  # KASLR and no evidence: p_vaddr 0
        ("KERNELOFFSET=1a000000\nNUMBER(page_offset_base)=0xffff9a4b80000000\n",
         0xFFFF9A4B80000000),
        ("KERNELOFFSET=1a000000\nNUMBER(page_offset_base)=0x1234\n", None),  # implausible
    ],
)
def test_elf_p_vaddr_follows_vmcoreinfo(
    machine: Sim, tmp_path: Path, lines: str, want: int | None
) -> None:
    c = Crafted(machine)
    with PhysMem(str(machine.mem), machine.area) as mem:
        meta = Dump(mem, machine.header_paddr).meta
    kept = [ln for ln in meta.vmcoreinfo.splitlines(keepends=True)
            if not ln.startswith(("BUILD-ID=", "KERNELOFFSET="))]  # fmt: skip
    meta.vmcoreinfo = "".join(kept) + lines
    c.set_meta(meta)
    rc, _info = _save(machine, tmp_path)
    assert rc == 0
    (d,) = I.visible_dumps(tmp_path / "dest")
    for p in _phdrs(d / "vmcore"):
        if p[0] == 1:
            assert p[3] == (0 if want is None else want + p[4])


def test_elf_p_vaddr_from_the_page_offset_base_variable(
    machine: Sim, tmp_path: Path
) -> None:
    """SYMBOL(page_offset_base): the variable is read from the dump, as makedumpfile does."""
    c = Crafted(machine)
    i = next(k for k, e in enumerate(c.entries) if not e.zero and 2 <= k < len(c.entries) - 2)
    e = c.entries[i]
    base = 0xFFFF9C2E40000000
    page = bytearray(machine.truth(e.pfn))
    page[8:16] = base.to_bytes(8, "little")
    stored = compressor(Codec.ZLIB)(bytes(page))
    if len(stored) > e.length:
        pytest.skip("the chosen page does not compress into its slot")
    c.set_stored(i, stored)
    with PhysMem(str(machine.mem), machine.area) as mem:
        meta = Dump(mem, machine.header_paddr).meta
    kept = [ln for ln in meta.vmcoreinfo.splitlines(keepends=True)
            if not ln.startswith(("BUILD-ID=", "KERNELOFFSET="))]  # fmt: skip
    sym = elf_writer.START_KERNEL_MAP + e.pfn * PS + 8
    meta.vmcoreinfo = "".join(kept) + f"KERNELOFFSET=1a000000\nSYMBOL(page_offset_base)={sym:x}\n"
    c.set_meta(meta)
    rc, _info = _save(machine, tmp_path)
    assert rc == 0
    (d,) = I.visible_dumps(tmp_path / "dest")
    loads = [p for p in _phdrs(d / "vmcore") if p[0] == 1]
    assert loads and all(p[3] == base + p[4] for p in loads)


# -- 4. kdump writer bounded by the machine, not by mem_pages ----------------------------


def test_kdump_file_is_bounded_by_the_machine_not_mem_pages(
    machine: Sim, tmp_path: Path
) -> None:
    c = Crafted(machine)
    c.set_header(mem_pages=1 << 32)  # 4 Gi pages: a 512 MiB bitmap each, before
    rc, info = _save(machine, tmp_path, "--format", "kdump", *iomem_args(machine, tmp_path))
    assert rc == 0 and info is not None
    (d,) = I.visible_dumps(tmp_path / "dest")
    size = (d / "vmcore").stat().st_size
    report("crafted_kdump_mem_pages", {"mem_pages": 1 << 32, "file_bytes": size,
                                       "machine_bytes": machine.manifest["memory"]})
    assert size < machine.manifest["memory"]  # the bitmaps cover this machine's RAM
    pages = I.read_kdump_pages(d / "vmcore")
    assert pages == machine.truth_pages()


def test_second_bitmap_is_streamed_in_bounded_pieces() -> None:
    from dumpsaver.decode import Scan

    s = Scan()
    for pfn in (3, 4, 5, 1 << 36, (1 << 36) + 1):
        s.add(pfn)
    nbytes = (1 << 40) // 8
    tracemalloc.start()
    try:
        pieces = [(at, len(p)) for at, p in dumped_bitmap(s, nbytes)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pieces == [(0, 1), ((1 << 36) // 8, 1)]  # the bytes with bits, nothing else
    assert peak < 3 << 20  # one piece at a time, not a 128 GiB bitmap


# -- 5. the kernel log -------------------------------------------------------------------


def test_dmesg_record_is_cut_to_32_mib() -> None:
    body = b"x" * (fmt.MAX_LOG + (8 << 20))
    blob = fmt.META_REC.pack(fmt.Meta.DMESG, 0, len(body)) + body
    assert len(fmt.decode_meta(blob).dmesg) == fmt.MAX_LOG


def test_log_cleaner_is_linear_and_bounded() -> None:
    text = "\x1b" * (4 << 20)
    tracemalloc.start()
    try:
        out = sanitize.clean_text(text, None, keep_newlines=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out == "\\x1b" * (4 << 20)
    report("crafted_log_cleaner", {"log_bytes": len(text), "peak_bytes": peak,
                                   "peak_per_log_byte": round(peak / len(text), 2)})
    assert peak <= 6 * len(text)  # the output (4 bytes per escape byte) and little else


@pytest.mark.parametrize("ch", ["\u200e", "\u200f", "\u061c", "\u202e", "\u2066", "\x9b"])
def test_bidi_marks_do_not_pass(ch: str) -> None:
    out = sanitize.clean_text(f"a{ch}b", None)
    assert ch not in out
    assert out in (f"a\\u{ord(ch):04x}b", f"a\\x{ord(ch):02x}b")


# -- 6. one bad PFN ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["beyond-memory", "far-ahead", "behind"])
def test_one_bad_pfn_is_one_damaged_page(machine: Sim, where: str) -> None:
    c = Crafted(machine)
    i = len(c.entries) // 3
    pfn = {"beyond-memory": c.header.mem_pages + 5,
           "far-ahead": c.entries[-1].pfn + 1000 if c.entries[-1].pfn + 1000 < c.header.mem_pages
           else c.header.mem_pages - 1,
           "behind": 0 if c.entries[0].pfn > 0 else c.entries[0].pfn}[where]  # fmt: skip
    c.set_entry(i, pfn=pfn)
    damaged, got = _pages(machine)
    truth = machine.truth_pages()
    want = {e.pfn for k, e in enumerate(c.lay.entries) if k != i}
    assert damaged == 1
    assert want <= set(got)
    assert all(got[p] == truth[p] for p in want)


# -- 7. kdump copies only pages that decompress ------------------------------------------


def test_kdump_save_does_not_call_an_undecodable_page_complete(
    machine: Sim, tmp_path: Path
) -> None:
    c = Crafted(machine)
    i = c.stored_slot(64)
    junk = bytes((k * 37 + 11) & 0xFF for k in range(c.entries[i].length))
    c.set_stored(i, junk)
    rc, info = _save(machine, tmp_path, "--format", "kdump")
    assert rc == 4 and info is not None and info["complete"] is False
    assert info["damage"] == {"page does not decompress": 1}
    (d,) = I.visible_dumps(tmp_path / "dest")
    pages = I.read_kdump_pages(d / "vmcore")
    assert pages[c.entries[i].pfn] == bytes(PS)  # the shared zero page, marked incomplete
    status, = struct.unpack_from("<I", (d / "vmcore").read_bytes(), 424)
    assert status & 0x8  # DUMP_DH_COMPRESSED_INCOMPLETE


# -- 9. configuration ----------------------------------------------------------------------


def _cli_config(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    capsys.readouterr()
    rc = cli.main(["--config", str(cfg), "status", "--sysfs", str(tmp_path / "no"),
                   "--cmdline", "/dev/null", "--mem", "/dev/null", "--dest", str(tmp_path / "d"),
                   "--state-dir", str(tmp_path / "st")])  # fmt: skip
    return rc, capsys.readouterr().err


def test_mixed_key_types_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err = _cli_config(tmp_path, "1: a\nformat: elf\n", capsys)
    assert rc == 2
    assert err.count("\n") <= 2 and "internal error" not in err and "setting names" in err


LAUGHS = "a: &a [" + ",".join(["x"] * 9) + "]\n" + "".join(
    f"{b}: &{b} [" + ",".join([f"*{a}"] * 9) + "]\n"
    for a, b in zip("abcdefgh", "bcdefghi", strict=True)
) + "regions: [*i]\n"


def test_billion_laughs_is_refused_fast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = time.monotonic()
    rc, err = _cli_config(tmp_path, LAUGHS, capsys)
    report("crafted_billion_laughs", {"seconds": round(time.monotonic() - t0, 3)})
    assert rc == 2 and "alias" in err and len(err) < 400


def test_config_error_quotes_a_bounded_value() -> None:
    with pytest.raises(ConfigError) as e:
        config.from_mapping({"regions": [[["x" * 100_000] * 100] * 100]}, "t")
    assert len(e.value.message) < 300


def test_fast_path_and_full_path_read_the_same_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    comments = ("# " + "x" * 77 + "\n") * ((1 << 20) // 80 - 2)

    def fast_may_locate() -> bool:
        data = early.config_bytes(str(cfg), "/nonexistent", "DUMPSAVER_CONFIG")
        return data is None or early.config_may_locate(data)

    cfg.write_text(comments + "regions: []\n")  # a locating setting just under the limit
    assert fast_may_locate() is True
    assert config.load(cfg).regions == ()
    cfg.write_text(comments * 2 + "format: kdump\n")  # beyond it: both refuse
    assert fast_may_locate() is True
    with pytest.raises(ConfigError, match="larger than"):
        config.load(cfg)
    cfg.write_text(comments * 2)
    assert fast_may_locate() is True  # too big even if all comments: the full path says so
    with pytest.raises(ConfigError):
        config.load(cfg)


# -- 10. physical addresses at or beyond 2^63 --------------------------------------------


@pytest.mark.parametrize("command", ["status", "save"])
def test_sysfs_range_beyond_2_63_is_a_clean_error(
    machine: Sim, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (machine.sys / "ranges").write_text("8000000000000000-8000000000ffffff\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minfree: 0\n")
    argv = I.save_argv(machine, tmp_path / "dest", tmp_path / "st", cfg)
    argv[argv.index("save")] = command
    if command == "status":
        argv.remove("--no-restart")
    capsys.readouterr()
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    # status reports it (no usable dump area: not ready), save fails
    assert rc == (Exit.NOT_READY if command == "status" else 1), err
    assert "internal error" not in out + err
    assert "beyond the physical address space" in (out if command == "status" else err)


def test_memmap_and_config_regions_beyond_2_63() -> None:
    assert locate.parse_memmap("memmap=16M$0x8000000000000000 memmap=16M$0x1000000") == [
        Range(0x1000000, 0x2000000)
    ]
    with pytest.raises(ConfigError, match="beyond the physical address space"):
        config.from_mapping({"regions": ["0x7fffffffffffffff:16M"]}, "t")
