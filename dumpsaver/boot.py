"""The boot job: what ``dumpsaver save`` decides, apart from how it is asked and shown.

    candidates -> the first area holding a dump (an area already saved by an
    interrupted run only has its release finished) -> the attempt gate
    (max_attempts) -> save (dumpsaver.save) -> count a failed attempt, or clear
    the count -> the restart decision

``run`` returns an Outcome (exit code, status, the restart to request); the CLI
prints it and ``restart_now`` carries out the restart.  Failed attempts count every
error of the save, expected or not, except a busy lock: another saver is at work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from dumpsaver import hotplug, journal, selftest, state
from dumpsaver.catalogue import identity
from dumpsaver.config import Config
from dumpsaver.decode import Dump
from dumpsaver.errors import (
    AlreadySavedError,
    BusyError,
    DestinationError,
    DumpsaverError,
    Exit,
    FormatError,
    NoDumpError,
    UnverifiedHeaderError,
)
from dumpsaver.locate import Candidate, LocateMethod, candidates, parse_memmap_pmem
from dumpsaver.physmem import PhysMem, Range
from dumpsaver.pmem import PmemPaths
from dumpsaver.release import hand_back
from dumpsaver.restart import RestartAction, request_restart
from dumpsaver.sanitize import clean_text
from dumpsaver.save import SaveStatus, area_locked, open_dump, save, stream_save
from dumpsaver.sizes import human
from dumpsaver.writers import Progress

log = logging.getLogger("dumpsaver")

#: After giving up: a save by hand, which never restarts unless asked (--restart).
GAVE_UP_HINT = ("fix the cause (see dumpsaver status), then run dumpsaver save --force; "
                "by hand it does not reboot")


@dataclass(frozen=True)
class Where:
    """Where to look and where to write: the configuration's paths, overridden per run."""

    mem: str
    sysfs: Path
    cmdline: Path | None
    iomem: Path
    dest: Path
    state_dir: Path
    pmem: PmemPaths = field(default_factory=PmemPaths)

    def candidates(self, cfg: Config, notes: list[str] | None = None) -> list[Candidate]:
        return candidates(sysfs=self.sysfs, cmdline=self.cmdline, iomem=self.iomem,
                          use_memmap=cfg.use_memmap, regions=cfg.regions,
                          pmem_paths=self.pmem, notes=notes)

    def pmem_ranges(self, cfg: Config) -> list[Range]:
        """The memmap=! ranges of the kernel command line (none when use_memmap is off)."""
        if not cfg.use_memmap or self.cmdline is None:
            return []
        try:
            with open(self.cmdline, "rb") as f:
                return parse_memmap_pmem(f.read(1 << 16).decode("ascii", "replace"))
        except OSError:
            return []


def prepare_pmem(cfg: Config, where: Where) -> list[str]:
    """memmap=! on the command line: load the nd and dax modules and wait (at most
    ``pmem_wait`` seconds) for the devices; what is still missing, as notes.  Nothing
    at all on a machine without memmap=!."""
    wanted = where.pmem_ranges(cfg)
    if not wanted:
        return []
    notes = []
    began = time.monotonic()
    if hotplug.wait_for(where.pmem, wanted, 0.0):
        err = hotplug.load_modules(where.pmem)
        if err:
            notes.append(f"loading the persistent memory modules: {err}")
        missing = hotplug.wait_for(where.pmem, wanted, cfg.pmem_wait)
        for m in missing:
            notes.append(f"after waiting {cfg.pmem_wait} s: {m}")
        if not missing:
            log.info("the persistent memory devices appeared after %.1f s",
                     time.monotonic() - began)
    return notes


@dataclass
class Options:
    """``dumpsaver save``'s switches."""

    fmt_name: str | None = None
    keep: bool = False
    force: bool = False
    check: bool = False
    # Request the configured restart after a complete save: True (--restart), False
    # (--no-restart), or None: only as the boot job (under systemd), never by hand.
    restart: bool | None = None
    wait: float = 0.0
    stdout_fd: int | None = None  # stream the flattened form here instead of saving
    release_stream: bool = False  # with stdout_fd: release once the last byte is out


@dataclass
class Outcome:
    exit: Exit
    status: SaveStatus | None = None  # None: no dump waiting
    dump_id: str = ""
    source: str = ""
    dump_dir: Path | None = None
    notes: list[str] = field(default_factory=list)  # about the areas that held no dump
    restart: RestartAction | None = None  # to request now (None: none)
    selftest: bool = False  # the dump was the one `dumpsaver test` wrote
    restart_skipped: RestartAction | None = None  # configured, not requested: run by hand
    incomplete_reasons: list[str] = field(default_factory=list)  # info.json's, escaped
    dropped_at_panic: int = 0  # selected pages the panic side had no room for
    file_size: int = 0  # the saved core
    duration_s: float = 0.0  # the save, from the lock to the durable copy
    streamed_pages: int = 0  # stdout_fd: what went out
    streamed_bytes: int = 0


