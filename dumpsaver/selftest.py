"""``dumpsaver test``: prove a machine's set-up without crashing it.

kdump users must crash the machine to know kdump works.  Here the simulator
writes a dump of a small simulated machine into the real reserved region
through /dev/mem, a record of what it wrote goes to the state directory, and
the machine warm-reboots.  The next boot's dumpsaver.service saves the dump
like any other (without the clean restart: nothing crashed); the first
`dumpsaver status` after that regenerates the simulated machine from its seed,
compares every saved page of the core (ELF or kdump-compressed) with it, and
keeps the verdict in place of the record: later statuses show the verdict
without rebuilding anything, whatever retention did to the test dump since.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dumpsaver import readback, state
from dumpsaver.errors import DumpsaverError, FormatError
from dumpsaver.locate import Candidate
from dumpsaver.physmem import PhysMem

RECORD = "selftest.json"  # written by `dumpsaver test`, consumed by the first verdict
RESULT = "selftest-result.json"  # the verdict, kept until the next `dumpsaver test`
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
    # os.urandom, not secrets: secrets imports hmac and hashlib (4-5 ms of every save,
    # which imports this module through boot and catalogue)
    seed = int.from_bytes(os.urandom(4), "little") >> 1
    work = state_dir / "selftest"
    manifest = simulate.simulate(
        work, memory=memory, profile="idle", seed=seed, panic=PANIC, target_mem=mem_path,
        target_region=(region.start, region.size), ground_truth=False,
    )
    record = {"dump_id": manifest.dump_id, "seed": seed, "memory": memory, "profile": "idle",
              "saved_pages": manifest.saved_pages, "region": [region.start, region.end],
              "truncated": manifest.truncated}
    with contextlib.suppress(OSError):
        (state_dir / RESULT).unlink()
    state.write_json(state_dir, RECORD, record)
    return record


def _read(state_dir: Path, name: str) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / name).read_bytes()[:65536])
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pending(state_dir: Path) -> dict[str, Any] | None:
    """The record of a test dump written but not judged yet."""
    return _read(state_dir, RECORD)


def is_selftest(state_dir: Path, dump_id: str) -> bool:
    rec = pending(state_dir)
    return rec is not None and rec.get("dump_id") == dump_id


class Result(enum.StrEnum):
    PASSED = "PASSED"  # every page compared equal
    NOT_PASSED = "NOT PASSED"  # a page differs or is missing, or nothing was saved (yet)
    NOT_VERIFIED = "NOT VERIFIED"  # saved, but its pages could not be compared


@dataclass
class Verdict:
    result: Result
    text: str
    dump_id: str = ""
    final: bool = False  # the saved copy was judged: the record is consumed
    time: str = ""

    @property
    def ok(self) -> bool:
        return self.result is Result.PASSED


def report(state_dir: Path, dumps: list[tuple[Path, dict[str, Any]]]) -> Verdict | None:
    """The self-test's verdict for ``dumpsaver status``, or None when there is none.

    The first verdict on a saved test dump replaces the record (durably), so it is
    computed once; until the dump is saved, each call says it is not saved yet."""
    kept = _read(state_dir, RESULT)
    if kept is not None:
        try:
            return Verdict(Result(kept["result"]), str(kept["text"]), str(kept["dump_id"]),
                           True, str(kept.get("time", "")))
        except (KeyError, ValueError):
            pass  # damaged: judge again if the record is still there
    rec = pending(state_dir)
    if rec is None:
        return None
    v = verify(rec, dumps)
    if v.final:
        v.time = datetime.now(UTC).isoformat(timespec="seconds")
        data = asdict(v)
        data["result"] = str(v.result)
        with contextlib.suppress(OSError):  # a read-only state dir: judged again next time
            state.write_json(state_dir, RESULT, data)
            (state_dir / RECORD).unlink()
    return v


def verify(record: dict[str, Any], dumps: list[tuple[Path, dict[str, Any]]]) -> Verdict:
    """Compare the saved copy of the self-test dump with the regenerated machine."""
    from dumpsaver import simulate

    did = str(record.get("dump_id"))
    match = [(p, i) for p, i in dumps if i.get("dump_id") == did]
    if not match:
        return Verdict(Result.NOT_PASSED, "the test dump has not been saved (yet): did the "
                       "machine warm-reboot with the region still reserved?", did)
    path, info = match[0]
    m = simulate.Machine(int(record["memory"]), simulate.PROFILES[str(record["profile"])],
                         int(record["seed"]))
    core = path / str(info.get("file", "vmcore"))
    try:
        pages = readback.pages(core, str(info.get("format")), m.page_size)
    except (OSError, DumpsaverError) as e:
        return Verdict(Result.NOT_VERIFIED, f"saved as {path.name} ({info.get('format')}), "
                       f"but its pages cannot be read back: {e}", did, True)
    bad = sum(1 for pfn, data in pages.items() if data != m.page(pfn))
    want = int(record["saved_pages"])
    if bad or len(pages) != want:
        return Verdict(Result.NOT_PASSED, f"saved as {path.name} but {bad} pages differ and "
                       f"{len(pages)} of {want} are there", did, True)
    return Verdict(Result.PASSED, f"saved intact as {path.name} ({info.get('format')}): "
                   f"{want} pages equal the simulated machine", did, True)
