"""ELF constants and note records shared by the panic side and the output writers."""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence


class ET(enum.IntEnum):
    CORE = 4


class EM(enum.IntEnum):
    X86_64 = 62
    AARCH64 = 183


class PT(enum.IntEnum):
    LOAD = 1
    NOTE = 4


class NT(enum.IntEnum):
    PRSTATUS = 1


class PF(enum.IntFlag):
    X = 1
    W = 2
    R = 4


EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
NHDR = struct.Struct("<III")
assert (EHDR.size, PHDR.size, SHDR.size) == (64, 56, 64)
PN_XNUM = 0xFFFF

#: struct elf_prstatus on x86_64: 112 bytes of signal/pid/time fields, 27 registers, fpvalid.
PRSTATUS_SIZE = 336
PRSTATUS_PID_OFFSET = 32
PRSTATUS_REG_OFFSET = 112
X86_64_REGS = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
    "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
    "gs_base", "ds", "es", "fs", "gs",
)


def prstatus(pid: int, regs: Sequence[int]) -> bytes:
    """An x86_64 struct elf_prstatus with ``pid`` and the 27 user registers."""
    if len(regs) != len(X86_64_REGS):
        raise ValueError("x86_64 prstatus needs 27 registers")
    b = bytearray(PRSTATUS_SIZE)
    struct.pack_into("<i", b, PRSTATUS_PID_OFFSET, pid)
    struct.pack_into("<27Q", b, PRSTATUS_REG_OFFSET, *regs)
    return bytes(b)


def prstatus_regs(blob: bytes) -> dict[str, int]:
    if len(blob) < PRSTATUS_REG_OFFSET + 27 * 8:
        return {}
    values = struct.unpack_from("<27Q", blob, PRSTATUS_REG_OFFSET)
    return dict(zip(X86_64_REGS, values, strict=True))


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    """One ELF note: header, NUL-terminated name and descriptor, each padded to 4 bytes."""
    n = name + b"\0"
    return (
        NHDR.pack(len(n), len(desc), ntype)
        + n.ljust((len(n) + 3) // 4 * 4, b"\0")
        + desc.ljust((len(desc) + 3) // 4 * 4, b"\0")
    )


def crash_notes(prstatus_blobs: Sequence[bytes], vmcoreinfo: str) -> bytes:
    """The notes a crashed kernel exports: NT_PRSTATUS per CPU, then VMCOREINFO."""
    out = b"".join(note(b"CORE", NT.PRSTATUS, p) for p in prstatus_blobs)
    if vmcoreinfo:
        out += note(b"VMCOREINFO", 0, vmcoreinfo.encode())
    return out
