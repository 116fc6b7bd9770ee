"""The baselines dumpsaver is measured against, run as their own processes.

    plain.py copy SIMDIR OUT        read the dump's bytes from memory and write them
                                    (the I/O floor of any save: issue 2's baseline)
    plain.py decompress SIMDIR OUT  read every stored page, decompress it, write the
                                    pages one after the other (the ceiling of an ELF
                                    save: no checks, no layout, no second pass)
    plain.py hide-vmcoreinfo IN OUT copy an ELF core with its VMCOREINFO note renamed
                                    (makedumpfile then converts it at -d 0)

Every OUT is fsynced, as dumpsaver fsyncs its files.  Only the directory
parsing comes from dumpsaver.format; everything else is the shortest code that
does the job.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

CHUNK = 4 << 20


def _open_out(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def copy(sim: Path, out: str) -> None:
    manifest = json.loads((sim / "manifest.json").read_text())
    src = os.open(sim / "mem", os.O_RDONLY)
    dst = _open_out(out)
    for start, end in manifest["dump_area"]:
        pos = start
        while pos < end:
            data = os.pread(src, min(CHUNK, end - pos), pos)
            _write_all(dst, data)
            pos += len(data)
    os.fsync(dst)
    os.close(dst)
    os.close(src)


def _decompressor(codec: str, page: int) -> Callable[[bytes], bytes]:
    if codec == "zlib":
        return lambda b: zlib.decompress(b, 15, page)
    if codec == "zstd":
        import zstandard

        d = zstandard.ZstdDecompressor()
        return lambda b: d.decompress(b, max_output_size=page)  # type: ignore[no-any-return]
    import lz4.block

    return lambda b: lz4.block.decompress(b, uncompressed_size=page)  # type: ignore[no-any-return]


def decompress(sim: Path, out: str) -> None:
    from dumpsaver import format as fmt

    manifest = json.loads((sim / "manifest.json").read_text())
    area = manifest["dump_area"]
    with open(sim / "mem", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        # The logical stream of the dump, laid over its extents.
        stream = b"".join(m[a:b] for a, b in area) if len(area) > 1 else m[area[0][0] : area[0][1]]
        first = area[0][0]
        fixed = m[first : first + fmt.FIXED_SIZE]
        size = fmt.peek_header_size(fixed)
        h = fmt.decode_header(m[first : first + size])
    page = h.page_size
    unpack = _decompressor(h.codec.label, page)
    zero = bytes(page)
    dst = _open_out(out)
    buf = bytearray()
    entry = struct.Struct("<QQII")
    for i in range(h.nr_entries):
        _pfn, off, length, _crc = entry.unpack_from(stream, h.dir_offset + i * 32)
        (flags,) = struct.unpack_from("<I", stream, h.dir_offset + i * 32 + 24)
        if flags & 1:
            buf += zero
        elif flags & 2:
            buf += stream[off : off + length]
        else:
            buf += unpack(stream[off : off + length])
        if len(buf) >= CHUNK:
            _write_all(dst, buf)
            buf = bytearray()
    _write_all(dst, buf)
    os.fsync(dst)
    os.close(dst)


def hide_vmcoreinfo(src: str, dst: str) -> None:
    subprocess.run(["cp", "--sparse=always", src, dst], check=True)
    with open(dst, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        i = m.find(b"VMCOREINFO\0", 0, 1 << 20)
        if i < 0:
            raise SystemExit(f"{src}: no VMCOREINFO note")
        m[i : i + 10] = b"VMCOREINFX"


def main(argv: list[str]) -> int:
    cmd, a, b = argv
    if cmd == "copy":
        copy(Path(a), b)
    elif cmd == "decompress":
        decompress(Path(a), b)
    elif cmd == "hide-vmcoreinfo":
        hide_vmcoreinfo(a, b)
    else:
        raise SystemExit(f"unknown command {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
