"""The saver's decoder: open a dump in reserved memory, check it, stream its pages.

Two passes over the directory, each with bounded memory:

* ``scan()`` checks every entry and the CRC of every stored page and returns
  the runs of good PFNs (the ELF writer lays out its segments from them);
* ``pages()`` / ``stored_raw()`` walk the directory again and yield the pages of
  those runs in ascending PFN order, checking each CRC again on the bytes handed out;

or one (``walk()``, for the kdump writer, whose layout does not need the runs
before the pages): each entry and page checked once, the scan filled as it goes.

The directory is checked in bulk, a chunk of entries at a time (format.check_entries);
stored pages are handed out as views of a small cache of windows of the stream.
A damaged page is counted and left out; it never stops the rest.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import itertools
import json
import uuid
import zlib
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dumpsaver import format as fmt
from dumpsaver.codecs import CodecError, decompressor
from dumpsaver.errors import FormatError, OutsideAreaError
from dumpsaver.format import RawEntry
from dumpsaver.physmem import LogicalStream, PhysMem

WINDOW_SHIFT = 18  # 256 KiB: as few re-reads as 1 MiB windows on a busy machine, 1/4 the RSS
WINDOW = 1 << WINDOW_SHIFT
RAW_BATCH = 1024  # pages per list from Dump.stored_raw
LOOKAHEAD = 64  # entries read at a time after a part, to decide its last ones
SAMPLE = 64  # damaged PFNs named in a report


class _Windows:
    """Reads the logical stream in aligned 256 KiB windows, keeping a few (LRU).

    Stored pages of one class lie in PFN order, so the PFN-ordered walk reads a
    handful of interleaved sequential streams: a small cache serves them.
    """

    def __init__(self, stream: LogicalStream, keep: int = 16) -> None:
        self.stream = stream
        self.keep = keep
        self.cache: collections.OrderedDict[int, memoryview] = collections.OrderedDict()
        self.last = -1  # the window read last (no LRU bookkeeping while it is read again)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.view(offset, length))

    def view(self, offset: int, length: int) -> memoryview:
        """``length`` bytes at ``offset``, without copying them out of the cached window."""
        if offset < 0 or offset + length > self.stream.size:
            self.stream.read(offset, length)  # raises OutsideAreaError
        first = offset >> WINDOW_SHIFT
        if (offset + length - 1) >> WINDOW_SHIFT != first:
            return memoryview(self.stream.read(offset, length))
        w = self.cache.get(first)
        if w is None:
            start = first << WINDOW_SHIFT
            w = memoryview(self.stream.read(start, min(WINDOW, self.stream.size - start)))
            self.cache[first] = w
            if len(self.cache) > self.keep:
                self.cache.popitem(last=False)
            self.last = first
        elif first != self.last:
            self.cache.move_to_end(first)
            self.last = first
        o = offset - (first << WINDOW_SHIFT)
        return w[o : o + length]


@dataclass(frozen=True)
class Part:
    """A share of the directory for one process: entries [start, stop), and ``prev``, the
    PFN of the last entry accepted before ``start`` (-1: none), against which the order
    rule judges the first of them.  Given the right ``prev``, a part is decided exactly
    as the whole directory decides it: a decision depends only on ``prev`` and on the
    entries after it (those after ``stop`` are read as lookahead, never decided)."""

    start: int
    stop: int
    prev: int = -1


@dataclass
class Scan:
    """What pass one found.  ``runs`` holds (first_pfn, count) pairs, flattened."""

    runs: array[int] = field(default_factory=lambda: array("Q"))
    good: int = 0
    zero: int = 0
    stored_bytes: int = 0
    damaged: collections.Counter[str] = field(default_factory=collections.Counter)
    damaged_pfns: list[int] = field(default_factory=list)  # the lowest few, for the report
    #: False while the scan is being filled by a one-pass writer (``Dump.walk``): its
    #: runs and counts are not known before the pages are written.
    done: bool = True
    #: The PFN of the last entry the order rule accepted (its page may have been
    #: damaged), -1 for none: the ``prev`` of the part after this one.
    last_accepted: int = -1
    #: The parts pass one was split into between processes, each with its right
    #: ``prev``: pass two can split the same way.  Empty: one process scanned it all.
    parts: tuple[Part, ...] = ()

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
        if pfn is not None:
            self.note_pfn(pfn)

    def note_pfn(self, pfn: int) -> None:
        """Keep ``pfn`` in the sample if it is among the SAMPLE lowest damaged PFNs: the
        same sample whatever order the damage was found in (by one process or two)."""
        d = self.damaged_pfns
        if len(d) >= SAMPLE and pfn >= d[-1]:
            return
        i = bisect.bisect_left(d, pfn)
        if i < len(d) and d[i] == pfn:
            return
        d.insert(i, pfn)
        del d[SAMPLE:]

    def extend(self, after: Scan) -> None:
        """Add the scan of the part after this one's (as one scan of both would be)."""
        r, o = self.runs, after.runs
        if r and o and r[-2] + r[-1] == o[0]:
            r[-1] += o[1]
            r.extend(o[2:])
        else:
            r.extend(o)
        self.good += after.good
        self.zero += after.zero
        self.stored_bytes += after.stored_bytes
        self.damaged.update(after.damaged)
        for pfn in after.damaged_pfns:
            self.note_pfn(pfn)
        self.last_accepted = after.last_accepted

    def to_bytes(self) -> bytes:
        """The scan as bytes (for a forked scanner to hand its part back)."""
        head = json.dumps({"good": self.good, "zero": self.zero, "stored": self.stored_bytes,
                           "damaged": dict(self.damaged), "pfns": self.damaged_pfns,
                           "last": self.last_accepted}).encode()  # fmt: skip
        return len(head).to_bytes(8, "little") + head + self.runs.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Scan:
        n = int.from_bytes(data[:8], "little")
        head = json.loads(data[8 : 8 + n])
        s = cls(good=head["good"], zero=head["zero"], stored_bytes=head["stored"],
                damaged=collections.Counter(head["damaged"]), damaged_pfns=head["pfns"],
                last_accepted=head["last"])  # fmt: skip
        s.runs.frombytes(data[8 + n :])
        return s


