"""Reading a saved core's pages back, for the self-test's page check (and the tests).

Both output formats: an ELF core's PT_LOAD segments by p_paddr (with more than
65534 program headers the count is in section header 0, PN_XNUM), and a
kdump-compressed file's page_desc array through its dumped-pages bitmap.  Meant
for small cores: the pages come back in one dictionary.
"""

from __future__ import annotations

import struct
from pathlib import Path

from dumpsaver import elfnote as E
from dumpsaver.codecs import Codec, CodecError, decompressor
from dumpsaver.errors import DumpsaverError
from dumpsaver.writers import OutputFormat


def elf_pages(core: Path, page_size: int) -> dict[int, bytes]:
    """{pfn: page} of an ELF core's PT_LOAD segments."""
    try:
        return _elf_pages(core, page_size)
    except struct.error as e:
        raise DumpsaverError(f"{core}: cannot read its pages: {e}") from None


def _elf_pages(core: Path, page_size: int) -> dict[int, bytes]:
    with open(core, "rb") as f:
        ehdr = E.EHDR.unpack(f.read(E.EHDR.size))
        if ehdr[0][:4] != b"\x7fELF":
            raise DumpsaverError(f"{core} is not an ELF file")
        phoff, shoff, phnum = ehdr[5], ehdr[6], ehdr[10]
        if phnum == E.PN_XNUM:
            f.seek(shoff)
            phnum = E.SHDR.unpack(f.read(E.SHDR.size))[7]  # sh_info of section header 0
        f.seek(phoff)
        phdrs = [E.PHDR.unpack(f.read(E.PHDR.size)) for _ in range(phnum)]
        out = {}
        for p_type, _fl, off, _va, paddr, filesz, _memsz, _al in phdrs:
            if p_type != E.PT.LOAD:
                continue
            f.seek(off)
            data = f.read(filesz)
            for k in range(0, filesz, page_size):
                out[(paddr + k) // page_size] = data[k : k + page_size]
    return out


def kdump_pages(core: Path) -> dict[int, bytes]:
    """{pfn: page} of a kdump-compressed file (zlib, zstd or raw pages)."""
    from dumpsaver.writers import kdump as K

    b = core.read_bytes()
    try:
        hdr = K.DISK_DUMP_HEADER.unpack_from(b, 0)
        sig, version = hdr[0], hdr[1]
        block, sub_blocks, bitmap_blocks, max_mapnr = hdr[6:10]
        if sig != K.SIGNATURE:
            raise DumpsaverError(f"{core} is not a kdump-compressed file")
        if version >= 6:
            max_mapnr = K.KDUMP_SUB_HEADER.unpack_from(b, block)[13]
        half = bitmap_blocks * block // 2
        dumped = b[(1 + sub_blocks) * block + half : (1 + sub_blocks) * block + 2 * half]
        desc_at = (1 + sub_blocks + bitmap_blocks) * block
        codecs = {K.DH.COMPRESSED_ZLIB: decompressor(Codec.ZLIB, block)}
        out = {}
        for pfn in range(min(max_mapnr, 8 * len(dumped))):
            if not dumped[pfn >> 3] >> (pfn & 7) & 1:
                continue
            off, size, flags, _pf = K.PAGE_DESC.unpack_from(b, desc_at)
            desc_at += K.PAGE_DESC.size
            data = b[off : off + size]
            if flags & K.DH.COMPRESSED_ZSTD and K.DH.COMPRESSED_ZSTD not in codecs:
                codecs[K.DH.COMPRESSED_ZSTD] = decompressor(Codec.ZSTD, block)
            codec = codecs.get(K.DH(flags & (K.DH.COMPRESSED_ZLIB | K.DH.COMPRESSED_ZSTD)))
            if codec is not None:
                out[pfn] = codec(data)
            elif flags == 0 and size == block:
                out[pfn] = data
            else:
                raise DumpsaverError(f"{core}: page {pfn} has flags {flags:#x}, size {size}")
    except (struct.error, ValueError, IndexError, CodecError) as e:
        raise DumpsaverError(f"{core}: cannot read its pages: {e}") from None
    return out


def pages(core: Path, fmt_name: str, page_size: int) -> dict[int, bytes]:
    """{pfn: page} of a saved core in either output format."""
    if fmt_name == OutputFormat.KDUMP:
        return kdump_pages(core)
    return elf_pages(core, page_size)