def find_dump(
    cfg: Config, where: Where, *, force: bool = False, finish_release: bool = False
) -> tuple[Candidate | None, PhysMem | None, Dump | None, list[str]]:
    """The first candidate holding a dump: (candidate, mem, dump, notes on the others).

    ``finish_release``: an area whose header says "already saved" still has its sysfs
    release done (a save interrupted between invalidating the header and the release
    would otherwise keep the memory reserved for the whole boot)."""
    notes: list[str] = []
    problem: FormatError | None = None
    for cand in where.candidates(cfg, notes):
        try:
            mem, dump = open_dump(cand, where.mem, force=force)
        except AlreadySavedError as e:
            notes.append(f"{cand.source}: {e.message}")
            if finish_release and (cand.release or cand.pmem):
                _finish_release(cand, where, notes)
            continue
        except (NoDumpError, UnverifiedHeaderError) as e:
            if isinstance(e, NoDumpError):
                notes.append(f"{cand.source}: {e.message}")
            elif cand.pmem is None or force:
                problem = problem or FormatError(f"{cand.source}: {e.message}", e.hint)
                continue
            else:
                # memmap=! memory holds user pages between crashes: the magic followed
                # by no header its CRC vouches for is their data, not a dump (the panic
                # side writes the header last, CRC and all); keeping the range reserved
                # for it would let any user page hold the memory back at every boot.
                notes.append(f"{cand.source}: not a dump: the dump magic, then {e.message} "
                             "(data left in the range by a boot without a crash)")
            if finish_release and cand.pmem is not None and not cand.pmem.given_back \
                    and cand.pmem.device() is not None:
                # memmap=! memory reserved again with no dump in it (a clean reboot,
                # stale user pages): back to the system
                _finish_release(cand, where, notes)
            continue
        except FormatError as e:
            problem = problem or FormatError(f"{cand.source}: {e.message}", e.hint)
            continue
        return cand, mem, dump, notes
    if problem is not None:
        raise problem
    return None, None, None, notes


def _finish_release(cand: Candidate, where: Where, notes: list[str]) -> None:
    try:
        with area_locked(cand, where.mem, 0.0):
            gave = hand_back(cand)
    except DumpsaverError as r:
        notes.append(f"{cand.source}: {r.message}")
        if cand.method == LocateMethod.PMEM:
            _event("give-back-failed", f"could not give {cand.source} back: {r.message}")
        return
    if gave is None:
        notes.append(f"{cand.source}: finished its release")
        return
    notes.append(f"{cand.source}: gave back {gave.line()}")
    _event("given-back", f"gave back {gave.line()} in {gave.seconds:.1f} s",
           ONLINED=gave.onlined, MEMTOTAL_BEFORE=gave.mem_total_before or 0,
           MEMTOTAL_AFTER=gave.mem_total_after or 0)


def _event(kind: str, message: str, **fields: str | int) -> None:
    journal.log_event(kind, message, **fields)


