"""A structure-aware fuzzer: mutations that keep every CRC valid.

The byte-flip campaign (harness.py) almost never gets past a CRC, so it rarely
reaches the code behind the checks.  Here each case decodes one structure of a
clean dump with the project's format module -- the header and its extent table,
a directory entry, a stored page (codec frame), the meta section -- changes one
field to a hostile value, and encodes it again with correct checksums.  The
oracles are the campaign's:

* no escape: only DumpsaverError (one clear line) may come out;
* no read outside the reserved area (every access recorded against the truth);
* every page yielded as good equals the ground truth; a case that touched one
  entry or one stored page may lose that page only ("no single bad page loses
  other pages");
* work bounded by the area: the bytes read from memory are at most a fixed
  multiple of the dump area, whatever the header claims (a count, not a timing);
  seconds per case are recorded as figures.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dumpsaver import format as fmt
from dumpsaver.codecs import Codec
from dumpsaver.decode import Dump
from dumpsaver.errors import DumpsaverError
from dumpsaver.physmem import PhysMem

from ..machine import Sim
from .harness import SHM, Recorder, layout_of, walk_pages

#: Bytes read from memory per case, at most this many times the dump area (+ one MiB
#: window): pass one, pass two, and the window cache's re-reads.
READ_BOUND = 6

U64 = (1 << 64) - 1
HEADER_FIELDS = (
    "mem_pages", "nr_entries", "nr_zero", "nr_dropped", "meta_offset", "meta_bytes",
    "data_offset", "data_bytes", "dir_offset", "page_size", "codec", "nr_cpus", "flags",
    "crash_time_ns",
)
ENTRY_FIELDS = ("pfn", "offset", "length", "crc", "flags")
KINDS = (("header", 20), ("extents", 10), ("entry", 35), ("frame", 20), ("meta", 15))


def interesting(rng: random.Random, current: int, scale: int) -> int:
    """A hostile value for an integer field: edges, off-by-ones, huge and random."""
    return rng.choice([
        0, 1, U64, 1 << 63, (1 << 63) - 1, 1 << 40, (1 << 40) - 1, 1 << 32, 0xFFFFFFFF,
        current + 1, max(current - 1, 0), current * 2, current + scale, max(current - scale, 0),
        scale, scale - 1, scale + 1, rng.randrange(scale * 2 + 1), rng.getrandbits(64),
    ]) & U64


@dataclass
class Mutation:
    kind: str
    what: str
    writes: list[tuple[int, bytes]] = field(default_factory=list)  # (logical, bytes)
    touched: int | None = None  # the one entry whose page may be lost
    #: A forged PFN: the page it claims may be displaced (a CRC-valid entry that names a
    #: neighbour's PFN is indistinguishable from that neighbour; one page, not more).
    claims: int | None = None
    header: bool = False  # the header changed: anything may be refused


class Mutator:
    def __init__(self, m: Sim) -> None:
        self.lay = layout_of(m)
        self.h = self.lay.header
        self.entries = self.lay.entries
        self.area = self.lay.size
        with PhysMem(str(m.mem), m.area) as mem:
            d = Dump(mem, m.header_paddr)
            self.meta = d.meta
            self.stored = {i: d.stream.read(e.offset, e.length)
                           for i, e in enumerate(self.entries) if not e.zero}  # fmt: skip

    def make(self, seed: int) -> Mutation:
        rng = random.Random(seed)
        kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
        return getattr(self, f"_{kind}")(rng)  # type: ignore[no-any-return]

    def _header_with(self, what: str, kind: str = "header", **changes: Any) -> Mutation:
        h = dataclasses.replace(self.h, **changes)
        return Mutation(kind, what, [(0, h.encode())], header=True)

    def _header(self, rng: random.Random) -> Mutation:
        name = rng.choice(HEADER_FIELDS)
        cur = getattr(self.h, name)
        if name == "page_size":
            v = rng.choice((*fmt.PAGE_SIZES, 0, 512, 1 << 20))
        elif name == "codec":
            v = rng.choice(list(Codec))
            return self._header_with(f"codec={v.label}", codec=v)
        elif name == "flags":
            return self._header_with("flags", flags=fmt.HeaderFlag(rng.randrange(2)))
        elif name in ("nr_cpus",):
            v = interesting(rng, cur, 64) & 0xFFFFFFFF
        else:
            v = interesting(rng, int(cur), self.area)
        return self._header_with(f"{name}={v:#x}", **{name: v})

    def _extents(self, rng: random.Random) -> Mutation:
        ex = list(self.h.extents)
        ps = self.h.page_size
        how = rng.choice(["repeat", "overlap", "shift", "grow", "reorder", "split", "zero"])
        if how == "repeat":
            ex = ex + [ex[rng.randrange(len(ex))]] * rng.randint(1, 20)
        elif how == "overlap":
            e = ex[-1]
            ex.append(fmt.Extent(e.paddr + ps * rng.randrange(max(1, e.length // ps)), ps))
        elif how == "shift":
            k = rng.randrange(len(ex))
            ex[k] = fmt.Extent((ex[k].paddr + ps * rng.choice((-2, -1, 1, 2))) & U64, ex[k].length)
        elif how == "grow":
            k = rng.randrange(len(ex))
            ex[k] = fmt.Extent(ex[k].paddr, interesting(rng, ex[k].length, self.area) // ps * ps)
        elif how == "reorder":
            rng.shuffle(ex)
        elif how == "split":
            e = ex[0]
            if e.length >= 2 * ps:
                half = e.length // ps // 2 * ps
                ex[0:1] = [fmt.Extent(e.paddr, half), fmt.Extent(e.paddr + half, e.length - half)]
        else:
            ex[rng.randrange(len(ex))] = fmt.Extent(0, ps)
        # The extent table grows into the meta section: fine, the header is refused or
        # the meta is damaged; never more than 64 extents, to keep the case small.
        ex = [fmt.Extent(e.paddr & U64, e.length & U64) for e in ex[:64]]
        return self._header_with(f"extents:{how}", "extents", extents=tuple(ex))

    def _entry(self, rng: random.Random) -> Mutation:
        i = rng.randrange(len(self.entries))
        e = self.entries[i]
        name = rng.choice(ENTRY_FIELDS)
        cur = getattr(e, name)
        scale = {"pfn": self.h.mem_pages, "offset": self.area, "length": self.h.page_size,
                 "crc": 1 << 32, "flags": 4}[name]  # fmt: skip
        v = interesting(rng, cur, scale)
        if name in ("length", "crc", "flags"):
            v &= 0xFFFFFFFF
        new = dataclasses.replace(e, **{name: v})
        at = self.h.dir_offset + i * fmt.ENTRY.size
        return Mutation("entry", f"entry[{i}].{name}={v:#x}", [(at, new.encode())], touched=i,
                        claims=v if name == "pfn" else None)  # fmt: skip

    def _frame(self, rng: random.Random) -> Mutation:
        cands = [i for i in self.stored if not self.entries[i].raw]
        if not cands:
            return self._entry(rng)
        i = rng.choice(cands)
        e, data = self.entries[i], bytearray(self.stored[i])
        how = rng.choice(["flip", "truncate", "garbage", "size-field", "other-page"])
        if how == "flip":
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == "truncate":
            data = data[: rng.randrange(1, len(data))] if len(data) > 1 else data
        elif how == "garbage":
            data = bytearray(rng.randbytes(len(data)))
        elif how == "size-field":  # zstd content size, zlib header, lz4 first token
            for k in range(4, min(14, len(data))):
                data[k] = rng.choice((0, 0xFF, data[k] ^ 0x80))
        else:  # the stored bytes of another page, CRC fixed: undetectable but bounded
            j = rng.choice(cands)
            other = self.stored[j]
            if len(other) <= e.length:
                data = bytearray(other)
        new = dataclasses.replace(e, length=len(data), crc=zlib.crc32(data) & 0xFFFFFFFF)
        at = self.h.dir_offset + i * fmt.ENTRY.size
        return Mutation("frame", f"frame[{i}]:{how}",
                        [(e.offset, bytes(data)), (at, new.encode())], touched=i)  # fmt: skip

    def _meta(self, rng: random.Random) -> Mutation:
        blob = bytearray(self.meta.encode())
        how = rng.choice(["length", "type", "truncate", "huge-dmesg-claim", "cpus"])
        recs = []
        off = 0
        while off + fmt.META_REC.size <= len(blob):
            _k, _r, n = fmt.META_REC.unpack_from(blob, off)
            recs.append(off)
            off += fmt.META_REC.size + n + (-(n) % 8)
        r = rng.choice(recs) if recs else 0
        if how == "length":
            struct.pack_into("<I", blob, r + 4, interesting(rng, 0, len(blob)) & 0xFFFFFFFF)
        elif how == "type":
            struct.pack_into("<H", blob, r, rng.randrange(65536))
        elif how == "truncate":
            blob = blob[: rng.randrange(len(blob))]
        elif how == "huge-dmesg-claim":
            struct.pack_into("<HHI", blob, r, fmt.Meta.DMESG, 0, 64 << 20)
        else:
            n = rng.randrange(0, 64)
            blob = blob + b"".join(fmt.META_REC.pack(fmt.Meta.PRSTATUS, 0, 8) + bytes(8)
                                   for _ in range(n))  # fmt: skip
        blob = blob[: self.h.meta_bytes]
        h = dataclasses.replace(self.h, meta_bytes=len(blob),
                                meta_crc=zlib.crc32(blob) & 0xFFFFFFFF)  # fmt: skip
        return Mutation("meta", f"meta:{how}",
                        [(self.h.meta_offset, bytes(blob)), (0, h.encode())])  # fmt: skip


@dataclass
class Result:
    mutation: Mutation
    opened: bool = False
    error: str | None = None
    good: int = 0
    damaged: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


class Runner:
    """One machine in a tmpfs file; each case writes its mutation, runs, and undoes it."""

    def __init__(self, m: Sim) -> None:
        self.m = m
        self.mut = Mutator(m)
        self.tmp = Path(tempfile.mkdtemp(prefix="dumpsaver-struct-",
                                         dir=str(SHM) if SHM else None))  # fmt: skip
        self.path = self.tmp / "mem"
        shutil.copyfile(m.mem, self.path)
        self.orig = m.mem.read_bytes()
        self.fd = os.open(self.path, os.O_RDWR)
        self.truth = m.truth_pages()
        self.zero = bytes(m.page_size)

    def close(self) -> None:
        os.close(self.fd)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run(self, seed: int) -> Result:
        return self.run_mutation(self.mut.make(seed))

    def run_mutation(self, mu: Mutation) -> Result:
        undo: list[tuple[int, bytes]] = []
        for logical, data in mu.writes:
            for lo, paddr, n in self.mut.lay.phys_runs(logical, len(data)):
                undo.append((paddr, self.orig[paddr : paddr + n]))
                os.pwrite(self.fd, data[lo - logical : lo - logical + n], paddr)
        r = Result(mu)
        rec = Recorder(list(self.m.area))
        t0 = time.monotonic()
        try:
            self._check(r, rec)
        finally:
            r.seconds = time.monotonic() - t0
            for paddr, data in reversed(undo):
                os.pwrite(self.fd, data, paddr)
        r.bytes_read = rec.bytes
        if rec.outside:
            r.problems.append(f"read outside the dump area: {rec.outside[:3]}")
        if rec.bytes > READ_BOUND * self.mut.area + (1 << 20):
            r.problems.append(f"read {rec.bytes} bytes for a {self.mut.area}-byte area")
        return r

    def _check(self, r: Result, rec: Recorder) -> None:
        mu = r.mutation
        try:
            with PhysMem(str(self.path), self.m.area, on_access=rec) as mem:
                d = Dump(mem, self.m.header_paddr)
                r.opened = True
                s = d.scan()
                got: dict[int, bytes] = {}
                for pfn, page, damaged in walk_pages(d, s):
                    if not damaged:
                        got[pfn] = page if page is not None else self.zero
                r.good, r.damaged = len(got), s.nr_damaged
        except DumpsaverError as e:
            r.error = f"{type(e).__name__}: {e.message}"
            if not mu.header and mu.kind != "meta":
                r.problems.append(f"refused after a change behind the header: {r.error}")
            return
        except Exception as e:  # the oracle: nothing but DumpsaverError may come out
            r.error = f"ESCAPED {type(e).__name__}: {e}"
            r.problems.append(r.error)
            return
        allowed = {mu.claims} if mu.claims is not None else set()
        if mu.touched is not None:
            allowed.add(self.mut.entries[mu.touched].pfn)
        for pfn, page in got.items():
            want = self.truth.get(pfn)
            if page != want and (mu.touched is None or (want is not None and pfn not in allowed)):
                r.problems.append(f"page {pfn} differs from the truth ({mu.what})")
        if mu.touched is not None:
            lost = [e.pfn for k, e in enumerate(self.mut.entries)
                    if k != mu.touched and e.pfn not in got and e.pfn not in allowed]  # fmt: skip
            if lost:
                r.problems.append(f"{mu.what} lost {len(lost)} other pages, e.g. {lost[:3]}")


def campaign(m: Sim, cases: int, *, first_seed: int = 0,
             on_result: Callable[[Result], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run ``cases`` seeded structured cases; return the figures."""
    runner = Runner(m)
    fig: dict[str, Any] = {
        "cases": 0, "by_kind": {}, "opened": 0, "refused": 0, "escaped": 0, "problems": 0,
        "pages_checked": 0, "damaged_reported": 0, "max_seconds": 0.0,
        "max_read_ratio": 0.0, "area_bytes": runner.mut.area, "examples": [],
    }
    try:
        for seed in range(first_seed, first_seed + cases):
            r = runner.run(seed)
            fig["cases"] += 1
            k = r.mutation.kind
            fig["by_kind"][k] = fig["by_kind"].get(k, 0) + 1
            fig["opened" if r.opened else "refused"] += 1
            fig["pages_checked"] += r.good
            fig["damaged_reported"] += r.damaged
            fig["max_seconds"] = max(fig["max_seconds"], round(r.seconds, 4))
            fig["max_read_ratio"] = max(fig["max_read_ratio"],
                                        round(r.bytes_read / runner.mut.area, 2))  # fmt: skip
            if r.error and r.error.startswith("ESCAPED"):
                fig["escaped"] += 1
            if r.problems:
                fig["problems"] += 1
                if len(fig["examples"]) < 20:
                    fig["examples"].append({"seed": seed, "what": r.mutation.what,
                                            "problems": r.problems[:3]})  # fmt: skip
            if on_result is not None:
                on_result(r)
    finally:
        runner.close()
    return fig
