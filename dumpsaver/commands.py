"""The dumpsaver command: parse, call the engine, print.  The one place where errors
become messages and exit codes.  The entry point is dumpsaver.cli (a no-dump fast
path first).

Each subcommand is a handler registered with ``@subcommand(name, help, options)``;
``options`` adds its arguments.  Adding one is a function and a decorator here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from dumpsaver import __version__, arm, boot, journal, paths, present
from dumpsaver import config as config_mod
from dumpsaver import status as status_mod
from dumpsaver.errors import (
    EXIT_FAILURE,
    EXIT_USAGE,
    DumpsaverError,
    Exit,
    NoPermissionError,
    exit_codes_text,
)
from dumpsaver.sanitize import clean_text
from dumpsaver.save import SaveStatus
from dumpsaver.sizes import human, parse_size
from dumpsaver.upload import cli as upload_cli
from dumpsaver.writers import OutputFormat

log = logging.getLogger("dumpsaver")


@dataclass
class Ctx:
    args: argparse.Namespace
    cfg: config_mod.Config

    @property
    def where(self) -> boot.Where:
        a, cfg = self.args, self.cfg
        return boot.Where(
            mem=str(getattr(a, "mem", None) or cfg.mem_device),
            sysfs=getattr(a, "sysfs", None) or cfg.sysfs,
            cmdline=getattr(a, "cmdline", None),
            iomem=getattr(a, "iomem", None) or Path(paths.IOMEM),
            dest=getattr(a, "dest", None) or cfg.dump_dir,
            state_dir=getattr(a, "state_dir", None) or cfg.state_dir,
        )


Handler = Callable[[Ctx], int]
Options = Callable[[argparse.ArgumentParser], None]
_SUBCOMMANDS: list[tuple[str, str, Options, Handler]] = []


def subcommand(name: str, help: str, options: Options = lambda p: None) -> Callable[
        [Handler], Handler]:  # fmt: skip
    def register(handler: Handler) -> Handler:
        _SUBCOMMANDS.append((name, help, options, handler))
        return handler

    return register


def _location(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where to look (defaults from the configuration)")
    g.add_argument("--mem", help=f"physical memory device (default: mem_device, {paths.MEM})")
    g.add_argument("--sysfs", type=Path, help="the kernel's mcore sysfs directory")
    g.add_argument("--cmdline", type=Path, default=Path(paths.CMDLINE),
                   help="kernel command line to search for memmap= (default: %(default)s)")
    g.add_argument("--iomem", type=Path, default=Path(paths.IOMEM),
                   help="resource map to check reservations against (default: %(default)s)")
    g.add_argument("--dest", type=Path,
                   help=f"dump directory (default: dump_dir, {paths.DUMP_DIR})")
    g.add_argument("--state-dir", type=Path, help="state directory (default: state_dir)")


def _dest_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dest", type=Path)
    p.add_argument("--json", action="store_true")


# -- save -------------------------------------------------------------------------------


def _duration(s: float) -> str:
    s = int(s + 0.5)
    return f"{s // 60}:{s % 60:02d}"


class _Bar:
    """A progress bar on a terminal (rate, elapsed, ETA); sd_notify STATUS= progress under
    systemd.  The rate counts the memory saved (pages of the machine's page size)."""

    def __init__(self, page_size: int = os.sysconf("SC_PAGE_SIZE")) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.start = time.monotonic()
        self.page_size = page_size

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.5 and done != total:
            return
        self.last = now
        pct = 100 * done // max(total, 1)
        elapsed = now - self.start
        rate = done * self.page_size / max(elapsed, 1e-6)  # bytes/s
        eta = (total - done) * self.page_size / rate if rate > 0 else 0.0
        journal.notify_status(f"Saving dump: {pct}% ({done}/{total} pages, "
                              f"{human(int(rate))}/s)")
        if self.tty:
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\rsaving [{bar:<25}] {pct:3d}% {human(int(rate))}/s "
                             f"{_duration(elapsed)} elapsed, ETA {_duration(eta)} ")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _save_options(s: argparse.ArgumentParser) -> None:
    _location(s)
    s.add_argument("--format", choices=[str(f) for f in OutputFormat],
                   help="output format (default: the configuration's format setting, "
                   "elf unless set)")
    r = s.add_mutually_exclusive_group()
    r.add_argument("--restart", action="store_true", default=None,
                   help="request the configured restart after a complete save (the default "
                   "only when run as the boot service)")
    r.add_argument("--no-restart", dest="restart", action="store_false",
                   help="never request a restart (the default when run by hand)")
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


