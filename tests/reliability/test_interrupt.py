"""(1) Interruption at any point: SIGKILL at every checkpoint, rerun, judge.

Figure (docs/reliability.md): kill points, dumps lost, saved twice, half-written
files visible, reruns that did not finish: all but the first must be 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dumpsaver import format as fmt

from . import interrupt as I
from .harness import Sim, report


def _assert_clean(t: I.Tally) -> None:
    assert t.problems == []
    for k in ("lost", "saved_twice", "half_visible", "released_before_durable",
              "rerun_failed", "release_not_finished", "hung"):  # fmt: skip
        assert getattr(t, k) == 0, k


def test_every_point_of_every_phase(machines: dict[str, Sim], shm_path: Path) -> None:
    """>= 200 kill points: every checkpoint and every page of the writer's loop, on three
    machines (one extent; two extents truncated at panic; a larger one), plus pairs
    (the rerun is killed too)."""
    t = I.campaign(list(machines.values()), shm_path, every_page=True, pairs=4)
    report("interrupt", t.as_dict())
    _assert_clean(t)
    assert t.points >= 200
    assert set(t.by_phase) == set(I.PHASES)


def test_kdump_format_every_phase(machines: dict[str, Sim], shm_path: Path) -> None:
    """The same with format: kdump (the kdump-compressed writer's loop has the
    write-page point too); the files are read back by tests/test_kdump.py's reader."""
    t = I.campaign([machines["m1"]], shm_path, every_page=False, fmt_name="kdump")
    report("interrupt-kdump", t.as_dict())
    _assert_clean(t)
    assert set(t.by_phase) == set(I.PHASES)


def test_memmap_located_every_phase(machines: dict[str, Sim], shm_path: Path) -> None:
    """Found through memmap= and /proc/iomem (no sysfs, no release attribute: releasing
    is invalidating the header): every phase, a few writer points."""
    t = I.campaign([machines["m1"]], shm_path, every_page=False, locate="memmap")
    report("interrupt-memmap", t.as_dict())
    _assert_clean(t)
    assert set(t.by_phase) == set(I.PHASES)


def test_interrupted_release_is_finished_by_the_next_run(machine: Sim, tmp_path: Path) -> None:
    """Power fails between invalidating the header and the sysfs release: the next run
    must see "already saved", not save a second copy, and still hand the memory back.
    (Regression: the release used to be skipped forever.)"""
    t = I.Tally()
    I.one_point(machine, tmp_path, "release-sysfs", t, machine.truth_pages())
    _assert_clean(t)
    assert I.header_magic(machine) == fmt.SAVED_MAGIC
    assert (machine.sysfs / "release").read_text() == "1\n"
    assert len(I.visible_dumps(tmp_path / "dest")) == 1


def test_interrupted_between_rename_and_release(machine: Sim, tmp_path: Path) -> None:
    """Killed after the rename, before anything was released: the rerun recognises the
    saved copy by its dump id and only releases."""
    dest = tmp_path / "dest"
    cfg = tmp_path / "config.yaml"
    cfg.write_text("minfree: 0\n")
    argv = I.save_argv(machine, dest, tmp_path / "state", cfg)
    assert I.run_forked(argv, "release") == -9
    assert I.header_magic(machine) == fmt.MAGIC  # still in memory
    (first,) = I.visible_dumps(dest)
    before = (first / "vmcore").stat().st_mtime_ns
    assert I.run_forked(argv) == 0
    assert I.visible_dumps(dest) == [first]
    assert (first / "vmcore").stat().st_mtime_ns == before  # not written again
    assert I.header_magic(machine) == fmt.SAVED_MAGIC


def test_interrupted_state_update(machine: Sim, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Killed while recording a failed attempt (the save failed): the state file is
    either the old or the new one, and the next run, once the cause is gone, saves."""
    dest = tmp_path / "dest"
    monkeypatch.setenv("DUMPSAVER_RAISE_AT", "fsync-core")  # the cause
    cfg = tmp_path / "config.yaml"
    cfg.write_text("minfree: 0\n")
    state = tmp_path / "state"
    argv = I.save_argv(machine, dest, state, cfg)
    assert I.run_forked(argv, "state") == -9
    assert I.run_forked(argv) == 1  # records the failure this time
    attempts = json.loads((state / "attempts.json").read_text())
    assert attempts["count"] == 1
    monkeypatch.delenv("DUMPSAVER_RAISE_AT")
    assert I.run_forked(argv) == 0
    assert not (state / "attempts.json").exists()
    assert len(I.visible_dumps(dest)) == 1


def test_interrupted_retention_leaves_no_half_deleted_dump(
    machines: dict[str, Sim], shm_path: Path
) -> None:
    """Killed half way through deleting an old dump (keep_dumps): the old dump must not
    stay visible with some of its files gone.  (Regression: the victim was deleted in
    place, so a kill left e.g. info.json without its vmcore, listed as a saved dump.)"""
    import os
    import signal

    old, new = machines["m2"].copy(shm_path / "old"), machines["m1"].copy(shm_path / "new")
    dest = shm_path / "dest"
    cfg = shm_path / "c.yaml"
    cfg.write_text("minfree: 0\nkeep_dumps: 1\n")
    assert I.run_forked(I.save_argv(old, dest, shm_path / "st", cfg)) in (0, 4)

    def die_on_second_unlink() -> None:
        real = os.unlink
        n = [0]

        def unlink(path: object, *a: object, **kw: object) -> None:
            if kw.get("dir_fd") is not None:
                n[0] += 1
                if n[0] == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            real(path, *a, **kw)  # type: ignore[arg-type]

        os.unlink = unlink  # type: ignore[assignment]

    argv = I.save_argv(new, dest, shm_path / "st", cfg)
    assert I.run_forked(argv, pre=die_on_second_unlink) == -9
    for d in I.visible_dumps(dest):  # whatever is visible is whole
        info = json.loads((d / "info.json").read_text())
        assert (d / "vmcore").stat().st_size == info["file_size"], d.name
        assert (d / "dmesg.txt").exists(), d.name
    assert I.run_forked(argv) == 0  # the new dump was saved and released before the kill
    (only,) = I.visible_dumps(dest)
    assert json.loads((only / "info.json").read_text())["dump_id"] == new.manifest["dump_id"]
    # the half-deleted old dump is out of sight; the next save removes it
    left = [p.name for p in dest.iterdir() if p.name.startswith(".tmp-")]
    assert all(n.startswith(".tmp-old-") for n in left)
    third = machines["m3"].copy(shm_path / "third")
    assert I.run_forked(I.save_argv(third, dest, shm_path / "st", cfg)) == 0
    assert not [p for p in dest.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.long
def test_long_pairs_and_timed_kills(machines: dict[str, Sim], shm_path: Path) -> None:
    """Random pairs of kill points and kills after a random delay (real processes)."""
    t = I.campaign([machines["m3"]], shm_path, every_page=False, pairs=100, timed=100)
    report("interrupt-long", t.as_dict())
    _assert_clean(t)
