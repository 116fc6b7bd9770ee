"""The ELF writer's second process: a forked child scans the upper half of the directory
(dumpsaver.writers.elf._scan_split), then a forked child writes its pages
(_write_split).  The file must be the one process's file byte for byte, whatever the
child guessed or however it failed, and damage it finds must reach info.json."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path

import pytest

from dumpsaver import format as fmt
from dumpsaver.decode import Dump, Part, Scan
from dumpsaver.writers import elf

from .conftest import Sim, entry_paddr, header_of, logical_paddr, save_sim
from .reliability.crafted import Crafted
from .test_badinput import poke, read_entry


def _save(sim: Sim, dest: Path, monkeypatch: pytest.MonkeyPatch, forked: bool) -> Path:
    calls: list[int] = []
    real = elf._write_split

    def spy(*a, **kw):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(elf, "PARALLEL_MIN_BYTES", 0 if forked else 1 << 62)
    monkeypatch.setenv(elf.PROCESSES_ENV, "2")
    monkeypatch.setattr(elf, "_write_split", spy)
    res = save_sim(sim, dest, fmt_name="elf", keep=True)
    assert res.dump_dir is not None
    assert bool(calls) == forked  # the path under test was taken
    return res.dump_dir


def test_forked_writer_writes_the_same_file(make_sim, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=16 << 20, profile="busy", seed=21)
    one = _save(sim, tmp_path / "one", monkeypatch, forked=False)
    two = _save(sim, tmp_path / "two", monkeypatch, forked=True)
    assert (one / "vmcore").read_bytes() == (two / "vmcore").read_bytes()


def _one_and_two(sim: Sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    one = _save(sim, tmp_path / "one", monkeypatch, forked=False)
    two = _save(sim, tmp_path / "two", monkeypatch, forked=True)
    assert (one / "vmcore").read_bytes() == (two / "vmcore").read_bytes()
    return one, two


def test_a_wrong_guess_is_scanned_again(make_sim, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The child judged its first entries against a PFN the parent did not accept last:
    the parent scans the upper half again from the right one."""
    sim = make_sim(memory=16 << 20, profile="busy", seed=21)
    rescans: list[Part] = []
    real_scan = Dump.scan

    def scan(self: Dump, part: Part | None = None, into: Scan | None = None) -> Scan:
        if into is not None:
            rescans.append(part)  # type: ignore[arg-type]
        return real_scan(self, part, into)

    monkeypatch.setattr(Dump, "scan", scan)
    monkeypatch.setattr(Dump, "guess_prev", lambda self, start: 0)
    _one_and_two(sim, tmp_path, monkeypatch)
    assert len(rescans) == 1 and rescans[0].start > 0


def test_a_failed_scanner_is_replaced(make_sim, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=16 << 20, profile="busy", seed=21)

    def fail(self: Scan) -> bytes:
        raise MemoryError("in the child")

    monkeypatch.setattr(Scan, "to_bytes", fail)
    _one_and_two(sim, tmp_path, monkeypatch)


def test_damage_at_the_middle(make_sim, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An entry out of order just before the cut (the child's guess is wrong), another
    just after it, a page that fails its CRC in each half: the same file and report."""
    sim = make_sim(memory=16 << 20, profile="busy", seed=21)
    c = Crafted(sim)
    mid = len(c.entries) // 2
    c.set_entry(mid - 1, pfn=c.entries[mid + 5].pfn)  # far ahead of its neighbours
    c.set_entry(mid + 1, pfn=0)
    for k in (mid // 2, mid + mid // 2):
        i = next(i for i in range(k, len(c.entries)) if not c.entries[i].zero)
        c.set_entry(i, crc=c.entries[i].crc ^ 1)
    one, two = _one_and_two(sim, tmp_path, monkeypatch)
    a = json.loads((one / "info.json").read_text())
    b = json.loads((two / "info.json").read_text())
    assert a["damage"] == b["damage"] and sum(a["damage"].values()) == 4
    assert a["damaged_pfns_sample"] == b["damaged_pfns_sample"]


def test_damage_found_by_the_child_is_reported(make_sim, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A page of the upper half whose stored bytes pass their CRC but do not inflate: the
    child finds it, the parent counts it and marks the core incomplete."""
    sim = make_sim(memory=16 << 20, profile="busy", seed=21)
    h = header_of(sim)
    i = next(i for i in reversed(range(h.nr_entries)) if not read_entry(sim, h, i).zero
             and not read_entry(sim, h, i).raw)
    e = read_entry(sim, h, i)
    junk = bytes((k * 37 + 11) & 0xFF for k in range(e.length))
    poke(sim, logical_paddr(h, e.offset), junk)
    poke(sim, entry_paddr(h, i), dataclasses.replace(e, crc=fmt.page_crc(junk)).encode())
    d = _save(sim, tmp_path / "d", monkeypatch, forked=True)
    info = (d / "info.json").read_text()
    assert '"page does not decompress": 1' in info
    assert str(e.pfn) in info  # damaged_pfns_sample
    (flags,) = struct.unpack_from("<I", (d / "vmcore").read_bytes(), elf.E_FLAGS_OFFSET)
    assert flags & elf.EF_INCOMPLETE


@pytest.mark.parametrize(
    ("env", "cpus", "load", "forks"),
    [
        (None, 2, 0.1, True),  # early boot: the load average is near zero
        (None, 2, 1.5, False),  # no CPU likely free for the child
        (None, 8, 5.0, True),
        (None, 1, 0.0, False),
        ("1", 8, 0.0, False),
        ("2", 2, 9.0, True),  # forced, whatever the load
        ("2", 1, 0.0, False),  # never without a second CPU
    ],
)
def test_second_process_by_default_when_a_cpu_is_free(
    monkeypatch: pytest.MonkeyPatch, env: str | None, cpus: int, load: float, forks: bool
) -> None:
    if env is None:
        monkeypatch.delenv(elf.PROCESSES_ENV, raising=False)
    else:
        monkeypatch.setenv(elf.PROCESSES_ENV, env)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cpus)))
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert elf._parallel(elf.PARALLEL_MIN_BYTES) is forks
    assert elf._parallel(elf.PARALLEL_MIN_BYTES - 1) is False


@pytest.mark.parametrize("refused", ["scan", "write"])
def test_no_second_process_no_failure(make_sim, tmp_path, monkeypatch, refused) -> None:  # type: ignore[no-untyped-def]
    """fork refused (EAGAIN: a process limit, ENOMEM) for the scan or for the pages: one
    process does that part, the same file."""
    sim = make_sim(memory=16 << 20, profile="busy", seed=21)
    one = _save(sim, tmp_path / "one", monkeypatch, forked=False)
    real_fork = os.fork
    forks: list[str] = []

    def fork() -> int:
        forks.append("scan" if not forks else "write")
        if forks[-1] == refused:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_fork()

    monkeypatch.setattr(os, "fork", fork)
    monkeypatch.setattr(elf, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setenv(elf.PROCESSES_ENV, "2")
    res = save_sim(sim, tmp_path / "two", fmt_name="elf", keep=True)
    assert res.dump_dir is not None
    assert forks == (["scan"] if refused == "scan" else ["scan", "write"])
    assert (one / "vmcore").read_bytes() == (res.dump_dir / "vmcore").read_bytes()
