"""(3) The atheris harnesses, briefly (the CI run: fuzz/run.sh short, < 60 s).

The long run is ``fuzz/run.sh long`` (>= 1,000,000 executions of the format
parser); figures in docs/reliability.md.  Inputs that once crashed a harness are
kept in fuzz/regressions/<harness>/ and replayed here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FUZZ = REPO / "fuzz"


def _atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _atheris(), reason="atheris is not installed")


def test_short_fuzz_run(tmp_path: Path) -> None:
    env = {**os.environ, "FUZZ_WORK": str(tmp_path), "PYTHON": sys.executable}
    p = subprocess.run([str(FUZZ / "run.sh"), "short"], env=env, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert "no crashes" in p.stderr
    for name in ("fuzz_header", "fuzz_meta", "fuzz_entry", "fuzz_dump", "fuzz_locate"):
        assert "Done" in (tmp_path / f"{name}.log").read_text(), name


def test_regressions_replay(tmp_path: Path) -> None:
    """Replay every input kept in fuzz/regressions/<harness>/ (crashes found, none so
    far) and the seed corpus fuzz/corpus/<kind>/ through its harness."""
    kinds = {"fuzz_header": "header", "fuzz_meta": "meta", "fuzz_entry": "entry",
             "fuzz_dump": "dump", "fuzz_locate": "locate"}
    runs = 0
    for harness, kind in kinds.items():
        files = sorted(p for d in (FUZZ / "regressions" / harness, FUZZ / "corpus" / kind)
                       if d.is_dir() for p in d.iterdir() if p.is_file())
        if not files:
            continue
        p = subprocess.run([sys.executable, str(FUZZ / f"{harness}.py"), *map(str, files)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, (harness, p.stderr[-3000:])
        runs += len(files)
    assert runs > 0, "the seed corpus is missing"
