"""The dumpsaver command's subcommands, and the one place where errors become messages
and exit codes.  The entry point is dumpsaver.cli (a no-dump fast path first)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dumpsaver import __version__, state
from dumpsaver import config as config_mod
from dumpsaver.errors import (
    EXIT_CORRUPT,
    EXIT_FAILURE,
    EXIT_GAVE_UP,
    EXIT_INCOMPLETE,
    EXIT_NO_DUMP,
    EXIT_OK,
    EXIT_USAGE,
    DumpsaverError,
    FormatError,
)
from dumpsaver.sanitize import clean_text
from dumpsaver.sizes import human, parse_size

log = logging.getLogger("dumpsaver")


def _event(kind: str, message: str, **fields: Any) -> None:
    """A structured event: to the journal (MESSAGE_ID per kind) when there is one."""
    try:
        from dumpsaver import journal
    except ImportError:
        log.info("%s", message)
        return
    journal.log_event(kind, message, **fields)


def _under_systemd() -> bool:
    try:
        from dumpsaver import journal
    except ImportError:
        return False
    return journal.running_under_systemd()


def _notify(text: str) -> None:
    try:
        from dumpsaver import journal
    except ImportError:
        return
    journal.notify_status(text)


# -- shared options ---------------------------------------------------------------------


def _add_location(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where to look (defaults from the configuration)")
    g.add_argument("--mem", help="physical memory device (default: mem_device, /dev/mem)")
    g.add_argument("--sysfs", type=Path, help="the kernel's mcore sysfs directory")
    g.add_argument("--cmdline", type=Path, default=Path("/proc/cmdline"),
                   help="kernel command line to search for memmap= (default: %(default)s)")
    g.add_argument("--iomem", type=Path, default=Path("/proc/iomem"),
                   help="resource map to check reservations against (default: %(default)s)")
    g.add_argument("--dest", type=Path, help="dump directory (default: dump_dir, /var/dumps)")
    g.add_argument("--state-dir", type=Path, help="state directory (default: state_dir)")


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cfg = config_mod.load(args.config)
        a = args
        self.mem = str(getattr(a, "mem", None) or self.cfg.mem_device)
        self.sysfs = getattr(a, "sysfs", None) or self.cfg.sysfs
        self.dest = getattr(a, "dest", None) or self.cfg.dump_dir
        self.state_dir = getattr(a, "state_dir", None) or self.cfg.state_dir
        self.cmdline = getattr(a, "cmdline", None)
        self.iomem = getattr(a, "iomem", Path("/proc/iomem"))

    def candidates(self) -> list[Any]:
        from dumpsaver import locate

        return locate.candidates(
            sysfs=self.sysfs, cmdline=self.cmdline, iomem=self.iomem,
            use_memmap=self.cfg.use_memmap, regions=self.cfg.regions,
        )


def _find_dump(
    ctx: Ctx, force: bool, finish_release: bool = False
) -> tuple[Any, Any, Any, list[str]]:
    """The first candidate holding a dump: (candidate, mem, dump, notes on the others).

    ``finish_release``: an area whose header says "already saved" still has its sysfs
    release done (a save interrupted between invalidating the header and the release
    would otherwise keep the memory reserved for the whole boot)."""
    from dumpsaver.save import open_dump, release_sysfs

    notes = []
    problem: DumpsaverError | None = None
    for cand in ctx.candidates():
        try:
            mem, dump = open_dump(cand, ctx.mem, force=force)
        except FormatError as e:
            if "already saved" in e.message or "bad dump magic" in e.message:
                notes.append(f"{cand.source}: {e.message}")
                if "already saved" in e.message and finish_release and cand.release:
                    try:
                        release_sysfs(cand)
                        notes.append(f"{cand.source}: finished its release")
                    except DumpsaverError as r:
                        notes.append(r.message)
                continue
            problem = problem or FormatError(f"{cand.source}: {e.message}", e.hint)
            continue
        return cand, mem, dump, notes
    if problem is not None:
        raise problem
    return None, None, None, notes


# -- save -------------------------------------------------------------------------------


class _Bar:
    """A progress bar on a terminal; sd_notify STATUS= progress under systemd."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.5 and done != total:
            return
        self.last = now
        pct = 100 * done // max(total, 1)
        _notify(f"Saving dump: {pct}% ({done}/{total} pages)")
        if self.tty:
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\rsaving [{bar:<25}] {pct:3d}% {done}/{total} pages")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def cmd_save(ctx: Ctx) -> int:
    from dumpsaver import save as save_mod

    a = ctx.args
    cand, mem, dump, notes = _find_dump(ctx, a.force, finish_release=not (a.check or a.keep))
    if dump is None:
        if a.check:
            return EXIT_NO_DUMP
        for n in notes:
            log.info("%s", n)
        print("dumpsaver: no dump in memory, nothing to do")
        return EXIT_OK
    try:
        if a.check:
            print(f"dump {dump.dump_id} waiting ({cand.source})")
            return EXIT_OK
        h = dump.header
        did = str(h.dump_id)
        _event("dump-found", f"found dump {did} via {cand.method} "
                        f"({human(h.dir_offset + h.dir_bytes)} in memory): "
                        f"{clean_text(dump.meta.panic, 200)}", DUMP_ID=did)
        tries = state.attempts_for(ctx.state_dir, did)
        if tries >= ctx.cfg.max_attempts and not a.force:
            _event("failed", f"gave up on dump {did} after {tries} failed attempts; the dump "
                             "stays in memory", DUMP_ID=did, ATTEMPT=tries,
                   REASON="gave up after max_attempts")
            _notify(f"Gave up on dump {did} after {tries} failed attempts")
            raise DumpsaverError(
                f"gave up after {tries} failed attempts to save dump {did}",
                hint="fix the cause (see dumpsaver status), then run dumpsaver save --force",
                exit_code=EXIT_GAVE_UP,
            )
        if a.stdout:
            return _save_stdout(ctx, cand, dump)
        _notify(f"Saving dump {did}")
        try:
            res = save_mod.save(
                ctx.cfg, cand, dump, mem_path=ctx.mem, dest=ctx.dest, fmt_name=a.format,
                keep=a.keep, wait=a.wait, progress=_Bar(),
                on_event=lambda kind, msg, **f: _event(kind, msg, DUMP_ID=did, **f),
            )
        except DumpsaverError as e:
            tries = state.record_failure(ctx.state_dir, did, e.message)
            e.message += f" (attempt {tries} of {ctx.cfg.max_attempts})"
            if _under_systemd():  # on a terminal the error line below says it all
                _event("failed", f"could not save dump {did}: {e.message}", DUMP_ID=did,
                       REASON=e.message, ATTEMPT=tries)
            _notify(f"Failed to save dump {did}: {e.message}")
            raise
        state.clear(ctx.state_dir)
    finally:
        mem.close()
    print(f"dumpsaver: {res.status}: {res.dump_dir}")
    _notify(f"{res.status.capitalize()} dump {did} in {res.dump_dir}")
    code = EXIT_OK if res.status in ("saved", "already-saved") else EXIT_INCOMPLETE
    from dumpsaver import selftest

    if selftest.is_selftest(ctx.state_dir, did):
        print("dumpsaver: that was the test dump of 'dumpsaver test': no restart needed")
    elif not a.no_restart and ctx.cfg.restart != "continue" and not a.keep:
        _restart(ctx.cfg.restart, did)
    return code


