"""ELF64 core output, laid out as /proc/vmcore is.

    ELF header | program headers | notes | page-aligned segment data

The first program header is PT_NOTE (an NT_PRSTATUS note per CPU, then
VMCOREINFO).  Each run of saved PFNs becomes one PT_LOAD with p_paddr set; pages
that were left out (not selected, or damaged) lie between segments, so readers
see them as absent rather than as zeros.  Zero pages inside a run are written
as file holes: the file is sparse.
"""

from __future__ import annotations

import collections
import json
import os

from dumpsaver import elfnote as E
from dumpsaver import faults
from dumpsaver.decode import Dump, Part, Scan, run_at
from dumpsaver.forked import Child, ChildFailed
from dumpsaver.writers import FileSink, Progress, Written, pwrite_all

DIRECT_MAP = 0xFFFF888000000000  # x86_64 __PAGE_OFFSET without KASLR, 4-level paging
DIRECT_MAP_L5 = 0xFF11000000000000  # the same with 5-level paging
START_KERNEL_MAP = 0xFFFFFFFF80000000  # x86_64 __START_KERNEL_map: kernel text and data
PUD_SIZE = 1 << 30  # KASLR moves the direct map in steps of this
U64 = 1 << 64
FLUSH = 4 << 20
EF_INCOMPLETE = 0x1  # makedumpfile's mark of a partial ELF dump
E_FLAGS_OFFSET = 48  # of e_flags in the ELF64 header


def _vmcoreinfo(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k] = v.strip()
    return out


def _number(text: str | None, base: int) -> int | None:
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def direct_map_base(dump: Dump) -> int | None:
    """Where the crashed x86_64 kernel's direct map of physical memory began (its
    page_offset_base), from the dump's VMCOREINFO; None when it cannot be known.

    makedumpfile's way, in this order: NUMBER(page_offset_base) when the kernel
    exports it; else SYMBOL(page_offset_base), the variable's address in the kernel
    image, read from the dump itself (physical = address - __START_KERNEL_map +
    phys_base); else, for a kernel without KASLR (KERNELOFFSET absent or 0), the
    fixed base of its paging mode.  A randomized kernel without that evidence: None.
    """
    if dump.meta.machine != E.EM.X86_64:
        return None
    info = _vmcoreinfo(dump.meta.vmcoreinfo)
    base = _number(info.get("NUMBER(page_offset_base)"), 0)
    if base is None:
        sym = _number(info.get("SYMBOL(page_offset_base)"), 16)
        if sym is not None and START_KERNEL_MAP <= sym < U64 - 8:
            phys = sym - START_KERNEL_MAP + (_number(info.get("NUMBER(phys_base)"), 0) or 0)
            base = _read_u64(dump, phys)
    if base is not None:
        # A plausible direct map: in the kernel half, aligned as KASLR places it.
        return base if (1 << 63) <= base < U64 and base % PUD_SIZE == 0 else None
    if _number(info.get("KERNELOFFSET"), 16) not in (None, 0):
        return None  # randomized, and nothing says where the direct map went
    return DIRECT_MAP_L5 if info.get("NUMBER(pgtable_l5_enabled)") == "1" else DIRECT_MAP


