"""Tooling as tests: lint and strict typing are part of the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    exe = BIN / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def test_ruff() -> None:
    r = subprocess.run([_tool("ruff"), "check", "."], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict() -> None:
    r = subprocess.run([_tool("mypy")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shipped_config_shows_every_default() -> None:
    from dumpsaver import config

    shipped = (REPO / "etc/dumpsaver/dumpsaver.yaml").read_text()
    assert shipped == config.render_default_file(), "regenerate etc/dumpsaver/dumpsaver.yaml"