def _save_stdout(ctx: Ctx, cand: Any, dump: Any) -> int:
    """``save --stdout``: the flattened kdump-compressed stream, for a pipe to another
    machine (``| ssh host 'makedumpfile -R vmcore'``).  Nothing durable is known here,
    so the dump stays in memory unless --release is given."""
    from dumpsaver.writers import flat

    if sys.stdout.isatty():
        raise DumpsaverError("refusing to write a binary dump to a terminal",
                             hint="pipe it: dumpsaver save --stdout | makedumpfile -R FILE")
    sys.stdout.flush()
    bar = _Bar() if sys.stderr.isatty() else None
    written, scan = flat.stream_save(cand, dump, sys.stdout.fileno(), mem_path=ctx.mem,
                                     release=ctx.args.release, progress=bar)
    incomplete = dump.header.truncated or scan.nr_damaged or not dump.meta_ok
    kept = "released" if ctx.args.release else "kept in memory"
    print(f"dumpsaver: streamed {written.pages} pages ({human(written.size)}) to stdout"
          f"{' INCOMPLETE' if incomplete else ''}; the dump is {kept}", file=sys.stderr)
    return EXIT_INCOMPLETE if incomplete else EXIT_OK


def _restart(action: str, dump_id: str = "") -> None:
    try:
        from dumpsaver import restart
    except ImportError:
        log.warning("restart support is not installed; continuing the boot")
        return
    _event("restart-requested", f"requesting a clean {action} from systemd", ACTION=action,
           **({"DUMP_ID": dump_id} if dump_id else {}))
    for h in logging.getLogger().handlers:
        h.flush()
    os.sync()
    restart.request_restart(action)


