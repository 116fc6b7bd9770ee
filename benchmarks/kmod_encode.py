"""The kernel module's encoding core, measured natively (kmod/user/dsenc: encode.c
with user-space zlib), beside dumpsaver's Python encoder on the same machine.

    .venv/bin/python benchmarks/kmod_encode.py [--memory 256M] [--profiles idle,busy]

Per profile: the pages kept by default, the dump's size in memory (the region it
needs, which scales with memory for a profile: the shares are fractions), the time
in ds_enc_page()+ds_enc_finish() (the panic path without the page walk) as MB/s of
kept pages, and the C/Python speed ratio.  No figure is asserted anywhere; the
quoted ones are in docs/kernel-module.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dumpsaver.codecs import Codec
from dumpsaver.sizes import human, parse_size
from tests.kmod_encoder import Job, build_dsenc, run_c, run_py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory", default="256M")
    ap.add_argument("--profiles", default="idle,busy")
    ap.add_argument("--codecs", default="zlib,lz4,zstd")
    a = ap.parse_args()
    memory = parse_size(a.memory)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        exe = build_dsenc(t)
        if exe is None:
            print("no C compiler or zlib.h", file=sys.stderr)
            return 1
        for profile, codec in ((p, c) for p in a.profiles.split(",")
                               for c in a.codecs.split(",")):
            job = Job.make(memory, profile, 11, area_size=memory // 2, codec=Codec[codec.upper()])
            kept = len(job.order())
            c = run_c(exe, job, t / "c.mem")
            pages = list(job.pages())  # generated before the clock starts
            t0 = time.process_time()
            h = run_py(job, t / "py.mem", pages)
            py_s = time.process_time() - t0
            used = int(c["stored_bytes"]) + int(c["entries"]) * 32
            mb = kept * job.machine.page_size / 1e6
            row = {
                "profile": profile, "codec": codec, "memory": memory, "kept_pages": kept,
                "dump_bytes": used, "c_seconds": c["seconds"], "c_mb_s": mb / c["seconds"],
                "python_seconds": py_s, "c_vs_python": py_s / c["seconds"],
                "python_dump_bytes": h.dir_offset + h.dir_bytes,
                "region_for_1GiB": used * (1 << 30) // memory,
                "region_for_8GiB": used * (8 << 30) // memory,
            }
            out.append(row)
            print(f"{profile:6} {codec:4} {human(memory)}: {kept} pages kept, dump {human(used)} "
                  f"(Python {human(row['python_dump_bytes'])}); C core {row['c_mb_s']:.0f} MB/s, "
                  f"{row['c_vs_python']:.1f}x the Python encoder; "
                  f"needs ~{human(row['region_for_1GiB'])} per GiB, "
                  f"~{human(row['region_for_8GiB'])} for 8 GiB")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
