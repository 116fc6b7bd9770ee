"""Read a saved dump with the real tools, on the host: crash, drgn, makedumpfile.

Each gets the guest kernel's vmlinux with debug info (vmlinux.py) and nothing from
dumpsaver: what they accept is what a user's crash session would accept.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CrashSession:
    """One ``crash`` run: every command's output in its own file, the session's stdout."""

    returncode: int
    stdout: str
    stderr: str
    outputs: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> str:
        return self.outputs.get(name, "")


def run_crash(
    crash: list[str],
    vmlinux: Path,
    vmcore: Path,
    commands: dict[str, str],
    workdir: Path,
    *,
    timeout: float = 300,
) -> CrashSession:
    """Run ``crash -s vmlinux vmcore`` once, with ``commands`` ({name: command}).

    ``crash`` is the command that starts crash (e.g. ``["crash"]``).

    Each command's output is redirected by crash itself into ``workdir/<name>.out``,
    so one session (the slow part is loading ~600 MB of debug info) answers them all.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, cmd in commands.items():
        out = workdir / f"{name}.out"
        out.unlink(missing_ok=True)
        lines.append(f"{cmd} > {out}")
    lines.append("quit")
    script = "\n".join(lines) + "\n"
    (workdir / "commands").write_text(script)
    r = subprocess.run(
        [*crash, "-s", "--no_scroll", str(vmlinux), str(vmcore)],
        input=script,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    (workdir / "stdout").write_text(r.stdout)
    (workdir / "stderr").write_text(r.stderr)
    outputs = {}
    for name in commands:
        out = workdir / f"{name}.out"
        outputs[name] = out.read_text(errors="replace") if out.exists() else ""
    return CrashSession(r.returncode, r.stdout, r.stderr, outputs)


def ps_has_systemd_pid1(ps: str) -> bool:
    """crash's ``ps``: a line for PID 1 (parent 0) whose command is systemd."""
    return any(
        re.match(r"^>?\s*1\s+0\s+\d+\s+[0-9a-f]+\s+\S+.*\bsystemd\s*$", line)
        for line in ps.splitlines()
    )


DRGN_SCRIPT = r"""
import json, sys
import drgn
core, *debug = sys.argv[1:]
prog = drgn.Program()
prog.set_core_dump(core)
prog.load_debug_info(debug)
thread = prog.crashed_thread()
trace = thread.stack_trace()
task = thread.object
print(json.dumps({
    "tid": thread.tid,
    "comm": task.comm.string_().decode(errors="replace"),
    "frames": [frame.name for frame in trace],
    "panic_cpu": int(prog["panic_cpu"].counter.value_()),
    "init_comm": prog["init_task"].comm.string_().decode(),
}))
"""


def run_drgn(vmcore: Path, debug: list[Path], *, timeout: float = 300) -> dict[str, object]:
    """The crashed thread's stack as drgn sees it (a subprocess: drgn is C underneath)."""
    r = subprocess.run(
        [sys.executable, "-c", DRGN_SCRIPT, str(vmcore), *map(str, debug)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if r.returncode != 0:
        raise AssertionError(f"drgn failed on {vmcore}:\n{r.stderr[-3000:]}")
    result: dict[str, object] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def run_makedumpfile(vmcore: Path, out: Path, *, level: int = 31) -> str:
    """``makedumpfile -l -d LEVEL`` of an ELF core into kdump-compressed ``out``.

    makedumpfile finds mem_map and the page flags through the core's own VMCOREINFO
    note; it fails when that is missing or wrong.  Returns its messages.
    """
    out.unlink(missing_ok=True)
    r = subprocess.run(
        ["makedumpfile", "-l", "--message-level", "31", "-d", str(level), str(vmcore), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    text = r.stdout + r.stderr
    if r.returncode != 0:
        raise AssertionError(f"makedumpfile -d {level} failed (rc {r.returncode}):\n{text}")
    return text


def makedumpfile_counts(messages: str) -> dict[str, int]:
    """The page counts of makedumpfile's report (``--message-level 31``), by label."""
    counts = {}
    for m in re.finditer(r"^\s*([A-Za-z][\w -]*?)\s*:\s*0x([0-9a-f]+)\s*$", messages, re.M):
        counts[m.group(1)] = int(m.group(2), 16)
    return counts
