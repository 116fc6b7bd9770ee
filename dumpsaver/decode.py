"""The saver's decoder: open a dump in reserved memory, check it, stream its pages.

Two passes over the directory, each with bounded memory:

* ``scan()`` checks every entry and the CRC of every stored page and returns
  the runs of good PFNs (the output writers lay out their files from them);
* ``pages()`` walks the directory again and yields the decompressed pages of
  those runs in ascending PFN order.

A damaged page is counted and left out; it never stops the rest.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field

from dumpsaver import format as fmt
from dumpsaver.codecs import CodecError, decompressor
from dumpsaver.errors import FormatError, OutsideAreaError
from dumpsaver.physmem import LogicalStream, PhysMem

WINDOW = 1 << 20


class _Windows:
    """Reads the logical stream in aligned 1 MiB windows, keeping a few (LRU).

    Stored pages of one class lie in PFN order, so the PFN-ordered walk reads a
    handful of interleaved sequential streams: a small cache serves them.
    """

    def __init__(self, stream: LogicalStream, keep: int = 16) -> None:
        self.stream = stream
        self.keep = keep
        self.cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()

    def read(self, offset: int, length: int) -> bytes:
        first = offset // WINDOW
        if (offset + length - 1) // WINDOW != first:
            return self.stream.read(offset, length)
        w = self.cache.get(first)
        if w is None:
            start = first * WINDOW
            w = self.stream.read(start, min(WINDOW, self.stream.size - start))
            self.cache[first] = w
            if len(self.cache) > self.keep:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(first)
        o = offset - first * WINDOW
        return w[o : o + length]


@dataclass
class Scan:
    """What pass one found.  ``runs`` holds (first_pfn, count) pairs, flattened."""

    runs: array[int] = field(default_factory=lambda: array("Q"))
    good: int = 0
    zero: int = 0
    stored_bytes: int = 0
    damaged: collections.Counter[str] = field(default_factory=collections.Counter)
    damaged_pfns: list[int] = field(default_factory=list)  # first few, for the report

    @property
    def nr_damaged(self) -> int:
        return sum(self.damaged.values())

    def add(self, pfn: int) -> None:
        r = self.runs
        if r and r[-2] + r[-1] == pfn:
            r[-1] += 1
        else:
            r.append(pfn)
            r.append(1)
        self.good += 1

    def iter_runs(self) -> Iterator[tuple[int, int]]:
        r = self.runs
        for i in range(0, len(r), 2):
            yield r[i], r[i + 1]

    def note_damage(self, what: str, pfn: int | None) -> None:
        self.damaged[what] += 1
        if pfn is not None and len(self.damaged_pfns) < 64:
            self.damaged_pfns.append(pfn)


class Dump:
    """A dump found in memory.  Raises FormatError when the header cannot be trusted."""

    def __init__(
        self, mem: PhysMem, header_paddr: int, *, force: bool = False, ram_end: int | None = None
    ) -> None:
        """``ram_end``: where this machine's RAM ends (locate.Candidate.ram_end), the
        evidence that bounds the header's mem_pages; None: only the format's bound."""
        self.mem = mem
        self.header_paddr = header_paddr
        fixed = mem.read(header_paddr, fmt.FIXED_SIZE)
        size = fmt.peek_header_size(fixed)
        block = fixed + mem.read(header_paddr + fmt.FIXED_SIZE, size - fmt.FIXED_SIZE)
        h = fmt.decode_header(block, force=force)
        #: What the header claimed, when more than the machine can have (else None).
        self.mem_pages_claimed: int | None = None
        if ram_end is not None:
            # The memory the crashed kernel can have had: this machine's RAM, and at
            # least the dump area itself.  Writers size their files by mem_pages (the
            # kdump bitmaps): a header cannot make them bigger than the machine.
            end = max([ram_end] + [r.end for r in mem.allowed])
            limit = -(-end // h.page_size)
            if h.mem_pages > limit:
                self.mem_pages_claimed = h.mem_pages
                h = dataclasses.replace(h, mem_pages=limit)
        self.header = h
        (crc,) = fmt.CRC.unpack_from(block, size - fmt.CRC.size)
        #: False when ``force`` accepted a header that failed its checksum: its counts
        #: (entries, sizes) may be wrong, so such a dump is never called complete.
        self.header_ok = crc == fmt.page_crc(block[: size - fmt.CRC.size])
        if h.extents[0].paddr != header_paddr:
            raise FormatError(
                f"dump header at {header_paddr:#x} says its area starts at {h.extents[0].paddr:#x}"
            )
        for e in h.extents:  # never an instruction to read elsewhere
            mem.check(e.paddr, e.length)
        self.stream = LogicalStream(mem, [(e.paddr, e.length) for e in h.extents])
        self._win = _Windows(self.stream)
        self.meta_ok = True
        self.meta = self._read_meta()

    def _read_meta(self) -> fmt.MetaInfo:
        h = self.header
        blob = self.stream.read(h.meta_offset, h.meta_bytes)
        if fmt.page_crc(blob) != h.meta_crc:
            self.meta_ok = False
            with contextlib.suppress(FormatError):
                return fmt.decode_meta(blob)  # salvage, but say it is damaged
            return fmt.MetaInfo()
        return fmt.decode_meta(blob)

    @property
    def dump_id(self) -> uuid.UUID:
        return self.header.dump_id

    def _entries(self) -> Iterator[tuple[fmt.Entry | None, fmt.EntryProblem | None]]:
        """Every directory entry, checked, in directory order.

        An entry's PFN must be above the last accepted one, and below at least one of
        the next two plausible PFNs: those of the next CRC-valid entries that are above
        the last accepted PFN and below mem_pages (up to three looked at; none left:
        nothing to compare).  So one entry with a wrong PFN, too high or too low, is that
        one damaged page; it never becomes the PFN every later entry is compared with.
        """
        h = self.header
        check = fmt.check_entry
        order = fmt.EntryProblem.ORDER
        prev = -1
        end = h.mem_pages
        pend: collections.deque[tuple[fmt.Entry | None, fmt.EntryProblem | None]]
        pend = collections.deque()
        valid = 0  # entries in ``pend`` that passed their CRC

        def decide(
            e: fmt.Entry, problem: fmt.EntryProblem | None
        ) -> tuple[fmt.Entry, fmt.EntryProblem | None]:
            nonlocal prev
            pfn = e.pfn
            if pfn >= end:
                return e, problem  # PFN beyond the end of memory
            if pfn <= prev:
                return e, order
            seen, top = 0, -1
            for x, _p in pend:  # the next two plausible PFNs
                if x is not None and prev < x.pfn < end:
                    top = max(top, x.pfn)
                    seen += 1
                    if seen == 2:
                        break
            if pfn >= top >= 0:
                return e, order
            if problem is None:
                prev = pfn
            return e, problem

        for chunk in fmt.iter_entries_raw(h, self.stream.read):
            for off in range(0, len(chunk), fmt.ENTRY.size):
                item = check(chunk, off, h, -1)
                if item[0] is None and not pend:
                    yield item
                    continue
                pend.append(item)
                if item[0] is None:
                    continue
                valid += 1
                while valid > 3:
                    e, problem = pend.popleft()
                    if e is None:
                        yield e, problem
                        continue
                    valid -= 1
                    yield decide(e, problem)
                    while pend and pend[0][0] is None:
                        yield pend.popleft()
        while pend:
            e, problem = pend.popleft()
            yield (e, problem) if e is None else decide(e, problem)

    def read_page(self, pfn: int) -> bytes | None:
        """The saved page ``pfn`` (zeros for a zero page), or None when the dump does not
        hold it intact.  A binary search over the directory: a few entry reads, for the
        odd page a writer needs before pass two (a kernel variable)."""
        h = self.header
        lo, hi = 0, h.nr_entries
        while lo < hi:
            mid = (lo + hi) // 2
            raw = self.stream.read(h.dir_offset + mid * fmt.ENTRY.size, fmt.ENTRY.size)
            e, problem = fmt.check_entry(raw, 0, h, -1)
            if e is None:
                return None  # a damaged entry on the way: do not guess
            if e.pfn < pfn:
                lo = mid + 1
            elif e.pfn > pfn:
                hi = mid
            elif problem is not None:
                return None
            elif e.zero:
                return bytes(h.page_size)
            else:
                data = self._stored(e)
                if data is None or e.raw:
                    return data
                try:
                    return decompressor(h.codec, h.page_size)(data)
                except CodecError:
                    return None
        return None

    def _stored(self, e: fmt.Entry) -> bytes | None:
        try:
            data = self._win.read(e.offset, e.length)
        except OutsideAreaError:
            return None
        return data if fmt.page_crc(data) == e.crc else None

    def scan(self) -> Scan:
        s = Scan()
        for e, problem in self._entries():
            pfn = e.pfn if e is not None else None
            if problem is not None:
                s.note_damage(problem.value, pfn)
                continue
            assert e is not None
            if e.zero:
                s.zero += 1
                s.add(e.pfn)
                continue
            if self._stored(e) is None:
                s.note_damage("page checksum mismatch", e.pfn)
                continue
            s.stored_bytes += e.length
            s.add(e.pfn)
        return s

    def stored_pages(self, scan: Scan) -> Iterator[tuple[fmt.Entry, bytes | None]]:
        """Yield (entry, stored bytes) for every PFN in ``scan.runs``, ascending.

        The bytes are b"" for a zero page, and None when a page that passed pass
        one fails its checksum now (memory changed under us): counted as damaged.
        Writers that copy compressed pages unchanged use this directly.
        """
        want = scan.iter_runs()
        run = next(want, None)
        for e, problem in self._entries():
            if run is None:
                break
            if e is None or problem is not None:
                continue
            while run is not None and e.pfn >= run[0] + run[1]:
                run = next(want, None)
            if run is None or e.pfn < run[0]:
                continue
            if e.zero:
                yield e, b""
                continue
            data = self._stored(e)
            if data is None:
                scan.note_damage("page changed between passes", e.pfn)
            yield e, data

    def pages(self, scan: Scan) -> Iterator[tuple[int, bytes | None]]:
        """Yield (pfn, page) for every PFN in ``scan.runs``; page is None for a zero page.

        A page that cannot be decompressed (or changed since pass one) is yielded
        as zeros and counted in ``scan``: the layout was fixed by pass one.
        """
        h = self.header
        decompress = decompressor(h.codec, h.page_size)
        zero = bytes(h.page_size)
        for e, data in self.stored_pages(scan):
            if data is None:
                yield e.pfn, zero
            elif e.zero:
                yield e.pfn, None
            elif e.raw:
                yield e.pfn, data
            else:
                try:
                    yield e.pfn, decompress(data)
                except CodecError:
                    scan.note_damage("page does not decompress", e.pfn)
                    yield e.pfn, zero
