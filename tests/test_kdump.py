"""The kdump-compressed writer and its flattened stream, checked by an independent reader.

The reader below is written from the layout in ../shared/reference/formats.md
(fixed offsets, not the writer's struct definitions), so a mistake in the
writer's structs shows here.  Real tools (drgn, crash, makedumpfile) read the
same files in test_interop.py.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from dumpsaver import codecs, locate, save
from dumpsaver import format as fmt
from dumpsaver.codecs import Codec
from dumpsaver.decode import Dump
from dumpsaver.writers import flat, get
from dumpsaver.writers.flat import write_flat
from dumpsaver.writers.kdump import FileSink, KdumpWriter, Layout, dumped_bitmap, write_kdump

from .conftest import Sim, entry_paddr, header_of, save_sim

CODECS = [c for c in Codec if codecs.available(c)]
ZLIB, LZO, SNAPPY, INCOMPLETE, ZSTD = 0x1, 0x2, 0x4, 0x8, 0x20


@dataclasses.dataclass
class KdumpFile:
    """A minimal reader of kdump-compressed files (and of makedumpfile's output)."""

    raw: bytes
    version: int
    uts: list[str]
    tv_sec: int
    tv_usec: int
    status: int
    block: int
    sub_hdr_size: int
    bitmap_blocks: int
    max_mapnr: int
    nr_cpus: int
    phys_base: int
    dump_level: int
    vmcoreinfo: str
    notes: bytes
    ram: bytes
    dumped: bytes

    @classmethod
    def open(cls, path: Path) -> KdumpFile:
        b = path.read_bytes()
        assert b[:8] == b"KDUMP   "
        (version,) = struct.unpack_from("<i", b, 8)
        uts = [b[12 + 65 * i : 12 + 65 * (i + 1)].split(b"\0")[0].decode() for i in range(6)]
        tv_sec, tv_usec = struct.unpack_from("<qq", b, 408)
        status, block, sub_hdr_size, bitmap_blocks, max_mapnr = struct.unpack_from("<IiiII", b, 424)
        (nr_cpus,) = struct.unpack_from("<i", b, 460)
        sub = block
        phys_base, dump_level = struct.unpack_from("<Qi", b, sub)
        off_vi, size_vi, off_note, size_note = struct.unpack_from("<qQqQ", b, sub + 32)
        (max_mapnr_64,) = struct.unpack_from("<Q", b, sub + 96)
        assert version < 6 or max_mapnr == min(max_mapnr_64, 0xFFFFFFFF)
        bm_off = (1 + sub_hdr_size) * block
        half = bitmap_blocks * block // 2
        return cls(
            b, version, uts, tv_sec, tv_usec, status, block, sub_hdr_size, bitmap_blocks,
            max_mapnr_64 if version >= 6 else max_mapnr, nr_cpus, phys_base, dump_level,
            b[off_vi : off_vi + size_vi].decode(), b[off_note : off_note + size_note],
            b[bm_off : bm_off + half], b[bm_off + half : bm_off + 2 * half],
        )

    @staticmethod
    def bit(bm: bytes, pfn: int) -> bool:
        return pfn >> 3 < len(bm) and bool(bm[pfn >> 3] & (1 << (pfn & 7)))

    @property
    def desc_off(self) -> int:
        return (1 + self.sub_hdr_size + self.bitmap_blocks) * self.block

    def dumped_pfns(self) -> list[int]:
        return [p for p in range(self.max_mapnr) if self.bit(self.dumped, p)]

    def descs(self) -> dict[int, tuple[int, int, int]]:
        out = {}
        for i, pfn in enumerate(self.dumped_pfns()):
            off, size, flags, _pf = struct.unpack_from("<qIIQ", self.raw, self.desc_off + 24 * i)
            out[pfn] = (off, size, flags)
        return out

    def page(self, pfn: int, desc: tuple[int, int, int]) -> bytes:
        off, size, flags = desc
        data = self.raw[off : off + size]
        assert len(data) == size, f"page {pfn}: data beyond the end of the file"
        if flags & ZLIB:
            return zlib.decompress(data)
        if flags & ZSTD:
            import zstandard

            return bytes(zstandard.ZstdDecompressor().decompress(data))
        assert flags == 0 and size == self.block, (pfn, desc)
        return data

    def note_types(self) -> list[tuple[bytes, int]]:
        out, i = [], 0
        while i + 12 <= len(self.notes):
            namesz, descsz, ntype = struct.unpack_from("<III", self.notes, i)
            name = self.notes[i + 12 : i + 12 + namesz].rstrip(b"\0")
            out.append((name, ntype))
            i += 12 + -(-namesz // 4) * 4 + -(-descsz // 4) * 4
        return out


def open_dump(sim: Sim) -> tuple[Any, Dump]:
    cand = locate.from_sysfs(sim.sys)
    assert cand is not None
    return save.open_dump(cand, str(sim.mem))


def check_file(kf: KdumpFile, sim: Sim, *, missing: frozenset[int] = frozenset()) -> int:
    """Every page the dump holds reads back equal to the ground truth; nothing else is there."""
    ps = sim.manifest["page_size"]
    mem_pages = sim.manifest["memory"] // ps
    assert kf.max_mapnr == mem_pages
    assert all(kf.bit(kf.ram, p) for p in range(mem_pages))
    assert not any(kf.bit(kf.ram, p) for p in range(mem_pages, len(kf.ram) * 8))
    saved = set(sim.saved_pfns())
    assert set(kf.dumped_pfns()) == saved - missing
    descs = kf.descs()
    for pfn, d in descs.items():
        assert kf.page(pfn, d) == sim.truth(pfn), f"page {pfn} differs"
    return len(descs)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.label)
@pytest.mark.parametrize("profile", ["idle", "busy"])
def test_kdump_roundtrip(make_sim, tmp_path, codec, profile) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=16 << 20, profile=profile, seed=21, codec=codec)
    h = header_of(sim)
    res = save_sim(sim, tmp_path / "dumps", fmt_name="kdump")
    assert res.status == "saved" and res.dump_dir is not None
    info = json.loads((res.dump_dir / "info.json").read_text())
    assert info["format"] == "kdump" and info["file"] == "vmcore"
    kf = KdumpFile.open(res.dump_dir / "vmcore")
    assert info["file_size"] == len(kf.raw)
    assert kf.version == 6 and kf.block == 4096 and kf.nr_cpus == 2
    assert kf.uts[0] == "Linux" and kf.uts[2] == "6.1.0-sim-amd64" and kf.uts[4] == "x86_64"
    assert (kf.tv_sec, kf.tv_usec) == (h.crash_time_ns // 10**9, h.crash_time_ns % 10**9 // 1000)
    assert kf.dump_level == 2 | 4 | 8 | 16  # cache, cache private, user, free: not zero pages
    assert kf.vmcoreinfo.startswith("OSRELEASE=6.1.0-sim-amd64\n")
    assert kf.note_types() == [(b"CORE", 1), (b"CORE", 1), (b"VMCOREINFO", 0)]
    want = {Codec.ZLIB: ZLIB, Codec.ZSTD: ZSTD, Codec.LZ4: 0}[codec]
    assert kf.status == want  # complete: no INCOMPLETE bit
    assert check_file(kf, sim) == sim.manifest["saved_pages"]
    descs = kf.descs()
    zero_offsets = {d[0] for p, d in descs.items() if sim.truth(p) == bytes(4096)}
    assert len(zero_offsets) <= 1, "zero pages share one stored page"
    if codec is Codec.LZ4:
        assert all(d[2] == 0 and d[1] == 4096 for d in descs.values())


@pytest.mark.parametrize("codec", [c for c in (Codec.ZLIB, Codec.ZSTD) if c in CODECS],
                         ids=lambda c: c.label)
def test_compressed_pages_are_copied_unchanged(make_sim, codec) -> None:  # type: ignore[no-untyped-def]
    """The point of the format: the stored bytes go from memory to the file as they are."""
    sim = make_sim(memory=8 << 20, profile="busy", seed=4, codec=codec)
    mem, dump = open_dump(sim)
    with mem:
        scan = dump.scan()
        stored = {e.pfn: (s, e.raw) for e, s in dump.stored_pages(scan) if not e.zero}
        out = sim.dir / "vmcore"
        with open(out, "wb") as f:
            KdumpWriter().write(f.fileno(), dump, scan, None)
    kf = KdumpFile.open(out)
    n = 0
    for pfn, (off, size, flags) in kf.descs().items():
        if pfn not in stored:
            continue
        data, raw = stored[pfn]
        assert kf.raw[off : off + size] == data
        assert flags == (0 if raw else {Codec.ZLIB: ZLIB, Codec.ZSTD: ZSTD}[codec])
        n += 1
    assert n == len(stored) > 100


def test_estimate_is_an_upper_bound(make_sim) -> None:  # type: ignore[no-untyped-def]
    for codec in CODECS:
        sim = make_sim(memory=8 << 20, profile="busy", seed=5, codec=codec)
        mem, dump = open_dump(sim)
        with mem:
            scan = dump.scan()
            kdump = KdumpWriter()
            for name, write, estimate in (("kdump", kdump.write, kdump.estimate),
                                          ("flat", write_flat, flat.estimate)):
                out = sim.dir / f"out.{name}"
                with open(out, "wb") as f:
                    w = write(f.fileno(), dump, scan, None)
                assert w.size == out.stat().st_size <= estimate(dump, scan), codec
                assert w.pages == scan.good


def test_utsname_is_never_empty() -> None:
    """libkdumpfile ignores a header utsname with an empty field, then knows no arch."""
    from types import SimpleNamespace

    from dumpsaver.writers.kdump import utsname

    meta = fmt.MetaInfo(uts={"nodename": "", "release": ""}, machine=62,
                        vmcoreinfo="PAGESIZE=4096\nOSRELEASE=6.1.0-x\n")
    raw = utsname(SimpleNamespace(meta=meta))  # type: ignore[arg-type]
    fields = [raw[65 * i : 65 * (i + 1)].rstrip(b"\0").decode() for i in range(6)]
    assert fields == ["Linux", "(none)", "6.1.0-x", "(none)", "x86_64", "(none)"]
    meta = fmt.MetaInfo(uts=dict(zip(fmt.UTS_FIELDS, "abcdef", strict=True)))
    raw = utsname(SimpleNamespace(meta=meta))  # type: ignore[arg-type]
    assert [raw[65 * i : 65 * i + 1] for i in range(6)] == [c.encode() for c in "abcdef"]


def test_get_returns_the_kdump_writer() -> None:
    w = get("kdump")
    assert (w.name, w.filename) == ("kdump", "vmcore")


def test_dumped_bitmap_edges() -> None:
    from dumpsaver.decode import Scan

    for runs in ([(0, 1)], [(7, 1)], [(8, 8)], [(3, 20), (30, 2)], [(0, 64)], [(5, 3), (9, 70)]):
        s = Scan()
        for first, count in runs:
            for p in range(first, first + count):
                s.add(p)
        bm = bytearray(16)
        for at, piece in dumped_bitmap(s, 16, chunk=3):  # pieces across byte boundaries
            assert 0 < len(piece) <= 3 and any(piece)
            bm[at : at + len(piece)] = piece
        want = {p for f, c in runs for p in range(f, f + c)}
        assert {p for p in range(128) if bm[p >> 3] >> (p & 7) & 1} == want


def _parse_flat(stream: bytes) -> tuple[list[tuple[int, int]], bytes]:
    """Rebuild a file from the flattened form, as makedumpfile -R does."""
    assert stream[:16] == b"makedumpfile\0\0\0\0"
    assert struct.unpack_from(">qq", stream, 16) == (1, 1)
    out = bytearray()
    recs = []
    i = 4096
    while True:
        off, size = struct.unpack_from(">qq", stream, i)
        i += 16
        if (off, size) == (-1, -1):
            break
        assert off >= 0 and size > 0
        recs.append((off, size))
        if len(out) < off + size:
            out.extend(bytes(off + size - len(out)))
        out[off : off + size] = stream[i : i + size]
        i += size
    assert i == len(stream), "nothing after the end record"
    return recs, bytes(out)


def test_flat_stream_rebuilds_the_file(make_sim) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=16 << 20, profile="busy", seed=6)
    mem, dump = open_dump(sim)
    with mem:
        scan = dump.scan()
        with open(sim.dir / "vmcore", "wb") as f:
            KdumpWriter().write(f.fileno(), dump, scan, None)
        with open(sim.dir / "vmcore.flat", "wb") as f:
            w = write_flat(f.fileno(), dump, scan, None)
    stream = (sim.dir / "vmcore.flat").read_bytes()
    assert w.size == len(stream)
    recs, rebuilt = _parse_flat(stream)
    assert rebuilt == (sim.dir / "vmcore").read_bytes()
    assert recs[-1][0] == 0, "the header goes last, once the status is known"