# -- status, list, info -----------------------------------------------------------------


def _status(ctx: Ctx) -> dict[str, Any]:
    from dumpsaver import save as save_mod

    out: dict[str, Any] = {"config": ctx.cfg.source, "dump_dir": str(ctx.dest)}
    areas = []
    waiting: dict[str, Any] | None = None
    try:
        cands = ctx.candidates()
    except DumpsaverError as e:
        cands = []
        out["locate_error"] = e.message
    for cand in cands:
        entry: dict[str, Any] = {
            "method": cand.method, "source": cand.source,
            "ranges": [[r.start, r.end] for r in cand.ranges], "header": cand.header,
            "release": cand.release_action,
        }
        try:
            mem, dump = save_mod.open_dump(cand, ctx.mem)
        except DumpsaverError as e:
            entry["dump"] = clean_text(e.message, 300)
        else:
            with mem:
                h = dump.header
                entry["dump"] = "waiting"
                if waiting is None:
                    waiting = {
                        "dump_id": str(h.dump_id),
                        "crash_time": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                    time.gmtime(h.crash_time_ns / 1e9)),
                        "panic": clean_text(dump.meta.panic, 300),
                        "bytes_in_memory": h.dir_offset + h.dir_bytes,
                        "pages": h.nr_entries,
                        "memory_bytes": h.mem_pages * h.page_size,
                        "truncated_at_panic": h.truncated,
                    }
        areas.append(entry)
    out["areas"] = areas
    out["waiting"] = waiting
    saved = save_mod.saved_dumps(ctx.dest)  # read once: listed here, verified below
    out["dumps"] = [_summary(n, i) for n, i in saved]
    try:
        st = os.statvfs(ctx.dest)
        out["free_bytes"] = st.f_bavail * st.f_frsize
    except OSError:
        out["free_bytes"] = None
    out["minfree"] = ctx.cfg.minfree
    out["failed_attempts"] = state.load(ctx.state_dir) or None
    out["max_attempts"] = ctx.cfg.max_attempts
    out["restart"] = ctx.cfg.restart
    from dumpsaver import selftest

    rec = selftest.pending(ctx.state_dir)
    if rec is not None:
        v = selftest.verify(rec, [(ctx.dest / n, i) for n, i in saved])
        out["selftest"] = {"ok": v.ok, "result": v.text, "dump_id": rec.get("dump_id")}
    else:
        out["selftest"] = None
    from dumpsaver import arm

    out["armed"] = arm.armed_state(estimate=True).as_dict()
    out["unit"] = None
    try:
        from dumpsaver import restart

        out["unit"] = restart.unit_last_run()
    except Exception:  # no systemd here, or an old pystemd: status still works
        out["unit"] = None
    return out


