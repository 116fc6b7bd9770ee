"""Drive the kernel module's encoding core (kmod/encode.c, built for user space as
kmod/user/dsenc) and dumpsaver's Python encoder with the same simulated machine.

Shared by tests/test_kmod_conformance.py and benchmarks/kmod_encode.py.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dumpsaver import format as fmt
from dumpsaver import simulate as sim
from dumpsaver.codecs import Codec
from dumpsaver.decode import Dump
from dumpsaver.encode import encode_dump
from dumpsaver.physmem import LogicalStream, PhysMem, Range

REPO = Path(__file__).resolve().parent.parent
USER = REPO / "kmod" / "user"

REC = struct.Struct("<II")
REC_INFO, REC_PAGE, REC_END = 0x100, 0x200, 0x300
INFO = struct.Struct("<QQQIIII16s16s8Q")
assert INFO.size == 136
PADDR = 0x10_0000  # where the area sits in the memory file


def build_dsenc(out: Path) -> Path | None:
    """Build dsenc into ``out``; None without a compiler or the zlib, lz4, zstd headers."""
    if shutil.which("make") is None or shutil.which("cc") is None:
        return None
    if not all(Path("/usr/include", h).exists() for h in ("zlib.h", "lz4.h", "zstd.h")):
        return None
    r = subprocess.run(["make", "-s", "-C", str(USER), f"O={out}"], capture_output=True,
                       text=True)
    if r.returncode:
        raise RuntimeError(f"dsenc build failed:\n{r.stdout}{r.stderr}")
    return out / "dsenc"


@dataclass
class Job:
    """One machine's crash: everything both encoders are given."""

    machine: sim.Machine
    excluded: frozenset[fmt.PageClass]
    area_size: int
    meta: fmt.MetaInfo
    crash_ns: int
    boot_id: uuid.UUID
    dump_id: uuid.UUID
    level: int = 1
    codec: Codec = Codec.ZLIB
    _order: list[int] | None = None

    @classmethod
    def make(cls, memory: int, profile: str, seed: int, *, area_size: int,
             excluded: frozenset[fmt.PageClass] = fmt.DEFAULT_EXCLUDED,
             page_size: int = sim.PAGE, codec: Codec = Codec.ZLIB) -> Job:
        m = sim.Machine(memory, sim.PROFILES[profile], seed, page_size=page_size)
        rng = random.Random(seed)
        crash_ns = 1_700_000_000_000_000_000 + seed
        meta = sim.panic_meta(m, crash_ns, rng, "sysrq triggered crash", 2)
        return cls(m, excluded, area_size, meta, crash_ns,
                   uuid.UUID(int=rng.getrandbits(128), version=4),
                   uuid.UUID(int=rng.getrandbits(128), version=4), codec=codec)

    def order(self) -> list[int]:
        """The pfns to save, most useful class first (the module's order)."""
        if self._order is None:
            by_class: dict[int, list[int]] = {c: [] for c in fmt.PageClass}
            for pfn, c in enumerate(self.machine.classes):
                by_class[c].append(pfn)
            self._order = [p for c in sim.PRIORITY if c not in self.excluded
                           for p in by_class[c]]
        return self._order

    def pages(self) -> Iterator[tuple[int, bytes]]:
        for pfn in self.order():
            yield pfn, self.machine.page(pfn)

    @property
    def class_pages(self) -> tuple[int, ...]:
        return tuple(self.machine.classes.count(c) for c in fmt.PageClass)

    @property
    def mask(self) -> int:
        return sum(1 << c for c in self.excluded)


def _rec(kind: int, body: bytes) -> bytes:
    return REC.pack(kind, len(body)) + body


def _c_input(job: Job) -> Iterator[bytes]:
    m = job.meta
    yield _rec(REC_INFO, INFO.pack(
        job.machine.pages, job.crash_ns, len(job.order()), job.codec, job.mask,
        len(m.prstatus), 0, job.dump_id.bytes, job.boot_id.bytes, *job.class_pages))
    yield _rec(fmt.Meta.MACHINE, struct.pack("<H", m.machine))
    yield _rec(fmt.Meta.PANIC, m.panic.encode())
    yield _rec(fmt.Meta.UTS, b"".join(m.uts.get(k, "").encode() + b"\0"
                                      for k in fmt.UTS_FIELDS))
    for regs in m.prstatus:
        yield _rec(fmt.Meta.PRSTATUS, regs)
    yield _rec(fmt.Meta.VMCOREINFO, m.vmcoreinfo.encode())
    yield _rec(fmt.Meta.DMESG, m.dmesg.encode())
    for pfn, page in job.pages():
        yield _rec(REC_PAGE, struct.pack("<Q", pfn) + page)
    yield _rec(REC_END, b"")


def run_c(dsenc: Path, job: Job, mem: Path) -> dict[str, Any]:
    """Encode with the C core; the area lands at PADDR in the sparse file ``mem``."""
    area = mem.with_suffix(".area")
    p = subprocess.Popen(
        [str(dsenc), str(job.area_size), str(PADDR), str(job.machine.page_size),
         job.codec.label, str(job.level), str(area)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdin is not None
    chunk: list[bytes] = []
    for rec in _c_input(job):
        chunk.append(rec)
        if len(chunk) >= 256:
            p.stdin.write(b"".join(chunk))
            chunk = []
    p.stdin.write(b"".join(chunk))
    p.stdin.close()
    assert p.stdout is not None and p.stderr is not None
    out, err = p.stdout.read(), p.stderr.read()
    if p.wait():
        raise RuntimeError(f"dsenc failed: {err.decode(errors='replace')}")
    with open(mem, "wb") as f:
        f.truncate(PADDR + job.area_size)
        f.seek(PADDR)
        f.write(area.read_bytes())
    area.unlink()
    stats: dict[str, Any] = json.loads(out)
    return stats


def run_py(job: Job, mem: Path,
           pages: Iterable[tuple[int, bytes]] | None = None) -> fmt.Header:
    """Encode with dumpsaver's Python encoder into the same place."""
    with open(mem, "wb") as f:
        f.truncate(PADDR + job.area_size)
    with PhysMem(str(mem), [Range(PADDR, PADDR + job.area_size)], writable=True) as pm:
        return encode_dump(
            LogicalStream(pm, [(PADDR, job.area_size)]),
            job.pages() if pages is None else pages,
            page_size=job.machine.page_size, mem_pages=job.machine.pages, codec=job.codec,
            meta=job.meta, excluded=job.excluded, class_pages=job.class_pages,
            crash_time_ns=job.crash_ns, boot_id=job.boot_id, dump_id=job.dump_id,
            level=job.level, selected=len(job.order()))


def decode(mem: Path, area_size: int) -> tuple[fmt.Header, fmt.MetaInfo, list[fmt.Entry],
                                               dict[int, bytes | None]]:
    """What dumpsaver's decoder reads: header, meta, directory, and every page."""
    with PhysMem(str(mem), [Range(PADDR, PADDR + area_size)]) as pm:
        d = Dump(pm, PADDR)
        assert d.header_ok and d.meta_ok
        scan = d.scan()
        assert scan.nr_damaged == 0, scan.damaged_pfns
        entries = [e for e, _ in d.stored_pages(d.scan())]
        pages = dict(d.pages(scan))
        return d.header, d.meta, entries, pages
