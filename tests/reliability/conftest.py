"""The reliability campaign (issue 4, docs/reliability.md).

Fast parts run in the normal ``pytest`` run.  Tests marked ``long`` are the
documented long campaign at pytest scale (the largest runs are tools/reliability.py
and fuzz/run.sh long): opt-in, so a bare ``pytest`` skips them with the reason and
the way to run them (DUMPSAVER_LONG=1).  CI (tools/test.sh) deselects them
explicitly with ``-m "not long"``, so its skip count stays zero.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import SHM, Sim, long_enabled, make_machine


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "long: long reliability run (DUMPSAVER_LONG=1)")


LONG_SKIP = pytest.mark.skip(
    reason="long reliability tier (~12 min): opt-in, run with DUMPSAVER_LONG=1 "
    ".venv/bin/python -m pytest tests/reliability -m long (docs/reliability.md)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if long_enabled():
        return
    for item in items:
        if "long" in item.keywords:
            item.add_marker(LONG_SKIP)


#: Small machines chosen for what they exercise (see docs/reliability.md):
#: (memory, seed): 1M/7 one extent, complete; 512K/6 two extents, truncated at panic;
#: 1M/6 one extent, 74 pages.
MACHINES = {"m1": (1 << 20, 7), "m2": (512 << 10, 6), "m3": (1 << 20, 6)}


@pytest.fixture(scope="session")
def machines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sim]:
    root = tmp_path_factory.mktemp("machines")
    return {
        name: make_machine(root / name, memory=mem, seed=seed)
        for name, (mem, seed) in MACHINES.items()
    }


@pytest.fixture
def shm_path(tmp_path: Path) -> Iterator[Path]:
    """A scratch directory on tmpfs when there is one (fsync costs nothing there: the
    interruption tests kill processes, they do not cut power)."""
    if SHM is None:
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="dumpsaver-rel-", dir=SHM))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def machine(machines: dict[str, Sim], tmp_path: Path) -> Sim:
    """A private copy of the 1M machine (tests may release or damage it)."""
    return machines["m1"].copy(tmp_path / "machine")
