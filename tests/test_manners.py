"""Command-line manners (issue 12), each through the real command: who restarts the
machine, answers without root, a closed pipe, operator mistakes, truncation said loudly.
A terminal is a real pty where it matters; "without root" is the user nobody."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dumpsaver import format as fmt
from dumpsaver import paths
from dumpsaver.errors import Exit

from .conftest import REPO, hermetic_config

TRUNCATED = dict(memory=16 << 20, profile="busy", seed=34, min_addr=14 << 20, margin=1 << 20)


def by_hand(*args: str, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """The command as a person runs it: not under systemd (no INVOCATION_ID)."""
    e = {k: v for k, v in os.environ.items()
         if k not in ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET")}
    e[paths.CONFIG_ENV] = str(hermetic_config())
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "dumpsaver", *args], capture_output=True,
                          text=True, env=e, timeout=300, input=stdin, cwd=REPO)


def as_unit(*args: str) -> subprocess.CompletedProcess[str]:
    """As the boot service runs it: INVOCATION_ID set, output not a terminal."""
    return by_hand(*args, env={"INVOCATION_ID": "0123456789abcdef0123456789abcdef"})


def in_pty(*args: str, answer: bytes = b"", env: dict[str, str] | None = None,
           ) -> tuple[int, str]:  # fmt: skip
    """Run in a real pseudo-terminal (stdin, stdout and stderr); type ``answer``."""
    e = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM")}
    e[paths.CONFIG_ENV] = str(hermetic_config())
    e.update(env or {})
    e.setdefault("COLUMNS", "100")
    main, sub = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "dumpsaver", *args], stdin=sub, stdout=sub,
                         stderr=sub, env=e, cwd=REPO, close_fds=True)
    os.close(sub)
    out = b""
    sent = False
    while True:
        r, _, _ = select.select([main], [], [], 60)
        if not r:
            p.kill()
            break
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
        if answer and not sent and b"'yes'" in out:
            os.write(main, answer)
            sent = True
    os.close(main)
    return p.wait(timeout=60), out.decode(errors="replace").replace("\r\n", "\n")


# -- 1. no surprise reboots -----------------------------------------------------------------


def test_save_by_hand_does_not_restart(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """restart: reboot is the default, but a person at a terminal who runs save gets no
    reboot unless --restart: the run says what it did not do."""
    sim = make_sim(memory=8 << 20)
    rc, out = in_pty("save", *sim.cli_args(tmp_path / "d"))
    assert rc == 0, out
    assert "no reboot was requested (--restart requests it)" in out
    assert "requesting a clean" not in out
    assert sim.magic() == fmt.SAVED_MAGIC


def test_incomplete_save_requests_no_restart(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Exit 4 requests no restart, as the boot job and even with --restart (here no PID 1
    could be asked: a request would turn the exit into 1)."""
    sim = make_sim(**TRUNCATED)
    r = as_unit("save", *sim.cli_args(tmp_path / "d"), "--restart")
    assert r.returncode == Exit.INCOMPLETE, r.stderr
    assert "requesting a clean" not in r.stdout + r.stderr
    assert "no reboot" not in r.stdout


def test_dumpsaver_test_asks_for_yes(tmp_path: Path) -> None:
    """Like kdumpctl test: on a terminal it asks and only "yes" goes on; without a terminal
    it refuses (--yes confirms); a "no" writes nothing."""
    cmdline, iomem, mem = tmp_path / "cmdline", tmp_path / "iomem", tmp_path / "mem"
    cmdline.write_text("root=/dev/vda memmap=16M$0x30000000\n")
    iomem.write_text("00100000-2fffffff : System RAM\n30000000-30ffffff : Reserved\n")
    with open(mem, "wb") as f:
        f.truncate(0x31000000)
    where = ["--mem", str(mem), "--cmdline", str(cmdline), "--iomem", str(iomem),
             "--sysfs", str(tmp_path / "nosys"), "--state-dir", str(tmp_path / "state")]
    rc, out = in_pty("test", *where, answer=b"no\n")
    assert rc == Exit.FAILURE and "REBOOTS this machine" in out and "not confirmed" in out, out
    r = by_hand("test", *where, stdin="yes\n")
    assert r.returncode == Exit.USAGE and "--yes" in r.stderr, r.stderr
    with open(mem, "rb") as f:
        f.seek(0x30000000)
        assert f.read(8) == bytes(8)  # nothing written
    assert not (tmp_path / "state").exists()


