"""Shared fixtures: the simulator is the fixture factory (style.md, item 3)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dumpsaver import config as config_mod
from dumpsaver import format as fmt
from dumpsaver import locate, paths, save
from dumpsaver.codecs import Codec

from . import machine
from .machine import Sim

REPO = Path(__file__).resolve().parent.parent
_HOST: list[Path] = []


def hermetic_config() -> Path:
    """The configuration every test's program reads unless the test names another: the
    built-in defaults but for dump_dir and state_dir, which point into a temp directory
    (removed at the end of the session), so no test reads the host's /etc/dumpsaver or
    touches its /var/dumps or /var/lib/dumpsaver."""
    if not _HOST:
        _HOST.append(Path(tempfile.mkdtemp(prefix="dumpsaver-test-host-")))
        cfg = _HOST[0] / "dumpsaver.yaml"
        cfg.write_text(f"dump_dir: {_HOST[0] / 'dumps'}\nstate_dir: {_HOST[0] / 'state'}\n")
    return _HOST[0] / "dumpsaver.yaml"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for d in _HOST:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process calls (cli.main, config.load) are hermetic too."""
    monkeypatch.setenv(paths.CONFIG_ENV, str(hermetic_config()))


@pytest.fixture(scope="session")
def sim_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[Any, ...], Sim]:
    return {}


@pytest.fixture
def make_sim(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, sim_cache: dict[tuple[Any, ...], Sim]
) -> Callable[..., Sim]:
    """Crash a simulated machine; cached per parameters, copied so each test owns its memory."""
    counter = iter(range(10**6))

    def make(memory: int = 16 << 20, profile: str = "idle", seed: int = 1,
             codec: Codec = Codec.ZLIB, **kw: Any) -> Sim:
        key = (memory, profile, seed, codec, tuple(sorted(kw.items())))
        if key not in sim_cache:
            d = tmp_path_factory.mktemp("sim")
            sim_cache[key] = machine.make(d, memory=memory, profile=profile, seed=seed,
                                          codec=codec,
                                          crash_time_ns=1_700_000_000_000_000_000 + seed, **kw)
        src = sim_cache[key]
        d = tmp_path / f"sim{next(counter)}"
        d.mkdir()
        for name in ("mem", "manifest.json"):
            cp = ["cp", "--sparse=always", str(src.dir / name), str(d / name)]
            subprocess.run(cp, check=True)
        (d / "before.mem").symlink_to(src.dir / "before.mem")
        shutil.copytree(src.dir / "sys", d / "sys")
        return machine.load(d)

    return make


def test_config(**overrides: Any) -> config_mod.Config:
    data = {"minfree": 0, **overrides}
    return config_mod.from_mapping(data, "test")


test_config.__test__ = False  # type: ignore[attr-defined]


def save_sim(sim: Sim, dest: Path, **kw: Any) -> save.Result:
    """Save ``sim`` through the library, as the CLI does (no restart)."""
    cfg = kw.pop("cfg", None) or test_config()
    cand = locate.from_sysfs(sim.sys)
    assert cand is not None
    mem, dump = save.open_dump(cand, str(sim.mem))
    with mem:
        return save.save(cfg, cand, dump, mem_path=str(sim.mem), dest=dest, **kw)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m dumpsaver ARGS``, hermetic: never the host's configuration or state
    (hermetic_config, unless ``env`` or ``--config`` names another)."""
    e = dict(os.environ)
    e.pop("NOTIFY_SOCKET", None)
    e[paths.CONFIG_ENV] = str(hermetic_config())
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "dumpsaver", *args], capture_output=True,
                          text=True, env=e, timeout=300)


def check_against_truth(
    vmcore: Path, sim: Sim, *, missing: frozenset[int] = frozenset(), absent_sample: int = 64
) -> int:
    """Through drgn (an independent reader of ELF and kdump-compressed files): every saved
    page but ``missing`` reads back equal to the ground truth; unsaved and ``missing``
    pages are absent (FaultError), not zeros."""
    drgn = pytest.importorskip("drgn", reason="drgn is the independent reader")
    prog = drgn.Program()
    prog.set_core_dump(str(vmcore))
    assert prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL
    ps = sim.manifest["page_size"]
    saved = [p for p in sim.saved_pfns() if p not in missing]
    with open(sim.before, "rb") as f:
        for pfn in saved:
            f.seek(pfn * ps)
            assert prog.read(pfn * ps, ps, True) == f.read(ps), f"page {pfn} differs"
    saved_set = set(saved)
    mem_pages = sim.manifest["memory"] // ps
    unsaved = sorted(missing) + [
        p for p in range(0, mem_pages, max(1, mem_pages // (absent_sample * 4)))
        if p not in saved_set and p not in missing][:absent_sample]
    for pfn in unsaved:
        with pytest.raises(drgn.FaultError):
            prog.read(pfn * ps, ps, True)
    return len(saved)


def logical_paddr(h: fmt.Header, offset: int) -> int:
    """The physical address of a logical offset of the dump stream."""
    for e in h.extents:
        if offset < e.length:
            return e.paddr + offset
        offset -= e.length
    raise AssertionError(f"offset {offset:#x} beyond the dump area")


def entry_paddr(h: fmt.Header, index: int) -> int:
    """The physical address of directory entry ``index``."""
    return logical_paddr(h, h.dir_offset + index * fmt.ENTRY.size)


def header_of(sim: Sim) -> fmt.Header:
    with open(sim.mem, "rb") as f:
        f.seek(sim.header_paddr)
        block = f.read(fmt.FIXED_SIZE)
        size = fmt.peek_header_size(block)
        return fmt.decode_header(block + f.read(size - fmt.FIXED_SIZE))
