"""The upload units: verified by systemd-analyze, ordered after the network, never in
the boot job, re-run by a timer while something is left to send."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
SERVICE = REPO / "units" / "dumpsaver-upload.service"
TIMER = REPO / "units" / "dumpsaver-upload.timer"


def sections(path: Path) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    cur: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            cur = out.setdefault(line[1:-1], {})
            continue
        k, _, v = line.partition("=")
        cur[k] = f"{cur[k]} {v}".strip() if k in cur else v
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A scratch root with /usr/bin/dumpsaver, the units and the host's targets."""
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/dumpsaver").write_text("#!/bin/sh\n")
    (tmp_path / "usr/bin/dumpsaver").chmod(0o755)
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    for u in (SERVICE, TIMER, REPO / "units" / "dumpsaver.service"):
        shutil.copyfile(u, units / u.name)
    # The host's targets (sysinit, timers, network-online...) that default dependencies name.
    lib = tmp_path / "usr/lib/systemd/system"
    lib.mkdir(parents=True)
    for t in Path("/usr/lib/systemd/system").glob("*.target"):
        shutil.copyfile(t, lib / t.name)
    return tmp_path


def analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is missing (systemd)")
    return exe


def test_units_verify(root: Path) -> None:
    r = subprocess.run([analyze(), "verify", "--man=no", f"--root={root}",
                        "dumpsaver-upload.service", "dumpsaver-upload.timer"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_upload_sandbox_exposure(root: Path) -> None:
    """Network and root are what it needs; the rest is closed (1.7 when written)."""
    r = subprocess.run([analyze(), "security", "--offline=yes", f"--root={root}", "--no-pager",
                        "dumpsaver-upload.service"], capture_output=True, text=True, check=False)
    m = re.search(r"Overall exposure level for dumpsaver-upload\.service: ([0-9.]+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout


def test_upload_waits_for_the_network_and_never_holds_the_boot() -> None:
    s, t = sections(SERVICE), sections(TIMER)
    assert "network-online.target" in s["Unit"]["After"].split()
    assert "network-online.target" in s["Unit"]["Wants"].split()
    assert "DefaultDependencies" not in s["Unit"]
    assert "Install" not in s  # started by its timer only: not part of any boot target
    assert s["Service"]["ExecCondition"].endswith("dumpsaver upload --check")
    assert t["Install"]["WantedBy"] == "timers.target"
    assert "OnUnitInactiveSec" in t["Timer"] and "RandomizedDelaySec" in t["Timer"]
