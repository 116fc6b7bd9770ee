"""Static checks of what we hand to systemd: the unit, its sandbox score, the catalog.

Cheap (no container): ``systemd-analyze verify``/``security --offline`` on the unit in a
scratch root, and the message catalog compiled by ``journalctl --update-catalog``.  The
behaviour under a running systemd is tests/test_nspawn.py; on a real kernel, tests/e2e.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "units" / "dumpsaver.service"
CATALOG = REPO / "units" / "dumpsaver.catalog"
MAX_EXPOSURE = 2.0  # systemd-analyze security: 1.4 when written, 9.5 without the sandbox


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is missing (systemd)")
    return exe


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A scratch root where /usr/bin/dumpsaver exists and the unit is installed."""
    (tmp_path / "usr/bin").mkdir(parents=True)
    exe = tmp_path / "usr/bin/dumpsaver"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    shutil.copyfile(UNIT, units / "dumpsaver.service")
    return tmp_path


def _unit() -> dict[str, dict[str, str]]:
    """Sections of the unit; a key given several times (After=, ...) joined by spaces."""
    sections: dict[str, dict[str, str]] = {}
    cur: dict[str, str] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            cur = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        cur[key] = f"{cur[key]} {value}".strip() if key in cur else value
    return sections


def test_unit_verifies(root: Path) -> None:
    r = subprocess.run(
        [_analyze(), "verify", "--man=no", f"--root={root}", "dumpsaver.service"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_unit_sandbox_exposure(root: Path) -> None:
    r = subprocess.run(
        [_analyze(), "security", "--offline=yes", f"--root={root}", "--no-pager",
         "dumpsaver.service"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    m = re.search(r"Overall exposure level for dumpsaver\.service: ([0-9.]+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout


def test_unit_runs_early_and_cheaply() -> None:
    u = _unit()
    unit, svc, inst = u["Unit"], u["Service"], u["Install"]
    assert unit["DefaultDependencies"] == "no"
    assert {"sysinit.target", "shutdown.target"} <= set(unit["Before"].split())
    after = set(unit["After"].split())
    assert {"local-fs.target", "systemd-journal-flush.service"} <= after
    assert unit["Conflicts"] == "shutdown.target"
    assert "/var" in unit["RequiresMountsFor"].split()
    assert inst["WantedBy"] == "sysinit.target"
    assert svc["Type"] == "oneshot" and svc["RemainAfterExit"] == "yes"
    assert svc["NotifyAccess"] == "main"  # else STATUS= never reaches systemd
    # no shell, no wrapper between systemd and the program
    assert svc["ExecStart"] == "/usr/bin/dumpsaver save"
    # what the program needs must survive the sandbox
    assert "/dev/mem rw" in svc["DeviceAllow"]
    assert {"CAP_SYS_RAWIO", "CAP_SYS_ADMIN"} <= set(svc["CapabilityBoundingSet"].split())
    assert "AF_UNIX" in svc["RestrictAddressFamilies"].split()
    assert "/var/dumps" in svc["ReadWritePaths"]
    assert svc["StateDirectory"] == "dumpsaver"


def test_catalog_compiles(tmp_path: Path) -> None:
    if shutil.which("journalctl") is None:
        pytest.skip("journalctl is missing (systemd)")
    cat = tmp_path / "usr/lib/systemd/catalog"
    cat.mkdir(parents=True)
    shutil.copyfile(CATALOG, cat / "dumpsaver.catalog")
    r = subprocess.run(["journalctl", f"--root={tmp_path}", "--update-catalog"],
                       capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["journalctl", f"--root={tmp_path}", "--list-catalog"],
                       capture_output=True, text=True, check=False)  # fmt: skip
    listed = dict(line.split(" ", 1) for line in r.stdout.splitlines() if line)
    from dumpsaver.journal import EVENTS

    for ev in EVENTS.values():
        assert listed.get(ev.message_id, "").startswith("dumpsaver: "), (ev.name, r.stdout)
