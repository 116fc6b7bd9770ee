"""The entry point.  ``dumpsaver save`` runs at every boot, and almost every boot has
no dump: that case is decided first by dumpsaver.early, from a few small files, before
anything heavy (argparse, YAML, the format code) is imported.  Everything else:
dumpsaver.commands.

This module imports nothing but dumpsaver.early and dumpsaver.paths (which import only
``os``): the cost of a boot without a dump is the interpreter's start and a few reads.
"""

import sys

from dumpsaver import early, paths


def surely_no_dump(
    config: str | None = None,
    sysfs_header: str = paths.SYSFS_HEADER,
    cmdline: str = paths.CMDLINE,
    iomem: str = paths.IOMEM,
    mem: str = paths.MEM,
) -> bool:
    """True when no dump can be waiting (see dumpsaver.early); any doubt answers False:
    the full path then looks properly and reports what it finds."""
    data = early.config_bytes(config, paths.CONFIG, paths.CONFIG_ENV)
    return early.why_maybe(config=data, sysfs_header=sysfs_header, cmdline=cmdline,
                           iomem=iomem, mem=mem) is None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["save"] and surely_no_dump():
        print("dumpsaver: no dump in memory, nothing to do")
        return 0
    from dumpsaver.commands import main as full_main

    return full_main(args)
