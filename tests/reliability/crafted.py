"""Crafted dumps: decoded, changed and re-encoded with valid checksums.

Random byte flips almost never get past a CRC.  These helpers change a dump the
way an attacker (or a buggy writer) would: they decode the header, an entry, a
stored page or the meta section with the project's own format module, change a
field, and encode it again with every CRC correct, so the change reaches the
code behind the checks.  Used by test_crafted.py (one regression test per
defect of issue 9) and structured.py (the structure-aware fuzzer).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from dumpsaver import format as fmt

from ..machine import Sim
from .harness import Layout, layout_of


class Crafted:
    """A private machine whose dump is edited in place, CRCs kept valid."""

    def __init__(self, m: Sim) -> None:
        self.m = m
        self.lay: Layout = layout_of(m)
        self.header: fmt.Header = self.lay.header
        self.entries: list[fmt.Entry] = list(self.lay.entries)

    @property
    def path(self) -> Path:
        return self.m.mem

    def write(self, logical: int, data: bytes) -> None:
        """Write ``data`` at a logical offset of the dump stream (no CRC touched)."""
        fd = os.open(self.path, os.O_RDWR)
        try:
            for lo, paddr, n in self.lay.phys_runs(logical, len(data)):
                os.pwrite(fd, data[lo - logical : lo - logical + n], paddr)
        finally:
            os.close(fd)

    def read(self, logical: int, n: int) -> bytes:
        with open(self.path, "rb") as f:
            out = b""
            for _lo, paddr, k in self.lay.phys_runs(logical, n):
                f.seek(paddr)
                out += f.read(k)
            return out

    def set_header(self, **changes: Any) -> fmt.Header:
        self.header = dataclasses.replace(self.header, **changes)
        self.write(0, self.header.encode())
        return self.header

    def set_entry(self, i: int, **changes: int) -> fmt.Entry:
        e = dataclasses.replace(self.entries[i], **changes)
        self.entries[i] = e
        self.write(self.header.dir_offset + i * fmt.ENTRY.size, e.encode())
        return e

    def set_stored(self, i: int, data: bytes, *, flags: int = 0) -> fmt.Entry:
        """Put ``data`` as entry ``i``'s stored bytes (in its own slot, which must be big
        enough), with a matching page CRC: only that page's content changes."""
        e = self.entries[i]
        assert not e.zero and len(data) <= e.length, (e, len(data))
        self.write(e.offset, data)
        return self.set_entry(i, length=len(data), crc=fmt.page_crc(data), flags=flags)

    def set_meta(self, meta: fmt.MetaInfo) -> None:
        """Re-encode the meta section (it must not grow past its slot) and its CRC."""
        blob = meta.encode()
        assert len(blob) <= self.header.meta_bytes, (len(blob), self.header.meta_bytes)
        self.write(self.header.meta_offset, blob)
        self.set_header(meta_bytes=len(blob), meta_crc=fmt.page_crc(blob))

    def stored_slot(self, at_least: int) -> int:
        """The index of a stored (non-zero) entry in the middle whose slot holds
        ``at_least`` bytes."""
        n = len(self.entries)
        order = sorted(range(n), key=lambda i: abs(i - n // 2))
        for i in order:
            e = self.entries[i]
            if not e.zero and e.length >= at_least and 2 <= i < n - 2:
                return i
        raise AssertionError(f"no stored page of {at_least} bytes or more")


def iomem_args(m: Sim, tmp: Path) -> list[str]:
    """``--iomem`` with an /proc/iomem of the simulated machine: its RAM, the area reserved."""
    p = tmp / "iomem"
    a, top = m.area[0], m.manifest["memory"]
    p.write_text(f"00000000-{a.start - 1:08x} : System RAM\n"
                 f"{a.start:08x}-{a.end - 1:08x} : Reserved\n"
                 f"{a.end:08x}-{top - 1:08x} : System RAM\n")  # fmt: skip
    return ["--iomem", str(p)]