@subcommand("save", "save a dump waiting in memory (the boot job)", _save_options)
def cmd_save(ctx: Ctx) -> int:
    a = ctx.args
    if a.stdout:  # (the stream itself refuses a terminal)
        sys.stdout.flush()
    opts = boot.Options(fmt_name=a.format, keep=a.keep, force=a.force, check=a.check,
                        restart=a.restart, wait=a.wait,
                        stdout_fd=sys.stdout.fileno() if a.stdout else None,
                        release_stream=a.release)
    bar = _Bar() if not a.stdout or sys.stderr.isatty() else None
    out = boot.run(ctx.cfg, ctx.where, opts, progress=bar)
    if out.status is None and not a.check:
        for n in out.notes:
            log.info("%s", n)
        print("dumpsaver: no dump in memory, nothing to do")
    elif a.check:
        if out.status is None and out.dump_id:
            print(f"dump {out.dump_id} waiting ({out.source})")
    elif out.status == SaveStatus.ALREADY_SAVED and out.dump_dir is None:  # by another saver
        print(f"dumpsaver: {out.status}: {'; '.join(out.notes)}",
              file=sys.stderr if a.stdout else sys.stdout)
    elif a.stdout:
        kept = "released" if a.release else "kept in memory"
        incomplete = " INCOMPLETE" if out.exit == Exit.INCOMPLETE else ""
        print(f"dumpsaver: streamed {out.streamed_pages} pages ({human(out.streamed_bytes)}) "
              f"to stdout{incomplete}; the dump is {kept}", file=sys.stderr)
    else:
        took = ""
        if out.file_size and out.duration_s > 0:
            took = (f" ({human(out.file_size)} in {out.duration_s:.1f} s, "
                    f"{human(int(out.file_size / out.duration_s))}/s)")
        print(f"dumpsaver: {out.status}: {out.dump_dir}{took}")
        for reason in out.incomplete_reasons:
            print(f"dumpsaver: INCOMPLETE because {clean_text(reason, 500)}")
        if out.dropped_at_panic:
            print("dumpsaver: hint: enlarge the dump area (the memmap= size, or the kernel's "
                  "mcore size) so that the next crash fits")
        if out.selftest:
            print("dumpsaver: that was the test dump of 'dumpsaver test': no restart needed")
        if out.restart_skipped is not None:
            print(f"dumpsaver: run by hand, so no {out.restart_skipped} was requested "
                  "(--restart requests it)")
        if out.restart is not None:
            try:
                boot.restart_now(out.restart, out.dump_id)
            except DumpsaverError as e:  # the dump is saved: say so, keep its exit code
                _error(e)
                return out.exit if out.exit != Exit.OK else e.exit_code
    return out.exit


# -- status, list, info, dmesg, debug -------------------------------------------------

SETUP_HINT = ("reserve one: boot with memmap=SIZE$START (e.g. memmap=256M$0x30000000, "
              "see dumpsaver(8)) or name a region in the configuration")


def _status_options(s: argparse.ArgumentParser) -> None:
    _location(s)
    s.add_argument("--json", action="store_true", help="print the status as one JSON object")


def _truncation(pages: int, dropped: int) -> str:
    share = 100 * dropped / max(pages + dropped, 1)
    return (f"the panic side ran out of dump space: {dropped} of {pages + dropped} selected "
            f"pages ({share:.0f}%) were not kept")


