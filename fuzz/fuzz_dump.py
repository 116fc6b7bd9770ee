"""Fuzz a whole dump: open (header checks), scan (pass one) and pages (pass two).

The input is a dump area placed in a memory file between two guard regions that the
saver must never touch (checked through PhysMem's on_access).  The first input byte
chooses fix-ups: recompute the header CRC, the meta CRC, the entry CRCs (and with bit
32 the page CRCs: forged pages reach the decompressors) after the fuzzer's changes, so
that the checks behind the checksums are reached too.
"""

import os
import struct

import atheris
import common

with atheris.instrument_imports():
    from dumpsaver import format as fmt
    from dumpsaver.decode import Dump
    from dumpsaver.errors import DumpsaverError
    from dumpsaver.physmem import PhysMem, Range

GUARD = 1 << 16
MAX_AREA = 1 << 18
# An anonymous in-memory file (nothing left behind when libFuzzer exits), opened by
# PhysMem through its /proc/self/fd path as if it were /dev/mem.
_fd = os.memfd_create("dumpsaver-fuzz-mem")
PATH = f"/proc/self/fd/{_fd}"


def _fixup(area: bytearray, how: int) -> None:
    if len(area) < fmt.FIXED_SIZE:
        return
    (n_ext,) = struct.unpack_from("<I", area, 36)
    hsize = fmt.FIXED_SIZE + fmt.EXTENT.size * n_ext + fmt.CRC.size
    if how & 2 and n_ext <= 64 and hsize <= len(area):
        # the extents must describe where the area really lies for deeper coverage
        struct.pack_into("<II", area, 8, fmt.VERSION, hsize)
    if how & 4 and hsize <= len(area) and n_ext <= 64:
        meta_off, meta_bytes = struct.unpack_from("<QQ", area, 112)
        if meta_off + meta_bytes <= len(area):
            crc = fmt.page_crc(bytes(area[meta_off : meta_off + meta_bytes]))
            struct.pack_into("<I", area, 160, crc)
    if how & 8 and hsize <= len(area) and n_ext <= 64:
        (nr,) = struct.unpack_from("<Q", area, 88)
        (dir_off,) = struct.unpack_from("<Q", area, 144)
        for i in range(min(nr, 4096)):
            o = dir_off + i * 32
            if o + 32 > len(area):
                break
            if how & 32:  # forge the page CRC too: reach the codecs with arbitrary bytes
                _pfn, off, n = struct.unpack_from("<QQI", area, o)
                if off + n <= len(area):
                    struct.pack_into("<I", area, o + 20, fmt.page_crc(bytes(area[off : off + n])))
            area[o + 28 : o + 32] = fmt.CRC.pack(fmt.page_crc(bytes(area[o : o + 28])))
    if how & 1 and n_ext <= 64 and hsize <= len(area):
        area[hsize - 4 : hsize] = fmt.CRC.pack(fmt.page_crc(bytes(area[: hsize - 4])))


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    how, area = data[0], bytearray(data[1 : 1 + MAX_AREA])
    area += bytes(-len(area) % 4096 or (4096 if not area else 0))
    _fixup(area, how)
    os.ftruncate(_fd, 0)
    os.pwrite(_fd, b"\xee" * GUARD + bytes(area) + b"\xee" * GUARD, 0)
    allowed = Range(GUARD, GUARD + len(area))
    seen = []

    def rec(start: int, length: int) -> None:
        if not (allowed.start <= start and start + length <= allowed.end):
            seen.append((start, length))

    with PhysMem(PATH, [allowed], on_access=rec) as mem:
        try:
            d = Dump(mem, GUARD, force=bool(how & 16))
            s = d.scan()
            n = sum(1 for _ in d.pages(s))
            assert n == s.good
        except DumpsaverError:
            pass
    assert not seen, f"read outside the area: {seen[:3]}"


if __name__ == "__main__":
    common.run(TestOneInput)