def _read_u64(dump: Dump, phys: int) -> int | None:
    ps = dump.header.page_size
    if phys < 0 or phys % 8 or phys // ps >= dump.header.mem_pages:
        return None
    page = dump.read_page(phys // ps)
    if page is None:
        return None
    return int.from_bytes(page[phys % ps : phys % ps + 8], "little")


def _layout(dump: Dump, scan: Scan) -> tuple[int, int, bytes]:
    """Return (number of program headers, offset of the first page, notes blob)."""
    m = dump.meta
    notes = E.crash_notes(m.prstatus, m.vmcoreinfo)
    phnum = 1 + len(scan.runs) // 2
    ps = dump.header.page_size
    notes_off = E.EHDR.size + phnum * E.PHDR.size
    extra = E.SHDR.size if phnum >= E.PN_XNUM else 0
    data_off = -(-(notes_off + len(notes) + extra) // ps) * ps
    return phnum, data_off, notes


class ElfWriter:
    name = "elf"
    filename = "vmcore"

    def prepare(self, dump: Dump) -> Scan:
        """Pass one: the segments are the runs of good pages.  On two CPUs a forked child
        scans the upper half of the directory while this process scans the lower."""
        if not _parallel(dump.header.data_bytes):
            return dump.scan()
        return _scan_split(dump)

    def estimate(self, dump: Dump, scan: Scan) -> int:
        _phnum, data_off, _notes = _layout(dump, scan)
        return data_off + (scan.good - scan.zero) * dump.header.page_size

    def write(self, fd: int, dump: Dump, scan: Scan, progress: Progress | None) -> Written:
        h = dump.header
        ps = h.page_size
        phnum, data_off, notes = _layout(dump, scan)
        notes_off = E.EHDR.size + phnum * E.PHDR.size
        machine = dump.meta.machine or E.EM.X86_64
        # p_vaddr: the direct-map address of the segment, as /proc/vmcore gives it, or 0
        # when unknown or not representable in 64 bits (high PFNs of a hostile header).
        direct = direct_map_base(dump)

        # Program headers are streamed out in chunks: memory does not grow with the
        # number of runs (a fragmented machine can have millions).
        phdrs = bytearray(E.PHDR.pack(E.PT.NOTE, 0, notes_off, 0, 0, len(notes), len(notes), 0))
        phdrs_at = E.EHDR.size
        off = data_off
        for first, count in scan.iter_runs():
            paddr = first * ps
            size = count * ps
            vaddr = direct + paddr if direct is not None else 0
            if vaddr + size > U64:
                vaddr = 0
            phdrs += E.PHDR.pack(E.PT.LOAD, E.PF.R | E.PF.W | E.PF.X, off,
                                 vaddr, paddr, size, size, 0)  # fmt: skip
            off += size
            if len(phdrs) >= FLUSH:
                pwrite_all(fd, phdrs, phdrs_at)
                phdrs_at += len(phdrs)
                phdrs = bytearray()
        total = off
        if phnum >= E.PN_XNUM:  # the real count lives in section header 0's sh_info
            e_phnum, shoff, shnum = E.PN_XNUM, notes_off + len(notes), 1
            shdr0 = E.SHDR.pack(0, 0, 0, 0, 0, 0, 0, phnum, 0, 0)
        else:
            e_phnum, shoff, shnum, shdr0 = phnum, 0, 0, b""
        ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
        incomplete = h.truncated or scan.nr_damaged or not (dump.meta_ok and dump.header_ok)
        flags = EF_INCOMPLETE if incomplete else 0
        ehdr = E.EHDR.pack(ident, E.ET.CORE, machine, 1, 0, E.EHDR.size, shoff, flags,
                           E.EHDR.size, E.PHDR.size, e_phnum, E.SHDR.size, shnum, 0)
        os.ftruncate(fd, total)
        pwrite_all(fd, ehdr, 0)
        pwrite_all(fd, bytes(phdrs) + notes + shdr0, phdrs_at)

        # Pass two: pages arrive in ascending PFN order, so file writes are sequential.
        # When pass one was split between two processes, so is pass two, the same way:
        # a forked child writes the pages of the upper half of the directory while this
        # process writes the lower half's.  Every page's file offset is fixed by pass
        # one, so no page crosses between them; only the child's damage counts.
        # Fault injection for the interruption tests (dumpsaver.faults) counts the pages
        # of one process: then there is one.
        kill_in_loop = faults.armed("write-page")
        if kill_in_loop or len(scan.parts) != 2:
            done = _write_pages(fd, dump, scan, data_off, None, progress, kill_in_loop)
        else:
            done = _write_split(fd, dump, scan, data_off, scan.parts, progress)
        if not flags and scan.nr_damaged:  # pages that failed only in pass two
            pwrite_all(fd, EF_INCOMPLETE.to_bytes(4, "little"), E_FLAGS_OFFSET)
        if progress is not None:
            progress(done, scan.good)
        return Written(total, done)


#: Fewer stored bytes than this are decompressed by one process (a fork costs a few
#: milliseconds; 8 MiB is about 5000 pages of a busy machine, 0.1 s of inflate).
PARALLEL_MIN_BYTES = 8 << 20


#: ``DUMPSAVER_ELF_PROCESSES``: ``1`` always writes with one process, ``2`` with two
#: whenever 2+ CPUs are ours; unset, two unless the machine is busy (below).  Measured
#: side by side (docs/performance.md): on an idle 2-CPU VM two processes took
#: 1/1.60-1/1.70 of one's wall time (pass one split too); on the same VM shared with
#: four busy QEMU guests (load 5-15, before pass one was split) 0.54-1.06x, never a
#: gain: no second CPU was free.
PROCESSES_ENV = "DUMPSAVER_ELF_PROCESSES"


def _parallel(stored_bytes: int) -> bool:
    """Whether to fork a second scanner and writer: 2+ CPUs in our affinity, enough
    stored bytes to pay for the forks, and (by default) a 1-minute load average below
    the CPU count minus one, i.e. a CPU likely free for the child.  Early in a boot
    it is near zero."""
    want = os.environ.get(PROCESSES_ENV)
    if want == "1":
        return False
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    if cpus < 2 or stored_bytes < PARALLEL_MIN_BYTES:
        return False
    if want == "2":
        return True
    try:
        return os.getloadavg()[0] < cpus - 1
    except OSError:
        return False


def _scan_split(dump: Dump) -> Scan:
    """Pass one on two CPUs: a forked child scans the upper half of the directory while
    this process scans the lower.  The child's first entries are judged against a guess
    of the last PFN this process will accept (Dump.guess_prev); when the guess was
    wrong (an entry out of order just before the middle), or the child failed, this
    process scans the upper half again itself, from the right PFN: the result is
    always the one-process scan's."""
    n = dump.header.nr_entries
    lower = Part(0, n // 2)
    guess = dump.guess_prev(lower.stop)
    try:
        child = Child(lambda: dump.scan(Part(lower.stop, n, guess)).to_bytes())
    except OSError:  # no second process today: one scans it all
        return dump.scan()
    try:
        scan = dump.scan(lower)
    except BaseException:
        child.kill()
        raise
    try:
        upper: Scan | None = Scan.from_bytes(child.result())
    except (ChildFailed, ValueError, KeyError):
        upper = None
    prev = scan.last_accepted
    if upper is not None and prev == guess:
        scan.extend(upper)
    else:
        dump.scan(Part(lower.stop, n, prev), into=scan)
    scan.parts = (lower, Part(lower.stop, n, prev))
    return scan


def _write_pages(
    fd: int, dump: Dump, scan: Scan, data_off: int, part: Part | None,
    progress: Progress | None, kill_in_loop: bool = False, share: float = 1.0,
) -> int:
    """Decompress and write the pages (of ``part``'s entries when given) into their
    places; return how many."""
    ps = dump.header.page_size
    buf = bytearray()
    buf_at = data_off
    runs = scan.runs
    nruns = len(runs)
    # This process's own sink: its write-behind hints cover its pages.
    with FileSink(fd) as sink:
        ri = 0  # the run of the page written last, its first PFN, its end, its offset
        run_first, run_end = (runs[0], runs[0] + runs[1]) if nruns else (0, 0)
        base = data_off  # (segments follow each other in the file)
        done = 0
        total_pages = scan.good
        for pfn, page in dump.pages(scan, part):
            if kill_in_loop:
                faults.checkpoint("write-page")
            if pfn >= run_end:
                nxt = ri + 2
                if pfn < runs[nxt] + runs[nxt + 1]:  # the next run: the usual case
                    base += (run_end - run_first) * ps
                    ri = nxt
                else:  # a part's first page: jump over the runs before it
                    k = 2 * run_at(runs, pfn, ri // 2)
                    base += ps * sum(runs[ri + 1 : k : 2])
                    ri = k
                run_first, run_end = runs[ri], runs[ri] + runs[ri + 1]
            at = base + (pfn - run_first) * ps
            if page is None:  # zero page: leave a hole
                if buf:
                    sink.write_at(buf_at, buf)
                    buf = bytearray()
                buf_at = at + ps
            else:
                if at != buf_at + len(buf):
                    if buf:
                        sink.write_at(buf_at, buf)
                        buf = bytearray()
                    buf_at = at
                buf += page
                if len(buf) >= FLUSH:
                    sink.write_at(buf_at, buf)
                    buf_at += len(buf)
                    buf = bytearray()
            done += 1
            if progress is not None and done % 4096 == 0:
                progress(min(total_pages, int(done / share)), total_pages)
        if buf:
            sink.write_at(buf_at, buf)
    return done


def _write_split(
    fd: int, dump: Dump, scan: Scan, data_off: int, parts: tuple[Part, ...],
    progress: Progress | None,
) -> int:
    """_write_pages on two CPUs: a forked child writes the pages of ``parts[1]``, this
    process those of ``parts[0]``; the child hands back its page count and damage."""
    lower, upper = parts
    before = collections.Counter(scan.damaged)

    def child_half() -> bytes:
        n = _write_pages(fd, dump, scan, data_off, upper, None)
        return json.dumps({"done": n, "damaged": dict(scan.damaged - before),
                           "pfns": scan.damaged_pfns}).encode()  # fmt: skip

    try:
        child = Child(child_half)
    except OSError:  # no second process: this one writes both halves
        return _write_pages(fd, dump, scan, data_off, None, progress)
    try:
        done = _write_pages(fd, dump, scan, data_off, lower, progress, share=0.5)
    except BaseException:
        child.kill()
        raise
    try:
        msg = json.loads(child.result())
    except ChildFailed as e:
        raise RuntimeError(f"the process writing the upper half of the pages failed: {e}") from None
    scan.damaged.update(msg["damaged"])
    for pfn in msg["pfns"]:
        scan.note_pfn(pfn)
    return done + int(msg["done"])
