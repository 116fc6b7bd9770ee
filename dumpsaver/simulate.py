"""The panic side, simulated: a machine that crashes and writes an mcore dump.

A simulated machine is N pages, each with a PageClass and seeded contents that
look like what such pages hold (code, slab objects with kernel pointers, page
tables, user data, text in the page cache).  At "panic" it does what the mcore
kernel did: select the pages worth keeping, compress them with the shared
encoder into pages nobody needs, and present them to the next boot:

    DIR/before.mem     memory at the moment of the panic (ground truth)
    DIR/mem            memory as the next boot sees it (stands in for /dev/mem)
    DIR/sys/           the sysfs tree the kernel presents (docs/sysfs-abi.md)
    DIR/manifest.json  what was saved and where

It can also write the dump into a real reserved region through /dev/mem.
Profiles are documented in docs/simulator.md.
"""

from __future__ import annotations

import json
import random
import struct
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from dumpsaver import elfnote
from dumpsaver import format as fmt
from dumpsaver.codecs import Codec
from dumpsaver.encode import encode_dump
from dumpsaver.errors import DumpsaverError
from dumpsaver.format import PageClass as PC
from dumpsaver.physmem import LogicalStream, PhysMem, Range

PAGE = 4096
#: Saved first when space runs out: what a debugger needs most.
PRIORITY = (PC.KERNEL_DATA, PC.PAGE_TABLE, PC.KERNEL_TEXT, PC.LOCKED,
            PC.USER_ANON, PC.USER_SHARED, PC.FILE_CACHE, PC.FREE)


@dataclass(frozen=True)
class Profile:
    name: str
    doc: str
    shares: dict[PC, float]  # fraction of memory per class
    zero_share: dict[PC, float]  # fraction of that class's pages that are all zero
    cluster: int  # mean run length of a class, in pages


PROFILES = {
    p.name: p
    for p in (
        Profile(
            "idle",
            "little system activity: mostly free memory and page cache (the seed's 510 MB "
            "machine: a 5-25 MB dump)",
            {PC.KERNEL_TEXT: 0.02, PC.KERNEL_DATA: 0.045, PC.PAGE_TABLE: 0.005, PC.FREE: 0.55,
             PC.USER_ANON: 0.12, PC.USER_SHARED: 0.03, PC.FILE_CACHE: 0.22, PC.LOCKED: 0.01},
            {PC.KERNEL_DATA: 0.3, PC.PAGE_TABLE: 0.2, PC.FREE: 0.6, PC.USER_ANON: 0.1},
            64,
        ),
        Profile(
            "busy",
            "a loaded server: large slab and page tables, little free memory",
            {PC.KERNEL_TEXT: 0.01, PC.KERNEL_DATA: 0.12, PC.PAGE_TABLE: 0.03, PC.FREE: 0.12,
             PC.USER_ANON: 0.38, PC.USER_SHARED: 0.06, PC.FILE_CACHE: 0.26, PC.LOCKED: 0.02},
            {PC.KERNEL_DATA: 0.15, PC.PAGE_TABLE: 0.1, PC.FREE: 0.3, PC.USER_ANON: 0.05},
            24,
        ),
        Profile(
            "sparse",
            "a big, nearly empty machine: little kernel memory, the rest free (zero)",
            {PC.KERNEL_TEXT: 0.004, PC.KERNEL_DATA: 0.008, PC.PAGE_TABLE: 0.001, PC.FREE: 0.98,
             PC.USER_ANON: 0.004, PC.FILE_CACHE: 0.003},
            {PC.KERNEL_DATA: 0.3, PC.FREE: 1.0, PC.USER_ANON: 0.1},
            256,
        ),
    )
}


