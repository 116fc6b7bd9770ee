"""Interop with the real tools: drgn, readelf, makedumpfile, crash (docs/interop.md).

Each test skips with the reason when its tool is missing; CI installs them all.
What each tool says about our files is documented in docs/interop.md; the tests
assert those sentences so that the document stays true.
"""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dumpsaver import codecs
from dumpsaver.codecs import Codec
from dumpsaver.writers.flat import write_flat
from dumpsaver.writers.kdump import KdumpWriter

from .conftest import Sim, header_of, save_sim
from .test_kdump import INCOMPLETE, ZLIB, KdumpFile, _poke, _stored_paddr, check_file, open_dump

drgn = pytest.importorskip("drgn", reason="drgn (from PyPI, with libkdumpfile) is the reader")

RELEASE = "6.1.0-sim-amd64"
PS = 4096


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt install {tool})")
    return path


# -- the machines: several seeds and codecs, a truncated dump, one with damaged pages --

CASES = {
    "idle-zlib": dict(memory=16 << 20, profile="idle", seed=31, codec=Codec.ZLIB),
    "busy-zstd": dict(memory=16 << 20, profile="busy", seed=32, codec=Codec.ZSTD),
    "idle-lz4": dict(memory=16 << 20, profile="idle", seed=33, codec=Codec.LZ4),
    "truncated": dict(memory=16 << 20, profile="busy", seed=34, codec=Codec.ZLIB,
                      min_addr=14 << 20, margin=1 << 20),
    "damaged": dict(memory=16 << 20, profile="busy", seed=35, codec=Codec.ZSTD),
}


def _make(make_sim, case: str) -> tuple[Sim, frozenset[int]]:  # type: ignore[no-untyped-def]
    kw = CASES[case]
    if not codecs.available(kw["codec"]):  # type: ignore[arg-type]
        pytest.skip(f"the {kw['codec']} module is not installed")
    sim = make_sim(**kw)
    damaged: frozenset[int] = frozenset()
    if case == "damaged":
        h = header_of(sim)
        mem, dump = open_dump(sim)
        with mem:
            victims = [e for e, _s in dump.stored_pages(dump.scan()) if not e.zero][::97][:5]
        for e in victims:
            _poke(sim, _stored_paddr(sim, h, e) + 2, b"\x55\xaa")
        damaged = frozenset(e.pfn for e in victims)
    return sim, damaged


def check_drgn(path: Path, sim: Sim, missing: frozenset[int] = frozenset()) -> int:
    """drgn reads every saved page equal to the ground truth; unsaved pages fault."""
    prog = drgn.Program()
    prog.set_core_dump(str(path))
    assert prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL
    saved = [p for p in sim.saved_pfns() if p not in missing]
    with open(sim.before, "rb") as f:
        for pfn in saved:
            f.seek(pfn * PS)
            assert prog.read(pfn * PS, PS, True) == f.read(PS), f"page {pfn} differs"
    keep = set(saved)
    mem_pages = sim.manifest["memory"] // PS
    absent = sorted(missing) + [p for p in range(0, mem_pages, 37) if p not in keep][:64]
    for pfn in absent:
        with pytest.raises(drgn.FaultError):
            prog.read(pfn * PS, PS, True)
    return len(saved)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fmt_name", ["elf", "kdump"])
def test_drgn_reads_every_saved_page(make_sim, tmp_path, case, fmt_name) -> None:  # type: ignore[no-untyped-def]
    sim, damaged = _make(make_sim, case)
    res = save_sim(sim, tmp_path / "dumps", fmt_name=fmt_name)
    assert res.dump_dir is not None
    complete = case not in ("truncated", "damaged")
    assert res.status == ("saved" if complete else "incomplete")
    assert res.info["pages"]["damaged"] == len(damaged)
    n = check_drgn(res.dump_dir / "vmcore", sim, damaged)
    assert n == sim.manifest["saved_pages"] - len(damaged)
    if fmt_name == "kdump":
        kf = KdumpFile.open(res.dump_dir / "vmcore")
        assert bool(kf.status & INCOMPLETE) == (not complete)


