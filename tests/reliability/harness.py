"""Shared machinery of the reliability campaign (docs/reliability.md).

Used by the pytest modules of this package and by tools/reliability.py (the long
runs).  Everything works on small simulated machines, in-process, against one
image kept in a tmpfs file that every case mutates and then restores
(copy-on-write by undo), so that tens of thousands of cases run in seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dumpsaver import format as fmt
from dumpsaver.codecs import Codec
from dumpsaver.decode import Dump, Scan
from dumpsaver.errors import DumpsaverError, FormatError
from dumpsaver.physmem import PhysMem, Range
from dumpsaver.readback import elf_pages as read_elf_pages

from ..machine import Sim, load, make

SHM = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None


def report(name: str, data: Any) -> None:
    """Keep a test's figures in tests/reliability/.last-figures/NAME.json (best effort:
    a read-only checkout just does not keep them)."""
    with contextlib.suppress(OSError):
        out = Path(__file__).with_name(".last-figures")
        out.mkdir(exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")


def long_enabled() -> bool:
    return os.environ.get("DUMPSAVER_LONG", "") not in ("", "0")


# -- simulated machines (tests/machine.py) ----------------------------------------------


def make_machine(
    into: Path, *, memory: int = 1 << 20, profile: str = "idle", seed: int = 1,
    codec: Codec = Codec.ZLIB, panic: str = "sysrq triggered crash",
) -> Sim:
    return make(into, memory=memory, profile=profile, seed=seed, codec=codec, panic=panic)


load_machine = load


def walk_pages(d: Dump, s: Scan) -> Iterator[tuple[int, bytes | None, bool]]:
    """Pass two's pages, each with whether pass two counted it damaged (a damaged
    page is yielded too, as zeros: the caller decides what that means)."""
    it = d.pages(s)
    while True:
        before = s.nr_damaged
        try:
            pfn, page = next(it)
        except StopIteration:
            return
        yield pfn, page, s.nr_damaged > before


# -- access recording (confinement) ------------------------------------------------------


class Outside(AssertionError):
    pass


@dataclass
class Recorder:
    """PhysMem's ``on_access``: checks every access against the *ground truth* area
    (the simulator's, not what the saver was told) and counts them."""

    allowed: list[Range]
    accesses: int = 0
    bytes: int = 0
    outside: list[tuple[int, int]] = field(default_factory=list)
    log: list[tuple[int, int]] | None = None

    def __call__(self, start: int, length: int) -> None:
        self.accesses += 1
        self.bytes += length
        if self.log is not None:
            self.log.append((start, length))
        if not any(r.start <= start and start + length <= r.end for r in self.allowed):
            self.outside.append((start, length))


@contextlib.contextmanager
def spy_fd_io(path: Path, allowed: list[Range]) -> Iterator[list[tuple[str, int, int]]]:
    """Independent of PhysMem: wrap os.pread/os.pwrite and record every access made to
    the file ``path`` (by inode) that falls outside ``allowed``."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino)
    bad: list[tuple[str, int, int]] = []
    real_pread, real_pwrite = os.pread, os.pwrite

    def mine(fd: int) -> bool:
        try:
            s = os.fstat(fd)
        except OSError:
            return False
        return (s.st_dev, s.st_ino) == key

    def inside(off: int, n: int) -> bool:
        return any(r.start <= off and off + n <= r.end for r in allowed)

    def pread(fd: int, n: int, off: int) -> bytes:
        if mine(fd) and not inside(off, n):
            bad.append(("read", off, n))
        return real_pread(fd, n, off)

    def pwrite(fd: int, data: Any, off: int) -> int:
        if mine(fd) and not inside(off, len(data)):
            bad.append(("write", off, len(data)))
        return real_pwrite(fd, data, off)

    os.pread, os.pwrite = pread, pwrite  # type: ignore[assignment]
    try:
        yield bad
    finally:
        os.pread, os.pwrite = real_pread, real_pwrite  # type: ignore[assignment]


# -- the layout oracle -------------------------------------------------------------------


@dataclass
class Layout:
    """Where every object of a clean dump lies in its logical stream."""

    header: fmt.Header
    entries: list[fmt.Entry]
    extents: list[tuple[int, int]]  # (paddr, length)

    @property
    def size(self) -> int:
        return sum(n for _, n in self.extents)

    def phys(self, logical: int) -> int:
        pos = 0
        for paddr, n in self.extents:
            if logical < pos + n:
                return paddr + logical - pos
            pos += n
        raise ValueError(logical)

    def phys_runs(self, start: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(logical, paddr, n) pieces of a logical range."""
        pos = 0
        end = start + length
        for paddr, n in self.extents:
            lo, hi = max(start, pos), min(end, pos + n)
            if lo < hi:
                yield lo, paddr + lo - pos, hi - lo
            pos += n

    def region(self, name: str) -> tuple[int, int]:
        h = self.header
        return {
            "header": (0, h.header_bytes),
            "meta": (h.meta_offset, h.meta_bytes),
            "data": (h.data_offset, h.data_bytes),
            "directory": (h.dir_offset, h.dir_bytes),
            "area": (0, self.size),
        }[name]

    def objects(self) -> Iterator[tuple[str, int, int, int]]:
        """(kind, entry index or -1, logical start, length) of every object of the dump."""
        h = self.header
        yield "header", -1, 0, h.header_bytes
        yield "meta", -1, h.meta_offset, h.meta_bytes
        for i, e in enumerate(self.entries):
            yield "entry", i, h.dir_offset + i * fmt.ENTRY.size, fmt.ENTRY.size
            if not e.zero:
                yield "data", i, e.offset, e.length

    def judge(self, old: bytes | bytearray, new: bytes | bytearray) -> tuple[bool, bool, set[int]]:
        """Which objects differ between two versions of the stream:
        (header hit, meta hit, indexes of damaged entries)."""
        hdr = meta = False
        dmg: set[int] = set()
        for kind, i, a, n in self.objects():
            if old[a : a + n] == new[a : a + n]:
                continue
            if kind == "header":
                hdr = True
            elif kind == "meta":
                meta = True
            else:
                dmg.add(i)
        return hdr, meta, dmg


def layout_of(machine: Sim) -> Layout:
    with PhysMem(str(machine.mem), machine.area) as mem:
        d = Dump(mem, machine.header_paddr)
        entries = []
        prev = -1
        for chunk in fmt.iter_entries_raw(d.header, d.stream.read):
            for off in range(0, len(chunk), fmt.ENTRY.size):
                e, problem = fmt.check_entry(chunk, off, d.header, prev)
                assert e is not None and problem is None
                prev = e.pfn
                entries.append(e)
        return Layout(d.header, entries, [(e.paddr, e.length) for e in d.header.extents])


# -- one corruption case -------------------------------------------------------------------


@dataclass
class Case:
    seed: int
    kind: str
    region: str
    force: bool = False
    writes: list[tuple[int, bytes]] = field(default_factory=list)  # (logical, new bytes)
    cut_ranges: int | None = None  # reserved ranges end this many bytes early
    short_file: int | None = None  # the memory file ends at this physical offset
    exact: bool = True  # the byte-diff oracle gives the exact damaged set


@dataclass
class Outcome:
    case: Case
    opened: bool
    error: str | None = None
    recovered: int = 0
    damaged: int = 0
    expected_damaged: int | None = None
    complete: bool | None = None
    seconds: float = 0.0
    accesses: int = 0
    problems: list[str] = field(default_factory=list)


KINDS = (
    ("bitflip", 30), ("byteflip", 25), ("burst", 10), ("truncate-tail", 6),
    ("swap-entries", 6), ("repeat-entry", 5), ("swap-pages", 5), ("repeat-page", 4),
    ("cut-ranges", 2), ("short-file", 2), ("force-header", 5),
)
REGIONS = (("header", 12), ("meta", 10), ("directory", 28), ("data", 40), ("area", 10))


def make_case(lay: Layout, seed: int) -> Case:
    rng = random.Random(seed)
    kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
    region = rng.choices([k for k, _ in REGIONS], [w for _, w in REGIONS])[0]
    c = Case(seed, kind, region)
    ps = lay.header.page_size
    n_ent = len(lay.entries)
    if kind == "force-header":
        c.region, c.force, c.exact = "header", True, False
        kind = "bitflip"
    start, length = lay.region(c.region)
    if length == 0:
        start, length = lay.region("area")
        c.region = "area"
    if kind == "bitflip":
        for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
            pos = start + rng.randrange(length)
            c.writes.append((pos, bytes([1 << rng.randrange(8)])))  # XOR mask, see apply
        c.kind = "bitflip" if not c.force else "force-header"
    elif kind == "byteflip":
        for _ in range(rng.choice((1, 1, 2, 4, 16))):
            pos = start + rng.randrange(length)
            c.writes.append((pos, bytes([rng.randrange(1, 256)])))  # XOR with non-zero
    elif kind == "burst":
        n = rng.randint(2, 64)
        pos = start + rng.randrange(length)
        n = min(n, lay.size - pos)
        fill = rng.choice(("random", "zero", "ones"))
        if fill == "random":
            c.writes.append((pos, bytes(rng.randrange(1, 256) for _ in range(n))))
        else:
            c.writes.append((pos, ("set0" if fill == "zero" else "set1", n)))  # type: ignore[arg-type]
    elif kind == "truncate-tail":
        c.region = "area"
        pos = rng.randrange(lay.size)
        c.writes.append((pos, ("set0", lay.size - pos)))  # type: ignore[arg-type]
    elif kind in ("swap-entries", "repeat-entry"):
        c.region = "directory"
        if n_ent < 2:
            c.kind = "bitflip"
            c.writes.append((lay.header.dir_offset, b"\x01"))
            return c
        i = rng.randrange(n_ent - 1)
        j = i + 1 if (kind == "repeat-entry" or rng.random() < 0.5) else rng.randrange(i + 1, n_ent)
        c.writes.append((i, j))  # type: ignore[arg-type]
        c.exact = False
    elif kind in ("swap-pages", "repeat-page"):
        c.region = "area"
        npages = lay.size // ps
        a = rng.randrange(npages)
        b = rng.randrange(npages - 1)
        b = b + 1 if b >= a else b
        c.writes.append((a, b))  # type: ignore[arg-type]
        c.exact = False
    elif kind == "cut-ranges":
        c.region = "area"
        c.cut_ranges = rng.randrange(1, lay.extents[-1][1] + 1)
    elif kind == "short-file":
        c.region = "area"
        paddr, n = lay.extents[rng.randrange(len(lay.extents))]
        c.short_file = paddr + rng.randrange(n)
    return c


class Bench:
    """One machine loaded into a tmpfs file, run case after case (mutate, run, undo)."""

    def __init__(self, machine: Sim, workdir: Path, *, save_every: int = 0) -> None:
        self.m = machine
        self.lay = layout_of(machine)
        base = SHM if SHM is not None else workdir
        fd_dir = Path(
            __import__("tempfile").mkdtemp(prefix="dumpsaver-corrupt-", dir=str(base))
        )
        self.tmpdir = fd_dir
        self.path = fd_dir / "mem"
        shutil.copyfile(machine.mem, self.path)
        self.orig = machine.mem.read_bytes()
        self.logical = bytearray(
            b"".join(self.orig[p : p + n] for p, n in self.lay.extents)
        )
        self.fd = os.open(self.path, os.O_RDWR)
        self._pwrite = os.pwrite  # the harness's own writes bypass spy_fd_io
        self.truth = machine.truth_pages()
        self.zero = bytes(machine.page_size)
        self.cand = machine.candidate()
        self.save_every = save_every
        self.workdir = workdir

    def close(self) -> None:
        os.close(self.fd)
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    # mutation plumbing: every case is a set of logical-stream writes -------------------

    def _materialise(self, c: Case) -> tuple[bytearray, list[tuple[int, int]]]:
        """The mutated logical stream and the spans it touched."""
        old = self.logical
        new = bytearray(old)
        spans: list[tuple[int, int]] = []
        ps = self.lay.header.page_size

        def put(pos: int, data: bytes) -> None:
            new[pos : pos + len(data)] = data
            spans.append((pos, len(data)))

        for a, b in c.writes:
            if c.kind in ("swap-entries", "repeat-entry"):
                ea = self.lay.header.dir_offset + a * fmt.ENTRY.size
                eb = self.lay.header.dir_offset + b * fmt.ENTRY.size  # type: ignore[operator]
                A, B = bytes(old[ea : ea + 32]), bytes(old[eb : eb + 32])
                put(eb, A)
                if c.kind == "swap-entries":
                    put(ea, B)
            elif c.kind in ("swap-pages", "repeat-page"):
                pa, pb = a * ps, b * ps  # type: ignore[operator]
                A, B = bytes(old[pa : pa + ps]), bytes(old[pb : pb + ps])
                put(pb, A)
                if c.kind == "swap-pages":
                    put(pa, B)
            elif isinstance(b, tuple):
                how, n = b
                put(a, (b"\0" if how == "set0" else b"\xff") * n)
            elif c.kind in ("bitflip", "byteflip", "force-header"):
                put(a, bytes([new[a] ^ b[0]]))
            else:
                put(a, b)
        return new, spans

    def _apply(self, new: bytearray, spans: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
        undo = []
        for pos, n in spans:
            for lo, p, k in self.lay.phys_runs(pos, n):
                undo.append((p, self.orig[p : p + k]))
                self._pwrite(self.fd, new[lo : lo + k], p)
        return undo[::-1]

    # the run ---------------------------------------------------------------------------

    def run(self, c: Case) -> Outcome:
        new, spans = self._materialise(c)
        undo = self._apply(new, spans)
        ranges = list(self.cand.ranges)
        if c.cut_ranges is not None:
            last = ranges[-1]
            end = max(last.start + 1, last.end - c.cut_ranges)
            ranges[-1] = Range(last.start, end)
        if c.short_file is not None:
            os.ftruncate(self.fd, c.short_file)
        rec = Recorder(list(self.m.area))
        o = Outcome(c, opened=False)
        t0 = time.monotonic()
        try:
            self._run(c, new, ranges, rec, o)
        finally:
            o.seconds = time.monotonic() - t0
            if c.short_file is not None:
                self._pwrite(self.fd, self.orig[c.short_file :], c.short_file)
            for p, b in undo:
                self._pwrite(self.fd, b, p)
        o.accesses = rec.accesses
        if rec.outside:
            o.problems.append(f"access outside the dump area: {rec.outside[:3]}")
        return o  # o.seconds is a figure (the slowest case is reported), never a verdict

    def _run(
        self, c: Case, new: bytearray, ranges: list[Range], rec: Recorder, o: Outcome
    ) -> None:
        hdr_hit, meta_hit, dmg = self.lay.judge(self.logical, new)
        try:
            with PhysMem(str(self.path), ranges, on_access=rec) as mem:
                try:
                    d = Dump(mem, self.m.header_paddr, force=c.force)
                except DumpsaverError as e:
                    o.error = f"{type(e).__name__}: {e.message}"
                    self._check_refused(c, hdr_hit, rec, o)
                    return
                o.opened = True
                if hdr_hit and not c.force:
                    o.problems.append("a header that fails its checks was trusted")
                self._check_pages(c, d, hdr_hit, meta_hit, dmg, o)
        except DumpsaverError as e:  # e.g. a short memory file: allowed, one clear error
            o.error = o.error or f"{type(e).__name__}: {e.message}"
            if c.short_file is None and c.cut_ranges is None:
                o.problems.append(f"unexpected error {o.error}")
        except Exception as e:
            o.error = f"ESCAPED {type(e).__name__}: {e}"
            o.problems.append(o.error)

    def _check_refused(self, c: Case, hdr_hit: bool, rec: Recorder, o: Outcome) -> None:
        if c.cut_ranges is not None or c.short_file is not None:
            return
        if not hdr_hit and not c.force:
            o.problems.append(f"an intact header was refused: {o.error}")

    def _check_pages(
        self, c: Case, d: Dump, hdr_hit: bool, meta_hit: bool, dmg: set[int], o: Outcome
    ) -> None:
        from dumpsaver import catalogue

        s = d.scan()
        got: dict[int, bytes | None] = {}
        changed_later = 0
        for pfn, page, damaged in walk_pages(d, s):
            if damaged:  # counted as damaged in pass two: must be zeros
                changed_later += 1
                if page != self.zero:
                    o.problems.append(f"damaged page {pfn} yielded non-zero bytes")
                continue
            got[pfn] = page
        o.recovered = len(got)
        o.damaged = s.nr_damaged
        for pfn, page in got.items():
            want = self.truth.get(pfn)
            if want is None:
                o.problems.append(f"page {pfn} saved but was never in the dump")
            elif (page if page is not None else self.zero) != want:
                o.problems.append(f"page {pfn} differs from the ground truth")
        h = d.header
        if s.good + s.nr_damaged - changed_later != h.nr_entries:
            o.problems.append(
                f"entries not accounted: {s.good} good + {s.nr_damaged} damaged "
                f"!= {h.nr_entries}"
            )
        info = catalogue.build_info(d, s, cand=self.cand, fmt_name="elf", file_size=0,
                                    started=time.monotonic(), name="case")  # fmt: skip
        o.complete = bool(info["complete"])
        lost = len(self.truth) - len(got)
        if (lost > 0 or not d.meta_ok) and info["complete"]:
            o.problems.append("pages or meta lost but the dump is marked complete")
        if c.force and hdr_hit and info["complete"]:
            o.problems.append("a header accepted with --force is marked complete")
        if not info["complete"] and not info["incomplete_reasons"]:
            o.problems.append("incomplete without a reason")
        if lost > 0 and s.nr_damaged == 0 and d.header_ok:  # forced: the reason says it
            o.problems.append(f"{lost} pages lost and none reported")
        if c.exact and not c.force and not hdr_hit:
            o.expected_damaged = len(dmg)
            want_pfns = {e.pfn for i, e in enumerate(self.lay.entries) if i not in dmg}
            if set(got) != want_pfns:
                o.problems.append(
                    f"recovered {len(got)} pages, expected {len(want_pfns)} "
                    f"(missing {sorted(want_pfns - set(got))[:5]})"
                )
            if s.nr_damaged != len(dmg):
                o.problems.append(f"{s.nr_damaged} damaged reported, {len(dmg)} expected")
            if meta_hit == d.meta_ok:
                o.problems.append(f"meta damage {'missed' if meta_hit else 'invented'}")
            if (not dmg and not meta_hit and not h.truncated) and not info["complete"]:
                o.problems.append("an undamaged dump is marked incomplete")
        if h.truncated and info["complete"]:
            o.problems.append("a dump truncated at panic time is marked complete")
        if self.save_every and c.seed % self.save_every == 0:
            self._full_save(c, d, o)

    def _full_save(self, c: Case, d: Dump, o: Outcome) -> None:
        """Every so often: the whole save, and check the ELF file against the truth."""
        from dumpsaver import config as config_mod
        from dumpsaver import save as save_mod

        dest = Path(self.tmpdir) / f"dest-{c.seed}"
        cfg = config_mod.from_mapping({"minfree": 0}, "reliability")
        try:
            res = save_mod.save(cfg, self.cand, d, mem_path=str(self.path), dest=dest,
                                keep=True)  # fmt: skip
            assert res.dump_dir is not None
            pages = read_elf_pages(res.dump_dir / "vmcore", d.header.page_size)
            for pfn, page in pages.items():
                if page != self.truth.get(pfn) and page != self.zero:
                    o.problems.append(f"vmcore page {pfn} differs from the ground truth")
            if not res.info["complete"] and not read_elf_incomplete(res.dump_dir / "vmcore"):
                o.problems.append("incomplete dump without the ELF INCOMPLETE flag")
        finally:
            shutil.rmtree(dest, ignore_errors=True)


# -- reading our output back (independent of the writer) ----------------------------------


def read_elf_incomplete(path: Path) -> bool:
    with open(path, "rb") as f:
        ehdr = f.read(64)
    return bool(struct.unpack_from("<I", ehdr, 48)[0] & 1)


def run_corruption(
    machine: Sim, workdir: Path, cases: int, *, first_seed: int = 0, save_every: int = 0,
    on_outcome: Callable[[Outcome], None] | None = None, spy: bool = False,
) -> dict[str, Any]:
    """Run ``cases`` seeded cases; return the figures (see docs/reliability.md).

    ``spy``: also check every pread/pwrite of the memory file independently of
    PhysMem (slower)."""
    bench = Bench(machine, workdir, save_every=save_every)
    spied: list[tuple[str, int, int]] = []
    ctx = spy_fd_io(bench.path, list(machine.area)) if spy else contextlib.nullcontext(spied)
    fig: dict[str, Any] = {
        "cases": 0, "by_kind": {}, "by_region": {}, "escaped": 0, "refused": 0,
        "opened": 0, "pages_checked": 0, "pages_damaged_reported": 0, "problems": 0,
        "max_seconds": 0.0, "slowest_seed": None, "accesses": 0, "outside_accesses": 0,
        "examples": [], "incomplete_marked": 0, "complete": 0,
    }
    try:
        with ctx as spied:
            _run_cases(bench, fig, first_seed, cases, on_outcome)
    finally:
        bench.close()
    fig["max_seconds"] = round(fig["max_seconds"], 4)
    fig["spied_outside"] = len(spied) if spy else None
    if spied:
        fig["outside_accesses"] += len(spied)
    return fig


def _run_cases(
    bench: Bench, fig: dict[str, Any], first_seed: int, cases: int,
    on_outcome: Callable[[Outcome], None] | None,
) -> None:
    for seed in range(first_seed, first_seed + cases):
        c = make_case(bench.lay, seed)
        o = bench.run(c)
        fig["cases"] += 1
        fig["by_kind"][c.kind] = fig["by_kind"].get(c.kind, 0) + 1
        fig["by_region"][c.region] = fig["by_region"].get(c.region, 0) + 1
        fig["refused" if not o.opened else "opened"] += 1
        fig["pages_checked"] += o.recovered
        fig["pages_damaged_reported"] += o.damaged
        if o.seconds > fig["max_seconds"]:
            fig["max_seconds"], fig["slowest_seed"] = o.seconds, seed
        fig["accesses"] += o.accesses
        if o.complete is True:
            fig["complete"] += 1
        elif o.complete is False:
            fig["incomplete_marked"] += 1
        if o.error and o.error.startswith("ESCAPED"):
            fig["escaped"] += 1
        if any("outside" in p for p in o.problems):
            fig["outside_accesses"] += 1
        if o.problems:
            fig["problems"] += 1
            if len(fig["examples"]) < 20:
                fig["examples"].append(
                    {"seed": seed, "kind": c.kind, "region": c.region,
                     "problems": o.problems[:3], "error": o.error}
                )
        if on_outcome is not None:
            on_outcome(o)


def expect_format_error(fn: Callable[[], Any]) -> FormatError:
    try:
        fn()
    except FormatError as e:
        return e
    raise AssertionError("no FormatError")
