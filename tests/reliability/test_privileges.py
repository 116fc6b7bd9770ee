"""(7) Least privilege: what dumpsaver writes is root's alone.

The unit's sandbox (units/dumpsaver.service) is owned and tested by the packaging
side (tests/test_nspawn_unit.py: systemd-analyze security); here: the modes of
everything a save creates, whatever the umask, and the directives the
reliability doc relies on.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dumpsaver import cli

from . import interrupt as I
from .harness import Sim

REPO = Path(__file__).resolve().parents[2]


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_dumps_are_root_only_whatever_the_umask(
    machine: Sim, tmp_path: Path, umask: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "var" / "dumps"
    st = tmp_path / "state"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minfree: 0\n")
    old = os.umask(umask)
    try:
        # a failed attempt first (state file), then the save (a bad dump directory is
        # not an attempt: an injected failure of the save is)
        monkeypatch.setenv("DUMPSAVER_RAISE_AT", "fsync-core")
        assert cli.main(I.save_argv(machine, dest, st, cfg)) == 1
        assert _mode(st / "attempts.json") == 0o600
        monkeypatch.delenv("DUMPSAVER_RAISE_AT")
        assert cli.main(I.save_argv(machine, dest, st, cfg)) == 0
    finally:
        os.umask(old)
    assert _mode(dest) == 0o700
    assert _mode(dest / ".lock") == 0o600
    (d,) = I.visible_dumps(dest)
    assert _mode(d) == 0o700
    for f in d.iterdir():
        assert _mode(f) == 0o600, f
        assert os.lstat(f).st_uid == os.geteuid()


def test_loose_dump_dir_is_tightened(machine: Sim, tmp_path: Path) -> None:
    dest = tmp_path / "dumps"
    dest.mkdir()
    os.chmod(dest, 0o755)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minfree: 0\n")
    assert cli.main(I.save_argv(machine, dest, tmp_path / "st", cfg)) == 0
    assert _mode(dest) == 0o700


def test_unit_sandbox_directives() -> None:
    """What docs/reliability.md says about the unit: keep them in step."""
    unit = REPO / "units" / "dumpsaver.service"
    if not unit.exists():
        pytest.skip("units/dumpsaver.service is not there yet")
    lines = {ln.split("=", 1)[0]: ln.split("=", 1)[1] for ln in unit.read_text().splitlines()
             if "=" in ln and not ln.startswith("#")}  # fmt: skip
    assert lines["NoNewPrivileges"] == "yes"
    assert lines["ProtectSystem"] == "strict"
    assert lines["PrivateNetwork"] == "yes"
    assert lines["UMask"] == "0077"
    # CAP_SYS_MODULE: daxctl loads kmem when memmap=! memory is given back (issue 11)
    assert set(lines["CapabilityBoundingSet"].split()) <= {
        "CAP_SYS_RAWIO", "CAP_SYS_ADMIN", "CAP_SYS_MODULE"}
    assert "/var/dumps" in lines["ReadWritePaths"]
    tmpfiles = REPO / "units" / "tmpfiles.d" / "dumpsaver.conf"
    if tmpfiles.exists():
        assert "d /var/dumps 0700 root root" in tmpfiles.read_text()