def test_drgn_reads_the_flattened_stream_directly(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim, _ = _make(make_sim, "idle-zlib")
    mem, dump = open_dump(sim)
    with mem, open(tmp_path / "vmcore.flat", "wb") as f:
        write_flat(f.fileno(), dump, dump.scan(), None)
    assert check_drgn(tmp_path / "vmcore.flat", sim) == sim.manifest["saved_pages"]


@pytest.mark.parametrize("case", ["truncated", "damaged"])
def test_readelf_accepts_incomplete_cores(make_sim, tmp_path, case) -> None:  # type: ignore[no-untyped-def]
    need("readelf")
    sim, _ = _make(make_sim, case)
    res = save_sim(sim, tmp_path / "dumps", fmt_name="elf")
    assert res.dump_dir is not None
    out = subprocess.run(["readelf", "-W", "-h", "-l", "-n", str(res.dump_dir / "vmcore")],
                         capture_output=True, text=True, check=True, timeout=60)
    assert not out.stderr.strip(), out.stderr
    assert "CORE (Core file)" in out.stdout
    flags = next(ln for ln in out.stdout.splitlines() if ln.strip().startswith("Flags:"))
    assert flags.split()[1] == "0x1"  # makedumpfile's mark of an incomplete ELF dump
    assert out.stdout.count("NT_PRSTATUS") == 2 and "VMCOREINFO" in out.stdout


# -- makedumpfile -----------------------------------------------------------------------


def test_makedumpfile_rebuilds_the_flattened_stream(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """dumpsaver save --stdout | makedumpfile -R FILE gives our kdump file, byte for byte."""
    mdf = need("makedumpfile")
    sim, _ = _make(make_sim, "busy-zstd")
    mem, dump = open_dump(sim)
    with mem:
        scan = dump.scan()
        with open(tmp_path / "vmcore", "wb") as f:
            KdumpWriter().write(f.fileno(), dump, scan, None)
        p = subprocess.Popen([mdf, "-R", str(tmp_path / "rebuilt")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert p.stdin is not None and p.stdout is not None
        out: list[bytes] = []
        t = threading.Thread(target=lambda: out.append(p.stdout.read()))  # type: ignore[union-attr]
        t.start()
        write_flat(p.stdin.fileno(), dump, scan, None)
        p.stdin.close()
        rc = p.wait(timeout=120)
        t.join()
    assert rc == 0, out
    assert b"makedumpfile Completed." in out[0]
    assert (tmp_path / "rebuilt").read_bytes() == (tmp_path / "vmcore").read_bytes()


def test_save_stdout_into_makedumpfile(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """dumpsaver save --stdout | makedumpfile -R FILE; the dump stays in memory."""
    mdf = need("makedumpfile")
    sim, _ = _make(make_sim, "idle-zlib")
    env = {**os.environ, "DUMPSAVER_CONFIG": "/dev/null"}
    env.pop("NOTIFY_SOCKET", None)
    src = subprocess.Popen([sys.executable, "-m", "dumpsaver", "save", "--stdout",
                            *sim.cli_args(tmp_path / "dumps"), "--no-restart"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    dst = subprocess.run([mdf, "-R", str(tmp_path / "vmcore")], stdin=src.stdout,
                         capture_output=True, timeout=120)
    assert src.stdout is not None and src.stderr is not None
    src.stdout.close()
    err = src.stderr.read().decode()
    assert src.wait(timeout=120) == 0, err
    assert dst.returncode == 0, dst.stdout + dst.stderr
    assert "kept in memory" in err
    assert check_drgn(tmp_path / "vmcore", sim) == sim.manifest["saved_pages"]
    assert sim.magic() == b"MCOREDMP", "--stdout without --release keeps the dump"


def hide_vmcoreinfo(src: Path, dst: Path) -> None:
    """A copy of an ELF core whose VMCOREINFO note is renamed (same length), so that
    makedumpfile treats it as a core without VMCOREINFO (docs/interop.md)."""
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    with open(dst, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        i = m.find(b"VMCOREINFO\0", 0, 1 << 20)
        assert i > 0
        m[i : i + 10] = b"VMCOREINFX"


def test_makedumpfile_converts_our_elf_core(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mdf = need("makedumpfile")
    sim, _ = _make(make_sim, "idle-zlib")
    res = save_sim(sim, tmp_path / "dumps", fmt_name="elf")
    assert res.dump_dir is not None
    core = res.dump_dir / "vmcore"
    # As it is, makedumpfile trusts VMCOREINFO and wants the kernel's page tables.
    r = subprocess.run([mdf, "-c", "-d", "0", str(core), str(tmp_path / "a")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "Can't get the address of system_utsname" in r.stdout + r.stderr
    # Without the VMCOREINFO note it converts at dump level 0, every page intact.
    hide_vmcoreinfo(core, tmp_path / "core-novmcoreinfo")
    r = subprocess.run([mdf, "-c", "-d", "0", str(tmp_path / "core-novmcoreinfo"),
                        str(tmp_path / "b")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    kf = KdumpFile.open(tmp_path / "b")
    assert kf.status == ZLIB
    assert kf.uts == [""] * 6  # with no VMCOREINFO it knows no kernel: utsname stays empty
    ok = 0
    for pfn, d in kf.descs().items():
        page = kf.page(pfn, d)
        if pfn in set(sim.saved_pfns()):
            assert page == sim.truth(pfn)
            ok += 1
        else:
            assert page == bytes(PS)  # holes between our PT_LOADs read as zeros there
    assert ok == sim.manifest["saved_pages"]


def test_makedumpfile_does_not_refilter_our_kdump_file(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mdf = need("makedumpfile")
    sim, _ = _make(make_sim, "idle-zlib")
    res = save_sim(sim, tmp_path / "dumps", fmt_name="kdump")
    assert res.dump_dir is not None
    r = subprocess.run([mdf, "-c", "-d", "31", str(res.dump_dir / "vmcore"),
                        str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "Can't get the address of system_utsname" in r.stdout + r.stderr


# -- crash --------------------------------------------------------------------------------


def run_crash(*args: str) -> str:
    r = subprocess.run([need("crash"), *args], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=120, env={**os.environ, "TERM": "dumb"})
    return r.stdout + r.stderr


@pytest.mark.parametrize("fmt_name", ["elf", "kdump"])
def test_crash_reads_the_release(make_sim, tmp_path, fmt_name) -> None:  # type: ignore[no-untyped-def]
    sim, _ = _make(make_sim, "idle-zlib")
    res = save_sim(sim, tmp_path / "dumps", fmt_name=fmt_name)
    assert res.dump_dir is not None
    assert run_crash("--osrelease", str(res.dump_dir / "vmcore")).strip() == RELEASE


@pytest.mark.parametrize("case", ["idle-zlib", "busy-zstd", "truncated"])
def test_crash_accepts_the_kdump_file(make_sim, tmp_path, case) -> None:  # type: ignore[no-untyped-def]
    """Without a vmlinux crash stops at the symbols, after checking the whole dump header,
    the notes and the bitmaps (its -d 1 debug output shows what it read)."""
    sim, _ = _make(make_sim, case)
    res = save_sim(sim, tmp_path / "dumps", fmt_name="kdump")
    assert res.dump_dir is not None
    out = run_crash("-d", "1", "/bin/true", str(res.dump_dir / "vmcore"))
    assert "compressed kdump: header->utsname.machine: x86_64" in out
    assert f"total_valid_pages: {sim.manifest['saved_pages']}" in out
    assert "num_prstatus_notes: 2" in out
    assert f"release: {RELEASE}" in out
    assert "crash: /bin/true: no debugging data available" in out
    flag = "DUMP_DH_COMPRESSED_ZSTD" if "zstd" in case else "DUMP_DH_COMPRESSED_ZLIB"
    assert flag in out
    if case == "truncated":
        assert "DUMP_DH_COMPRESSED_INCOMPLETE" in out


def test_crash_without_a_namelist(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim, _ = _make(make_sim, "idle-zlib")
    res = save_sim(sim, tmp_path / "dumps", fmt_name="kdump")
    assert res.dump_dir is not None
    assert "crash: namelist argument required" in run_crash(str(res.dump_dir / "vmcore"))


def test_crash_reads_our_kdump_with_our_flat_check(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """check_file is the reference reader the crash and drgn results are compared with."""
    sim, _ = _make(make_sim, "idle-lz4")
    res = save_sim(sim, tmp_path / "dumps", fmt_name="kdump")
    assert res.dump_dir is not None
    out = run_crash("-d", "1", "/bin/true", str(res.dump_dir / "vmcore"))
    assert "status: 0" in out
    assert check_file(KdumpFile.open(res.dump_dir / "vmcore"), sim) == sim.manifest["saved_pages"]
