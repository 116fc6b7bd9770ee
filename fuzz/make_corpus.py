"""Write the seed corpora (fuzz/corpus/<harness>/) from real simulated dumps.

    .venv/bin/python fuzz/make_corpus.py
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dumpsaver import format as fmt  # noqa: E402
from dumpsaver import simulate  # noqa: E402
from dumpsaver.codecs import Codec, available  # noqa: E402
from dumpsaver.physmem import PhysMem, Range  # noqa: E402

GUARD = 1 << 16  # fuzz_dump.py puts the area here


def dump_area(seed: int, codec: Codec, size: int, memory: int = 512 << 10) -> bytes:
    m = simulate.Machine(memory, simulate.PROFILES["idle"], seed)
    with tempfile.NamedTemporaryFile() as f:
        f.truncate(GUARD + size)
        with PhysMem(f.name, [Range(GUARD, GUARD + size)], writable=True) as mem:
            c = simulate.crash(m, mem, [(GUARD, size)], codec=codec, crash_time_ns=10**18)
        used = c.header.area_bytes
        f.seek(GUARD)
        return f.read(used)


def main() -> None:
    out = HERE / "corpus"
    areas = []
    for seed, codec, size in ((7, Codec.ZLIB, 96 << 10), (6, Codec.ZLIB, 16 << 10),
                              (8, Codec.ZSTD, 64 << 10), (3, Codec.LZ4, 32 << 10)):
        if available(codec):
            areas.append(dump_area(seed, codec, size))
    for name in ("header", "meta", "entry", "dump", "locate"):
        (out / name).mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(areas):
        h = fmt.decode_header(a[: fmt.FIXED_SIZE + 4096])
        (out / "header" / f"seed{i}").write_bytes(a[: h.header_bytes])
        (out / "meta" / f"seed{i}").write_bytes(a[h.meta_offset : h.meta_offset + h.meta_bytes])
        (out / "entry" / f"seed{i}").write_bytes(
            bytes(16) + a[h.dir_offset : h.dir_offset + 4 * fmt.ENTRY.size]
        )
        for how in (0, 15, 47):
            (out / "dump" / f"seed{i}-{how}").write_bytes(bytes([how]) + a)
    samples = [
        b"\x00BOOT_IMAGE=/vmlinuz root=/dev/vda1 memmap=64M$0x30000000,16M$1G quiet",
        b"\x01" + b"00000000-00000fff : Reserved\n00001000-0009fbff : System RAM\n"
        b"30000000-33ffffff : Reserved\n  30000000-30ffffff : mcore\n",
        b"\x02\x01\x011\n\x01\x0a0x30000000\n\x01\x2230000000-33ffffff\n40000000-40ffffff\n",
    ]
    for i, s in enumerate(samples):
        (out / "locate" / f"seed{i}").write_bytes(s)
    struct.calcsize("<I")
    print(f"corpora in {out}: {sum(1 for _ in out.rglob('*') if _.is_file())} files")
    os.sync()


if __name__ == "__main__":
    main()