@subcommand("status", "will a crash be caught? where the dump area is, what is waiting, "
            "what was saved (exit codes for monitoring)", _status_options)
def cmd_status(ctx: Ctx) -> int:
    s = status_mod.collect(ctx.cfg, ctx.where)
    if ctx.args.json:
        print(json.dumps(s.to_json(), indent=1, default=str))
        return s.verdict_exit
    p = print
    p(f"verdict:     {s.verdict}")
    p(f"config:      {s.config}")
    if not s.areas:
        p("dump area:   none found" + (f" ({s.locate_error})" if s.locate_error is not None else
                                       " (no mcore sysfs interface, memmap= or configured region)"))
        p(f"  hint:      {SETUP_HINT}")
    for a in s.areas:
        shown = a.ranges[:4]
        rng = ", ".join(f"{x:#x}-{y - 1:#x}" for x, y in shown)
        more = f" (first {len(shown)} of {len(a.ranges)} ranges)" if len(a.ranges) > 4 else ""
        p(f"dump area:   {human(a.size)} in {len(a.ranges)} range"
          f"{'s' if len(a.ranges) != 1 else ''} via {a.method} ({a.source})")
        p(f"  ranges:    {rng}{more}")
        p(f"  state:     {a.dump}")
        if a.access:
            p(f"  access:    {a.access}")
        if a.given_back is not None:
            total = (f" (MemTotal {a.mem_total >> 10} kB, {(a.mem_total - a.given_back) >> 10}"
                     " kB without it)") if a.mem_total and a.given_back else ""
            p(f"  given back: {human(a.given_back)} online as movable RAM{total}"
              + (f"; not movable: {', '.join(a.not_movable[:4])}" if a.not_movable else ""))
        if a.advice:
            p(f"  hint:      {a.advice}")
        p(f"  release:   {a.release}")
    m = s.memory
    if m is not None:
        p(f"memory:      {human(m.total_bytes)} RAM, the dump areas take "
          f"{human(m.dump_area_bytes)} ({100 * (m.dump_area_share or 0):.2f}%)")
    p(f"booted:      {present.when(s.boot_ts)}")
    w = s.waiting
    if w:
        p(f"waiting:     dump {w.dump_id} from {present.when(w.crash_ts)}, "
          f"{human(w.bytes_in_memory)} in memory, {w.pages} pages")
        p(f"  panic:     {w.panic}")
        if w.truncated_at_panic:
            p(f"  WARNING:   truncated: {_truncation(w.pages, w.dropped_at_panic)}; "
              "enlarge the dump area")
    else:
        p("waiting:     no dump in memory")
    fa = s.failed_attempts
    if fa:
        p(f"failed:      {fa.get('count')} of {s.max_attempts} attempts for dump "
          f"{fa.get('dump_id')}: {clean_text(str(fa.get('reason')), 300)}")
        if isinstance(fa.get("count"), int) and fa["count"] >= s.max_attempts:
            p(f"             no longer trying; {boot.GAVE_UP_HINT}")
    fs = s.filesystem
    if fs is None:
        p(f"dump dir:    {s.dump_dir}, does not exist yet")
    else:
        on = f" ({fs.fstype} on {fs.device})" if fs.fstype else ""
        p(f"dump dir:    {s.dump_dir}, {human(fs.free_bytes)} free, minfree "
          f"{human(s.minfree)}{on}")
        if fs.free_bytes < s.minfree:
            p("             WARNING: free space is below minfree: a dump would not be saved")
    p(f"after save:  {s.restart} (only as the boot service; by hand: --restart)")
    if s.panic_side is not None:
        p(f"panic side:  {arm.ArmedState(**s.panic_side).line()}")
    t = s.selftest
    if t:
        p(f"self-test:   {t.verdict}: {t.result}")
    u = s.unit
    if u:
        p(f"last run:    {u.get('unit')}: {u.get('active_state')} ({u.get('sub_state')}), "
          f"result {u.get('result', '?')}, exit status {u.get('exec_main_status', '?')}, "
          f"started {u.get('started_at') or 'never'}")
    if s.dumps:
        last = s.dumps[-1]
        p(f"saved dumps: {len(s.dumps)}, the last {last.id} "
          f"({present.state(last)}, {present.when(status_mod.crash_ts(last))})")
        if last.dropped_at_panic:
            p(f"  WARNING:   the last dump was truncated: "
              f"{_truncation(last.saved_pages, last.dropped_at_panic)}; enlarge the dump area "
              "(memmap= size or the kernel's mcore size) so that the next crash fits")
    else:
        p("saved dumps: none")
    return s.verdict_exit