def test_gave_up_once_and_hint_without_reboot(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=8 << 20)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minfree: 0\nmax_attempts: 1\n")
    args = ["--config", str(cfg), "save", *sim.cli_args(tmp_path / "d")]
    r = by_hand(*args, env={"DUMPSAVER_RAISE_AT": "fsync-core"})
    assert r.returncode == Exit.FAILURE, r.stderr
    r = by_hand(*args)
    assert r.returncode == Exit.GAVE_UP
    assert (r.stdout + r.stderr).count("gave up") == 1, r.stderr
    assert "by hand it does not reboot" in r.stderr
    r = by_hand(*args, "--force")
    assert r.returncode == 0 and "no reboot was requested" in r.stdout, r.stderr


# -- 3. operator mistakes ----------------------------------------------------------------


def test_bad_dest_is_not_an_attempt(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=8 << 20)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minfree: 0\nmax_attempts: 2\n")
    afile = tmp_path / "afile"
    afile.write_text("")
    args = sim.cli_args(tmp_path / "d")
    bad = [a if a != str(tmp_path / "d") else str(afile) for a in args]
    for _ in range(3):
        r = by_hand("--config", str(cfg), "save", *bad)
        assert r.returncode == Exit.FAILURE and "not a directory" in r.stderr, r.stderr
        assert "attempt" not in r.stderr
    assert not (tmp_path / "state" / "attempts.json").exists()
    assert by_hand("--config", str(cfg), "save", *args).returncode == 0
    assert sim.magic() == fmt.SAVED_MAGIC


# -- 2. without root; a closed pipe -------------------------------------------------------


def _nobody_can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root to become nobody"
    if shutil.which("setpriv") is None:
        return "setpriv is missing (util-linux)"
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        sys.executable, "-c", "import dumpsaver"], cwd=REPO,
                       capture_output=True, text=True, check=False)  # fmt: skip
    if r.returncode != 0:
        return f"nobody cannot run {sys.executable} from {REPO}: {r.stderr.strip()[-200:]}"
    return None


@pytest.fixture
def open_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory others can enter (pytest's own are root's 0700)."""
    d = tmp_path_factory.mktemp("open")
    for p in (d, *d.parents):
        if p == Path(tempfile.gettempdir()):
            break
        p.chmod(p.stat().st_mode | 0o011)
    return d


def test_without_root_status_list_info_refuse(open_dir: Path) -> None:
    if reason := _nobody_can_run():
        pytest.skip(reason)
    m, dest = open_dir / "m", open_dir / "dumps"
    assert by_hand("simulate", "--memory", "8M", "--into", str(m)).returncode == 0
    where = ["--mem", str(m / "mem"), "--sysfs", str(m / "sys"), "--cmdline", "/dev/null",
             "--dest", str(dest), "--state-dir", str(open_dir / "state")]
    assert by_hand("save", *where, "--keep").returncode == 0  # dest: 0700, root's
    (m / "mem").chmod(0o600)  # like /dev/mem
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
              "-m", "dumpsaver", "--config", os.devnull]
    for cmd in (["status", *where], ["list", "--dest", str(dest)],
                ["info", "--dest", str(dest)], ["info", "2", "--dest", str(dest)]):
        r = subprocess.run([*nobody, *cmd], cwd=REPO, capture_output=True, text=True,
                           check=False)  # fmt: skip
        assert r.returncode == Exit.NO_PERMISSION, (cmd, r.stdout, r.stderr)
        assert r.stderr.startswith("error: permission denied") and "run as root" in r.stderr
        assert "none" not in r.stdout and "no dump" not in r.stdout, r.stdout


def test_closed_pipe_is_quiet(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`dumpsaver list --json | head -1` and the like: exit 0, nothing on stderr."""
    sim = make_sim(memory=8 << 20)
    dest = tmp_path / "d"
    assert by_hand("save", *sim.cli_args(dest)).returncode == 0
    e = dict(os.environ, **{paths.CONFIG_ENV: str(hermetic_config())})
    for cmd in (["list", "--json", "--dest", str(dest)], ["status", *sim.cli_args(dest)],
                ["info", "--dest", str(dest)], ["dmesg", "--dest", str(dest)]):
        r_fd, w_fd = os.pipe()
        os.close(r_fd)  # the reader is gone before the first byte
        p = subprocess.run([sys.executable, "-m", "dumpsaver", *cmd], stdout=w_fd,
                           stderr=subprocess.PIPE, text=True, env=e, cwd=REPO, check=False)
        os.close(w_fd)
        assert p.returncode == 0 and p.stderr == "", (cmd, p.returncode, p.stderr)


