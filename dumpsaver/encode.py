"""The panic side's encoder: compress pages into the dump area and describe them.

A real kernel does this at panic time; the simulator and ``dumpsaver test``
call it to write real dumps (into an image file or reserved RAM via /dev/mem).
Pages arrive most useful first; when the area is full the rest are dropped and
the dump is marked TRUNCATED.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable
from dataclasses import replace

from dumpsaver import format as fmt
from dumpsaver.codecs import Codec, compressor
from dumpsaver.errors import DumpsaverError
from dumpsaver.physmem import LogicalStream


def _align(n: int, a: int = 8) -> int:
    return (n + a - 1) // a * a


def encode_dump(
    stream: LogicalStream,
    pages: Iterable[tuple[int, bytes]],
    *,
    page_size: int,
    mem_pages: int,
    codec: Codec,
    meta: fmt.MetaInfo,
    excluded: frozenset[fmt.PageClass],
    class_pages: tuple[int, ...],
    crash_time_ns: int,
    boot_id: uuid.UUID,
    dump_id: uuid.UUID | None = None,
    level: int | None = None,
    selected: int | None = None,
) -> fmt.Header:
    """Write a dump of ``pages`` ((pfn, contents), most useful first) into ``stream``.

    ``selected`` is how many pages the caller meant to save (for the dropped count
    when ``pages`` is a lazy iterator that is abandoned when space runs out).
    """
    zero_page = bytes(page_size)
    compress = compressor(codec, level)
    header = fmt.Header(
        page_size=page_size,
        codec=codec,
        mem_pages=mem_pages,
        crash_time_ns=crash_time_ns,
        dump_id=dump_id or uuid.uuid4(),
        boot_id=boot_id,
        excluded=excluded,
        class_pages=class_pages,
        extents=tuple(fmt.Extent(p, n) for p, n in stream.extents),
        nr_cpus=len(meta.prstatus),
    )
    meta_blob = meta.encode()
    meta_off = _align(header.header_bytes)
    data_off = _align(meta_off + len(meta_blob))
    if data_off + fmt.ENTRY.size > stream.size:
        raise DumpsaverError(
            f"dump area of {stream.size} bytes is too small for the header and meta data "
            f"({data_off} bytes)"
        )
    stream.write(meta_off, meta_blob)

    entries: list[fmt.Entry] = []
    pos = data_off
    buf = bytearray()  # stored bytes not yet written, starting at buf_off
    buf_off = pos
    nr_zero = 0
    seen = 0
    truncated = False
    for pfn, page in pages:
        seen += 1
        if len(page) != page_size:
            raise ValueError(f"page {pfn} has {len(page)} bytes")
        if page == zero_page:
            need = fmt.ENTRY.size
            stored = b""
            flags = fmt.EntryFlag.ZERO
        else:
            stored = compress(page)
            flags = fmt.EntryFlag(0)
            if len(stored) >= page_size:
                stored, flags = page, fmt.EntryFlag.RAW
            need = len(stored) + fmt.ENTRY.size
        if pos + need + len(entries) * fmt.ENTRY.size > stream.size:
            truncated = True
            seen -= 1
            break
        if flags & fmt.EntryFlag.ZERO:
            nr_zero += 1
            entries.append(fmt.Entry(pfn, 0, 0, 0, int(flags)))
            continue
        entries.append(fmt.Entry(pfn, pos, len(stored), fmt.page_crc(stored), int(flags)))
        buf += stored
        pos += len(stored)
        if len(buf) >= 1 << 20:
            stream.write(buf_off, bytes(buf))
            buf_off, buf = pos, bytearray()
    if buf:
        stream.write(buf_off, bytes(buf))
    entries.sort(key=lambda e: e.pfn)
    for a, b in itertools.pairwise(entries):
        if a.pfn == b.pfn:
            raise ValueError(f"page {a.pfn} given twice")
    dir_off = pos
    for i in range(0, len(entries), 8192):
        chunk = b"".join(e.encode() for e in entries[i : i + 8192])
        stream.write(dir_off + i * fmt.ENTRY.size, chunk)
    dropped = (selected - seen) if selected is not None else 0
    header = replace(
        header,
        extents=_used_extents(header.extents, dir_off + len(entries) * fmt.ENTRY.size, page_size),
        flags=fmt.HeaderFlag.TRUNCATED if truncated else fmt.HeaderFlag.NONE,
        nr_entries=len(entries),
        nr_zero=nr_zero,
        nr_dropped=max(dropped, 1 if truncated else 0),
        meta_offset=meta_off,
        meta_bytes=len(meta_blob),
        meta_crc=fmt.page_crc(meta_blob),
        data_offset=data_off,
        data_bytes=pos - data_off,
        dir_offset=dir_off,
    )
    # The header goes last: a dump is only valid once everything it describes is written.
    stream.write(0, header.encode())
    return header


def _used_extents(
    extents: tuple[fmt.Extent, ...], used: int, page_size: int
) -> tuple[fmt.Extent, ...]:
    """The extents (the last one cut to whole pages) that hold the first ``used`` bytes:
    exactly what the next boot must keep reserved, and nothing more."""
    out = []
    for e in extents:
        if used <= 0:
            break
        n = min(e.length, -(-used // page_size) * page_size)
        out.append(fmt.Extent(e.paddr, n))
        used -= n
    return tuple(out)
