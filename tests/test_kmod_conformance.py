"""The kernel module's encoding core against dumpsaver's Python encoder.

kmod/encode.c is compiled for user space (kmod/user: the same file and a zlib
shim) and fed the simulator's machines.  dumpsaver's decoder must read what it
writes, every page equal to the ground truth, and the header and directory
must say what the Python encoder says for the same input.  Compressed bytes may
differ (two zlib builds), so the fields that depend on them (data size,
directory offset, the used length of the extent) are compared by their own
rules instead.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dumpsaver import format as fmt
from dumpsaver.codecs import Codec
from dumpsaver.format import PageClass as PC
from tests.kmod_encoder import PADDR, Job, build_dsenc, decode, run_c, run_py


@pytest.fixture(scope="module")
def dsenc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = build_dsenc(tmp_path_factory.mktemp("dsenc"))
    if exe is None:
        pytest.skip("no C compiler or zlib/lz4/zstd headers "
                    "(apt-get install gcc make zlib1g-dev liblz4-dev libzstd-dev)")
    return exe


def _layout_free(h: fmt.Header) -> fmt.Header:
    """The header without the fields that depend on the compressed sizes."""
    return replace(h, data_bytes=0, dir_offset=0, extents=(fmt.Extent(h.extents[0].paddr, 0),))


CASES = [
    ("idle", 16 << 20, fmt.DEFAULT_EXCLUDED, 4096, Codec.ZLIB),
    ("busy", 16 << 20, fmt.DEFAULT_EXCLUDED, 4096, Codec.ZLIB),
    ("sparse", 32 << 20, fmt.DEFAULT_EXCLUDED, 4096, Codec.ZLIB),
    ("busy", 8 << 20, frozenset({PC.FREE}), 4096, Codec.ZLIB),
    ("idle", 16 << 20, frozenset(), 4096, Codec.ZLIB),
    ("busy", 16 << 20, fmt.DEFAULT_EXCLUDED, 16384, Codec.ZLIB),
    ("busy", 16 << 20, fmt.DEFAULT_EXCLUDED, 4096, Codec.LZ4),
    ("idle", 16 << 20, fmt.DEFAULT_EXCLUDED, 4096, Codec.ZSTD),
]


@pytest.mark.parametrize(("profile", "memory", "excluded", "page_size", "codec"), CASES)
def test_same_dump_as_python(dsenc: Path, tmp_path: Path, profile: str, memory: int,
                             excluded: frozenset[PC], page_size: int, codec: Codec) -> None:
    job = Job.make(memory, profile, 7, area_size=memory, excluded=excluded,
                   page_size=page_size, codec=codec)
    stats = run_c(dsenc, job, tmp_path / "c.mem")
    py = run_py(job, tmp_path / "py.mem")
    ch, cmeta, centries, cpages = decode(tmp_path / "c.mem", job.area_size)
    ph, pmeta, pentries, _ = decode(tmp_path / "py.mem", job.area_size)

    assert not stats["truncated"] and not ch.truncated
    assert _layout_free(ch) == _layout_free(ph) == _layout_free(py)
    assert cmeta == pmeta == job.meta
    # The directory: the same pages, the same zero/raw decisions and lengths for
    # those; compressed pages decompress to the same bytes.
    assert [(e.pfn, e.flags) for e in centries] == [(e.pfn, e.flags) for e in pentries]
    for c, p in zip(centries, pentries, strict=True):
        if c.zero or c.raw:
            assert c.length == p.length
    assert sorted(cpages) == sorted(job.order())
    for pfn, page in cpages.items():
        assert (page or bytes(page_size)) == job.machine.page(pfn), f"page {pfn}"
    # The layout rules for the size-dependent fields.
    used = ch.dir_offset + ch.nr_entries * fmt.ENTRY.size
    assert ch.dir_offset == ch.data_offset + ch.data_bytes
    assert ch.extents == (fmt.Extent(PADDR, -(-used // page_size) * page_size),)
    assert ch.nr_zero == ph.nr_zero


@pytest.mark.parametrize("area_pages", [40, 200])
def test_truncated_like_python(dsenc: Path, tmp_path: Path, area_pages: int) -> None:
    """A region too small keeps the most useful classes: a prefix of the priority
    order, marked TRUNCATED with the dropped count, every kept page intact."""
    job = Job.make(16 << 20, "busy", 3, area_size=area_pages * 4096)
    run_c(dsenc, job, tmp_path / "c.mem")
    py = run_py(job, tmp_path / "py.mem")
    ch, cmeta, _, cpages = decode(tmp_path / "c.mem", job.area_size)
    order = job.order()
    assert ch.truncated and py.truncated
    assert ch.nr_dropped == len(order) - ch.nr_entries > 0
    assert sorted(cpages) == sorted(order[: ch.nr_entries])
    for pfn, page in cpages.items():
        assert (page or bytes(4096)) == job.machine.page(pfn)
    # Same pages or close: only the compressed sizes differ.
    assert abs(ch.nr_entries - py.nr_entries) <= max(4, py.nr_entries // 10)
    assert cmeta == job.meta
    assert ch.extents[0].length <= job.area_size


def test_area_too_small_for_meta(dsenc: Path, tmp_path: Path) -> None:
    """An area that holds the header and meta but no page: a valid, empty, truncated dump."""
    job = Job.make(4 << 20, "idle", 1, area_size=4096)
    run_c(dsenc, job, tmp_path / "c.mem")
    ch, _, centries, _ = decode(tmp_path / "c.mem", job.area_size)
    assert ch.truncated and centries == [] and ch.nr_dropped == len(job.order())
