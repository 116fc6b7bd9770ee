"""Fuzz format.peek_header_size / decode_header (with and without force)."""

import contextlib

import atheris
import common

with atheris.instrument_imports():
    from dumpsaver import format as fmt
    from dumpsaver.errors import DumpsaverError


def TestOneInput(data: bytes) -> None:
    with contextlib.suppress(DumpsaverError):
        fmt.peek_header_size(data[: fmt.FIXED_SIZE])
    for force in (False, True):
        try:
            h = fmt.decode_header(data, force=force)
        except DumpsaverError:
            continue
        # A header that passed every check has a layout inside its own area.
        assert h.header_bytes <= h.extents[0].length
        assert h.dir_offset + h.dir_bytes <= h.area_bytes
        assert h.meta_offset + h.meta_bytes <= h.area_bytes
        h.encode()


if __name__ == "__main__":
    common.run(TestOneInput)
