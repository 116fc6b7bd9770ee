"""Fuzz the locator's parsers: memmap= on the command line, /proc/iomem, the sysfs tree."""

import os
from pathlib import Path

import atheris
import common

with atheris.instrument_imports():
    from dumpsaver import locate
    from dumpsaver.errors import DumpsaverError

# A fake sysfs tree in the working directory (fuzz/run.sh runs in $FUZZ_WORK).
ROOT = Path(os.getcwd()) / f"sysfs-{os.getpid()}"
ROOT.mkdir(exist_ok=True)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    which = fdp.ConsumeIntInRange(0, 2)
    if which == 0:
        for r in locate.parse_memmap(fdp.ConsumeUnicodeNoSurrogates(4096)):
            assert 0 <= r.start < r.end
    elif which == 1:
        for r, _name in locate.parse_iomem(fdp.ConsumeUnicodeNoSurrogates(8192)):
            assert 0 <= r.start < r.end
    else:
        for name in ("version", "header", "ranges", "release"):
            p = ROOT / name
            if fdp.ConsumeBool():
                p.write_bytes(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2048)))
            elif p.exists():
                p.unlink()
        try:
            c = locate.from_sysfs(ROOT)
        except DumpsaverError:
            return
        if c is not None:
            assert c.ranges and all(r.start < r.end for r in c.ranges)


if __name__ == "__main__":
    common.run(TestOneInput)
