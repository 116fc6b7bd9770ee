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


def test_benchmarks_smoke(tmp_path: Path) -> None:
    """The benchmark command runs end to end on small machines (figures, not assertions:
    speed is judged from benchmarks/results.json, never by a timed test)."""
    import json

    out = tmp_path / "results.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks/run.py"), "--quick",
                        "--workdir", str(tmp_path / "work"), "--json", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["meta"]["quick"] is True
    assert len(results) > 3, sorted(results)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (at any level, function bodies included)."""
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ("dumpsaver." if node.level else "") + (node.module or "")
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def test_dependencies_point_one_way() -> None:
    """The kill-point hook and the paths table are leaves (style.md, item 13); the stages
    below the save never import it, nor the boot job or the CLI above it."""
    pkg = REPO / "dumpsaver"
    for leaf in ("faults.py", "paths.py"):
        ours = {m for m in _imports(pkg / leaf) if m.startswith("dumpsaver")}
        assert not ours, (leaf, ours)
    above = {"dumpsaver.save", "dumpsaver.boot", "dumpsaver.commands", "dumpsaver.status",
             "dumpsaver.cli"}
    below = [*sorted((pkg / "writers").glob("*.py")),
             *(pkg / n for n in ("decode.py", "format.py", "physmem.py", "locate.py",
                                 "codecs.py", "state.py", "release.py", "retention.py",
                                 "catalogue.py", "restart.py", "journal.py"))]
    for f in below:
        bad = _imports(f) & above
        assert not bad, (f.name, bad)
