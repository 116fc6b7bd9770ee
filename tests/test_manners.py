"""Command-line manners (issue 12), each through the real command: who restarts the
machine, answers without root, a closed pipe, operator mistakes, truncation said loudly.
A terminal is a real pty where it matters; "without root" is the user nobody."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

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
