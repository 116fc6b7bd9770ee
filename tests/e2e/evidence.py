"""Read what a scenario left on the guest's disk, after QEMU exited.

Independent of dumpsaver's own code on purpose: the ELF vmcore is parsed here from its
program headers, the journal with the host's journalctl.
"""

from __future__ import annotations

import json
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# systemd's own catalog ids (src/systemd/sd-messages.h)
SD_UNIT_STARTING = "7d4958e842da4a758f6c1cdc7b36dcc5"
SD_UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"  # also "Reached target" for targets
SD_UNIT_FAILED = "be02cf6855d2428ba40df7e9d022f03d"

# dumpsaver's (dumpsaver/journal.py EVENTS): duplicated so the test checks the contract.
DS_EVENTS = {
    "dump-found": "3617e9eabf8d4b3cbad816518469194c",
    "saved": "f62a2b40aec14f8dbfa9c1d267a125ae",
    "incomplete": "28427db9822e480cb531e9c9a3bce285",
    "failed": "c83423f13f77488da8dda7356256eaa3",
    "released": "834f198336b440c9aaa2ea162cf1355b",
    "restart-requested": "52c957937a5749abb569209db54f10b7",
    "given-back": "c7196109ac984bf0b8342e449e7ee616",
    "give-back-failed": "99ea6f113b584592974ae55149e1c0d1",
}


def read_journal(directory: Path) -> list[dict[str, Any]]:
    """Every entry of a journal directory copied out of the guest, oldest first."""
    r = subprocess.run(
        ["journalctl", "-D", str(directory), "-o", "json", "--no-pager", "--all"],
        capture_output=True,
        check=False,
    )
    entries = []
    for line in r.stdout.splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


@dataclass
class Boot:
    boot_id: str
    entries: list[dict[str, Any]] = field(default_factory=list)

    def find(self, **match: str) -> list[dict[str, Any]]:
        return [e for e in self.entries if all(e.get(k) == v for k, v in match.items())]

    def first(self, **match: str) -> dict[str, Any] | None:
        found = self.find(**match)
        return found[0] if found else None

    def event(self, name: str) -> dict[str, Any] | None:
        return self.first(MESSAGE_ID=DS_EVENTS[name])

    def has_event(self, name: str) -> bool:
        return self.event(name) is not None

    def messages(self, unit: str | None = None) -> list[str]:
        return [
            str(e.get("MESSAGE", ""))
            for e in self.entries
            if unit is None or unit in (e.get("_SYSTEMD_UNIT"), e.get("UNIT"))
        ]


def boots(entries: list[dict[str, Any]]) -> list[Boot]:
    """Entries grouped by boot, in boot order (by their first wall-clock timestamp)."""
    by_id: dict[str, Boot] = {}
    for e in entries:
        bid = e.get("_BOOT_ID", "?")
        by_id.setdefault(bid, Boot(bid)).entries.append(e)
    for b in by_id.values():
        b.entries.sort(key=lambda e: int(e.get("__MONOTONIC_TIMESTAMP", 0)))
    return sorted(
        by_id.values(), key=lambda b: min(int(e["__REALTIME_TIMESTAMP"]) for e in b.entries)
    )


def mono(entry: dict[str, Any] | None) -> int:
    """An entry's monotonic timestamp in microseconds since its boot."""
    assert entry is not None
    return int(entry["__MONOTONIC_TIMESTAMP"])


# --- ELF vmcore ------------------------------------------------------------------------

PT_LOAD = 1


@dataclass(frozen=True)
class Load:
    paddr: int
    offset: int
    filesz: int
    memsz: int


def elf_loads(path: Path) -> list[Load]:
    with path.open("rb") as f:
        ehdr = f.read(64)
        assert ehdr[:4] == b"\x7fELF", "not an ELF file"
        assert ehdr[4] == 2, "not ELF64"
        (phoff,) = struct.unpack_from("<Q", ehdr, 32)
        phentsize, phnum = struct.unpack_from("<HH", ehdr, 54)
        if phnum == 0xFFFF:  # PN_XNUM: the real count is in section header 0's sh_info
            (shoff,) = struct.unpack_from("<Q", ehdr, 40)
            f.seek(shoff + 44)
            (phnum,) = struct.unpack("<I", f.read(4))
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    loads = []
    for i in range(phnum):
        p_type, _flags, off, _vaddr, paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", table, i * phentsize
        )
        if p_type == PT_LOAD:
            loads.append(Load(paddr, off, filesz, memsz))
    return loads


def iter_saved_pages(vmcore: Path, page_size: int) -> Iterator[tuple[int, bytes]]:
    """(pfn, page bytes) for every page backed by file data in the vmcore."""
    with vmcore.open("rb") as f:
        for ld in elf_loads(vmcore):
            f.seek(ld.offset)
            for i in range(ld.filesz // page_size):
                yield (ld.paddr // page_size + i, f.read(page_size))


def compare_with_truth(vmcore: Path, before_mem: Path, manifest: dict[str, Any]) -> dict[str, int]:
    """Check every page the manifest says was saved against the ground truth.

    Returns counts: ``expected`` (pages the manifest lists), ``found`` (of those, present
    in the vmcore), ``equal``, plus ``extra`` (file-backed pages not in the manifest).
    """
    ps = int(manifest["page_size"])
    expected: set[int] = set()
    for first, last in manifest["saved"]:
        expected.update(range(int(first), int(last) + 1))
    found = equal = extra = 0
    mismatches: list[int] = []
    with before_mem.open("rb") as truth:
        for pfn, data in iter_saved_pages(vmcore, ps):
            if pfn not in expected:
                extra += 1
                continue
            found += 1
            truth.seek(pfn * ps)
            if truth.read(ps) == data:
                equal += 1
            elif len(mismatches) < 5:
                mismatches.append(pfn)
    return {
        "expected": len(expected),
        "found": found,
        "equal": equal,
        "extra": extra,
        "first_mismatches": mismatches,  # type: ignore[dict-item]
    }
