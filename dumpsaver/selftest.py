"""``dumpsaver test``: prove a machine's set-up without crashing it.

kdump users must crash the machine to know kdump works.  Here the simulator
writes a dump of a small simulated machine into the real reserved region
through /dev/mem, a record of what it wrote goes to the state directory, and
the machine warm-reboots.  The next boot's dumpsaver.service saves the dump
like any other (without the clean restart: nothing crashed); `dumpsaver
status` then regenerates the simulated machine from its seed and compares
every saved page of the vmcore with it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dumpsaver import elfnote as E
from dumpsaver import state
from dumpsaver.errors import DumpsaverError, FormatError
from dumpsaver.locate import Candidate
from dumpsaver.physmem import PhysMem

RECORD = "selftest.json"
PANIC = "dumpsaver test: simulated crash (no real panic)"


def start(
    cand: Candidate, mem_path: str, state_dir: Path, *, memory: int = 64 << 20
) -> dict[str, Any]:
    """Write a simulated dump into ``cand``'s region and record it durably."""
    from dumpsaver import decode, simulate

    if cand.method == "sysfs":
        raise DumpsaverError(
            "the dump area belongs to the kernel's mcore interface: a real dump is waiting",
            hint="save it first (dumpsaver save)",
        )
    region = cand.ranges[0]
    with PhysMem(mem_path, cand.ranges) as mem:
        try:
            decode.Dump(mem, cand.header)
        except FormatError:
            pass  # no valid dump there: free to write
        else:
            raise DumpsaverError(
                f"a dump is waiting in {region}: refusing to overwrite it",
                hint="save it first (dumpsaver save)",
            )
    seed = secrets.randbits(31)
    work = state_dir / "selftest"
    manifest = simulate.simulate(
        work, memory=memory, profile="idle", seed=seed, panic=PANIC, target_mem=mem_path,
        target_region=(region.start, region.size), ground_truth=False,
    )
    record = {"dump_id": manifest["dump_id"], "seed": seed, "memory": memory, "profile": "idle",
              "saved_pages": manifest["saved_pages"], "region": [region.start, region.end],
              "truncated": manifest["truncated"]}
    state.write_json(state_dir, RECORD, record)
    return record


def pending(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / RECORD).read_bytes()[:65536])
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_selftest(state_dir: Path, dump_id: str) -> bool:
    rec = pending(state_dir)
    return rec is not None and rec.get("dump_id") == dump_id


@dataclass
class Verdict:
    ok: bool
    text: str


def verify(record: dict[str, Any], dumps: list[tuple[Path, dict[str, Any]]]) -> Verdict:
    """Compare the saved copy of the self-test dump with the regenerated machine."""
    from dumpsaver import simulate

    match = [(p, i) for p, i in dumps if i.get("dump_id") == record.get("dump_id")]
    if not match:
        return Verdict(False, "the test dump has not been saved (yet): did the machine "
                              "warm-reboot with the region still reserved?")
    path, info = match[0]
    if info.get("format") != "elf":
        return Verdict(info.get("complete") is True,
                       f"saved as {path.name} ({info.get('format')}); the page check needs ELF")
    m = simulate.Machine(int(record["memory"]), simulate.PROFILES[str(record["profile"])],
                         int(record["seed"]))
    core = path / str(info.get("file", "vmcore"))
    try:
        pages = read_elf_pages(core, m.page_size)
    except (OSError, DumpsaverError) as e:
        return Verdict(False, f"cannot read {core}: {e}")
    bad = sum(1 for pfn, data in pages.items() if data != m.page(pfn))
    want = int(record["saved_pages"])
    if bad or len(pages) != want:
        return Verdict(False, f"saved as {path.name} but {bad} pages differ and "
                              f"{len(pages)} of {want} are there")
    return Verdict(True, f"saved intact as {path.name}: {want} pages equal the simulated machine")


def read_elf_pages(core: Path, page_size: int) -> dict[int, bytes]:
    """All pages of an ELF core's PT_LOAD segments, keyed by PFN (small cores only)."""
    with open(core, "rb") as f:
        ehdr = E.EHDR.unpack(f.read(E.EHDR.size))
        if ehdr[0][:4] != b"\x7fELF":
            raise DumpsaverError("not an ELF file")
        phoff, phnum = ehdr[5], ehdr[10]
        f.seek(phoff)
        phdrs = [E.PHDR.unpack(f.read(E.PHDR.size)) for _ in range(phnum)]
        out = {}
        for p_type, _fl, off, _va, paddr, filesz, _memsz, _al in phdrs:
            if p_type != E.PT.LOAD:
                continue
            f.seek(off)
            for i in range(filesz // page_size):
                out[(paddr // page_size) + i] = f.read(page_size)
    return out


def finish(state_dir: Path) -> None:
    with contextlib.suppress(OSError):
        (state_dir / RECORD).unlink()