def _time_arg(text: str) -> float:
    """--since/--until: 'YYYY-MM-DD[ HH:MM[:SS]]' (local time), 'today', 'yesterday', or
    an age like '-2h', '30min', '7d' (that long ago)."""
    t = text.strip().lower()
    now = time.time()
    if t in ("now", "today", "yesterday"):
        if t == "now":
            return now
        midnight = time.mktime((*time.localtime(now)[:3], 0, 0, 0, 0, 0, -1))
        return midnight - (86400 if t == "yesterday" else 0)
    for unit, size in (("min", 60), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)):
        num = t.lstrip("-").removesuffix(" ago")
        if num.endswith(unit) and num[: -len(unit)].strip().isdigit():
            return now - int(num[: -len(unit)]) * size
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad time {text!r} (YYYY-MM-DD [HH:MM[:SS]], today, yesterday, or -2h)"
        ) from None


def _select_options(p: argparse.ArgumentParser, *, many: bool) -> None:
    """Which saved dumps: shared by list, info, dmesg and debug."""
    p.add_argument("match", nargs="?", metavar="ID",
                   help="a dump name or a prefix of it, a dump id, or 'latest'"
                   + ("" if many else " (default: the newest)"))
    p.add_argument("--dest", type=Path, help=f"dump directory (default: dump_dir, "
                   f"{paths.DUMP_DIR})")
    p.add_argument("-S", "--since", type=_time_arg, metavar="TIME",
                   help="only dumps of crashes at or after TIME")
    p.add_argument("-U", "--until", type=_time_arg, metavar="TIME",
                   help="only dumps of crashes at or before TIME")


def _list_options(p: argparse.ArgumentParser) -> None:
    _select_options(p, many=True)
    p.add_argument("-r", "--reverse", action="store_true", help="newest first")
    p.add_argument("-n", type=int, metavar="N", dest="lines",
                   help="only the N newest (the last N lines)")
    p.add_argument("--json", action="store_true",
                   help="print the dumps as a JSON array (all fields, machine form)")
    upload_cli.add_list_options(p)


def _selected(ctx: Ctx) -> list[status_mod.SavedDump]:
    a = ctx.args
    return status_mod.select(status_mod.saved(ctx.where.dest), a.match, since=a.since,
                             until=a.until)


@subcommand("list", "list saved dumps, oldest first", _list_options)
def cmd_list(ctx: Ctx) -> int:
    a = ctx.args
    if a.remote:
        return upload_cli.list_remote(ctx)
    if a.lines is not None and a.lines < 0:
        raise DumpsaverError("-n must not be negative", exit_code=Exit.USAGE)
    dumps = _selected(ctx)
    if a.lines is not None:
        dumps = dumps[-a.lines:] if a.lines else []
    if a.reverse:
        dumps.reverse()
    if a.json:
        print(json.dumps([asdict(d) for d in dumps], indent=1))
        return Exit.OK
    if not dumps:
        print(f"no saved dumps{' match' if a.match or a.since or a.until else ''} in "
              f"{ctx.where.dest}", file=sys.stderr)
        return Exit.OK
    for line in present.table(dumps, tty=sys.stdout.isatty()):
        print(line)
    return Exit.OK