def cmd_status(ctx: Ctx) -> int:
    s = _status(ctx)
    if ctx.args.json:
        print(json.dumps(s, indent=1, default=str))
        return EXIT_OK
    p = print
    p(f"config:      {s['config']}")
    if not s["areas"]:
        p("dump area:   none found" + (f" ({s['locate_error']})" if "locate_error" in s else
                                       " (no mcore sysfs interface, memmap= or configured region)"))
    for a in s["areas"]:
        rng = ", ".join(f"{x:#x}-{y - 1:#x}" for x, y in a["ranges"][:4])
        p(f"dump area:   {rng} via {a['method']} ({a['source']})")
        p(f"  state:     {a['dump']}")
        p(f"  release:   {a['release']}")
    w = s["waiting"]
    if w:
        trunc = " (TRUNCATED at panic)" if w["truncated_at_panic"] else ""
        p(f"waiting:     dump {w['dump_id']} from {w['crash_time']}, "
          f"{human(w['bytes_in_memory'])} in memory, {w['pages']} pages{trunc}")
        p(f"  panic:     {w['panic']}")
    else:
        p("waiting:     no dump in memory")
    fa = s["failed_attempts"]
    if fa:
        p(f"failed:      {fa.get('count')} of {s['max_attempts']} attempts for dump "
          f"{fa.get('dump_id')}: {clean_text(str(fa.get('reason')), 300)}")
        if isinstance(fa.get("count"), int) and fa["count"] >= s["max_attempts"]:
            p("             no longer trying; fix the cause and run: dumpsaver save --force")
    free = s["free_bytes"]
    p(f"dump dir:    {s['dump_dir']}, " + (f"{human(free)} free, minfree {human(s['minfree'])}"
                                          if free is not None else "does not exist yet"))
    if free is not None and free < s["minfree"]:
        p("             WARNING: free space is below minfree: a dump would not be saved")
    p(f"after save:  {s['restart']}")
    from dumpsaver import arm

    p(f"panic side:  {arm.ArmedState(**s['armed']).line()}")
    t = s["selftest"]
    if t:
        p(f"self-test:   {'PASSED' if t['ok'] else 'NOT PASSED'}: {t['result']}")
    u = s["unit"]
    if u:
        p(f"last run:    {u.get('unit')}: {u.get('active_state')} ({u.get('sub_state')}), "
          f"result {u.get('result', '?')}, exit status {u.get('exec_main_status', '?')}, "
          f"started {u.get('started_at') or 'never'}")
    _print_dumps(s["dumps"])
    return EXIT_OK


def _print_dumps(dumps: Sequence[dict[str, Any]]) -> None:
    if not dumps:
        print("saved dumps: none")
        return
    print(f"saved dumps: {len(dumps)}")
    for d in dumps:
        mark = "complete" if d["complete"] else "INCOMPLETE"
        size = human(d["size"]) if isinstance(d["size"], int) else "?"
        print(f"  {d['id']}  {size:>10}  {mark:<10}  {d['panic']}")


def cmd_list(ctx: Ctx) -> int:
    dumps = _status_dumps(ctx)
    if ctx.args.json:
        print(json.dumps(dumps, indent=1))
    else:
        _print_dumps(dumps)
    return EXIT_OK


def _summary(name: str, info: dict[str, Any]) -> dict[str, Any]:
    """One saved dump as status and list show it (every string escaped)."""
    return {"id": clean_text(name, 200), "crash_time": info.get("crash_time"),
            "panic": clean_text(str(info.get("panic", "")), 300), "size": info.get("file_size"),
            "complete": info.get("complete"), "format": info.get("format")}


def _status_dumps(ctx: Ctx) -> list[dict[str, Any]]:
    from dumpsaver import save as save_mod

    return [_summary(n, i) for n, i in save_mod.saved_dumps(ctx.dest)]


