"""dumpsaver.service under a real systemd: a systemd-nspawn system container.

The container boots the host's own root (``--volatile=yes``: /usr from the host, the rest
tmpfs) with our unit installed in a bound /etc/systemd/system, and a drop-in that points
``--mem``/``--sysfs``/``--dest`` at a simulated crashed machine made on the host by
``dumpsaver simulate``.  Three boots:

* no dump: the unit succeeds before sysinit.target, logs no event, requests nothing;
* a dump with ``restart: continue``: saved and released before sysinit.target, the
  journal entries carry their fields, ``STATUS=`` progress reached PID 1;
* a dump with the default ``restart: reboot``: the request reaches PID 1, which reboots
  the container (nspawn exits 133).

Each runs twice: with Debian's /usr/bin/python3 (python3-pystemd 0.11) and with the
test venv's interpreter (PyPI pystemd 0.15), when both are there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "units" / "dumpsaver.service"

pytestmark = pytest.mark.nspawn

EV = {  # dumpsaver/journal.py EVENTS, repeated: the test checks the contract
    "dump-found": "3617e9eabf8d4b3cbad816518469194c",
    "saved": "f62a2b40aec14f8dbfa9c1d267a125ae",
    "failed": "c83423f13f77488da8dda7356256eaa3",
    "released": "834f198336b440c9aaa2ea162cf1355b",
    "restart-requested": "52c957937a5749abb569209db54f10b7",
}
SD_UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"  # "Finished"/"Reached target"


def _interpreters() -> list[Any]:
    out = []
    deb = Path("/usr/bin/python3")
    if deb.exists():
        out.append(pytest.param(str(deb), id="debian-python3"))
    if sys.prefix != "/usr":  # a venv (PyPI's pystemd), even one made from Debian's python3
        out.append(pytest.param(sys.executable, id="venv"))
    return out


def _skip_reason(python: str) -> str | None:
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is missing (apt-get install systemd-container)"
    if os.environ.get("DUMPSAVER_NO_NSPAWN") == "1":
        return "DUMPSAVER_NO_NSPAWN=1"
    r = subprocess.run(
        [python, "-c", "import pystemd.dbuslib, systemd.journal, yaml, psutil"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if r.returncode != 0:
        return f"{python} lacks pystemd/systemd-python/yaml/psutil: {r.stderr.strip()[-200:]}"
    return None


@dataclass
class Container:
    returncode: int
    out: Path
    console: str
    entries: list[dict[str, Any]]

    def ours(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if e.get("_SYSTEMD_UNIT") == "dumpsaver.service"]

    def event(self, name: str) -> dict[str, Any] | None:
        for e in self.entries:
            if e.get("MESSAGE_ID") == EV[name]:
                return e
        return None

    def reached(self, unit: str) -> dict[str, Any] | None:
        for e in self.entries:
            if e.get("MESSAGE_ID") == SD_UNIT_STARTED and e.get("UNIT") == unit:
                return e
        return None

    def show(self) -> dict[str, dict[str, str]]:
        res: dict[str, dict[str, str]] = {}
        text = (self.out / "units").read_text() if (self.out / "units").exists() else ""
        for block in text.split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if "Id" in props:
                res[props["Id"]] = props
        return res

    def explain(self) -> str:
        msgs = "\n".join(f"  {e.get('_SYSTEMD_UNIT', e.get('UNIT', ''))}: {e.get('MESSAGE')}"
                         for e in self.entries[-40:])  # fmt: skip
        return f"nspawn rc={self.returncode}\n{self.console[-3000:]}\njournal tail:\n{msgs}"


def _mono(e: dict[str, Any] | None) -> int:
    assert e is not None
    return int(e["__MONOTONIC_TIMESTAMP"])


WATCH = """\
#!/bin/sh
# Record every distinct StatusText of dumpsaver.service while it runs.
last=
i=0
while [ $i -lt 3000 ] && [ ! -e /sim/out/stop-watch ]; do
    s=$(systemctl show -p StatusText --value dumpsaver.service 2>/dev/null)
    if [ -n "$s" ] && [ "$s" != "$last" ]; then
        echo "$s" >> /sim/out/status-seen
        last=$s
    fi
    i=$((i + 1))