# -- 4. truncation said loudly ------------------------------------------------------------


def test_truncation_is_said(tmp_path: Path) -> None:
    """A dump area too small at panic: simulate warns with the share lost, save says why it
    is INCOMPLETE and what to change, status and list show it."""
    ram, m, dest = tmp_path / "ram", tmp_path / "m", tmp_path / "d"
    with open(ram, "wb") as f:
        f.truncate(64 << 20)
    r = by_hand("simulate", "--memory", "16M", "--profile", "busy", "--seed", "2", "--into",
                str(m), "--target-mem", str(ram), "--target-region", "0x2000000:512K")
    assert r.returncode == 0, r.stderr
    man = json.loads((m / "manifest.json").read_text())
    lost = man["selected_pages"] - man["saved_pages"]
    assert man["truncated"] and lost > 0
    share = f"({100 * lost / man['selected_pages']:.0f}%)"
    assert f"WARNING: truncated at panic: {lost} of {man['selected_pages']}" in r.stderr
    assert share in r.stderr
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("memmap=512K$0x2000000\n")
    iomem = tmp_path / "iomem"
    iomem.write_text("00100000-01ffffff : System RAM\n02000000-0207ffff : Reserved\n")
    where = ["--mem", str(ram), "--sysfs", str(tmp_path / "nosys"), "--cmdline", str(cmdline),
             "--iomem", str(iomem), "--dest", str(dest), "--state-dir", str(tmp_path / "s")]
    r = by_hand("save", *where, "--keep")
    assert r.returncode == Exit.INCOMPLETE, r.stderr
    assert "INCOMPLETE because the panic side ran out of dump space" in r.stdout
    assert "hint: enlarge the dump area" in r.stdout
    r = by_hand("status", *where)
    assert "WARNING:   truncated" in r.stdout and share in r.stdout, r.stdout
    assert "512.0 KiB in 1 range via memmap" in r.stdout
    assert by_hand("save", *where).returncode == 0  # already saved: now only released
    r = by_hand("status", *where)
    assert "WARNING:   the last dump was truncated" in r.stdout, r.stdout
    r = by_hand("list", "--dest", str(dest))
    assert "TRUNCATED" in r.stdout
    r = by_hand("info", "--dest", str(dest))
    assert "State: INCOMPLETE" in r.stdout and "Hint: enlarge the dump area" in r.stdout


# -- 5. status for monitoring ------------------------------------------------------------


