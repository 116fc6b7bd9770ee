"""The ELF writer's second process: a forked child writes the upper half of the pages
(dumpsaver.writers.elf._write_split).  Its file must be the one process's file byte for
byte, and damage it finds must reach info.json."""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

import pytest

from dumpsaver import format as fmt
from dumpsaver.decode import Scan
from dumpsaver.writers import elf

from .conftest import Sim, entry_paddr, header_of, logical_paddr, save_sim
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
    scan = Scan(stored_bytes=elf.PARALLEL_MIN_BYTES)
    assert elf._parallel(scan) is forks
    assert elf._parallel(Scan(stored_bytes=elf.PARALLEL_MIN_BYTES - 1)) is False