def _one(ctx: Ctx) -> status_mod.SavedDump:
    """The one dump info, dmesg and debug act on: the newest match (the newest of all
    without ID); a prefix matching several names is refused, as ambiguous."""
    dumps, want = _selected(ctx), ctx.args.match
    if not dumps:
        what = f" {clean_text(want, 100)!r}" if want else ""
        raise DumpsaverError(f"no saved dump{what} in {ctx.where.dest}",
                             hint="dumpsaver list shows the saved dumps")
    if want and want != "latest" and len({d.id for d in dumps}) > 1 \
            and not any(d.id == want for d in dumps):
        raise DumpsaverError(f"{clean_text(want, 100)!r} matches {len(dumps)} dumps",
                             hint="give more of the name, or 'latest'", exit_code=Exit.USAGE)
    exact = [d for d in dumps if d.id == want]
    return exact[0] if exact else dumps[-1]


def _info_options(s: argparse.ArgumentParser) -> None:
    _select_options(s, many=False)
    s.add_argument("--json", action="store_true", help="print info.json as it is")


@subcommand("info", "show one saved dump (default: the newest)", _info_options)
def cmd_info(ctx: Ctx) -> int:
    from dumpsaver.catalogue import saved_dumps

    d = _one(ctx)
    info = dict(saved_dumps(ctx.where.dest))[d.id]
    if ctx.args.json:
        print(json.dumps(info, indent=1))
        return Exit.OK
    for line in present.info_lines(info, str(ctx.where.dest / d.id)):
        print(line)
    return Exit.OK


@subcommand("dmesg", "print the kernel log saved with a dump (default: the newest)",
            lambda s: _select_options(s, many=False))
def cmd_dmesg(ctx: Ctx) -> int:
    from dumpsaver.catalogue import DMESG

    d = _one(ctx)
    path = ctx.where.dest / d.id / DMESG
    try:
        data = path.read_bytes()
    except PermissionError as e:
        raise NoPermissionError(str(path), e) from None
    except OSError as e:
        raise DumpsaverError(f"cannot read {path}: {e.strerror}") from None
    sys.stdout.buffer.write(data)  # written escaped by the save
    return Exit.OK


DEBUGGERS = {"crash": "crash", "gdb": "gdb", "drgn": "python3-drgn"}  # tool -> Debian package


def vmlinux_for(release: str, root: Path = Path("/")) -> Path | None:
    """The crashed kernel's vmlinux where distributions install debug symbols."""
    for rel in (f"usr/lib/debug/boot/vmlinux-{release}",
                f"usr/lib/debug/lib/modules/{release}/vmlinux"):
        if (root / rel).is_file():
            return root / rel
    return None


def _debug_options(s: argparse.ArgumentParser) -> None:
    _select_options(s, many=False)
    s.add_argument("--debugger", choices=sorted(DEBUGGERS), default="crash",
                   help="the debugger to start (default: %(default)s)")
    s.add_argument("--vmlinux", type=Path, help="the crashed kernel's vmlinux with debug "
                   "symbols (default: /usr/lib/debug/boot/vmlinux-RELEASE or "
                   "/usr/lib/debug/lib/modules/RELEASE/vmlinux)")


@subcommand("debug", "start crash (or gdb, drgn) on a saved dump (default: the newest)",
            _debug_options)
def cmd_debug(ctx: Ctx) -> int:
    import shutil

    a = ctx.args
    d = _one(ctx)
    core = ctx.where.dest / d.id / "vmcore"
    vmlinux = a.vmlinux or vmlinux_for(d.kernel)
    if vmlinux is None or not vmlinux.is_file():
        where = f"{vmlinux} is not a file" if vmlinux else (
            f"no vmlinux for kernel {d.kernel or '?'} in /usr/lib/debug")
        raise DumpsaverError(where, hint=f"install linux-image-{d.kernel or 'RELEASE'}-dbg "
                             "(Fedora: kernel-debuginfo), or give --vmlinux")
    exe = shutil.which(a.debugger)
    if exe is None:
        raise DumpsaverError(f"{a.debugger} is not installed",
                             hint=f"apt install {DEBUGGERS[a.debugger]}")
    argv = {"crash": [exe, str(vmlinux), str(core)],
            "gdb": [exe, str(vmlinux), str(core)],
            "drgn": [exe, "-c", str(core), "-s", str(vmlinux)]}[a.debugger]
    sys.stdout.flush()
    os.execv(exe, argv)