def test_flat_stream_through_a_pipe(make_sim) -> None:  # type: ignore[no-untyped-def]
    import os
    import threading

    from dumpsaver.writers import flat

    sim = make_sim(memory=8 << 20, seed=7)
    mem, dump = open_dump(sim)
    r, w = os.pipe()
    got = bytearray()

    def reader() -> None:
        while chunk := os.read(r, 1 << 16):
            got.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    with mem:
        written, scan = flat.stream(dump, w)
    os.close(w)
    t.join()
    os.close(r)
    assert written.size == len(got)
    _, rebuilt = _parse_flat(bytes(got))
    kf = KdumpFile.open(_write(sim.dir / "rebuilt", rebuilt))
    assert check_file(kf, sim) == scan.good == sim.manifest["saved_pages"]
    assert sim.magic() == fmt.MAGIC, "streaming never releases the dump"


@pytest.mark.parametrize("release", [False, True])
def test_stream_save_keeps_the_dump_unless_told(make_sim, release) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=8 << 20, seed=7)
    cand, (mem, dump) = locate.from_sysfs(sim.sys), open_dump(sim)
    assert cand is not None
    with mem, open(sim.dir / "out.flat", "wb") as f:
        written, _scan = save.stream_save(cand, dump, f.fileno(), mem_path=str(sim.mem),
                                          release_after=release)
    assert written.size == (sim.dir / "out.flat").stat().st_size
    assert sim.magic() == (fmt.SAVED_MAGIC if release else fmt.MAGIC)


