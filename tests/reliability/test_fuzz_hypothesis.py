"""(3) Property-based fuzzing of the parsers (hypothesis); the coverage-guided side is
fuzz/ (atheris), run briefly by test_fuzz_atheris.py and at length by fuzz/run.sh long.

Property everywhere: only DumpsaverError subclasses come out, and what is accepted
obeys the bounds the caller relies on.
"""

from __future__ import annotations

import contextlib
import os
import random
import struct
import tempfile
import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dumpsaver import format as fmt
from dumpsaver import locate
from dumpsaver.codecs import Codec
from dumpsaver.decode import Dump
from dumpsaver.errors import DumpsaverError, FormatError
from dumpsaver.physmem import MAX_PHYS, PhysMem, Range

from .harness import Recorder

FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


def _header(**kw: object) -> fmt.Header:
    base: dict[str, object] = dict(
        page_size=4096, codec=Codec.ZLIB, mem_pages=1024, crash_time_ns=1, dump_id=uuid.UUID(int=1),
        boot_id=uuid.UUID(int=2), excluded=fmt.DEFAULT_EXCLUDED, class_pages=(0,) * 8,
        extents=(fmt.Extent(0x10000, 0x4000),),
    )  # fmt: skip
    base.update(kw)
    return fmt.Header(**base)  # type: ignore[arg-type]


@FAST
@given(st.binary(max_size=2048), st.booleans())
def test_decode_header_arbitrary_bytes(data: bytes, force: bool) -> None:
    with contextlib.suppress(FormatError):
        fmt.decode_header(data, force=force)


@FAST
@given(st.data())
def test_decode_header_mutated_with_valid_crc(data: st.DataObject) -> None:
    """Mutate fields of a valid header and fix the CRC: whatever passes must describe a
    layout inside its own area."""
    block = bytearray(_header(nr_entries=4, meta_offset=296, meta_bytes=8, data_offset=304,
                              data_bytes=100, dir_offset=404).encode())  # fmt: skip
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(block) - 5))
        block[i] = data.draw(st.integers(0, 255))
    block[-4:] = fmt.CRC.pack(fmt.page_crc(bytes(block[:-4])))
    try:
        h = fmt.decode_header(bytes(block))
    except FormatError:
        return
    assert h.header_bytes <= h.extents[0].length
    for off, n in ((h.meta_offset, h.meta_bytes), (h.data_offset, h.data_bytes),
                   (h.dir_offset, h.dir_bytes)):  # fmt: skip
        assert off >= 0 and off + n <= h.area_bytes
    assert h.nr_entries <= h.mem_pages


@FAST
@given(st.binary(max_size=4096))
def test_decode_meta_arbitrary(data: bytes) -> None:
    try:
        m = fmt.decode_meta(data)
    except FormatError:
        return
    assert len(m.prstatus) <= fmt.MAX_CPUS


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)


@FAST
@given(_text, st.dictionaries(st.sampled_from(fmt.UTS_FIELDS), _text), _text)
def test_meta_round_trip(panic: str, uts: dict[str, str], vmcoreinfo: str) -> None:
    m = fmt.MetaInfo(panic=panic, uts=uts, vmcoreinfo=vmcoreinfo)
    back = fmt.decode_meta(m.encode())
    assert back.panic == panic
    assert back.vmcoreinfo == vmcoreinfo


@FAST
@given(st.binary(min_size=32, max_size=32), st.booleans(), st.integers(-1, 2000))
def test_check_entry(raw: bytes, fix: bool, prev: int) -> None:
    h = _header(data_offset=4096, data_bytes=8192)
    if fix:
        raw = raw[:28] + fmt.CRC.pack(fmt.page_crc(raw[:28]))
    e, problem = fmt.check_entry(raw, 0, h, prev)
    if problem is None:
        assert e is not None and prev < e.pfn < h.mem_pages
        if not e.zero:
            assert h.data_offset <= e.offset and e.offset + e.length <= 4096 + 8192


@FAST
@given(st.text(max_size=400))
def test_parse_memmap_arbitrary(text: str) -> None:
    for r in locate.parse_memmap(text):
        assert 0 <= r.start < r.end


@FAST
@given(st.lists(st.tuples(st.integers(1, 1 << 40), st.integers(0, 1 << 44)), max_size=4),
       st.sampled_from(["", "K", "M", "G"]))  # fmt: skip
def test_parse_memmap_round_trip(items: list[tuple[int, int]], unit: str) -> None:
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]
    words = ",".join(f"{size}{unit}${addr:#x}" for size, addr in items)
    got = locate.parse_memmap(f"root=/dev/sda memmap={words} quiet") if items else []
    # beyond 2^63 (no /dev/mem offset reaches it) the kernel has no memory: left out
    assert got == [Range(a, a + s * mult) for s, a in items if a + s * mult <= MAX_PHYS]


@FAST
@given(st.text(max_size=600))
def test_parse_iomem_arbitrary(text: str) -> None:
    for r, _ in locate.parse_iomem(text):
        assert 0 <= r.start < r.end


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["version", "header", "ranges", "release"]),
                       st.binary(max_size=300)))  # fmt: skip
def test_from_sysfs_arbitrary_files(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for name, data in files.items():
            (root / name).write_bytes(data)
        try:
            c = locate.from_sysfs(root)
        except DumpsaverError:
            return
        if c is not None:
            assert c.ranges and all(r.start < r.end for r in c.ranges)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(st.data())
def test_whole_dump_on_a_hostile_area(data: st.DataObject) -> None:
    """A header with a valid CRC whose fields are chosen by hypothesis, over random bytes
    with CRC-valid directory entries: open + scan + pages raise only DumpsaverError and
    never read outside the area (recorded through PhysMem's on_access)."""
    guard, size = 0x10000, 0x8000
    n_ent = data.draw(st.integers(0, 40))
    big = st.integers(0, 1 << 64 - 1)
    small = st.integers(0, size)
    h = _header(
        extents=(fmt.Extent(guard, size),),
        mem_pages=data.draw(st.one_of(st.integers(1, 4096), big.filter(bool))),
        nr_entries=data.draw(st.one_of(st.just(n_ent), big)),
        meta_offset=data.draw(st.one_of(small, big)), meta_bytes=data.draw(small),
        data_offset=data.draw(st.one_of(small, big)), data_bytes=data.draw(small),
        dir_offset=data.draw(st.one_of(small, big)),
        page_size=data.draw(st.sampled_from(fmt.PAGE_SIZES)),
        codec=data.draw(st.sampled_from(list(Codec))),
    )
    body = bytearray(random.Random(data.draw(st.integers(0, 1 << 32))).randbytes(size))
    hb = h.encode()
    body[: len(hb)] = hb
    if h.dir_offset + n_ent * 32 <= size:
        for i in range(n_ent):
            o = h.dir_offset + i * 32
            e = fmt.Entry(data.draw(st.integers(0, 5000)), data.draw(st.integers(0, size)),
                          data.draw(st.integers(0, 5000)), 0, data.draw(st.integers(0, 3)))
            struct.pack_into("<32s", body, o, e.encode())  # fmt: skip
    with tempfile.NamedTemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
        f.write(b"\xee" * guard + bytes(body) + b"\xee" * guard)
        f.flush()
        rec = Recorder([Range(guard, guard + size)])
        with PhysMem(f.name, [Range(guard, guard + size)], on_access=rec) as mem:
            try:
                d = Dump(mem, guard)
                s = d.scan()
                for _ in d.pages(s):
                    pass
            except DumpsaverError:
                pass
        assert rec.outside == []