# -- test -------------------------------------------------------------------------------


def _test_options(s: argparse.ArgumentParser) -> None:
    _location(s)
    s.add_argument("--memory", default="64M", help="simulated machine size (default: %(default)s)")
    s.add_argument("--no-reboot", action="store_true", help="write the dump, do not reboot")
    s.add_argument("-y", "--yes", action="store_true",
                   help="do not ask before rebooting (as kdumpctl test asks for 'yes')")


def _confirm(what: str) -> None:
    """Ask for "yes" on a terminal (kdumpctl test's manner); refuse without one."""
    if not sys.stdin.isatty():
        raise DumpsaverError("not asking without a terminal", exit_code=Exit.USAGE,
                             hint="--yes confirms, --no-reboot leaves the reboot to you")
    print(what, file=sys.stderr)
    print("Type 'yes' to continue: ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip() != "yes":
        raise DumpsaverError("not confirmed: nothing written, no reboot")


subcommand("upload", upload_cli.HELP, upload_cli.options)(upload_cli.run)


def _arm_options(p: argparse.ArgumentParser) -> None:
    _location(p)
    arm.options(p)


subcommand("arm", arm.ARM_HELP, _arm_options)(arm.cmd_arm)
subcommand("disarm", arm.DISARM_HELP)(arm.cmd_disarm)


@subcommand("test", "write a test dump into the reserved region and warm-reboot: the next "
            "boot's status shows whether it came back intact", _test_options)
def cmd_test(ctx: Ctx) -> int:
    from dumpsaver import selftest
    from dumpsaver.locate import LocateMethod
    from dumpsaver.restart import RestartAction

    where = ctx.where
    found = where.candidates(ctx.cfg)
    cands = [c for c in found if c.method not in (LocateMethod.SYSFS, LocateMethod.PMEM)]
    if not cands and any(c.method == LocateMethod.PMEM for c in found):
        raise DumpsaverError(
            "memmap=SIZE!ADDR memory is RAM in use between crashes: the self-test writes "
            "only into a memmap=SIZE$ADDR reservation",
            hint="test the whole chain with a real crash: echo c > /proc/sysrq-trigger")
    if not cands:
        raise DumpsaverError(
            "no reserved region to test with",
            hint="boot with memmap=16M$0x30000000 (or name a region in the configuration)",
        )
    if not (ctx.args.no_reboot or ctx.args.yes):
        _confirm("dumpsaver test writes a test dump into the reserved region and then "
                 "REBOOTS this machine at once.")
    if arm.disarm():  # the module maps the region: no second writer beside it
        print("dumpsaver: disarmed the panic-side module (the next boot re-arms it)")
    rec = selftest.start(cands[0], where.mem, where.state_dir,
                         memory=parse_size(ctx.args.memory))
    print(f"dumpsaver: wrote test dump {rec['dump_id']} ({rec['saved_pages']} pages) into "
          f"{cands[0].source}")
    if ctx.args.no_reboot:
        print("dumpsaver: now warm-reboot; then 'dumpsaver status' shows the result")
        return Exit.OK
    boot.restart_now(RestartAction.REBOOT)
    return Exit.OK


# -- simulate ---------------------------------------------------------------------------


def _simulate_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--memory", default="512M", help="memory size (default: %(default)s)")
    s.add_argument("--profile", default="idle", help="idle, busy or sparse (default: %(default)s)")
    s.add_argument("--seed", type=int, default=1,
                   help="chooses the machine's contents (default: %(default)s)")
    s.add_argument("--codec", default="zlib", help="zlib, zstd or lz4 (default: %(default)s)")
    s.add_argument("--panic", default="sysrq triggered crash", help="the panic string")
    s.add_argument("--exclude", default="free,user_anon,user_shared,file_cache",
                   help="page classes not saved, like makedumpfile's dump level; they are also "
                   "where the dump goes (default: %(default)s)")
    s.add_argument("--into", type=Path, required=True, help="output directory")
    s.add_argument("--target-mem", help=f"write the dump into this memory device ({paths.MEM})")
    s.add_argument("--target-region", metavar="START:SIZE",
                   help="the reserved region of --target-mem to write into")


@subcommand("simulate", "crash a simulated machine (for tests and trials)", _simulate_options)
def cmd_simulate(ctx: Ctx) -> int:
    from dumpsaver import simulate
    from dumpsaver.codecs import Codec
    from dumpsaver.format import PageClass

    a = ctx.args
    region = None
    try:
        memory = parse_size(a.memory)
        if a.target_region:
            start, _, size = a.target_region.partition(":")
            region = (parse_size(start, allow_zero=True), parse_size(size or "0"))
    except DumpsaverError as e:
        e.exit_code = Exit.USAGE  # a bad value on the command line
        raise
    if a.profile not in simulate.PROFILES:
        raise DumpsaverError(f"unknown profile {a.profile!r}", exit_code=Exit.USAGE,
                             hint=", ".join(simulate.PROFILES))
    if a.into.exists() and not a.into.is_dir():
        raise DumpsaverError(f"{a.into} exists and is not a directory", exit_code=Exit.USAGE,
                             hint="--into names a directory to create or reuse")
    try:
        codec = Codec[a.codec.upper()]
    except KeyError:
        raise DumpsaverError(f"unknown codec {a.codec!r}", hint="zlib, zstd or lz4",
                             exit_code=EXIT_USAGE) from None
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
        a.into, memory=memory, profile=a.profile, seed=a.seed, codec=codec,
        panic=a.panic, target_mem=a.target_mem, target_region=region, excluded=excluded,
    )
    print(f"simulated a {a.memory} {a.profile} machine (seed {a.seed}): "
          f"{m.saved_pages} pages saved in {human(m.compressed_bytes)} "
          f"({a.codec}); files in {a.into}")
    if m.truncated:
        lost = m.selected_pages - m.saved_pages
        print(f"WARNING: truncated at panic: {lost} of {m.selected_pages} selected pages "
              f"({100 * lost / max(m.selected_pages, 1):.0f}%) did not fit in the dump area "
              "and were not kept (a bigger --target-region, or less --memory, fits them)",
              file=sys.stderr)
    return Exit.OK