done
"""

RUN = """\
#!/bin/sh
# systemd.run= script: runs once the container is up (never, if dumpsaver rebooted it).
o=/sim/out
systemctl show dumpsaver.service sysinit.target \\
    -p Id,ActiveState,Result,StatusText,ExecMainStatus \\
    -p ActiveEnterTimestampMonotonic,InactiveExitTimestampMonotonic > $o/units 2>&1
systemctl status --no-pager dumpsaver.service > $o/unit-status 2>&1
touch $o/stop-watch
journalctl --sync
exit 0
"""


def boot_container(tmp: Path, python: str, sim: Path | None, restart: str) -> Container:
    """Boot one container with the unit; return its exit code and what it left behind."""
    etc = tmp / "etc-systemd-system"
    (etc / "dumpsaver.service.d").mkdir(parents=True)
    (etc / "sysinit.target.wants").mkdir()
    shutil.copyfile(UNIT, etc / "dumpsaver.service")
    (etc / "sysinit.target.wants" / "dumpsaver.service").symlink_to("../dumpsaver.service")
    simdir = tmp / "sim"
    out = simdir / "out"
    out.mkdir(parents=True)
    if sim is not None:
        shutil.copytree(sim, simdir / "machine")
    else:
        (simdir / "machine" / "sys").mkdir(parents=True)
        (simdir / "machine" / "mem").write_bytes(b"")
    (simdir / "dumpsaver.yaml").write_text(f"restart: {restart}\n")
    (simdir / "watch.sh").write_text(WATCH)
    (simdir / "run.sh").write_text(RUN)
    for f in ("watch.sh", "run.sh"):
        (simdir / f).chmod(0o755)
    # Points the real unit at the simulated machine; the cmdline/iomem of the container
    # host must not be searched (a memmap= there is not ours to touch).
    (etc / "dumpsaver.service.d" / "test.conf").write_text(textwrap.dedent(f"""\
        [Service]
        Environment=PYTHONPATH={REPO} PYTHONDONTWRITEBYTECODE=1
        ExecStart=
        ExecStart={python} -m dumpsaver --config /sim/dumpsaver.yaml save \\
            --mem /sim/machine/mem --sysfs /sim/machine/sys --cmdline /sim/cmdline \\
            --dest /sim/dumps --state-dir /sim/state
        ReadWritePaths=/sim
        """))  # fmt: skip
    if str(Path(python).resolve()).startswith(("/root/", "/home/")):
        # a pyenv interpreter: ProtectHome=yes would hide it (only this test's problem)
        with (etc / "dumpsaver.service.d" / "test.conf").open("a") as f:
            f.write("ProtectHome=read-only\n")
    if any(str(p).startswith(("/tmp/", "/var/tmp/")) for p in (REPO, Path(python))):
        # a checkout under /tmp (CI's clone may be): PrivateTmp=yes would hide the code
        with (etc / "dumpsaver.service.d" / "test.conf").open("a") as f:
            f.write("PrivateTmp=no\n")
    (simdir / "cmdline").write_text("console=ttyS0\n")
    (etc / "status-watch.service").write_text(
        textwrap.dedent("""\
        [Unit]
        DefaultDependencies=no
        Before=dumpsaver.service
        [Service]
        ExecStart=/bin/sh /sim/watch.sh
        """)
    )
    (etc / "sysinit.target.wants" / "status-watch.service").symlink_to("../status-watch.service")
    journal = tmp / "journal"
    journal.mkdir()

    binds = [f"--bind={simdir}:/sim", f"--bind={etc}:/etc/systemd/system",
             f"--bind={journal}:/var/log/journal", f"--bind-ro={REPO}"]  # fmt: skip
    # the venv's interpreter lives outside /usr (pyenv under /root): bind it too
    for p in {Path(sys.prefix), Path(sys.base_prefix), Path(python).resolve().parent.parent}:
        if not str(p).startswith("/usr") and p.exists():
            binds.append(f"--bind-ro={p}")
    cmd = [
        "systemd-nspawn", "-q", "-D", "/", "--volatile=yes", "--private-network",
        "--register=no", "--keep-unit", *binds, "-b", "--",
        "systemd.firstboot=off", "systemd.run=/sim/run.sh",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    jr = subprocess.run(
        ["journalctl", "-D", str(journal), "-o", "json", "--no-pager", "--all"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    entries = [json.loads(line) for line in jr.stdout.splitlines() if line.startswith("{")]
    entries.sort(key=lambda e: int(e.get("__MONOTONIC_TIMESTAMP", 0)))
    return Container(r.returncode, out, r.stdout + r.stderr, entries)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sim") / "machine"
    r = subprocess.run(
        [sys.executable, "-m", "dumpsaver", "simulate", "--memory", "128M", "--profile", "busy",
         "--seed", "3", "--into", str(d)],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return d


@pytest.mark.parametrize("python", _interpreters())
def test_no_dump_unit_succeeds_before_sysinit(tmp_path: Path, python: str) -> None:
    if reason := _skip_reason(python):
        pytest.skip(reason)
    c = boot_container(tmp_path, python, None, "reboot")
    assert c.returncode == 0, c.explain()
    units = c.show()
    ds, si = units["dumpsaver.service"], units["sysinit.target"]
    assert ds["ActiveState"] == "active" and ds["Result"] == "success", c.explain()
    assert 0 < int(ds["ActiveEnterTimestampMonotonic"]) <= int(si["ActiveEnterTimestampMonotonic"])
    assert not any(c.event(ev) for ev in EV), "no dump: no event"


@pytest.mark.parametrize("python", _interpreters())
def test_save_continue_journal_fields_and_status(
    tmp_path: Path, python: str, simulated: Path
) -> None:
    if reason := _skip_reason(python):
        pytest.skip(reason)
    c = boot_container(tmp_path, python, simulated, "continue")
    assert c.returncode == 0, c.explain()
    units = c.show()
    ds, si = units["dumpsaver.service"], units["sysinit.target"]
    assert ds["Result"] == "success", c.explain()
    assert int(ds["ActiveEnterTimestampMonotonic"]) <= int(si["ActiveEnterTimestampMonotonic"])
    found, saved, released = c.event("dump-found"), c.event("saved"), c.event("released")
    assert found and saved and released, c.explain()
    assert _mono(found) < _mono(saved) <= _mono(released) < _mono(c.reached("sysinit.target"))
    assert c.event("restart-requested") is None  # restart: continue
    for e in (found, saved, released):
        assert e["SYSLOG_IDENTIFIER"] == "dumpsaver"
        assert e["_SYSTEMD_UNIT"] == "dumpsaver.service"
        assert e["DUMPSAVER_EVENT"] in EV
        assert e["DUMP_ID"] and e["PRIORITY"] in {"5", "6"}
        assert e.get("CODE_FILE", "").endswith(".py") and e.get("CODE_FUNC")
    # STATUS= reached PID 1: systemd kept the last one, the watcher saw progress
    assert ds["StatusText"], ds
    seen = (c.out / "status-seen").read_text().splitlines()
    assert any("Saving dump" in s for s in seen), seen
    dumps = [p for p in (tmp_path / "sim" / "dumps").iterdir() if p.is_dir()]
    assert len(dumps) == 1 and (dumps[0] / "vmcore").stat().st_size > 0


@pytest.mark.parametrize("python", _interpreters())
def test_restart_request_reboots_the_container(
    tmp_path: Path, python: str, simulated: Path
) -> None:
    if reason := _skip_reason(python):
        pytest.skip(reason)
    c = boot_container(tmp_path, python, simulated, "reboot")
    assert c.returncode == 133, c.explain()  # nspawn: the container rebooted
    req = c.event("restart-requested")
    assert req is not None and c.event("saved") is not None, c.explain()
    assert _mono(c.event("saved")) < _mono(req)
    assert not (c.out / "units").exists()  # the boot never went on to run.sh
    # the SIGTERM with which systemd stops the unit for the reboot it asked for ends the
    # run with success: the boot that saved the dump does not record the unit as failed
    pid1 = [str(e.get("MESSAGE")) for e in c.entries
            if e.get("UNIT") == "dumpsaver.service" and e.get("_PID") == "1"]
    assert pid1 and not any("Failed" in m or "signal" in m for m in pid1), pid1
    sysinit = c.reached("sysinit.target")
    assert sysinit is None or _mono(sysinit) > _mono(req)
