"""Fuzz format.check_entry against a header whose fields come from the input too."""

import uuid

import atheris
import common

with atheris.instrument_imports():
    from dumpsaver import format as fmt
    from dumpsaver.codecs import Codec


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    ps = fmt.PAGE_SIZES[fdp.ConsumeIntInRange(0, len(fmt.PAGE_SIZES) - 1)]
    data_off = fdp.ConsumeIntInRange(0, 1 << 40)
    h = fmt.Header(
        page_size=ps, codec=Codec.ZLIB, mem_pages=fdp.ConsumeIntInRange(1, 1 << 40),
        crash_time_ns=0, dump_id=uuid.UUID(int=0), boot_id=uuid.UUID(int=0),
        excluded=fmt.DEFAULT_EXCLUDED, class_pages=(0,) * 8, extents=(fmt.Extent(0, ps),),
        data_offset=data_off, data_bytes=fdp.ConsumeIntInRange(0, 1 << 40),
    )
    prev = fdp.ConsumeIntInRange(-1, 1 << 40)
    fix_crc = fdp.ConsumeBool()
    raw = bytearray(fdp.ConsumeBytes(fmt.ENTRY.size * 4))
    raw += bytes(-len(raw) % fmt.ENTRY.size)
    for off in range(0, len(raw), fmt.ENTRY.size):
        if fix_crc:  # reach the checks behind the entry CRC
            raw[off + 28 : off + 32] = fmt.CRC.pack(fmt.page_crc(bytes(raw[off : off + 28])))
        e, problem = fmt.check_entry(bytes(raw), off, h, prev)
        if problem is None:
            assert e is not None and e.pfn > prev and e.pfn < h.mem_pages
            if not e.zero:
                assert 0 < e.length <= ps
                assert h.data_offset <= e.offset
                assert e.offset + e.length <= h.data_offset + h.data_bytes
            prev = e.pfn


if __name__ == "__main__":
    common.run(TestOneInput)
