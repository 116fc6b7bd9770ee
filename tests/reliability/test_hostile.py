"""(6) Hostile input.

A crashed kernel's strings (panic, uts, VMCOREINFO, log) are attacker-controlled in the
worst case: control characters, terminal escape sequences, path separators, "..",
NULs, bidi overrides and huge lengths must come out escaped and bounded in file
names, in info.json/dmesg.txt, in status/list/info output (text and --json) and in
the journal.  And a dump directory with symlinks or hard links planted in it: nothing
is ever written through them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dumpsaver import catalogue, cli, journal, simulate
from dumpsaver import format as fmt
from dumpsaver import save as save_mod
from dumpsaver.decode import Dump
from dumpsaver.physmem import PhysMem

from . import interrupt as I
from .harness import Sim, load_machine, report

ESC = "\x1b]0;owned\x07\x1b[2J\x1b[31m\x9b1m"
BIDI = "\u202eevil\u2066\u2028"
PANIC = ESC + "../../../etc/passwd\0/bin/sh\r\n" + BIDI + "A" * 200_000
UTS = {"sysname": "Linux\x1b[2J", "nodename": "a/b\0c\x7f/../..", "release": "../../x\x1b]2;t\x07",
       "version": "#1\r\x08\x08\x08", "machine": "x86_64\u202e", "domainname": "."}  # fmt: skip
VMCOREINFO = "OSRELEASE=\x1b[2J../..\nCRASHTIME=\x00\x01\n" + "X" * 100_000
DMESG = ("line\x1b[2J\r\x08\x00 ../../ \u202e\n" * 2000) + "Kernel panic - not syncing: " + ESC

BAD = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def assert_clean(text: str, where: str) -> None:
    m = BAD.search(text)
    if m is not None:
        around = text[max(0, m.start() - 40) : m.start() + 20]
        raise AssertionError(f"{where}: raw {m.group()!r} at {m.start()}: {around!r}")


def strings(v: Any) -> Iterator[str]:
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for k, x in v.items():
            yield str(k)
            yield from strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from strings(x)


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sim:
    real = simulate.panic_meta

    def meta(*a: Any, **kw: Any) -> fmt.MetaInfo:
        m = real(*a, **kw)
        return fmt.MetaInfo(panic=PANIC, uts=dict(UTS), prstatus=m.prstatus,
                            vmcoreinfo=VMCOREINFO, dmesg=DMESG, machine=m.machine)  # fmt: skip

    monkeypatch.setattr(simulate, "panic_meta", meta)
    simulate.simulate(tmp_path / "m", memory=1 << 20, profile="idle", seed=7)
    monkeypatch.setattr(simulate, "panic_meta", real)
    return load_machine(tmp_path / "m")


@pytest.fixture
def journal_fields(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    real = journal.setup_logging

    def setup(verbose: bool = False, **kw: Any) -> Any:
        return real(verbose, sender=lambda msg, **f: sent.append({"MESSAGE": msg, **f}))

    monkeypatch.setattr(journal, "setup_logging", setup)
    return sent


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_hostile_strings_are_sanitised_everywhere(
    hostile: Sim, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    journal_fields: list[dict[str, Any]],
) -> None:
    dest = tmp_path / "dest"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minfree: 0\n")
    # status before the save: the waiting dump's panic string
    loc = ["--mem", str(hostile.mem), "--sysfs", str(hostile.sysfs), "--dest", str(dest),
           "--cmdline", "/dev/null", "--state-dir", str(tmp_path / "st")]  # fmt: skip
    outputs = {}
    outputs["status-before"] = _run(capsys, ["--config", str(cfg), "status", *loc])
    outputs["status-before-json"] = _run(capsys, ["--config", str(cfg), "status", "--json", *loc])
    rc, out, err = _run(capsys, I.save_argv(hostile, dest, tmp_path / "st", cfg))
    assert rc == 0, err
    outputs["save"] = (rc, out, err)
    (d,) = I.visible_dumps(dest)
    outputs["status"] = _run(capsys, ["--config", str(cfg), "status", *loc])
    outputs["status-json"] = _run(capsys, ["--config", str(cfg), "status", "--json", *loc])
    outputs["list"] = _run(capsys, ["list", "--dest", str(dest)])
    outputs["list-json"] = _run(capsys, ["list", "--json", "--dest", str(dest)])
    outputs["info"] = _run(capsys, ["info", d.name, "--dest", str(dest)])
    outputs["info-json"] = _run(capsys, ["info", "--json", d.name, "--dest", str(dest)])
    for what, (rc, out, err) in outputs.items():
        # status exits 11 while the dump waits (its verdict for monitoring)
        assert rc == (11 if what.startswith("status-before") else 0), (what, err)
        assert_clean(out, f"{what} stdout")
        assert_clean(err, f"{what} stderr")
        if what.endswith("json"):
            for s in strings(json.loads(out)):
                assert_clean(s, f"{what} (decoded)")
        assert len(out) < 200_000, what  # huge strings are cut
    # file names: only what dumpsaver chose, from numbers
    assert {p.name for p in dest.iterdir()} == {".lock", d.name}
    assert SAFE_NAME.match(d.name)
    assert {p.name for p in d.iterdir()} == {"vmcore", "dmesg.txt", "info.json"}
    info = json.loads((d / "info.json").read_text())
    for s in strings(info):
        assert_clean(s, "info.json")
    assert len(info["panic"]) <= 6 * 4096 + 3  # cut to 4096 characters, then escaped
    assert info["kernel"]["release"].startswith("../../x")  # kept, but escaped: text, not a path
    dmesg = (d / "dmesg.txt").read_text()
    assert_clean(dmesg, "dmesg.txt")
    # the journal: every field of every record
    assert journal_fields
    for rec in journal_fields:
        for k, v in rec.items():
            assert_clean(str(v), f"journal {k}")
    assert any(r.get("DUMPSAVER_EVENT") == "dump-found" for r in journal_fields)


# -- planted links ------------------------------------------------------------------------


def _name(m: Sim) -> str:
    with PhysMem(str(m.mem), m.area) as mem:
        return catalogue.dump_name(Dump(mem, m.header_paddr).header)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.mkdir()
    (v / "secret").write_text("do not touch\n")
    return v


def _victim_unchanged(victim: Path) -> None:
    assert sorted(p.name for p in victim.iterdir()) == ["secret"]
    assert (victim / "secret").read_text() == "do not touch\n"


def _save(m: Sim, dest: Path, tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    cfg = tmp / "c.yaml"
    cfg.write_text("minfree: 0\n")
    rc, _out, err = _run(capsys, I.save_argv(m, dest, tmp / "st", cfg))
    return rc, err


def test_planted_tmp_symlink(
    machine: Sim, tmp_path: Path, victim: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Regression: a symlink named like our temporary directory made the stale-entry
    cleanup raise (an internal error at every boot)."""
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    os.symlink(victim, dest / f".tmp-{_name(machine)}")
    os.symlink(victim, dest / ".tmp-other")
    rc, err = _save(machine, dest, tmp_path, capsys)
    assert rc == 0, err
    _victim_unchanged(victim)
    assert not (dest / ".tmp-other").is_symlink()


