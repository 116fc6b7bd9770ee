"""gdb on our ELF cores (docs/interop.md, "gdb"): what it can and cannot do.

gdb reads an ELF core by p_vaddr only.  Our PT_LOAD segments carry the crashed
kernel's direct-map address of each run of pages when VMCOREINFO tells it (or the
kernel has no KASLR), so gdb reads kernel memory through the direct map.  It does
not walk page tables: kernel text and vmalloc addresses are not readable, and
without a vmlinux there are no symbols.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dumpsaver.writers.elf import DIRECT_MAP

from .conftest import save_sim

PS = 4096


def _gdb() -> str:
    path = shutil.which("gdb")
    if path is None:
        pytest.skip("gdb is not installed (apt install gdb)")
    return path


def _batch(core: Path, *commands: str) -> str:
    argv = [_gdb(), "-nx", "-batch", "-ex", f"core-file {core}"]
    for c in commands:
        argv += ["-ex", c]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return out.stdout + out.stderr


def _first_load(core: Path) -> tuple[int, int]:
    data = core.read_bytes()
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    for k in range(phnum):
        p_type, _f, _off, vaddr, paddr, _fs, _ms, _al = struct.unpack_from("<IIQQQQQQ", data,
                                                                           phoff + 56 * k)
        if p_type == 1:
            return vaddr, paddr
    raise AssertionError("no PT_LOAD")


def test_gdb_reads_kernel_memory_through_the_direct_map(make_sim: Any, tmp_path: Path) -> None:
    _gdb()
    sim = make_sim(memory=4 << 20, seed=41)
    res = save_sim(sim, tmp_path / "dumps", fmt_name="elf")
    assert res.dump_dir is not None
    core = res.dump_dir / "vmcore"
    vaddr, paddr = _first_load(core)
    assert vaddr == DIRECT_MAP + paddr  # KERNELOFFSET=0 in the simulated VMCOREINFO
    pfn = paddr // PS
    want = sim.truth(pfn)[:16]
    out = _batch(core, "info files", f"x/16xb {vaddr:#x}", "x/2xb 0xffffffff81000000",
                 "info registers rip")  # fmt: skip
    got = bytes(int(tok, 16) for ln in out.splitlines() if ln.startswith(f"{vaddr:#x}")
                for tok in ln.split(":", 1)[1].split())  # fmt: skip
    assert got[:8] == want[:8], out
    assert f"{vaddr:#018x} - " in out and " is load1" in out  # the segments, by p_vaddr
    assert "Cannot access memory at address 0xffffffff81000000" in out  # no page tables
    assert "rip" in out and "0xffffffff81" in out  # the registers of the NT_PRSTATUS notes