def cmd_info(ctx: Ctx) -> int:
    from dumpsaver import save as save_mod

    want = ctx.args.id
    matches = [(n, i) for n, i in save_mod.saved_dumps(ctx.dest)
               if n == want or n.startswith(want) or i.get("dump_id") == want]
    if not matches:
        raise DumpsaverError(f"no saved dump {clean_text(want, 100)!r} in {ctx.dest}",
                             hint="dumpsaver list shows the saved dumps")
    if len(matches) > 1:
        raise DumpsaverError(f"{clean_text(want, 100)!r} matches {len(matches)} dumps",
                             hint="give more of the name")
    name, info = matches[0]
    if ctx.args.json:
        print(json.dumps(info, indent=1))
        return EXIT_OK
    for k, v in info.items():
        text = json.dumps(v) if isinstance(v, dict | list) else str(v)
        print(f"{clean_text(str(k), 40) + ':':<22}{clean_text(text, 2000)}")
    print(f"{'path:':<22}{clean_text(str(ctx.dest / name), 1000)}")
    return EXIT_OK


# -- test -------------------------------------------------------------------------------


def cmd_test(ctx: Ctx) -> int:
    from dumpsaver import selftest

    cands = [c for c in ctx.candidates() if c.method != "sysfs"]
    if not cands:
        raise DumpsaverError(
            "no reserved region to test with",
            hint="boot with memmap=16M$0x30000000 (or name a region in the configuration)",
        )
    from dumpsaver import arm

    if arm.disarm():  # the module maps the region: no second writer beside it
        print("dumpsaver: disarmed the panic-side module (the next boot re-arms it)")
    rec = selftest.start(cands[0], ctx.mem, ctx.state_dir, memory=parse_size(ctx.args.memory))
    print(f"dumpsaver: wrote test dump {rec['dump_id']} ({rec['saved_pages']} pages) into "
          f"{cands[0].source}")
    if ctx.args.no_reboot:
        print("dumpsaver: now warm-reboot; then 'dumpsaver status' shows the result")
        return EXIT_OK
    _restart("reboot")
    return EXIT_OK


# -- simulate ---------------------------------------------------------------------------


def cmd_simulate(ctx: Ctx) -> int:
    from dumpsaver import simulate
    from dumpsaver.codecs import Codec

    a = ctx.args
    region = None
    if a.target_region:
        start, _, size = a.target_region.partition(":")
        region = (parse_size(start, allow_zero=True), parse_size(size or "0"))
    try:
        codec = Codec[a.codec.upper()]
    except KeyError:
        raise DumpsaverError(f"unknown codec {a.codec!r}", hint="zlib, zstd or lz4",
                             exit_code=EXIT_USAGE) from None
    from dumpsaver.format import PageClass

    try:
        names = [n.strip().upper() for n in a.exclude.split(",") if n.strip()]
        excluded = frozenset(PageClass[n] for n in names)
    except KeyError as e:
        raise DumpsaverError(f"unknown page class {e.args[0].lower()!r}", exit_code=EXIT_USAGE,
                             hint=", ".join(c.label for c in PageClass)) from None
    if PageClass.LOCKED in excluded:
        raise DumpsaverError("locked pages cannot be excluded (they are never dump space)",
                             exit_code=EXIT_USAGE)
    m = simulate.simulate(
        a.into, memory=parse_size(a.memory), profile=a.profile, seed=a.seed, codec=codec,
        panic=a.panic, target_mem=a.target_mem, target_region=region, excluded=excluded,
    )
    print(f"simulated a {a.memory} {a.profile} machine (seed {a.seed}): "
          f"{m['saved_pages']} pages saved in {human(int(str(m['compressed_bytes'])))} "
          f"({a.codec}); files in {a.into}")
    return EXIT_OK