def test_planted_links_inside_a_stale_tmp_dir(
    machine: Sim, tmp_path: Path, victim: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = tmp_path / "dest"
    stale = dest / f".tmp-{_name(machine)}"
    stale.mkdir(parents=True, mode=0o700)
    os.symlink(victim / "secret", stale / "vmcore")
    os.symlink(victim, stale / "sub")
    os.link(victim / "secret", stale / "info.json")  # a hard link
    rc, err = _save(machine, dest, tmp_path, capsys)
    assert rc == 0, err
    _victim_unchanged(victim)
    assert os.stat(victim / "secret").st_nlink == 1


def test_planted_symlink_with_the_final_name(
    machine: Sim, tmp_path: Path, victim: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    name = _name(machine)
    os.symlink(victim, dest / name)
    rc, err = _save(machine, dest, tmp_path, capsys)
    assert rc == 0, err
    _victim_unchanged(victim)
    (d,) = [p for p in I.visible_dumps(dest) if not p.is_symlink()]
    assert d.name.startswith(name + "-")


def test_planted_lock_symlink(
    machine: Sim, tmp_path: Path, victim: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    os.symlink(victim / "secret", dest / ".lock")
    rc, err = _save(machine, dest, tmp_path, capsys)
    assert rc == 1
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1
    assert "internal error" not in err
    _victim_unchanged(victim)
    assert I.header_magic(machine) == fmt.MAGIC


def test_planted_lock_hard_link(
    machine: Sim, tmp_path: Path, victim: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    os.link(victim / "secret", dest / ".lock")
    rc, err = _save(machine, dest, tmp_path, capsys)
    assert rc == 0, err
    _victim_unchanged(victim)


def test_dest_is_a_symlink(
    machine: Sim, tmp_path: Path, victim: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    os.symlink(victim, tmp_path / "dest")
    rc, err = _save(machine, tmp_path / "dest", tmp_path, capsys)
    assert rc == 1 and "symlink" in err
    _victim_unchanged(victim)


def test_planted_state_tmp_symlink(
    machine: Sim, tmp_path: Path, victim: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: recording a failed attempt wrote through a symlink planted as
    attempts.json.tmp in the state directory."""
    st = tmp_path / "st"
    st.mkdir(mode=0o700)
    os.symlink(victim / "secret", st / "attempts.json.tmp")
    dest = tmp_path / "dest"
    monkeypatch.setenv("DUMPSAVER_RAISE_AT", "fsync-core")  # the save fails: recorded
    rc, _err = _save(machine, dest, tmp_path, capsys)
    assert rc == 1
    _victim_unchanged(victim)
    assert json.loads((st / "attempts.json").read_text())["count"] == 1
    assert (os.stat(st / "attempts.json").st_mode & 0o777) == 0o600


def test_hostile_stale_name_is_logged_escaped(
    machine: Sim, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = tmp_path / "dest"
    (dest / ".tmp-\x1b]0;x\x07\x1b[2J").mkdir(parents=True)
    rc, err = _save(machine, dest, tmp_path, capsys)
    assert rc == 0, err
    assert "\x1b" not in err and "\\x1b" in err


def test_planted_info_json_is_shown_escaped(
    machine: Sim, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A directory with a hostile info.json (keys and values) planted in the dump dir."""
    dest = tmp_path / "dest"
    (dest / "planted").mkdir(parents=True)
    (dest / "planted" / "info.json").write_text(json.dumps(
        {"\x1b[2Jkey": "\x1b]0;v\x07", "panic": ESC, "crash_time": "\x1b[2J",
         "file_size": "\x1b", "complete": "\x1b"}))  # fmt: skip
    for argv in (["list", "--dest", str(dest)], ["info", "planted", "--dest", str(dest)],
                 ["info", "--json", "planted", "--dest", str(dest)]):  # fmt: skip
        rc, out, err = _run(capsys, argv)
        assert rc == 0, err
        assert_clean(out, " ".join(argv[:2]))


# -- huge counts --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt_name", ["elf", "kdump"])
def test_more_than_65535_runs(tmp_path: Path, fmt_name: str) -> None:
    """Every other page saved: 70,000 runs, so more program headers than e_phnum can
    hold (PN_XNUM, the count in section header 0).  Saved and read back page for page."""
    import uuid

    from dumpsaver import config as config_mod
    from dumpsaver.codecs import Codec
    from dumpsaver.encode import encode_dump
    from dumpsaver.physmem import LogicalStream, Range

    from .harness import read_elf_pages
    from .interrupt import read_kdump_pages

    ps, runs = 4096, 70_000
    area = (1 << 20, 8 << 20)  # 8 MiB at 1 MiB
    mem_pages = 2 * runs + 1024
    img = tmp_path / "mem"
    with open(img, "wb") as f:
        f.truncate(mem_pages * ps)

    def content(i: int) -> bytes:
        pfn = 1024 + 2 * i
        return (pfn.to_bytes(8, "little") * 8).ljust(ps, b"\0") if i % 50 == 0 else bytes(ps)

    def pages() -> Iterator[tuple[int, bytes]]:
        for i in range(runs):
            yield 1024 + 2 * i, content(i)

    with PhysMem(str(img), [Range(area[0], area[0] + area[1])], writable=True) as mem:
        h = encode_dump(LogicalStream(mem, [area]), pages(), page_size=ps, mem_pages=mem_pages,
                        codec=Codec.ZLIB, meta=fmt.MetaInfo(panic="many runs"),
                        excluded=fmt.DEFAULT_EXCLUDED, class_pages=(0,) * 8, crash_time_ns=1,
                        boot_id=uuid.UUID(int=7))  # fmt: skip
    assert h.nr_entries == runs and not h.truncated
    from dumpsaver.locate import Candidate

    used = h.extents[0].length
    cand = Candidate("config", "test", (Range(area[0], area[0] + used),), area[0])
    with PhysMem(str(img), cand.ranges) as mem:
        d = Dump(mem, area[0])
        cfg = config_mod.from_mapping({"minfree": 0, "format": fmt_name}, "t")
        res = save_mod.save(cfg, cand, d, mem_path=str(img), dest=tmp_path / "dest", keep=True)
    assert res.status == "saved" and res.dump_dir is not None
    vmcore = res.dump_dir / "vmcore"
    got = read_elf_pages(vmcore, ps) if fmt_name == "elf" else read_kdump_pages(vmcore)
    assert len(got) == runs
    for i in range(0, runs, 997):
        assert got[1024 + 2 * i] == content(i), i
    if fmt_name == "elf":
        with open(vmcore, "rb") as f:
            ehdr = f.read(64)
        assert int.from_bytes(ehdr[56:58], "little") == 0xFFFF  # e_phnum = PN_XNUM
        try:
            import drgn
        except ImportError:
            return
        prog = drgn.Program()
        prog.set_core_dump(str(vmcore))  # an independent reader agrees
        assert prog.read(1024 * ps, ps, True) == content(0)
        with pytest.raises(drgn.FaultError):
            prog.read(1025 * ps, 8, True)  # a page left out is absent, not zeros


def test_elf_writer_memory_does_not_grow_with_runs(tmp_path: Path) -> None:
    """Regression: the ELF writer kept one program header and one dict entry per run
    (~200 bytes each) before writing anything: a machine with millions of runs of
    saved PFNs needed gigabytes.  Now the program headers are streamed."""
    import tracemalloc
    import types
    from array import array

    from dumpsaver.decode import Scan
    from dumpsaver.writers.elf import ElfWriter

    runs = 1_000_000
    scan = Scan(runs=array("Q", [x for i in range(runs) for x in (2 * i, 1)]), good=runs)
    h = types.SimpleNamespace(page_size=4096, truncated=False)
    meta = fmt.MetaInfo()
    dump = types.SimpleNamespace(header=h, meta=meta, meta_ok=True, header_ok=True,
                                 pages=lambda s, part: iter(()))  # fmt: skip
    out = tmp_path / "vmcore"
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o600)
    tracemalloc.start()
    try:
        ElfWriter().write(fd, dump, scan, None)  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        os.close(fd)
    report("elf-writer-memory", {"runs": runs, "peak_traced_bytes": peak})
    assert peak < 32 << 20, f"{peak / 1e6:.0f} MB for {runs} runs"
    with open(out, "rb") as f:
        ehdr = f.read(64)
    assert int.from_bytes(ehdr[56:58], "little") == 0xFFFF  # PN_XNUM: count in shdr 0
