"""Output formats, a family of interchangeable writers.

A writer takes an open Dump and the result of its scan (pass one) and streams
the dump into an open file descriptor with bounded memory.  ``estimate`` says
how many bytes the file will occupy, for the free-space check before writing.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from dumpsaver.decode import Dump, Scan

Progress = Callable[[int, int], None]  # (pages done, pages total)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """pwrite all of ``data`` at ``offset`` (pwrite may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


@dataclass
class Written:
    size: int  # apparent file size
    pages: int  # pages written (zero pages included)


class Writer(Protocol):
    name: str
    filename: str

    def prepare(self, dump: Dump) -> Scan:
        """Pass one as this format needs it (a Scan still to be filled by ``write`` when
        the format needs no layout before the pages: ``Scan.done`` False)."""
        ...

    def estimate(self, dump: Dump, scan: Scan) -> int: ...

    def write(self, fd: int, dump: Dump, scan: Scan, progress: Progress | None) -> Written: ...


class OutputFormat(enum.StrEnum):
    """The ``format`` setting: which writer makes the saved core."""

    ELF = "elf"  # an ELF core like /proc/vmcore
    KDUMP = "kdump"  # makedumpfile's kdump-compressed format


def get(name: str) -> Writer:
    from dumpsaver.errors import ConfigError

    if name == OutputFormat.ELF:
        from dumpsaver.writers.elf import ElfWriter

        return ElfWriter()
    if name == OutputFormat.KDUMP:
        from dumpsaver.writers.kdump import KdumpWriter

        return KdumpWriter()
    raise ConfigError(f"unknown output format {name!r}", hint="use elf or kdump")