def test_flat_stream_broken_pipe(make_sim) -> None:  # type: ignore[no-untyped-def]
    import os

    from dumpsaver.errors import DumpsaverError
    from dumpsaver.writers import flat

    sim = make_sim(memory=8 << 20, seed=7)
    mem, dump = open_dump(sim)
    r, w = os.pipe()
    os.close(r)
    with mem, pytest.raises(DumpsaverError, match="broken pipe"):
        flat.stream(dump, w)
    os.close(w)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- incomplete dumps -----------------------------------------------------------------


def _stored_paddr(sim: Sim, h: fmt.Header, e: fmt.Entry) -> int:
    off = e.offset
    for ext in h.extents:
        if off < ext.length:
            return ext.paddr + off
        off -= ext.length
    raise AssertionError


def _poke(sim: Sim, paddr: int, data: bytes) -> None:
    with open(sim.mem, "r+b") as f:
        f.seek(paddr)
        f.write(data)


def test_truncated_dump_is_incomplete(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=16 << 20, profile="busy", seed=8, min_addr=14 << 20, margin=1 << 20)
    assert sim.manifest["truncated"]
    res = save_sim(sim, tmp_path / "dumps", fmt_name="kdump")
    assert res.status == "incomplete" and res.dump_dir is not None
    kf = KdumpFile.open(res.dump_dir / "vmcore")
    assert kf.status == ZLIB | INCOMPLETE
    assert check_file(kf, sim) == sim.manifest["saved_pages"]