class Machine:
    """The layout and contents of a simulated machine's memory, generated from a seed."""

    def __init__(self, memory: int, profile: Profile, seed: int, *, page_size: int = PAGE):
        if memory % page_size or memory < 64 * page_size:
            raise DumpsaverError(f"memory must be a multiple of {page_size} and >= 64 pages")
        self.page_size = page_size
        self.pages = memory // page_size
        self.profile = profile
        self.seed = seed
        rng = random.Random(seed)
        self.classes = bytearray(self.pages)  # PageClass per pfn
        self._layout(rng)
        self._templates = {c: [self._template(c, rng) for _ in range(32)] for c in PC}
        self._zero_salt = rng.getrandbits(64)

    def _layout(self, rng: random.Random) -> None:
        p = self.profile
        classes = list(p.shares)
        weights = [p.shares[c] for c in classes]
        # Kernel text sits in one block at 16 MiB, as on x86_64.
        text = max(1, int(self.pages * p.shares.get(PC.KERNEL_TEXT, 0)))
        text_start = min(4096, self.pages // 8)
        pfn = 0
        others = [c for c in classes if c is not PC.KERNEL_TEXT]
        oweights = [p.shares[c] for c in others]
        while pfn < self.pages:
            if pfn == text_start:
                n, c = text, PC.KERNEL_TEXT
            else:
                c = rng.choices(others, oweights)[0]
                n = max(1, int(rng.expovariate(1 / p.cluster)))
                if pfn < text_start:
                    n = min(n, text_start - pfn)
            n = min(n, self.pages - pfn)
            self.classes[pfn : pfn + n] = bytes([c]) * n
            pfn += n
        del classes, weights

    def _template(self, c: PC, rng: random.Random) -> bytes:
        ps = self.page_size
        if c is PC.KERNEL_TEXT:
            ops = [rng.randbytes(rng.randint(1, 7)) for _ in range(96)]
            out = bytearray()
            while len(out) < ps:
                out += rng.choice(ops)
            return bytes(out[:ps])
        if c in (PC.KERNEL_DATA, PC.LOCKED):
            words = []
            for _ in range(ps // 8):
                r = rng.random()
                if r < 0.35:
                    words.append(0)
                elif r < 0.7:
                    words.append(0xFFFF888000000000 | rng.getrandbits(30) << 3)
                elif r < 0.85:
                    words.append(rng.getrandbits(12))
                else:
                    words.append(rng.getrandbits(64))
            return struct.pack(f"<{ps // 8}Q", *words)
        if c is PC.PAGE_TABLE:
            base = rng.getrandbits(20) << 12
            return struct.pack(
                f"<{ps // 8}Q",
                *((base + (i << 12)) | 0x63 if rng.random() < 0.6 else 0 for i in range(ps // 8)),
            )
        if c is PC.FILE_CACHE:
            vocab = [b"the", b"kernel", b"page", b"cache", b"holds", b"files", b"\n", b"log:"]
            out = bytearray()
            while len(out) < ps:
                out += rng.choice(vocab) + b" "
            return bytes(out[:ps])
        return rng.randbytes(ps)  # user data, free pages' stale contents

    def page(self, pfn: int) -> bytes:
        """Contents of ``pfn`` at the moment of the panic (deterministic from the seed)."""
        c = PC(self.classes[pfn])
        h = (pfn * 0x9E3779B97F4A7C15 ^ self._zero_salt) & 0xFFFFFFFFFFFFFFFF
        if (h % 1000) < 1000 * self.profile.zero_share.get(c, 0.0):
            return bytes(self.page_size)
        t = self._templates[c][h % 32]
        # Stamp the pfn so that no two pages are alike: a swapped page must show.
        stamp = struct.pack("<QQ", pfn, h)
        return stamp + t[16:]

    def counts(self) -> dict[PC, int]:
        return {c: self.classes.count(c) for c in PC}


@dataclass
class Crash:
    """What a simulated panic produced."""

    header: fmt.Header
    saved: list[tuple[int, int]]  # inclusive PFN ranges
    area: list[tuple[int, int]]  # physical [start, end) byte ranges
    selected: int


def _runs(pfns: Sequence[int] | Iterator[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for p in pfns:
        if out and out[-1][1] == p - 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def destination_extents(
    m: Machine, excluded: frozenset[PC], min_addr: int, margin: int, max_extents: int = 240
) -> list[tuple[int, int]]:
    """Runs of pages the dump may overwrite, in ascending address order as the kernel
    scans them: above ``min_addr``, ``margin`` below the end of memory, of an excluded
    class and not locked.  (paddr, length) pairs; at most ``max_extents`` (240 keeps
    the header in one page)."""
    ps = m.page_size
    lo = -(-min_addr // ps)
    hi = m.pages - -(-margin // ps)
    runs = _runs(p for p in range(lo, hi) if m.classes[p] in excluded and m.classes[p] != PC.LOCKED)
    if not runs:
        raise DumpsaverError("the simulated machine has no free pages to hold a dump")
    return [(a * ps, (b - a + 1) * ps) for a, b in runs[:max_extents]]


def panic_meta(
    m: Machine, crash_ns: int, rng: random.Random, panic: str, ncpus: int
) -> fmt.MetaInfo:
    release = "6.1.0-sim-amd64"
    vmcoreinfo = "".join(
        f"{k}={v}\n"
        for k, v in (
            ("OSRELEASE", release),
            ("BUILD-ID", rng.randbytes(20).hex()),
            ("PAGESIZE", m.page_size),
            ("SYMBOL(init_uts_ns)", "ffffffff82a13520"),
            ("SYMBOL(swapper_pg_dir)", "ffffffff82a0a000"),
            ("SYMBOL(_stext)", "ffffffff81000000"),
            ("NUMBER(phys_base)", "0"),
            ("KERNELOFFSET", "0"),
            ("CRASHTIME", crash_ns // 1_000_000_000),
        )
    )
    regs = []
    for cpu in range(ncpus):
        r = [rng.getrandbits(64) for _ in elfnote.X86_64_REGS]
        r[elfnote.X86_64_REGS.index("rip")] = 0xFFFFFFFF81000000 + rng.getrandbits(20)
        regs.append(elfnote.prstatus(1000 + cpu, r))
    t = crash_ns / 1e9
    dmesg = "".join(
        f"[{t % 1000:12.6f}] {line}\n"
        for line in (
            "sysrq: Trigger a crash",
            f"Kernel panic - not syncing: {panic}",
            f"CPU: 0 PID: 1000 Comm: bash Not tainted {release} #1 Debian 6.1.0-sim",
            "Call Trace:",
            " <TASK>",
            " dump_stack_lvl+0x44/0x5c",
            " panic+0x118/0x2f0",
            " </TASK>",
            "mcore: saving pages in memory, warm reboot",
        )
    )
    return fmt.MetaInfo(
        panic=panic,
        uts={"sysname": "Linux", "nodename": f"sim-{m.seed}", "release": release,
             "version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.0-sim", "machine": "x86_64",
             "domainname": "(none)"},
        prstatus=regs,
        vmcoreinfo=vmcoreinfo,
        dmesg=dmesg,
        machine=elfnote.EM.X86_64,
    )


def crash(
    m: Machine,
    target: PhysMem,
    extents: list[tuple[int, int]],
    *,
    codec: Codec = Codec.ZLIB,
    excluded: frozenset[PC] = fmt.DEFAULT_EXCLUDED,
    panic: str = "sysrq triggered crash",
    ncpus: int = 2,
    crash_time_ns: int | None = None,
    level: int | None = None,
) -> Crash:
    """Select, compress and write the dump of ``m`` into ``extents`` of ``target``."""
    rng = random.Random(m.seed ^ 0x5EED)
    crash_ns = crash_time_ns if crash_time_ns is not None else time.time_ns()
    keep = {c: [] for c in PC if c not in excluded}  # type: dict[PC, list[int]]
    for pfn, c in enumerate(m.classes):
        if c in keep:
            keep[PC(c)].append(pfn)
    order = [c for c in PRIORITY if c in keep]
    selected = sum(len(keep[c]) for c in order)

    def pages() -> Iterator[tuple[int, bytes]]:
        for c in order:
            for pfn in keep[c]:
                yield pfn, m.page(pfn)

    header = encode_dump(
        LogicalStream(target, extents),
        pages(),
        page_size=m.page_size,
        mem_pages=m.pages,
        codec=codec,
        meta=panic_meta(m, crash_ns, rng, panic, ncpus),
        excluded=excluded,
        class_pages=tuple(m.classes.count(c) for c in PC),
        crash_time_ns=crash_ns,
        boot_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        dump_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        level=level,
        selected=selected,
    )
    saved = sorted(e.pfn for e in _read_directory(target, header))
    area = [(e.paddr, e.paddr + e.length) for e in header.extents]
    return Crash(header, _runs(saved), area, selected)


def _read_directory(mem: PhysMem, h: fmt.Header) -> Iterator[fmt.Entry]:
    stream = LogicalStream(mem, [(e.paddr, e.length) for e in h.extents])
    prev = -1
    for chunk in fmt.iter_entries_raw(h, stream.read):
        for off in range(0, len(chunk), fmt.ENTRY.size):
            e, problem = fmt.check_entry(chunk, off, h, prev)
            assert e is not None and problem is None, problem
            prev = e.pfn
            yield e


def write_image(path: Path, m: Machine, *, skip: frozenset[PC] = frozenset()) -> None:
    """Write the machine's memory to ``path`` (sparse: zero pages are holes).  Pages of
    the ``skip`` classes are left as holes too (big machines whose free memory is empty)."""
    ps = m.page_size
    zero = bytes(ps)
    with open(path, "wb") as f:
        f.truncate(m.pages * ps)
        for pfn in range(m.pages):
            if m.classes[pfn] in skip:
                continue
            data = m.page(pfn)
            if data != zero:
                f.seek(pfn * ps)
                f.write(data)


def write_sysfs(root: Path, header_paddr: int, area: list[tuple[int, int]]) -> None:
    """The tree a kernel with the mcore reservation code presents (docs/sysfs-abi.md)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "version").write_text("1\n")
    (root / "header").write_text(f"0x{header_paddr:x}\n")
    (root / "ranges").write_text("".join(f"{a:016x}-{b - 1:016x}\n" for a, b in area))
    (root / "release").write_text("")


@dataclass(frozen=True)
class Manifest:
    """What a simulated crash saved and where: DIR/manifest.json is this, as JSON."""

    page_size: int
    memory: int
    profile: str
    seed: int
    codec: str
    saved: list[list[int]]  # [first, last] PFN runs the panic side saved
    saved_pages: int
    selected_pages: int
    truncated: bool
    classes: dict[str, int]  # pages per class
    dump_area: list[list[int]]  # [start, end) of each extent; the header at the first
    compressed_bytes: int
    dump_id: str
    panic: str


def simulate(
    into: Path,
    *,
    memory: int,
    profile: str,
    seed: int,
    codec: Codec = Codec.ZLIB,
    excluded: frozenset[PC] = fmt.DEFAULT_EXCLUDED,
    min_addr: int | None = None,
    margin: int | None = None,
    panic: str = "sysrq triggered crash",
    target_mem: str | None = None,
    target_region: tuple[int, int] | None = None,
    crash_time_ns: int | None = None,
    ground_truth: bool = True,
) -> Manifest:
    """Crash a simulated machine; write the files described in the module docstring."""
    if profile not in PROFILES:
        raise DumpsaverError(f"unknown profile {profile!r}", hint=f"one of {', '.join(PROFILES)}")
    prof = PROFILES[profile]
    m = Machine(memory, prof, seed)
    into.mkdir(parents=True, exist_ok=True)
    skip = excluded if prof.name == "sparse" else frozenset()
    if ground_truth:
        write_image(into / "before.mem", m, skip=skip)
    if target_mem is not None:
        if target_region is None:
            raise DumpsaverError("--target-mem needs --target-region START:SIZE")
        start, size = target_region
        extents = [(start, size)]
        with PhysMem(target_mem, [Range(start, start + size)], writable=True) as mem:
            c = crash(m, mem, extents, codec=codec, excluded=excluded, panic=panic,
                      crash_time_ns=crash_time_ns)
    else:
        mem_path = into / "mem"
        write_image(mem_path, m, skip=skip)
        lo = min_addr if min_addr is not None else min(memory // 4, 64 << 20)
        gap = margin if margin is not None else min(memory // 16, 16 << 20)
        extents = destination_extents(m, excluded, lo, gap)
        ranges = [Range(p, p + n) for p, n in extents]
        with PhysMem(str(mem_path), ranges, writable=True) as mem:
            c = crash(m, mem, extents, codec=codec, excluded=excluded, panic=panic,
                      crash_time_ns=crash_time_ns)
        write_sysfs(into / "sys", c.area[0][0], c.area)
    manifest = Manifest(
        page_size=m.page_size,
        memory=memory,
        profile=profile,
        seed=seed,
        codec=codec.label,
        saved=[list(r) for r in c.saved],
        saved_pages=sum(b - a + 1 for a, b in c.saved),
        selected_pages=c.selected,
        truncated=c.header.truncated,
        classes={pc.label: n for pc, n in m.counts().items()},
        dump_area=[list(r) for r in c.area],
        compressed_bytes=c.header.dir_offset + c.header.dir_bytes,
        dump_id=str(c.header.dump_id),
        panic=panic,
    )
    (into / "manifest.json").write_text(json.dumps(asdict(manifest), indent=1) + "\n")
    return manifest
