"""Fuzz format.decode_meta (the TLV meta section: panic string, uts, registers, ...)."""

import atheris
import common

with atheris.instrument_imports():
    from dumpsaver import format as fmt
    from dumpsaver.errors import DumpsaverError


def TestOneInput(data: bytes) -> None:
    try:
        m = fmt.decode_meta(data)
    except DumpsaverError:
        return
    assert len(m.prstatus) <= fmt.MAX_CPUS
    assert len(m.panic) <= fmt.MAX_STRING
    m.encode()


if __name__ == "__main__":
    common.run(TestOneInput)