def test_damaged_pages_are_left_out(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=16 << 20, profile="busy", seed=9)
    h = header_of(sim)
    mem, dump = open_dump(sim)
    with mem:
        scan = dump.scan()
        victims = [e for e, s in dump.stored_pages(scan) if not e.zero][10:13]
    for e in victims:
        _poke(sim, _stored_paddr(sim, h, e) + 1, b"\xde\xad")
    res = save_sim(sim, tmp_path / "dumps", fmt_name="kdump")
    assert res.status == "incomplete" and res.dump_dir is not None
    assert res.info["pages"]["damaged"] == 3
    kf = KdumpFile.open(res.dump_dir / "vmcore")
    assert kf.status & INCOMPLETE
    bad = frozenset(e.pfn for e in victims)
    assert check_file(kf, sim, missing=bad) == sim.manifest["saved_pages"] - 3


def test_pages_damaged_between_passes(make_sim) -> None:  # type: ignore[no-untyped-def]
    """Pass one fixed the layout; a page that goes bad after it is written as zeros."""
    sim = make_sim(memory=16 << 20, profile="busy", seed=10)
    h = header_of(sim)
    mem, dump = open_dump(sim)
    with mem:
        scan = dump.scan()
        entries = [e for e, _s in dump.stored_pages(scan) if not e.zero]
        changed, gone = entries[5], entries[40]
        _poke(sim, _stored_paddr(sim, h, changed), b"\xff\xff\xff")
        # A directory entry that no longer checks: pass two skips it altogether.
        idx = next(i for i in range(h.nr_entries) if _entry_pfn(sim, h, i) == gone.pfn)
        _poke(sim, entry_paddr(h, idx) + 8, b"\x01")
        dump._win.cache.clear()  # what is in memory now, not what pass one cached
        out = sim.dir / "vmcore"
        with open(out, "wb") as f:
            w = KdumpWriter().write(f.fileno(), dump, scan, None)
    assert w.pages == scan.good
    assert scan.damaged["page changed between passes"] == 1
    assert scan.damaged["directory entry changed between passes"] == 1
    kf = KdumpFile.open(out)
    assert kf.status & INCOMPLETE
    descs = kf.descs()
    assert set(descs) == set(sim.saved_pfns())  # the layout did not change
    for pfn, d in descs.items():
        want = bytes(4096) if pfn in (changed.pfn, gone.pfn) else sim.truth(pfn)
        assert kf.page(pfn, d) == want, pfn


def _entry_pfn(sim: Sim, h: fmt.Header, index: int) -> int:
    with open(sim.mem, "rb") as f:
        f.seek(entry_paddr(h, index))
        return int(struct.unpack("<Q", f.read(8))[0])


def test_lz4_dump_decompressed_for_kdump(make_sim) -> None:  # type: ignore[no-untyped-def]
    if Codec.LZ4 not in CODECS:
        pytest.skip("lz4 module not installed")
    sim = make_sim(memory=8 << 20, profile="busy", seed=12, codec=Codec.LZ4)
    mem, dump = open_dump(sim)
    with mem:
        scan = dump.scan()
        lay = Layout(dump, scan)
        out = sim.dir / "vmcore"
        with open(out, "wb") as f:
            w, status = write_kdump(FileSink(f.fileno()), dump, scan, None)
    assert status == 0
    assert w.size == lay.max_size  # raw pages: the estimate is exact
    assert check_file(KdumpFile.open(out), sim) == sim.manifest["saved_pages"]