def run(cfg: Config, where: Where, opts: Options, *,
        progress: Progress | None = None) -> Outcome:  # fmt: skip
    """The boot job (``dumpsaver save``).  Raises DumpsaverError for what the CLI shows
    as an error; any failure of the save itself has been counted first."""
    early = prepare_pmem(cfg, where)
    cand, mem, dump, notes = find_dump(cfg, where, force=opts.force,
                                       finish_release=not (opts.check or opts.keep))
    notes[:0] = early
    if cand is None or mem is None or dump is None:
        return Outcome(Exit.NO_DUMP if opts.check else Exit.OK, notes=notes)
    with mem:
        h = dump.header
        did = str(h.dump_id)
        out = Outcome(Exit.OK, dump_id=did, source=cand.source, notes=notes)
        if opts.check:
            return out
        ident = identity(h)
        _event("dump-found", f"found dump {did} via {cand.method} "
                             f"({human(h.dir_offset + h.dir_bytes)} in memory, read through "
                             f"{mem.path}): {clean_text(dump.meta.panic, 200)}", DUMP_ID=did,
               READ_THROUGH=mem.path)
        tries = state.attempts_for(where.state_dir, did, ident)
        if tries >= cfg.max_attempts and not opts.force:
            if journal.running_under_systemd():  # on a terminal the error line says it
                _event("failed", f"gave up on dump {did} after {tries} failed attempts; "
                                 "the dump stays in memory", DUMP_ID=did, ATTEMPT=tries,
                       REASON="gave up after max_attempts")
            journal.notify_status(f"Gave up on dump {did} after {tries} failed attempts")
            raise DumpsaverError(
                f"gave up after {tries} failed attempts to save dump {did}; it stays in "
                "memory",
                hint=GAVE_UP_HINT,
                exit_code=Exit.GAVE_UP,
            )
        if opts.stdout_fd is not None:  # by hand, not the boot job: no attempt counted
            try:
                return _stream(cand, dump, where, opts, out, progress)
            except AlreadySavedError as e:
                return _saved_by_another(out, e)
        try:
            journal.notify_status(f"Saving dump {did}")
            res = save(cfg, cand, dump, mem_path=where.mem, dest=where.dest,
                       fmt_name=opts.fmt_name, keep=opts.keep, wait=opts.wait,
                       progress=progress,
                       on_event=lambda kind, msg, **f: _event(kind, msg, DUMP_ID=did, **f))
        except (BusyError, DestinationError):
            raise  # another saver is at work, or a bad dump directory: not the dump's fault
        except AlreadySavedError as e:  # by another saver while we waited: its job now
            return _saved_by_another(out, e)
        except DumpsaverError as e:
            e.message += _count_failure(cfg, where, did, ident, e.message)
            raise
        except Exception as e:  # a bug or MemoryError: still an attempt, or boots loop
            _count_failure(cfg, where, did, ident,
                           f"internal error: {type(e).__name__}: {clean_text(str(e), 300)}")
            raise
    state.clear(where.state_dir)
    out.status, out.dump_dir = res.status, res.dump_dir
    size, took = res.info.get("file_size"), res.info.get("duration_s")
    out.file_size = size if isinstance(size, int) else 0
    out.duration_s = float(took) if isinstance(took, int | float) else 0.0
    journal.notify_status(f"{res.status.capitalize()} dump {did} in {res.dump_dir}")
    if res.status == SaveStatus.INCOMPLETE:
        out.exit = Exit.INCOMPLETE
        out.incomplete_reasons = [str(r) for r in res.info.get("incomplete_reasons", [])]
        out.dropped_at_panic = h.nr_dropped
    if selftest.is_selftest(where.state_dir, did):
        out.selftest = True
    elif out.exit == Exit.OK and not opts.keep and cfg.restart != RestartAction.CONTINUE:
        # an incomplete save (exit 4) never restarts: someone should look first
        wanted = journal.running_under_systemd() if opts.restart is None else opts.restart
        if wanted:
            out.restart = RestartAction(cfg.restart)
        elif opts.restart is None:
            out.restart_skipped = RestartAction(cfg.restart)
    return out


def _saved_by_another(out: Outcome, e: AlreadySavedError) -> Outcome:
    """Another saver saved and released this dump while we waited for the lock: nothing
    left to do here (the restart, if any, is the other saver's)."""
    out.notes.append(e.message)
    out.status = SaveStatus.ALREADY_SAVED
    return out


def _count_failure(cfg: Config, where: Where, did: str, ident: str, reason: str) -> str:
    """Record a failed attempt; return `` (attempt N of M)``."""
    tries = state.record_failure(where.state_dir, did, reason, ident)
    said = f" (attempt {tries} of {cfg.max_attempts})"
    if journal.running_under_systemd():  # on a terminal the error line says it all
        _event("failed", f"could not save dump {did}: {reason}{said}", DUMP_ID=did,
               REASON=reason + said, ATTEMPT=tries)
    journal.notify_status(f"Failed to save dump {did}: {reason}{said}")
    return said


def _stream(cand: Candidate, dump: Dump, where: Where, opts: Options, out: Outcome,
            progress: Progress | None) -> Outcome:  # fmt: skip
    """``save --stdout``: the flattened kdump-compressed stream; the dump stays in memory
    unless --release (nothing durable is known on this side)."""
    assert opts.stdout_fd is not None
    written, scan = stream_save(cand, dump, opts.stdout_fd, mem_path=where.mem,
                                release_after=opts.release_stream, wait=opts.wait,
                                progress=progress)
    incomplete = dump.header.truncated or scan.nr_damaged or not dump.meta_ok
    out.status = SaveStatus.INCOMPLETE if incomplete else SaveStatus.SAVED
    out.exit = Exit.INCOMPLETE if incomplete else Exit.OK
    out.streamed_pages, out.streamed_bytes = written.pages, written.size
    return out


def restart_now(action: RestartAction, dump_id: str = "") -> NoReturn:
    """Log, flush and sync everything, ask PID 1 for ``action``, and exit 0.

    systemd answers the request by stopping this unit with SIGTERM.  The work is done and
    durable, so the run must end as a success, not as "Failed with result 'signal'" on
    the one boot that did its job: from the request on, a SIGTERM exits 0, and once the
    request is queued the process exits 0 itself (returning would reach the interpreter's
    shutdown, which restores the default SIGTERM and could still die of it).  A SIGTERM
    before the request (a shutdown mid-save) still kills: an interrupted save."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    _event("restart-requested", f"requesting a clean {action} from systemd", ACTION=action,
           **({"DUMP_ID": dump_id} if dump_id else {}))
    for h in logging.getLogger().handlers:
        h.flush()
    os.sync()
    before = signal.signal(signal.SIGTERM, lambda *_: _exit_now())
    try:
        request_restart(action)
    except BaseException:
        signal.signal(signal.SIGTERM, before)
        raise
    _exit_now()


def _exit_now() -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)
