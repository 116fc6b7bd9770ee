"""The entry point.  ``dumpsaver save`` runs at every boot, and almost every boot has
no dump: that case is decided here from two small files, before anything heavy
(argparse, YAML, the format code) is imported.  Everything else: dumpsaver.commands.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from dumpsaver.paths import CMDLINE, IOMEM, MEM, SYSFS_HEADER

DUMP_MAGIC = b"MCOREDMP"  # dumpsaver.format.MAGIC (a test keeps them equal)


def surely_no_dump(
    config: str | None = None,
    sysfs_header: str = SYSFS_HEADER,
    cmdline: str = CMDLINE,
    iomem: str = IOMEM,
    mem: str = MEM,
) -> bool:
    """With the default configuration: no mcore sysfs tree, no memmap=! persistent
    memory, and no memmap= reservation whose first bytes are a dump's magic.  Any doubt
    (an error, an unreadable file) answers False: the full path then looks properly and
    reports what it finds."""
    from dumpsaver.config import is_default

    if not is_default(config):
        return False
    if os.path.exists(sysfs_header):
        return False
    try:
        with open(cmdline, "rb") as f:
            words = f.read(1 << 16).split()
    except OSError:
        return False
    memmaps = [w for w in words if w.startswith(b"memmap=")]
    if any(b"!" in w for w in memmaps):
        return False  # memmap=! persistent memory: given back to the system every boot
    if not any(b"$" in w for w in memmaps):
        return True
    # memmap= reservations: peek at the magic, through the same confined access
    from pathlib import Path

    from dumpsaver import locate
    from dumpsaver.errors import DumpsaverError
    from dumpsaver.physmem import PhysMem

    try:
        cands = locate.candidates(sysfs=Path(sysfs_header).parent, cmdline=Path(cmdline),
                                  iomem=Path(iomem), use_memmap=True)
        for c in cands:
            with PhysMem(mem, c.ranges) as m:
                if m.read(c.header, len(DUMP_MAGIC)) == DUMP_MAGIC:
                    return False
    except DumpsaverError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["save"] and surely_no_dump():
        print("dumpsaver: no dump in memory, nothing to do")
        return 0
    from dumpsaver.commands import main as full_main

    return full_main(args)
