"""kdump-compressed output: makedumpfile's "diskdump" format, which crash reads natively.

    block 0                 disk_dump_header (464 bytes)
    blocks 1..sub_hdr_size  kdump_sub_header (104 bytes), then the ELF notes blob
                            (NT_PRSTATUS per CPU, VMCOREINFO)
    bitmap_blocks           1st bitmap: the page exists (every pfn < mem_pages);
                            2nd bitmap: the page is dumped (the scan's runs)
    page_desc array         one 24-byte entry per dumped page, ascending pfn
    page data               packed: first one shared zero page, then each page

Block size = page size.  Layout facts: ../shared/reference/formats.md; field by
field in docs/interop.md.

The point of the format here: the panic side compressed every page on its own,
as a zlib stream or a zstd frame, exactly what makedumpfile stores per page.  So
for those codecs the saver copies the stored bytes from memory into the file
without decompressing or recompressing anything.  lz4 has no kdump flag: those
pages are decompressed and stored raw (docs/performance.md says why not
recompressed).

One pass over the pages (pass two of the decoder), with bounded memory: the
page_desc array and the page data are two sequential streams in two regions of
the file, written through two buffers.  The data offset of each page depends
only on the lengths of the pages before it, so both are known as the pages
arrive.  The layout (bitmaps, number of descriptors) is fixed by pass one; a
page that turns bad in pass two is pointed at the shared zero page and the dump
is marked INCOMPLETE.  The header goes last, once that is known.

Everything is written through a ``Sink``: ``pwrite`` on a file, or records of
the flattened format (dumpsaver.writers.flat) on a pipe.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Iterator
from typing import Protocol, cast

from dumpsaver import elfnote as E
from dumpsaver import faults
from dumpsaver import format as fmt
from dumpsaver.codecs import Codec, CodecError, Decompressor, decompressor, framing_check
from dumpsaver.decode import WINDOW_SHIFT, Dump, Scan
from dumpsaver.writers import FileSink, Progress, Written

SIGNATURE = b"KDUMP   "
HEADER_VERSION = 6

#: struct disk_dump_header (x86_64 layout): signature, header_version, utsname (6 x 65),
#: pad to 8, timestamp (timeval), status, block_size, sub_hdr_size, bitmap_blocks,
#: max_mapnr, total_ram_blocks, device_blocks, written_blocks, current_cpu, nr_cpus.
DISK_DUMP_HEADER = struct.Struct("<8si390s6xqqIiiIIIIIIi")
#: struct kdump_sub_header: phys_base, dump_level, split, start_pfn, end_pfn,
#: offset_vmcoreinfo, size_vmcoreinfo, offset_note, size_note, offset_eraseinfo,
#: size_eraseinfo, start_pfn_64, end_pfn_64, max_mapnr_64.
KDUMP_SUB_HEADER = struct.Struct("<QiiQQqQqQqQQQQ")
#: struct page_desc: offset of the data, its size, compression flags, page flags.
PAGE_DESC = struct.Struct("<qIIQ")
assert (DISK_DUMP_HEADER.size, KDUMP_SUB_HEADER.size, PAGE_DESC.size) == (464, 104, 24)
TIMESTAMP_OFFSET = 408
STATUS_OFFSET = 424


class DH(enum.IntFlag):
    """Flags of page_desc.flags and disk_dump_header.status (makedumpfile's diskdump_mod.h)."""

    COMPRESSED_ZLIB = 0x1
    COMPRESSED_LZO = 0x2
    COMPRESSED_SNAPPY = 0x4
    COMPRESSED_INCOMPLETE = 0x8  # header only: some pages could not be written
    EXCLUDED_VMEMMAP = 0x10
    COMPRESSED_ZSTD = 0x20


class DumpLevel(enum.IntFlag):
    """makedumpfile -d bits: which kinds of pages were left out."""

    ZERO = 1
    CACHE = 2
    CACHE_PRIVATE = 4
    USER = 8
    FREE = 16


#: Our page classes in makedumpfile's terms (shared user mappings are page cache or shmem).
CLASS_LEVEL = {
    fmt.PageClass.FILE_CACHE: DumpLevel.CACHE | DumpLevel.CACHE_PRIVATE,
    fmt.PageClass.USER_SHARED: DumpLevel.CACHE,
    fmt.PageClass.USER_ANON: DumpLevel.USER,
    fmt.PageClass.FREE: DumpLevel.FREE,
}

#: Codecs whose stored pages are copied unchanged, and the flag saying how to read them.
PASSTHROUGH = {Codec.ZLIB: DH.COMPRESSED_ZLIB, Codec.ZSTD: DH.COMPRESSED_ZSTD}
#: Pages of other codecs (lz4) are decompressed and stored raw (flags 0), as
#: ``makedumpfile -d N`` without -c does: on the machines measured, zlib at level 1
#: costs several times more CPU than writing the bigger file takes (docs/performance.md).

DESC_BATCH = 8192  # page_desc entries per write (192 KiB)
DATA_FLUSH = 4 << 20
BITMAP_CHUNK = 1 << 20
MACHINES: dict[int, str] = {E.EM.X86_64: "x86_64", E.EM.AARCH64: "aarch64"}


class Sink(Protocol):
    """Where the file goes: ``write_at`` may be called at any offset, in any order."""

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...


def pwritev_at(sink: Sink, offset: int, pieces: list[bytes | memoryview]) -> None:
    if isinstance(sink, FileSink):
        sink.write_vec_at(offset, pieces)
    else:
        sink.write_at(offset, b"".join(pieces))


# -- layout -------------------------------------------------------------------------


class Layout:
    """Where everything goes, decided from the header and pass one only."""

    def __init__(self, dump: Dump, scan: Scan) -> None:
        h, m = dump.header, dump.meta
        self.block = bs = h.page_size
        self.mem_pages = h.mem_pages
        self.notes = E.crash_notes(m.prstatus, m.vmcoreinfo)
        self.note_off = bs + KDUMP_SUB_HEADER.size
        self.vmcoreinfo_size = len(m.vmcoreinfo.encode()) if m.vmcoreinfo else 0
        # The VMCOREINFO note comes last: its descriptor follows its 12-byte header and
        # the 4-byte aligned name "VMCOREINFO\0".
        prefix = len(E.crash_notes(m.prstatus, ""))
        self.vmcoreinfo_off = self.note_off + prefix + E.NHDR.size + 12 if m.vmcoreinfo else 0
        self.sub_hdr_blocks = _ceil(KDUMP_SUB_HEADER.size + len(self.notes), bs)
        self.bitmap_bytes = _ceil(_ceil(h.mem_pages, 8), bs) * bs  # each of the two
        self.bitmap_off = (1 + self.sub_hdr_blocks) * bs
        self.bitmap_blocks = 2 * self.bitmap_bytes // bs
        self.desc_off = self.bitmap_off + 2 * self.bitmap_bytes
        # One pass (scan not done yet): room for a descriptor per directory entry, the
        # most there can be; the ones of damaged pages stay unused (a hole).
        self.nr_desc = scan.good if scan.done else h.nr_entries
        self.data_off = self.desc_off + self.nr_desc * PAGE_DESC.size
        self.zero_off = self.data_off  # the shared zero page comes first
        self.pages_off = self.data_off + bs
        recompress = h.codec not in PASSTHROUGH
        stored = (scan.good - scan.zero) * bs if recompress else scan.stored_bytes
        if not scan.done:  # one pass (zlib, zstd): the stored pages, as the data section
            stored = h.data_bytes
        self.max_size = self.pages_off + stored  # pass two can only shrink it


def _ceil(n: int, d: int) -> int:
    return -(-n // d)


def dump_level(excluded: frozenset[fmt.PageClass]) -> int:
    level = DumpLevel(0)
    for c in excluded:
        level |= CLASS_LEVEL.get(c, DumpLevel(0))
    return int(level)


def _vmcoreinfo_value(vmcoreinfo: str, key: str) -> str | None:
    for line in vmcoreinfo.splitlines():
        k, sep, value = line.partition("=")
        if sep and k == key:
            return value.strip()
    return None


def phys_base(vmcoreinfo: str) -> int:
    """NUMBER(phys_base) from VMCOREINFO (the kernel prints it in decimal), else 0."""
    value = _vmcoreinfo_value(vmcoreinfo, "NUMBER(phys_base)")
    if value is None:
        return 0
    try:
        return int(value, 10) & 0xFFFFFFFFFFFFFFFF
    except ValueError:
        return 0


def utsname(dump: Dump) -> bytes:
    """The six utsname fields, none empty: libkdumpfile (drgn) ignores a header utsname
    with an empty sysname, nodename, release, version or machine, and then cannot tell
    the architecture.  Missing fields come from VMCOREINFO and e_machine, or are
    "(none)", the kernel's own word for an unset nodename and domainname."""
    uts = {k: v for k, v in dump.meta.uts.items() if v}
    uts.setdefault("sysname", "Linux")
    if "release" not in uts:
        release = _vmcoreinfo_value(dump.meta.vmcoreinfo, "OSRELEASE")
        if release:
            uts["release"] = release
    if "machine" not in uts and dump.meta.machine in MACHINES:
        uts["machine"] = MACHINES[dump.meta.machine]
    return b"".join(
        uts.get(k, "(none)").encode("utf-8", "replace")[: fmt.UTS_LEN - 1].ljust(fmt.UTS_LEN, b"\0")
        for k in fmt.UTS_FIELDS
    )


def headers(dump: Dump, lay: Layout, status: int) -> tuple[bytes, bytes]:
    """(disk_dump_header block, sub header + notes), ready to write at 0 and at block 1."""
    h, m = dump.header, dump.meta
    sec, ns = divmod(h.crash_time_ns, 1_000_000_000)
    dh = DISK_DUMP_HEADER.pack(
        SIGNATURE, HEADER_VERSION, utsname(dump), sec, ns // 1000, status, lay.block,
        lay.sub_hdr_blocks, lay.bitmap_blocks, min(h.mem_pages, 0xFFFFFFFF), 0, 0, 0, 0,
        max(1, len(m.prstatus)),
    )
    sub = KDUMP_SUB_HEADER.pack(
        phys_base(m.vmcoreinfo), dump_level(h.excluded), 0, 0, 0,
        lay.vmcoreinfo_off, lay.vmcoreinfo_size, lay.note_off, len(lay.notes), 0, 0,
        0, 0, h.mem_pages,
    )
    return dh.ljust(lay.block, b"\0"), sub + lay.notes


def dumped_bitmap(
    scan: Scan, nbytes: int, chunk: int = BITMAP_CHUNK
) -> Iterator[tuple[int, bytearray]]:
    """The 2nd bitmap, one bit per pfn of the scan's runs, as (offset, bytes) pieces of at
    most ``chunk`` bytes, cut to their first and last non-zero byte; the zeros between
    are left out (holes in the file).

    Memory is one piece, whatever mem_pages says; the bytes written are bounded by
    the runs (a byte or a run's length / 8 each), which pass one bounded by the size
    of the dump area.
    """
    span = chunk * 8  # pfns per piece
    cur = -1
    bm = bytearray()
    for first, count in scan.iter_runs():
        pfn, last = first, first + count
        while pfn < last:
            idx = pfn // span
            if idx != cur:
                if cur >= 0:
                    yield _trim(cur * chunk, bm)
                cur = idx
                bm = bytearray(min(chunk, nbytes - idx * chunk))
            stop = min(last, (idx + 1) * span)
            _set_bits(bm, pfn - idx * span, stop - idx * span)
            pfn = stop
    if cur >= 0:
        yield _trim(cur * chunk, bm)


def _trim(at: int, piece: bytearray) -> tuple[int, bytearray]:
    first = len(piece) - len(piece.lstrip(b"\0"))
    last = len(piece.rstrip(b"\0"))
    return at + first, piece[first:last]


def _set_bits(bm: bytearray, first: int, last: int) -> None:
    """Set bits [first, last) of ``bm``."""
    a, b = first >> 3, last >> 3
    if a == b:
        bm[a] |= ((1 << (last - first)) - 1) << (first & 7)
        return
    bm[a] |= (0xFF << (first & 7)) & 0xFF
    if b > a + 1:
        bm[a + 1 : b] = b"\xff" * (b - a - 1)
    if last & 7:
        bm[b] |= (1 << (last & 7)) - 1


def _write_ram_bitmap(sink: Sink, offset: int, mem_pages: int, nbytes: int) -> None:
    """The 1st bitmap: every pfn below mem_pages is RAM (written in bounded chunks)."""
    full, rest = divmod(mem_pages, 8)
    done = 0
    chunk = b"\xff" * BITMAP_CHUNK
    while done < full:
        n = min(BITMAP_CHUNK, full - done)
        sink.write_at(offset + done, chunk[:n])
        done += n
    tail = bytes([(1 << rest) - 1]) if rest else b""
    pad = nbytes - full - len(tail)
    sink.write_at(offset + full, tail + bytes(pad))


# -- the pages ----------------------------------------------------------------------


def write_kdump(
    sink: Sink, dump: Dump, scan: Scan, progress: Progress | None
) -> tuple[Written, int]:
    """Write the whole kdump-compressed file into ``sink``; return (Written, status)."""
    h = dump.header
    bs = h.page_size
    lay = Layout(dump, scan)
    copy_flag = int(PASSTHROUGH.get(h.codec, 0))
    decompress: Decompressor | None = None
    if h.codec not in PASSTHROUGH:
        decompress = decompressor(h.codec, bs)
    # One pass (a scan not done yet, from KdumpWriter.prepare): pages are checked as they
    # are copied and the bitmaps follow them; else pass one fixed the layout.
    one_pass = not scan.done
    if one_pass and decompress is not None:
        raise ValueError("one-pass kdump writing copies zlib and zstd pages only")

    # Bitmaps first when fixed by pass one.
    _write_ram_bitmap(sink, lay.bitmap_off, h.mem_pages, lay.bitmap_bytes)
    if not one_pass:
        for at, piece in dumped_bitmap(scan, lay.bitmap_bytes):
            sink.write_at(lay.bitmap_off + lay.bitmap_bytes + at, piece)

    zero_desc = PAGE_DESC.pack(lay.zero_off, bs, 0, 0)
    pack = PAGE_DESC.pack
    zero_flag, raw_flag = int(fmt.EntryFlag.ZERO), int(fmt.EntryFlag.RAW)
    # Two sequential streams: page_desc entries from desc_off, page data from data_off
    # (the shared zero page first).  Buffered as lists of pieces, joined at each flush.
    descs: list[bytes] = []
    desc_at = lay.desc_off
    chunks: list[bytes | memoryview] = [bytes(bs)]
    chunk_bytes = bs
    data_at = lay.data_off
    done = 0
    total = scan.good if not one_pass else h.nr_entries
    lost = 0  # pages the layout promised but pass two could not deliver

    runs = scan.iter_runs()
    first, count = next(runs, (-1, 0))
    want, end = first, first + count  # the next pfn the layout expects, the end of its run

    def skip_to(pfn: int) -> None:
        """Pages pass one found but pass two does not (their entries went bad): zeros."""
        nonlocal want, end, first, count, done, lost
        while want != -1 and (pfn == -1 or want < pfn):
            scan.note_damage("directory entry changed between passes", want)
            descs.append(zero_desc)
            lost += 1
            done += 1
            want += 1
            if want == end:
                first, count = next(runs, (-1, 0))
                want, end = first, first + count

    # Fault injection for the interruption tests (dumpsaver.faults); off: no cost.
    kill_in_loop = faults.armed("write-page")
    # A page copied unchanged must be one a reader can decompress.  Its CRC (checked on
    # the very bytes copied, by stored_raw) proves they are what the panic side's
    # compressor wrote; its framing is checked here (codecs.framing_check).
    framing_ok = framing_check(h.codec, bs)
    # Page data goes out with pwritev: views of the read cache, pages that lie back to
    # back in one cached window as one piece (seg_*: the piece being extended, as
    # logical offsets into the window object seg_obj that starts at seg_base).
    seg_obj: object = None  # (its identity: is a page in the same window?)
    seg_base = seg_start = seg_end = 0

    def end_piece() -> None:
        nonlocal seg_obj
        if seg_obj is not None:
            piece = memoryview(cast(bytes, seg_obj))[seg_start - seg_base : seg_end - seg_base]
            chunks.append(piece)
            seg_obj = None

    batches: Iterator[list[tuple[fmt.RawEntry, memoryview | None]]]
    batches = dump.walk(scan) if one_pass else dump.stored_raw(scan)
    for batch in batches:
        for e, stored in batch:
            if kill_in_loop:
                faults.checkpoint("write-page")
            pfn, flags = e[0], e[4]
            if pfn != want and not one_pass:
                skip_to(pfn)
            if stored is None:  # counted by stored_raw
                descs.append(zero_desc)
                lost += 1
            elif flags & zero_flag:
                descs.append(zero_desc)
            elif decompress is None or flags & raw_flag:
                if not (flags & raw_flag or framing_ok(stored)):
                    scan.note_damage("page does not decompress", pfn)
                    descs.append(zero_desc)
                    lost += 1
                else:
                    n = len(stored)
                    descs.append(pack(data_at + chunk_bytes, n,
                                      0 if flags & raw_flag else copy_flag, 0))
                    chunk_bytes += n
                    off, obj = e[1], stored.obj
                    if obj is seg_obj and off == seg_end:
                        seg_end += n  # the same window, right after: one piece
                    else:
                        end_piece()
                        if off >> WINDOW_SHIFT == (off + n - 1) >> WINDOW_SHIFT:
                            seg_obj, seg_start, seg_end = obj, off, off + n
                            seg_base = off >> WINDOW_SHIFT << WINDOW_SHIFT
                        else:  # read on its own, across two windows
                            chunks.append(stored)
            else:
                try:
                    page = decompress(stored)
                except CodecError:
                    scan.note_damage("page does not decompress", pfn)
                    descs.append(zero_desc)
                    lost += 1
                else:
                    end_piece()
                    descs.append(pack(data_at + chunk_bytes, bs, 0, 0))
                    chunks.append(page)
                    chunk_bytes += bs
            if not one_pass:
                want += 1
                if want == end:
                    first, count = next(runs, (-1, 0))
                    want, end = first, first + count
            done += 1
        end_piece()
        if chunk_bytes >= DATA_FLUSH:
            pwritev_at(sink, data_at, chunks)
            data_at += chunk_bytes
            chunks, chunk_bytes = [], 0
        if len(descs) >= DESC_BATCH:
            sink.write_at(desc_at, b"".join(descs))
            desc_at += len(descs) * PAGE_DESC.size
            descs = []
            if progress is not None:
                progress(done, total)
    if one_pass:
        for at, piece in dumped_bitmap(scan, lay.bitmap_bytes):
            sink.write_at(lay.bitmap_off + lay.bitmap_bytes + at, piece)
    else:
        skip_to(-1)  # the directory ended early since pass one
    if descs:
        sink.write_at(desc_at, b"".join(descs))
        desc_at += len(descs) * PAGE_DESC.size
    if chunks:
        pwritev_at(sink, data_at, chunks)
        data_at += chunk_bytes
    assert desc_at == lay.data_off or (one_pass and desc_at < lay.data_off), (desc_at, lay)
    incomplete = h.truncated or scan.nr_damaged > 0 or not (dump.meta_ok and dump.header_ok)

    status = copy_flag
    if incomplete or lost:
        status |= DH.COMPRESSED_INCOMPLETE
    dh, sub = headers(dump, lay, status)
    sink.write_at(bs, sub)
    sink.write_at(0, dh)  # last: the header describes what is now there
    if progress is not None:
        progress(done, total)
    return Written(data_at, done), status


class KdumpWriter:
    """The ``kdump`` output format (info.json says ``"format": "kdump"``)."""

    name = "kdump"
    filename = "vmcore"

    def prepare(self, dump: Dump) -> Scan:
        """zlib and zstd: nothing before the pages, one pass does it all (write_kdump);
        lz4 pages are inflated, and pass one comes first."""
        if dump.header.codec in PASSTHROUGH:
            return Scan(done=False)
        return dump.scan()

    def estimate(self, dump: Dump, scan: Scan) -> int:
        return Layout(dump, scan).max_size

    def write(self, fd: int, dump: Dump, scan: Scan, progress: Progress | None) -> Written:
        with FileSink(fd) as sink:
            written, _status = write_kdump(sink, dump, scan, progress)
        os.ftruncate(fd, written.size)
        return written