def test_status_verdicts_and_exit_codes(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = by_hand("status", "--sysfs", str(tmp_path / "no"), "--cmdline", "/dev/null")
    assert r.returncode == Exit.NOT_READY
    assert r.stdout.startswith("verdict:     NOT ready: no dump area")
    assert "hint:      reserve one: boot with memmap=" in r.stdout
    sim = make_sim(memory=8 << 20)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minfree: 0\nmax_attempts: 1\n")
    args = sim.cli_args(tmp_path / "d")
    r = by_hand("--config", str(cfg), "status", *args)
    assert r.returncode == Exit.DUMP_WAITING and "is waiting to be saved" in r.stdout
    by_hand("--config", str(cfg), "save", *args, env={"DUMPSAVER_RAISE_AT": "fsync-core"})
    r = by_hand("--config", str(cfg), "status", *args)
    assert r.returncode == Exit.GAVE_UP and r.stdout.startswith("verdict:     gave up")
    assert by_hand("--config", str(cfg), "save", *args, "--force").returncode == 0
    r = by_hand("--config", str(cfg), "status", *args, "--json")
    s = json.loads(r.stdout)
    assert r.returncode == 0 and s["verdict"].startswith("ready to catch a crash")
    # The kernel's own mcore interface needs no module: its state is shown, not judged.
    assert s["needs_module"] is False and s["armed"]["armed"] is False
    assert s["verdict_exit"] == 0


def test_fresh_ram_reads_as_no_dump(tmp_path: Path) -> None:
    cmdline, iomem, mem = tmp_path / "cmdline", tmp_path / "iomem", tmp_path / "mem"
    cmdline.write_text("memmap=16M$0x30000000\n")
    iomem.write_text("00100000-2fffffff : System RAM\n30000000-30ffffff : Reserved\n")
    with open(mem, "wb") as f:
        f.truncate(0x31000000)
    r = by_hand("status", "--json", "--mem", str(mem), "--cmdline", str(cmdline),
                "--iomem", str(iomem), "--sysfs", str(tmp_path / "no"))
    s = json.loads(r.stdout)
    assert s["areas"][0]["dump"] == "no dump", s["areas"]
    assert s["areas"][0]["size"] == 16 << 20
    # A memmap= area needs the panic-side module, which is not loaded here: not ready.
    assert s["needs_module"] is True and s["armed"]["loaded"] is False
    assert r.returncode == Exit.NOT_ARMED and "not armed" in s["verdict"], s["verdict"]


# -- 6, 7. list, info, dmesg, debug ---------------------------------------------------------


@pytest.fixture
def three(make_sim, tmp_path) -> Path:  # type: ignore[no-untyped-def]
    dest = tmp_path / "d"
    for seed, panic in ((41, "BUG: first"), (42, "Oops: second " + "x" * 200),
                        (43, "BUG: third")):  # fmt: skip
        sim = make_sim(memory=8 << 20, seed=seed, panic=panic)
        assert by_hand("save", *sim.cli_args(dest)).returncode == 0
    return dest


def test_list_selects_like_coredumpctl(three: Path) -> None:
    d = ["--dest", str(three)]
    r = by_hand("list", *d)
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["TIME", "ID", "STATE", "SIZE", "FORMAT", "KERNEL", "PANIC"]
    assert lines[1].split("  ")[-1] == "BUG: first"
    assert "6.1.0-sim-amd64" in lines[1] and "elf" in lines[1] and "complete" in lines[1]
    names = [json.loads(by_hand("list", *d, "--json").stdout)[i]["id"] for i in range(3)]
    r = by_hand("list", *d, "-r", "-n", "2", "--json")
    assert [x["id"] for x in json.loads(r.stdout)] == [names[2], names[1]]
    r = by_hand("list", "latest", *d, "--json")
    assert [x["id"] for x in json.loads(r.stdout)] == [names[2]]
    r = by_hand("list", *d, "--since", "2000-01-01", "--until", "2001-01-01")
    assert r.returncode == 0 and r.stdout == "" and "no saved dumps match" in r.stderr
    r = by_hand("list", *d, "--since", "yesterday-ish")
    assert r.returncode == Exit.USAGE and "bad time" in r.stderr
    # on a terminal: ages, names cut to a prefix that still selects, lines to the width
    rc, out = in_pty("list", *d, env={"COLUMNS": "80"})
    rows = [ln for ln in out.splitlines() if ln.strip()]
    assert rc == 0 and all(len(ln) <= 80 for ln in rows), rows
    assert " ago)" in rows[1] and rows[2].endswith("…")
    short = rows[3].split(")  ", 1)[1].split()[0]
    assert short != names[2] and names[2].startswith(short)
    r = by_hand("info", short, *d, "--json")
    assert json.loads(r.stdout)["id"] == names[2]


def test_info_dmesg_debug_default_to_the_newest(three: Path, tmp_path: Path) -> None:
    d = ["--dest", str(three)]
    r = by_hand("info", *d)
    assert r.returncode == 0 and "Panic: BUG: third" in r.stdout
    assert "State: complete" in r.stdout and "Crash time: " in r.stdout
    r = by_hand("info", "latest", *d, "--json")
    assert json.loads(r.stdout)["panic"] == "BUG: third"
    r = by_hand("info", "2", *d)
    assert r.returncode == Exit.USAGE and "matches 3 dumps" in r.stderr
    r = by_hand("dmesg", *d)
    newest = three / json.loads(by_hand("info", *d, "--json").stdout)["id"]
    assert r.returncode == 0 and r.stdout == (newest / "dmesg.txt").read_text()
    r = by_hand("debug", *d)  # the simulated kernel has no debug symbols anywhere
    assert r.returncode == Exit.FAILURE
    assert "install linux-image-6.1.0-sim-amd64-dbg" in r.stderr
    assert len(r.stderr.splitlines()) == 1
    # --vmlinux given: the debugger starts on the dump (gdb reads ELF cores)
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb is missing (apt-get install gdb)")
    vmlinux = Path(sys.executable).resolve()  # any ELF stands in for the symbols
    r = by_hand("debug", "--debugger", "gdb", "--vmlinux", str(vmlinux), *d,
                stdin="info files\nquit\n")
    assert r.returncode == 0 and "vmcore" in r.stdout and str(newest / "vmcore") in r.stdout


# -- 8. smaller ones ------------------------------------------------------------------------


def test_options_after_the_subcommand_and_usage_errors(tmp_path: Path) -> None:
    r = by_hand("status", "--json", "--config", os.devnull, "--sysfs", str(tmp_path / "n"),
                "--cmdline", "/dev/null")
    assert json.loads(r.stdout)["config"] == os.devnull
    for bad in (["--memory", "lots"], ["--profile", "angry"], ["--memory", "0"]):
        r = by_hand("simulate", *bad, "--into", str(tmp_path / "m"))
        assert r.returncode == Exit.USAGE and r.stderr.startswith("error: "), (bad, r.stderr)
    (tmp_path / "f").write_text("")
    r = by_hand("simulate", "--memory", "8M", "--into", str(tmp_path / "f"))
    assert r.returncode == Exit.USAGE and "is not a directory" in r.stderr, r.stderr
    r = by_hand("save", "--help")
    assert "(default: format)" not in r.stdout and "exit codes:" in r.stdout
    r = by_hand("list", "--help")
    assert "--json" in r.stdout and "print the dumps as a JSON array" in r.stdout


def test_progress_bar_and_summary_on_a_terminal(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=16 << 20)
    rc, out = in_pty("save", *sim.cli_args(tmp_path / "d"))
    assert rc == 0, out
    bar = [ln for ln in out.replace("\r", "\n").splitlines() if ln.startswith("saving [")]
    assert bar and "100%" in bar[-1] and "/s " in bar[-1], bar
    assert "elapsed, ETA 0:00" in bar[-1]
    (summary,) = [ln for ln in out.splitlines() if ln.startswith("dumpsaver: saved: ")]
    assert " MiB in " in summary and summary.endswith("/s)"), summary
