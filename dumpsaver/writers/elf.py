"""ELF64 core output, laid out as /proc/vmcore is.

    ELF header | program headers | notes | page-aligned segment data

The first program header is PT_NOTE (an NT_PRSTATUS note per CPU, then
VMCOREINFO).  Each run of saved PFNs becomes one PT_LOAD with p_paddr set; pages
that were left out (not selected, or damaged) lie between segments, so readers
see them as absent rather than as zeros.  Zero pages inside a run are written
as file holes: the file is sparse.
"""

from __future__ import annotations

import os

from dumpsaver import elfnote as E
from dumpsaver import faults
from dumpsaver.decode import Dump, Scan
from dumpsaver.writers import Progress, Written, pwrite_all

DIRECT_MAP = 0xFFFF888000000000  # x86_64 __PAGE_OFFSET without KASLR
FLUSH = 4 << 20
EF_INCOMPLETE = 0x1  # makedumpfile's mark of a partial ELF dump
E_FLAGS_OFFSET = 48  # of e_flags in the ELF64 header


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

    def estimate(self, dump: Dump, scan: Scan) -> int:
        _phnum, data_off, _notes = _layout(dump, scan)
        return data_off + (scan.good - scan.zero) * dump.header.page_size

    def write(self, fd: int, dump: Dump, scan: Scan, progress: Progress | None) -> Written:
        h = dump.header
        ps = h.page_size
        phnum, data_off, notes = _layout(dump, scan)
        notes_off = E.EHDR.size + phnum * E.PHDR.size
        machine = dump.meta.machine or E.EM.X86_64
        direct = DIRECT_MAP if machine == E.EM.X86_64 else 0

        # Program headers are streamed out in chunks: memory does not grow with the
        # number of runs (a fragmented machine can have millions).
        phdrs = bytearray(E.PHDR.pack(E.PT.NOTE, 0, notes_off, 0, 0, len(notes), len(notes), 0))
        phdrs_at = E.EHDR.size
        off = data_off
        for first, count in scan.iter_runs():
            paddr = first * ps
            size = count * ps
            phdrs += E.PHDR.pack(E.PT.LOAD, E.PF.R | E.PF.W | E.PF.X, off,
                                 direct + paddr if direct else 0, paddr, size, size, 0)  # fmt: skip
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
        buf = bytearray()
        buf_at = data_off
        runs = scan.iter_runs()
        run_first, run_count = next(runs, (0, 0))
        base = data_off  # file offset of the current run (segments follow each other)
        done = 0
        total_pages = scan.good
        # Fault injection for the interruption tests (dumpsaver.faults); off: no cost.
        kill_in_loop = faults.armed("write-page")
        for pfn, page in dump.pages(scan):
            if kill_in_loop:
                faults.checkpoint("write-page")
            while pfn >= run_first + run_count:
                base += run_count * ps
                run_first, run_count = next(runs)
            at = base + (pfn - run_first) * ps
            if page is None:  # zero page: leave a hole
                if buf:
                    pwrite_all(fd, buf, buf_at)
                    buf = bytearray()
                buf_at = at + ps
            else:
                if at != buf_at + len(buf):
                    if buf:
                        pwrite_all(fd, buf, buf_at)
                        buf = bytearray()
                    buf_at = at
                buf += page
                if len(buf) >= FLUSH:
                    pwrite_all(fd, buf, buf_at)
                    buf_at += len(buf)
                    buf = bytearray()
            done += 1
            if progress is not None and done % 4096 == 0:
                progress(done, total_pages)
        if buf:
            pwrite_all(fd, buf, buf_at)
        if not flags and scan.nr_damaged:  # pages that failed only in pass two
            pwrite_all(fd, EF_INCOMPLETE.to_bytes(4, "little"), E_FLAGS_OFFSET)
        if progress is not None:
            progress(done, total_pages)
        return Written(total, done)
