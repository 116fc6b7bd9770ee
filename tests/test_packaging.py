"""The Debian and RPM packages build from this tree; lintian finds no error or warning."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="package builds run as root here")


def _need(*tools: str) -> None:
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"{t} is not installed (tools/bootstrap.sh installs it)")


def test_deb_builds_and_lintian_is_clean(tmp_path: Path) -> None:
    _need("dpkg-buildpackage", "lintian")
    r = subprocess.run(["sh", str(REPO / "packaging/build-deb.sh"), str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (deb,) = tmp_path.glob("dumpsaver_*.deb")
    files = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                           check=True).stdout
    for path in ("usr/bin/dumpsaver", "lib/systemd/system/dumpsaver.service",
                 "etc/dumpsaver/dumpsaver.yaml", "dumpsaver/writers/elf.py",
                 "dumpsaver/writers/kdump.py", "man8/dumpsaver.8", "man5/dumpsaver.yaml.5",
                 "usr/share/bash-completion/completions/dumpsaver"):
        assert path in files, path
    # the boot job's launcher imports nothing but dumpsaver.cli (no re: tests/test_early.py)
    launcher = subprocess.run(f"dpkg-deb --fsys-tarfile {deb} | tar -xO ./usr/bin/dumpsaver",
                              shell=True, capture_output=True, text=True, check=True).stdout
    assert launcher.splitlines()[1:] == ["import sys", "from dumpsaver.cli import main",
                                         "sys.exit(main())"], launcher
    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True,
                          check=True).stdout
    for dep in ("python3-systemd", "python3-pystemd", "python3-psutil", "python3-yaml"):
        assert dep in info
    lint = subprocess.run(["lintian", "--fail-on", "error,warning", str(deb)],
                          capture_output=True, text=True, timeout=600)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_rpm_builds(tmp_path: Path) -> None:
    _need("rpmbuild")
    r = subprocess.run(["sh", str(REPO / "packaging/build-rpm.sh"), str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (rpm,) = tmp_path.rglob("dumpsaver-[0-9]*.noarch.rpm")
    files = subprocess.run(["rpm", "-qlp", str(rpm)], capture_output=True, text=True,
                           check=True).stdout
    assert "/usr/bin/dumpsaver" in files and "dumpsaver.service" in files
    assert "/writers/kdump.py" in files
    assert "/usr/share/bash-completion/completions/dumpsaver" in files