def run_at(runs: array[int], pfn: int, first: int = 0) -> int:
    """The index (in pairs) of the last run of ``runs`` that starts at or below ``pfn``,
    from run ``first`` on (``first`` when none does)."""
    n = len(runs) // 2
    k = bisect.bisect_right(range(first, n), pfn, key=lambda i: runs[2 * i])
    return first + max(k - 1, 0)


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

    def _accepted(
        self, note: Callable[[str, int | None], None] | None, part: Part | None = None
    ) -> Iterator[list[RawEntry]]:
        """The directory's accepted entries, checked, ascending, in lists (one or so per
        chunk of the directory); ``note(reason, pfn)`` hears of every rejected one.
        Only those of ``part`` when given (the entries after it are read as lookahead).

        An entry's PFN must be above the last accepted one, and below at least one of
        the next two plausible PFNs: those of the next CRC-valid entries that are above
        the last accepted PFN and below mem_pages (up to three looked at; none left:
        nothing to compare).  So one entry with a wrong PFN, too high or too low, is that
        one damaged page; it never becomes the PFN every later entry is compared with.

        A chunk whose entries all pass every check and ascend from the last accepted PFN
        is taken in bulk: every entry but the last two is accepted (each has two higher,
        plausible PFNs after it, so the rule accepts it), and those two wait for the next
        chunk.  Any other chunk goes entry by entry through the rule.
        """
        h = self.header
        order = fmt.EntryProblem.ORDER
        if part is None:
            part = Part(0, h.nr_entries)
        prev = part.prev
        stop = min(part.stop, h.nr_entries)
        end = h.mem_pages
        # Entries waiting for the PFNs after them: (entry or None when its CRC failed,
        # problem); ``valid`` of them passed their CRC.
        pend: collections.deque[tuple[RawEntry | None, fmt.EntryProblem | None]]
        pend = collections.deque()
        valid = 0
        out: list[RawEntry] = []

        def decide(e: RawEntry, problem: fmt.EntryProblem | None) -> None:
            nonlocal prev
            pfn = e[0]
            if pfn < end:  # (beyond the end of memory: already a problem)
                if pfn <= prev:
                    problem = order
                else:
                    seen, top = 0, -1
                    for x, _p in pend:  # the next two plausible PFNs
                        if x is not None and prev < x[0] < end:
                            top = max(top, x[0])
                            seen += 1
                            if seen == 2:
                                break
                    if pfn >= top >= 0:
                        problem = order
            if problem is None:
                prev = pfn
                out.append(e)
            elif note is not None:
                note(problem.value, pfn)

        def rejected(problem: fmt.EntryProblem | None) -> None:
            if note is not None and problem is not None:
                note(problem.value, None)

        own = 0  # entries of ours in ``pend`` (those after the part are only looked at)

        def push(e: RawEntry, problem: fmt.EntryProblem | None, ours: bool) -> None:
            """One more entry read: decide those of ours that now have enough after them."""
            nonlocal valid, own
            if problem is fmt.EntryProblem.ENTRY_CRC:
                if not pend:
                    rejected(problem)
                else:
                    pend.append((None, problem))
                    own += ours
                return
            pend.append((e, problem))
            valid += 1
            own += ours
            while valid > 3 and own:
                x, p = pend.popleft()
                own -= 1
                if x is None:
                    rejected(p)
                    continue
                valid -= 1
                decide(x, p)
                while own and pend[0][0] is None:
                    rejected(pend.popleft()[1])
                    own -= 1

        for chunk in fmt.iter_entries_raw(h, self.stream.read, start=part.start, stop=stop):
            ents, problems = fmt.check_entries(chunk, h)
            if problems is None and all(p is None and e is not None for e, p in pend):
                seq = [e for e, _p in pend if e is not None]
                seq += ents
                if seq[0][0] > prev and all(a[0] < b[0] for a, b in itertools.pairwise(seq)):
                    keep = max(0, len(seq) - 2)
                    if keep:
                        out.extend(seq[:keep])
                        prev = seq[keep - 1][0]
                    pend = collections.deque((e, None) for e in seq[keep:])
                    valid = own = len(pend)
                    if out:
                        yield out
                        out = []
                    continue
            for i, e in enumerate(ents):
                push(e, problems[i] if problems is not None else None, True)
            if out:
                yield out
                out = []
        # What is left of ours waits for the next plausible PFNs: those of the entries
        # after the part when there are any (read here, never decided), as when the
        # whole directory is read.
        if own and stop < h.nr_entries:
            for chunk in fmt.iter_entries_raw(h, self.stream.read, LOOKAHEAD, start=stop):
                ents, problems = fmt.check_entries(chunk, h)
                for i, e in enumerate(ents):
                    push(e, problems[i] if problems is not None else None, False)
                    if not own:
                        break
                if not own:
                    break
        while own:  # the directory ended: judged with what follows, if anything
            x, p = pend.popleft()
            own -= 1
            if x is None:
                rejected(p)
            else:
                decide(x, p)
        if out:
            yield out

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

    def scan(self, part: Part | None = None, into: Scan | None = None) -> Scan:
        """Pass one: check every entry and every stored page's CRC; the runs of good PFNs.
        The same walk as :meth:`walk`, its pages dropped.  Only ``part``'s entries when
        given, added to ``into`` when given (the scan of the parts before)."""
        s = Scan() if into is None else into
        for _batch in self.walk(s, part):
            pass
        return s

    def guess_prev(self, start: int) -> int:
        """The PFN of the last entry before ``start`` that passes its own checks (-1: none
        among the 64 before it): what the order rule's ``prev`` at ``start`` will be
        unless that entry is out of order, for a part scanned before the one ahead of
        it is done.  The guess is checked against the real one (Scan.last_accepted)."""
        h = self.header
        first = max(0, start - LOOKAHEAD)
        for chunk in fmt.iter_entries_raw(h, self.stream.read, start=first, stop=start):
            ents, problems = fmt.check_entries(chunk, h)
            for i in reversed(range(len(ents))):
                if problems is None or problems[i] is None:
                    return ents[i][0]
        return -1

    def walk(
        self, scan: Scan, part: Part | None = None
    ) -> Iterator[list[tuple[RawEntry, memoryview | None]]]:
        """Pass one and pass two in one: every checked page, ascending, in lists, filling
        ``scan`` (runs, counts, damage) as it goes; for a writer whose layout does not
        depend on which pages are good before it writes them (kdump's).  Each page's CRC
        is checked on the very bytes yielded (views into the read cache, empty for a zero
        page); a page that fails it is damaged and left out, as in ``scan``.  Only the
        entries of ``part`` when given."""
        note = scan.note_damage
        win = self._win
        view = win.view
        crc32 = zlib.crc32
        zero_flag = fmt.EntryFlag.ZERO.value
        runs = scan.runs
        last = runs[-2] + runs[-1] if runs else -2
        empty = memoryview(b"")
        # The window the last page came from, sliced here without a call: pages of one
        # class lie back to back, so most pages are in the window before them.
        w_first, w_base, w_len, w_buf = -1, 0, 0, empty
        good = zero = stored = 0  # added to scan's counts before each batch goes out
        if part is not None:
            scan.last_accepted = part.prev
        for acc in self._accepted(note, part):
            scan.last_accepted = acc[-1][0]
            batch: list[tuple[RawEntry, memoryview | None]] = []
            for e in acc:
                pfn, flags = e[0], e[4]
                if flags & zero_flag:
                    data = empty
                    zero += 1
                else:
                    off, n = e[1], e[2]
                    o = off - w_base
                    if off >> WINDOW_SHIFT == w_first and o + n <= w_len:
                        data = w_buf[o : o + n]
                        ok = crc32(data) == e[3]
                    else:
                        try:
                            data = view(off, n)
                            ok = crc32(data) == e[3]
                        except OutsideAreaError:
                            ok = False
                        if ok and win.last >= 0:
                            w_first = win.last
                            w_buf = win.cache[w_first]
                            w_base, w_len = w_first << WINDOW_SHIFT, len(w_buf)
                    if not ok:
                        note("page checksum mismatch", pfn)
                        continue
                    stored += n
                if pfn == last:
                    runs[-1] += 1
                else:
                    runs.append(pfn)
                    runs.append(1)
                last = pfn + 1
                good += 1
                batch.append((e, data))
                if len(batch) >= RAW_BATCH:
                    scan.good, scan.zero, scan.stored_bytes = (
                        scan.good + good, scan.zero + zero, scan.stored_bytes + stored)
                    good = zero = stored = 0
                    yield batch
                    batch = []
            if batch:
                scan.good, scan.zero, scan.stored_bytes = (
                    scan.good + good, scan.zero + zero, scan.stored_bytes + stored)
                good = zero = stored = 0
                yield batch
        scan.done = True

    def stored_raw(
        self, scan: Scan, part: Part | None = None
    ) -> Iterator[list[tuple[RawEntry, memoryview | None]]]:
        """Pass two: (entry, stored bytes) for every PFN in ``scan.runs``, ascending, in
        lists.  The bytes are a view into the read cache (valid while it is held), empty
        for a zero page, and None when a page that passed pass one fails its CRC now
        (memory changed under us: counted as damaged).  Writers that copy compressed pages
        unchanged use this directly: they copy the very bytes that were checked.
        Only the entries of ``part`` when given (a writer's share of the pages)."""
        runs = scan.runs
        nruns = len(runs)
        ri = 0
        if not nruns:
            return
        lo, hi = runs[0], runs[0] + runs[1]
        view = self._win.view
        crc32 = zlib.crc32
        zero_flag = fmt.EntryFlag.ZERO.value
        empty = memoryview(b"")
        for acc in self._accepted(None, part):
            batch: list[tuple[RawEntry, memoryview | None]] = []
            if acc[0][0] >= hi:  # skip the runs before this list at once (a part's first
                # list may start thousands of runs in)
                ri = 2 * run_at(runs, acc[0][0], ri // 2)
                lo, hi = runs[ri], runs[ri] + runs[ri + 1]
            for e in acc:
                pfn = e[0]
                if pfn >= hi:
                    while pfn >= hi:
                        ri += 2
                        if ri >= nruns:
                            break
                        lo, hi = runs[ri], runs[ri] + runs[ri + 1]
                    if ri >= nruns:
                        break
                if pfn < lo:
                    continue
                if e[4] & zero_flag:
                    batch.append((e, empty))
                    continue
                try:
                    data: memoryview | None = view(e[1], e[2])
                except OutsideAreaError:
                    data = None
                if data is not None and crc32(data) != e[3]:
                    data = None
                if data is None:
                    scan.note_damage("page changed between passes", pfn)
                batch.append((e, data))
                if len(batch) >= RAW_BATCH:  # views keep their windows: hold few at once
                    yield batch
                    batch = []
            if batch:
                yield batch
            if ri >= nruns:
                return

    def stored_pages(self, scan: Scan) -> Iterator[tuple[fmt.Entry, bytes | None]]:
        """Yield (entry, stored bytes) for every PFN in ``scan.runs``, ascending: b"" for a
        zero page, None for a page that failed its CRC in pass two (``stored_raw``)."""
        for batch in self.stored_raw(scan):
            for e, data in batch:
                yield fmt.Entry(*e[:5]), (bytes(data) if data is not None else None)

    def pages(self, scan: Scan, part: Part | None = None) -> Iterator[tuple[int, bytes | None]]:
        """Yield (pfn, page) for every PFN in ``scan.runs`` (of ``part``'s entries when
        given); page is None for a zero page.

        A page that cannot be decompressed (or changed since pass one) is yielded
        as zeros and counted in ``scan``: the layout was fixed by pass one.
        """
        h = self.header
        decompress = decompressor(h.codec, h.page_size)
        zero = bytes(h.page_size)
        zero_flag, raw_flag = fmt.EntryFlag.ZERO.value, fmt.EntryFlag.RAW.value
        for batch in self.stored_raw(scan, part):
            for e, data in batch:
                flags = e[4]
                if data is None:
                    yield e[0], zero
                elif flags & zero_flag:
                    yield e[0], None
                elif flags & raw_flag:
                    yield e[0], bytes(data)
                else:
                    try:
                        yield e[0], decompress(data)
                    except CodecError:
                        scan.note_damage("page does not decompress", e[0])
                        yield e[0], zero
