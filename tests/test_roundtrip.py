"""Round trip: simulate a crash, save it, read it back with independent readers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dumpsaver import codecs, elfnote
from dumpsaver.codecs import Codec

from .conftest import Sim, check_against_truth, save_sim

CODECS = [c for c in Codec if codecs.available(c)]


def _saved(res_dir: Path | None) -> tuple[Path, dict[str, object]]:
    assert res_dir is not None
    return res_dir / "vmcore", json.loads((res_dir / "info.json").read_text())


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    mib=st.sampled_from([1, 4, 16, 48]),
    profile=st.sampled_from(["idle", "busy"]),
    codec=st.sampled_from(CODECS),
)
def test_roundtrip_many(make_sim, tmp_path_factory, seed, mib, profile, codec) -> None:  # type: ignore[no-untyped-def]
    sim: Sim = make_sim(memory=mib << 20, profile=profile, seed=seed, codec=codec)
    dest = tmp_path_factory.mktemp("dest")
    res = save_sim(sim, dest)
    vmcore, info = _saved(res.dump_dir)
    if sim.manifest["truncated"]:  # a tiny machine whose free pages ran out at panic
        assert res.status == "incomplete" and info["complete"] is False
        assert "ran out of dump space" in info["incomplete_reasons"][0]  # type: ignore[index]
    else:
        assert res.status == "saved" and info["complete"] is True
    assert info["codec"] == codec.label
    assert check_against_truth(vmcore, sim) == sim.manifest["saved_pages"]
    assert info["pages"]["saved"] == sim.manifest["saved_pages"]  # type: ignore[index]
    assert sim.magic() == b"MCORESVD"


def test_sparse_multi_gib_machine(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=4 << 30, profile="sparse", seed=7, codec=Codec.ZLIB)
    assert sim.mem.stat().st_blocks * 512 < (1 << 30)  # the image really is sparse
    res = save_sim(sim, tmp_path / "dumps")
    vmcore, info = _saved(res.dump_dir)
    assert info["memory_bytes"] == 4 << 30
    assert check_against_truth(vmcore, sim) == sim.manifest["saved_pages"] > 5000


def test_header_fields_survive(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    drgn = pytest.importorskip("drgn")
    sim = make_sim(memory=8 << 20, seed=3, panic="Oops: general protection fault")
    res = save_sim(sim, tmp_path / "dumps")
    vmcore, info = _saved(res.dump_dir)
    assert info["panic"] == "Oops: general protection fault"
    assert info["kernel"]["release"] == "6.1.0-sim-amd64"  # type: ignore[index]
    assert info["kernel"]["nodename"] == "sim-3"  # type: ignore[index]
    assert info["crash_time"].startswith("2023-11-14T22:13:20")  # type: ignore[union-attr]
    assert info["cpus"] == 2
    dmesg = (res.dump_dir / "dmesg.txt").read_text()  # type: ignore[operator]
    assert "Kernel panic - not syncing: Oops: general protection fault" in dmesg
    prog = drgn.Program()
    prog.set_core_dump(str(vmcore))  # drgn accepts it as a kernel core: VMCOREINFO is there
    assert prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL
    head = vmcore.read_bytes()[:65536]
    assert b"OSRELEASE=6.1.0-sim-amd64\n" in head and b"PAGESIZE=4096\n" in head


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) is not installed")
def test_readelf_accepts_the_core(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=16 << 20, seed=5)
    res = save_sim(sim, tmp_path / "dumps")
    vmcore, _ = _saved(res.dump_dir)
    out = subprocess.run(["readelf", "-W", "-h", "-l", "-n", str(vmcore)], capture_output=True,
                         text=True, check=True)
    assert "warning" not in out.stderr.lower() and "error" not in out.stderr.lower(), out.stderr
    assert "CORE (Core file)" in out.stdout
    assert "X86-64" in out.stdout
    loads = [ln for ln in out.stdout.splitlines() if ln.strip().startswith("LOAD")]
    assert len(loads) == len(sim.manifest["saved"])
    phdrs = [ln.strip() for ln in out.stdout.splitlines()]
    first_phdr = next(ln for ln in phdrs if ln.startswith(("NOTE", "LOAD")))
    assert first_phdr.strip().startswith("NOTE")  # crash wants the note first
    assert out.stdout.count("NT_PRSTATUS") == 2
    assert "VMCOREINFO" in out.stdout


def test_prstatus_registers_survive(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=8 << 20, seed=11)
    from dumpsaver import decode, locate
    from dumpsaver.physmem import PhysMem

    cand = locate.from_sysfs(sim.sys)
    assert cand is not None
    with PhysMem(str(sim.mem), cand.ranges) as mem:
        regs_in_memory = decode.Dump(mem, cand.header).meta.prstatus
    res = save_sim(sim, tmp_path / "dumps")
    vmcore, _ = _saved(res.dump_dir)
    data = vmcore.read_bytes()[:65536]
    for blob in regs_in_memory:
        assert elfnote.note(b"CORE", elfnote.NT.PRSTATUS, blob) in data
        assert elfnote.prstatus_regs(blob)["rip"] >> 32 == 0xFFFFFFFF


@pytest.mark.parametrize("profile", ["idle", "sparse"])
def test_lower_dump_level_keeps_user_pages(make_sim, tmp_path, profile) -> None:  # type: ignore[no-untyped-def]
    """Like makedumpfile's lower dump levels: exclude only free pages."""
    from dumpsaver.format import PageClass as PC

    sim = make_sim(memory=32 << 20, profile=profile, seed=9, excluded=frozenset({PC.FREE}))
    classes = sim.manifest["classes"]
    assert sim.manifest["saved_pages"] == sum(n for c, n in classes.items() if c != "free")
    res = save_sim(sim, tmp_path / "dumps")
    vmcore, info = _saved(res.dump_dir)
    assert info["pages"]["excluded_by_class"] == {"free": classes["free"]}  # type: ignore[index]
    check_against_truth(vmcore, sim)


def test_cli_exclude_names_are_checked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from .conftest import run_cli

    r = run_cli("simulate", "--memory", "8M", "--exclude", "free,cats", "--into", str(tmp_path))
    assert r.returncode == 2 and "unknown page class 'cats'" in r.stderr
    r = run_cli("simulate", "--memory", "8M", "--exclude", "locked", "--into", str(tmp_path))
    assert r.returncode == 2 and "locked pages cannot be excluded" in r.stderr
