"""Per-page compression codecs.

Each page is compressed on its own so that it can be verified and salvaged on
its own, and copied unchanged into a kdump-compressed file (zlib streams and
zstd frames are what makedumpfile stores).  Decompression is bounded to one
page: a hostile page cannot expand beyond it (no decompression bombs).
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Callable
from typing import Any

from dumpsaver.errors import DumpsaverError


class Codec(enum.IntEnum):
    ZLIB = 1
    ZSTD = 2
    LZ4 = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class CodecError(Exception):
    """A page could not be decompressed to exactly one page."""


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError:
        raise DumpsaverError(
            "the zstd codec needs the zstandard module",
            hint="install python3-zstandard (Debian) or 'pip install zstandard'",
        ) from None
    return zstandard


def _lz4() -> Any:
    try:
        import lz4.block
    except ImportError:
        raise DumpsaverError(
            "the lz4 codec needs the lz4 module",
            hint="install python3-lz4 (Debian) or 'pip install lz4'",
        ) from None
    return lz4.block


def available(codec: Codec) -> bool:
    try:
        {Codec.ZLIB: lambda: None, Codec.ZSTD: _zstd, Codec.LZ4: _lz4}[codec]()
    except DumpsaverError:
        return False
    return True


Compressor = Callable[[bytes], bytes]
Decompressor = Callable[[bytes | memoryview], bytes]


def compressor(codec: Codec, level: int | None = None) -> Compressor:
    if codec is Codec.ZLIB:
        lvl = 1 if level is None else level
        return lambda page: zlib.compress(page, lvl)
    if codec is Codec.ZSTD:
        c = _zstd().ZstdCompressor(level=1 if level is None else level, write_content_size=True)
        return c.compress  # type: ignore[no-any-return]
    blk = _lz4()
    return lambda page: blk.compress(page, store_size=False)


def decompressor(codec: Codec, page_size: int) -> Decompressor:
    """A function turning one stored page back into exactly ``page_size`` bytes, or CodecError.

    Nothing a stored page says can make it allocate more than about one page: the
    output buffer is sized by ``page_size``, never by what a frame header claims (a
    zstd frame may declare a content size of a terabyte).  A MemoryError is a codec
    error too: it is that page's problem, not the dump's.
    """
    if codec is Codec.ZLIB:

        def unzlib(data: bytes | memoryview) -> bytes:
            d = zlib.decompressobj()
            try:
                out = d.decompress(data, page_size)
            except (zlib.error, MemoryError) as e:
                raise CodecError(f"zlib: {e}") from None
            if len(out) != page_size or d.unconsumed_tail or not d.eof:
                raise CodecError("zlib stream does not decode to exactly one page")
            return out

        return unzlib
    if codec is Codec.ZSTD:
        zstd = _zstd()
        dctx = zstd.ZstdDecompressor()
        frame_size = zstd.frame_content_size

        def unzstd(data: bytes | memoryview) -> bytes:
            try:
                # The frame header's content size would size the output buffer: check it
                # first (a cheap header parse).  -1: not recorded, then the output is
                # capped at one page by max_output_size.
                declared = frame_size(data)
                if declared not in (page_size, -1):
                    raise CodecError(f"zstd frame declares {declared} bytes, not one page")
                out = dctx.decompress(data, max_output_size=page_size)
            except (zstd.ZstdError, MemoryError) as e:
                raise CodecError(f"zstd: {e}") from None
            if len(out) != page_size:
                raise CodecError("zstd frame does not decode to exactly one page")
            return out  # type: ignore[no-any-return]

        return unzstd
    blk = _lz4()

    def unlz4(data: bytes | memoryview) -> bytes:
        try:
            out = blk.decompress(data, uncompressed_size=page_size)
        except Exception as e:  # lz4 raises LZ4BlockError, a plain Exception subclass
            raise CodecError(f"lz4: {e}") from None
        if len(out) != page_size:
            raise CodecError("lz4 block does not decode to exactly one page")
        return out  # type: ignore[no-any-return]

    return unlz4



def framing_check(codec: Codec, page_size: int) -> Callable[[bytes | memoryview], bool]:
    """A cheap check of a stored page's framing, without decompressing it: a zlib stream
    header (deflate, window at most 32 KiB, no preset dictionary, header checksum), a
    zstd frame whose header declares one page or no size.  For the kdump writer, which
    copies zlib and zstd pages unchanged: a reader is then never handed a page its
    decompressor refuses at once or sizes by a frame's claim (docs/format.md says what
    this does not prove)."""
    if codec is Codec.ZLIB:

        def zlib_ok(data: bytes | memoryview) -> bool:
            return (
                len(data) > 6
                and data[0] & 0x8F == 0x08
                and not data[1] & 0x20
                and (data[0] << 8 | data[1]) % 31 == 0
            )

        return zlib_ok
    if codec is Codec.ZSTD:
        zstd = _zstd()
        frame_size = zstd.frame_content_size
        error = zstd.ZstdError

        def zstd_ok(data: bytes | memoryview) -> bool:
            if data[:4] != b"\x28\xb5\x2f\xfd":
                return False
            try:
                return frame_size(data) in (page_size, -1)
            except error:
                return False

        return zstd_ok
    return lambda data: True