# -- main -------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dumpsaver",
        description="Save an in-memory kernel crash dump to disk early in the next boot.",
        epilog=exit_codes_text(),
    )
    p.add_argument("--version", action="version", version=f"dumpsaver {__version__}")
    _common(p, argparse.ArgumentParser.add_argument)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help, options, handler in _SUBCOMMANDS:
        s = sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".",
                           epilog=exit_codes_text())
        options(s)
        # the common options after the subcommand too (SUPPRESS: not given there, the
        # value given before it stands)
        _common(s, lambda g, *a, **kw: g.add_argument(*a, **kw, default=argparse.SUPPRESS))
        s.set_defaults(func=handler)
    return p


def _common(p: argparse.ArgumentParser, add: Callable[..., object]) -> None:
    add(p, "--config", type=Path, help="configuration file "
        f"(default: {paths.CONFIG}, or ${paths.CONFIG_ENV})")
    add(p, "--debug", action="store_true", help="show tracebacks and debug logs")


def _error(e: DumpsaverError) -> None:
    msg = clean_text(e.message, 2000)
    print(f"error: {msg}" + (f" (hint: {e.hint})" if e.hint else ""), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    journal.setup_logging(args.debug)
    try:
        code = int(args.func(Ctx(args, config_mod.load(args.config))))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:  # `dumpsaver list | head -1`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the final flush must not fail again
        return Exit.OK
    except DumpsaverError as e:
        if args.debug:
            raise
        _error(e)
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


__all__ = ["main", "parser", "subcommand"]
