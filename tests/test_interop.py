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

from .conftest import Sim, check_against_truth, header_of, save_sim
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


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fmt_name", ["elf", "kdump"])
def test_drgn_reads_every_saved_page(make_sim, tmp_path, case, fmt_name) -> None:  # type: ignore[no-untyped-def]
    sim, damaged = _make(make_sim, case)
    res = save_sim(sim, tmp_path / "dumps", fmt_name=fmt_name)
    assert res.dump_dir is not None
    complete = case not in ("truncated", "damaged")
    assert res.status == ("saved" if complete else "incomplete")
    assert res.info["pages"]["damaged"] == len(damaged)
    n = check_against_truth(res.dump_dir / "vmcore", sim, missing=damaged)
    assert n == sim.manifest["saved_pages"] - len(damaged)
    if fmt_name == "kdump":
        kf = KdumpFile.open(res.dump_dir / "vmcore")
        assert bool(kf.status & INCOMPLETE) == (not complete)


def test_drgn_reads_the_flattened_stream_directly(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim, _ = _make(make_sim, "idle-zlib")
    mem, dump = open_dump(sim)
    with mem, open(tmp_path / "vmcore.flat", "wb") as f:
        write_flat(f.fileno(), dump, dump.scan(), None)
    assert check_against_truth(tmp_path / "vmcore.flat", sim) == sim.manifest["saved_pages"]


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
    assert check_against_truth(tmp_path / "vmcore", sim) == sim.manifest["saved_pages"]
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


KMAP = 0xFFFFFFFF80000000  # __START_KERNEL_map
UTS_VADDR = KMAP + 0xA13520  # init_uts_ns
PGD_VADDR = KMAP + 0x100000  # init_top_pgt


def kernel_like_machine(d: Path) -> tuple[Path, int, dict[int, bytes]]:
    """A small machine whose dump holds what makedumpfile and drgn need to work from
    VMCOREINFO, as a real kernel's dump does: page tables mapping the kernel image
    (init_top_pgt -> a 1 GiB page at physical 0), init_uts_ns behind them, mem_map's
    address and the struct page layout.  Returns (memory image, header paddr, pages)."""
    import random
    import struct
    import uuid

    from dumpsaver import elfnote
    from dumpsaver import format as fmt
    from dumpsaver.encode import encode_dump
    from dumpsaver.physmem import LogicalStream, PhysMem, Range

    pages: dict[int, bytes] = {}
    pgd = bytearray(PS)
    struct.pack_into("<Q", pgd, 511 * 8, 0x101000 | 0x63)  # PML4[511] -> the PDPT below
    pages[0x100] = bytes(pgd)
    pdpt = bytearray(PS)
    struct.pack_into("<Q", pdpt, 510 * 8, 0xE3)  # PDPT[510]: 1 GiB page at 0 (PSE)
    pages[0x101] = bytes(pdpt)
    mem_map = bytearray(PS)
    struct.pack_into("<Q", mem_map, 0, 0xFFFFEA0000000000)  # the mem_map pointer
    pages[0x102] = bytes(mem_map)
    uts = bytearray(PS)
    at = (UTS_VADDR & 0xFFF) + 4  # struct uts_namespace { struct kref; new_utsname name; }
    for i, field in enumerate([b"Linux", b"kernel-like", RELEASE.encode(), b"#1 SMP",
                               b"x86_64", b"(none)"]):
        uts[at + 65 * i : at + 65 * i + len(field)] = field
    pages[(UTS_VADDR - KMAP) >> 12] = bytes(uts)
    rng = random.Random(5)
    for pfn in range(0x200, 0x240):
        pages[pfn] = rng.randbytes(PS // 2) + bytes(PS // 2)
    vmcoreinfo = "".join(f"{k}={v}\n" for k, v in [
        ("OSRELEASE", RELEASE), ("PAGESIZE", PS), ("SYMBOL(init_uts_ns)", f"{UTS_VADDR:x}"),
        ("SYMBOL(swapper_pg_dir)", f"{PGD_VADDR:x}"), ("SYMBOL(init_top_pgt)", f"{PGD_VADDR:x}"),
        ("SYMBOL(_stext)", f"{KMAP + 0x1000000:x}"), ("SYMBOL(mem_map)", f"{KMAP + 0x102000:x}"),
        ("SIZE(page)", 64), ("OFFSET(page.flags)", 0), ("OFFSET(page._refcount)", 52),
        ("OFFSET(page.mapping)", 24), ("OFFSET(page.lru)", 8), ("NUMBER(phys_base)", 0),
        ("KERNELOFFSET", 0), ("CRASHTIME", 1700000000)])
    meta = fmt.MetaInfo(panic="kernel-like", uts={"sysname": "Linux", "nodename": "kernel-like",
                        "release": RELEASE, "version": "#1 SMP", "machine": "x86_64"},
                        prstatus=[elfnote.prstatus(1, [0] * 27)], vmcoreinfo=vmcoreinfo)
    image = d / "mem"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
        for pfn, data in pages.items():
            f.seek(pfn * PS)
            f.write(data)
    area = (12 << 20, 4 << 20)
    with PhysMem(str(image), [Range(area[0], sum(area))], writable=True) as mem:
        encode_dump(LogicalStream(mem, [area]), sorted(pages.items()), page_size=PS,
                    mem_pages=(16 << 20) // PS, codec=Codec.ZLIB, meta=meta,
                    excluded=fmt.DEFAULT_EXCLUDED, class_pages=(0,) * 8,
                    crash_time_ns=1_700_000_000 * 10**9, boot_id=uuid.uuid4())
    return image, area[0], pages


def test_kernel_like_dump_converts_with_its_vmcoreinfo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With kernel page tables in the dump, makedumpfile converts our ELF core as it is
    (VMCOREINFO kept), and drgn reads kernel virtual addresses in all three files."""
    from dumpsaver.decode import Dump
    from dumpsaver.physmem import PhysMem, Range
    from dumpsaver.writers.elf import ElfWriter

    mdf = need("makedumpfile")
    image, header, pages = kernel_like_machine(tmp_path)
    with PhysMem(str(image), [Range(header, header + (4 << 20))]) as mem:
        dump = Dump(mem, header)
        scan = dump.scan()
        for writer in (ElfWriter(), KdumpWriter()):
            with open(tmp_path / f"vmcore.{writer.name}", "wb") as f:
                writer.write(f.fileno(), dump, scan, None)
    r = subprocess.run([mdf, "-c", "-d", "0", str(tmp_path / "vmcore.elf"),
                        str(tmp_path / "converted")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "The kernel version is not supported." in r.stdout + r.stderr  # a warning only
    kf = KdumpFile.open(tmp_path / "converted")
    assert kf.vmcoreinfo.startswith(f"OSRELEASE={RELEASE}\n")
    assert kf.uts[1] == "kernel-like"  # makedumpfile read it through our page tables
    release_vaddr = UTS_VADDR + 4 + 65 * 2
    for name in ("vmcore.elf", "vmcore.kdump", "converted"):
        prog = drgn.Program()
        prog.set_core_dump(str(tmp_path / name))
        assert prog.read(release_vaddr, len(RELEASE)) == RELEASE.encode(), name
        for pfn, data in pages.items():
            assert prog.read(pfn * PS, PS, True) == data, (name, pfn)
    assert run_crash("--osrelease", str(tmp_path / "converted")).strip() == RELEASE


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