# -- main -------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dumpsaver",
        description="Save an in-memory kernel crash dump to disk early in the next boot.",
        epilog="exit codes: 0 ok, 1 failure, 2 usage or config, 3 no dump (--check), "
        "4 saved incomplete, 5 not enough space (dump kept), 6 corrupt header (nothing "
        "saved), 7 another saver is running, 8 gave up after max_attempts",
    )
    p.add_argument("--version", action="version", version=f"dumpsaver {__version__}")
    p.add_argument("--config", type=Path, help="configuration file "
                   f"(default: {config_mod.DEFAULT_PATH})")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("save", help="save a dump waiting in memory (the boot job)")
    _add_location(s)
    s.add_argument("--format", choices=("elf", "kdump"), help="output format (default: format)")
    s.add_argument("--no-restart", action="store_true", help="do not reboot after saving")
    s.add_argument("--keep", action="store_true", help="do not release the dump after saving")
    s.add_argument("--force", action="store_true",
                   help="save even when the header checksum fails or max_attempts is reached")
    s.add_argument("--stdout", action="store_true",
                   help="stream the dump to standard output in makedumpfile's flattened form "
                   "(makedumpfile -R rebuilds it); the dump stays in memory")
    s.add_argument("--release", action="store_true",
                   help="with --stdout: release the dump once the last byte was written")
    s.add_argument("--check", action="store_true",
                   help="only check: exit 0 if a dump is waiting, 3 if not")
    s.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another saver to finish (default: refuse)")
    s.set_defaults(func=cmd_save)

    s = sub.add_parser("status", help="where the dump area is, what is waiting, what was saved")
    _add_location(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("list", help="list saved dumps")
    s.add_argument("--dest", type=Path)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("info", help="show one saved dump")
    s.add_argument("id", help="dump name (or a prefix of it) or dump id")
    s.add_argument("--dest", type=Path)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("test", help="write a test dump into the reserved region and "
                       "warm-reboot: the next boot's status shows whether it came back intact")
    _add_location(s)
    s.add_argument("--memory", default="64M", help="simulated machine size (default: %(default)s)")
    s.add_argument("--no-reboot", action="store_true", help="write the dump, do not reboot")
    s.set_defaults(func=cmd_test)

    s = sub.add_parser("simulate", help="crash a simulated machine (for tests and trials)")
    s.add_argument("--memory", default="512M", help="memory size (default: %(default)s)")
    s.add_argument("--profile", default="idle", help="idle, busy or sparse (default: %(default)s)")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--codec", default="zlib", help="zlib, zstd or lz4 (default: %(default)s)")
    s.add_argument("--panic", default="sysrq triggered crash", help="the panic string")
    s.add_argument("--exclude", default="free,user_anon,user_shared,file_cache",
                   help="page classes not saved, like makedumpfile's dump level; they are also "
                   "where the dump goes (default: %(default)s)")
    s.add_argument("--into", type=Path, required=True, help="output directory")
    s.add_argument("--target-mem", help="write the dump into this memory device (/dev/mem)")
    s.add_argument("--target-region", metavar="START:SIZE",
                   help="the reserved region of --target-mem to write into")
    s.set_defaults(func=cmd_simulate)

    from dumpsaver import arm

    arm.add_parsers(sub, _add_location)
    return p


def _setup_logging(debug: bool) -> None:
    try:
        from dumpsaver import journal
    except ImportError:
        level = os.environ.get("SYSTEMD_LOG_LEVEL", "debug" if debug else "info").upper()
        logging.basicConfig(level=getattr(logging, level, logging.INFO),
                            format="dumpsaver: %(message)s")
        return
    journal.setup_logging(debug)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    _setup_logging(args.debug)
    try:
        return int(args.func(Ctx(args)))
    except DumpsaverError as e:
        if args.debug:
            raise
        msg = clean_text(e.message, 2000)
        print(f"error: {msg}" + (f" (hint: {e.hint})" if e.hint else ""), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the last resort: one line, never a traceback at boot
        if args.debug:
            raise
        print(f"error: internal error: {type(e).__name__}: {clean_text(str(e), 500)} "
              "(hint: rerun with --debug and report it)", file=sys.stderr)
        return EXIT_FAILURE


__all__ = ["EXIT_CORRUPT", "main"]
