"""Durability: interrupted saves, full disks, locking, retention, permissions."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dumpsaver import format as fmt
from dumpsaver.errors import EXIT_BUSY, EXIT_NO_SPACE

from .conftest import Sim, check_against_truth, run_cli, save_sim, test_config

PHASES = ["locked", "scan", "mkdir", "dmesg", "fsync-core", "info", "fsync-dir", "rename",
          "fsync-dest", "release", "release-sysfs", "retention"]
DURABLE_FROM = PHASES.index("release")  # from here on the saved copy is on disk


def saved_dirs(dest: Path) -> list[Path]:
    return sorted(p for p in dest.iterdir() if not p.name.startswith(".")) if dest.exists() else []


@pytest.mark.parametrize("phase", PHASES)
def test_kill_and_rerun_saves_exactly_once(make_sim, tmp_path, phase) -> None:  # type: ignore[no-untyped-def]
    sim: Sim = make_sim(memory=8 << 20, seed=2)
    dest = tmp_path / "dumps"
    r = run_cli("save", *sim.cli_args(dest), "--no-restart", env={"DUMPSAVER_KILL_AT": phase})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    if PHASES.index(phase) < DURABLE_FROM:
        assert sim.magic() == fmt.MAGIC, "released before the copy was durable"
        assert saved_dirs(dest) == [] or phase in ("fsync-dest",)
    # a half-written copy is never visible under a final name
    for d in saved_dirs(dest):
        assert json.loads((d / "info.json").read_text())["complete"] is True
    r = run_cli("save", *sim.cli_args(dest), "--no-restart")
    assert r.returncode == 0, r.stderr
    dirs = saved_dirs(dest)
    assert len(dirs) == 1, dirs
    assert not [p for p in dest.iterdir() if p.name.startswith(".tmp-")]
    assert sim.magic() == fmt.SAVED_MAGIC
    check_against_truth(dirs[0] / "vmcore", sim)
    # and a third run finds nothing to do
    r = run_cli("save", *sim.cli_args(dest), "--no-restart")
    assert r.returncode == 0 and "no dump" in r.stdout
    assert len(saved_dirs(dest)) == 1


def test_power_fails_between_rename_and_release(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=8 << 20, seed=4)
    dest = tmp_path / "dumps"
    r = run_cli("save", *sim.cli_args(dest), "--no-restart", env={"DUMPSAVER_KILL_AT": "release"})
    assert r.returncode == -signal.SIGKILL
    assert sim.magic() == fmt.MAGIC and len(saved_dirs(dest)) == 1
    r = run_cli("save", *sim.cli_args(dest), "--no-restart")
    assert r.returncode == 0 and "already-saved" in r.stdout
    assert len(saved_dirs(dest)) == 1 and sim.magic() == fmt.SAVED_MAGIC


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_keeps_the_dump_and_says_how_much(make_sim, tmp_path, small_tmpfs) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=64 << 20, seed=5)
    dest = small_tmpfs / "dumps"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minfree: 0\n")
    r = run_cli("--config", str(cfg), "save", *sim.cli_args(dest), "--no-restart")
    assert r.returncode == EXIT_NO_SPACE, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and r.stderr.splitlines()[-1] == errors[0]
    line = errors[0]
    assert line.startswith("error: not enough space") and "(attempt 1 of 3)" in line
    assert "needed" in line and "available" in line
    assert sim.magic() == fmt.MAGIC
    assert [p.name for p in dest.iterdir()] == [".lock"]
    state = json.loads((dest.parent / "state" / "attempts.json").read_text())
    assert state["count"] == 1 and "not enough space" in state["reason"]
    st = run_cli("status", "--json", *sim.cli_args(dest))
    s = json.loads(st.stdout)
    assert s["waiting"] is not None and s["failed_attempts"]["count"] == 1
    # once there is room, the next run saves it
    r = run_cli("--config", str(cfg), "save", *sim.cli_args(tmp_path / "big"), "--no-restart")
    assert r.returncode == 0


def test_gives_up_after_max_attempts(make_sim, tmp_path, small_tmpfs) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=64 << 20, seed=5)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minfree: 0\nmax_attempts: 2\n")
    args = ["--config", str(cfg), "save", *sim.cli_args(small_tmpfs / "d"), "--no-restart"]
    codes = [run_cli(*args).returncode for _ in range(3)]
    assert codes == [EXIT_NO_SPACE, EXIT_NO_SPACE, 8]
    assert sim.magic() == fmt.MAGIC


def test_minfree_is_respected(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=8 << 20)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minfree: 1T\n")
    r = run_cli("--config", str(cfg), "save", *sim.cli_args(tmp_path / "d"), "--no-restart")
    assert r.returncode == EXIT_NO_SPACE and "1.0 TiB minfree" in r.stderr


@contextlib.contextmanager
def _dest_locked(dest: Path) -> Iterator[None]:
    """Hold the dump directory's lock as another saver would."""
    dest.mkdir(mode=0o700)
    fd = os.open(dest / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def test_second_saver_refuses_clearly(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=8 << 20)
    dest = tmp_path / "dumps"
    with _dest_locked(dest):
        r = run_cli("save", *sim.cli_args(dest), "--no-restart")
        assert r.returncode == EXIT_BUSY and "another dumpsaver" in r.stderr
        r = run_cli("save", *sim.cli_args(dest), "--no-restart", "--wait", "0.3")
        assert r.returncode == EXIT_BUSY
    assert sim.magic() == fmt.MAGIC
    assert run_cli("save", *sim.cli_args(dest), "--no-restart").returncode == 0


def test_busy_lock_is_not_a_failed_attempt(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Concurrent runs must not use up max_attempts (issue 8)."""
    sim = make_sim(memory=8 << 20)
    dest = tmp_path / "dumps"
    with _dest_locked(dest):
        for _ in range(4):  # more than max_attempts (3)
            assert run_cli("save", *sim.cli_args(dest), "--no-restart").returncode == EXIT_BUSY
    assert not (tmp_path / "state" / "attempts.json").exists()
    assert run_cli("save", *sim.cli_args(dest), "--no-restart").returncode == 0


def test_the_lock_is_per_area_not_per_dump_dir(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two savers of one area with different --dest: one saves, the other is refused
    (issue 9, defect 11: both saved and both released, the second writing into memory
    already handed back)."""
    from dumpsaver import save

    sim = make_sim(memory=8 << 20)
    with save.area_locked(sim.candidate(), str(sim.mem), 0.0):  # a saver at work
        r = run_cli("save", *sim.cli_args(tmp_path / "other"), "--no-restart")
        assert r.returncode == EXIT_BUSY and "another dumpsaver" in r.stderr, r.stderr
        assert saved_dirs(tmp_path / "other") == []
    assert sim.magic() == fmt.MAGIC
    assert not (tmp_path / "state" / "attempts.json").exists()
    # another area of the same memory device is not held by that lock
    elsewhere = dataclasses.replace(sim.candidate(), header=sim.header_paddr + (1 << 20))
    with save.area_locked(elsewhere, str(sim.mem), 0.0):
        assert run_cli("save", *sim.cli_args(tmp_path / "d3"), "--no-restart").returncode == 0


def test_saved_by_another_saver_meanwhile(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A saver that opened the dump, then got the area lock only after another saver had
    saved and released it, neither saves it again nor writes into the area (defect 11)."""
    from dumpsaver import release, save
    from dumpsaver.errors import AlreadySavedError

    sim = make_sim(memory=8 << 20)
    cand = sim.candidate()
    mem, dump = save.open_dump(cand, str(sim.mem))  # this saver's view, before the lock
    with mem:
        release.release(cand, str(sim.mem))  # what the other saver did meanwhile
        before = sim.mem.read_bytes()
        with pytest.raises(AlreadySavedError, match="another dumpsaver"):
            save.save(test_config(), cand, dump, mem_path=str(sim.mem), dest=tmp_path / "d")
        (cand.release or tmp_path).unlink()  # a released sysfs area disappears
        with pytest.raises(AlreadySavedError, match="saved and released"):
            save.save(test_config(), cand, dump, mem_path=str(sim.mem), dest=tmp_path / "d")
    assert sim.mem.read_bytes() == before
    assert not (tmp_path / "d").exists()


def test_unexpected_error_counts_and_cleans_up(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An error that is not a DumpsaverError (a bug, MemoryError) is a failed attempt, so
    max_attempts applies, and leaves no .tmp-* behind (issue 9)."""
    sim = make_sim(memory=8 << 20)
    dest = tmp_path / "dumps"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("minfree: 0\nmax_attempts: 2\n")
    args = ["--config", str(cfg), "save", *sim.cli_args(dest), "--no-restart"]
    for n in (1, 2):
        r = run_cli(*args, env={"DUMPSAVER_RAISE_AT": "fsync-core"})
        assert r.returncode == 1 and "internal error: InjectedFault" in r.stderr, r.stderr
        assert [p.name for p in dest.iterdir()] == [".lock"]  # no .tmp-*, no dump
        state = json.loads((tmp_path / "state" / "attempts.json").read_text())
        assert state["count"] == n and "InjectedFault" in state["reason"]
    assert run_cli(*args).returncode == 8  # gave up: the boot does not loop
    assert sim.magic() == fmt.MAGIC
    assert run_cli(*args, "--force").returncode == 0


def test_a_new_crash_under_a_saved_dump_id_is_saved(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """ "Already saved" is not decided by dump_id alone (issue 9, defect 8): the simulator
    repeats the id for a seed, as any writer may."""
    dest = tmp_path / "dumps"
    first = make_sim(memory=8 << 20, seed=6)
    assert run_cli("save", *first.cli_args(dest), "--no-restart").returncode == 0
    second = make_sim(memory=8 << 20, seed=6, panic="BUG: another crash")
    assert second.manifest["dump_id"] == first.manifest["dump_id"]
    r = run_cli("save", *second.cli_args(dest), "--no-restart")
    assert r.returncode == 0 and "already-saved" not in r.stdout, r.stdout
    dirs = saved_dirs(dest)
    assert len(dirs) == 2
    panics = sorted(json.loads((d / "info.json").read_text())["panic"] for d in dirs)
    assert panics == ["BUG: another crash", "sysrq triggered crash"]
    check_against_truth(dirs[1] / "vmcore", second)
    # the same crash again is still recognised (and only released)
    third = make_sim(memory=8 << 20, seed=6, panic="BUG: another crash")
    r = run_cli("save", *third.cli_args(dest), "--no-restart")
    assert r.returncode == 0 and "already-saved" in r.stdout
    assert len(saved_dirs(dest)) == 2 and third.magic() == fmt.SAVED_MAGIC


def test_permissions_root_only(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=8 << 20)
    dest = tmp_path / "dumps"
    res = save_sim(sim, dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    d = res.dump_dir
    assert d is not None and stat.S_IMODE(d.stat().st_mode) == 0o700
    for f in d.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_symlinked_dump_dir_is_refused(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=8 << 20)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "dumps").symlink_to(target)
    r = run_cli("save", *sim.cli_args(tmp_path / "dumps"), "--no-restart")
    assert r.returncode == 1 and "symlinks are not followed" in r.stderr
    assert list(target.iterdir()) == [] and sim.magic() == fmt.MAGIC


def test_retention_keeps_the_newest(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    dest = tmp_path / "dumps"
    names = []
    for seed in (1, 2, 3):
        res = save_sim(make_sim(memory=8 << 20, seed=seed), dest, cfg=test_config(keep_dumps=2))
        assert res.dump_dir is not None
        names.append(res.dump_dir.name)
    assert [p.name for p in saved_dirs(dest)] == sorted(names[1:])


def test_retention_by_size(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    dest = tmp_path / "dumps"
    for seed in (1, 2, 3):
        save_sim(make_sim(memory=8 << 20, seed=seed), dest, cfg=test_config(max_use="100K"))
    assert len(saved_dirs(dest)) == 1  # the newest is never deleted, even when over


def test_keep_does_not_release(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=8 << 20)
    r = run_cli("save", *sim.cli_args(tmp_path / "d"), "--no-restart", "--keep")
    assert r.returncode == 0 and sim.magic() == fmt.MAGIC
    r = run_cli("save", *sim.cli_args(tmp_path / "d"), "--no-restart")
    assert "already-saved" in r.stdout and sim.magic() == fmt.SAVED_MAGIC
    assert len(saved_dirs(tmp_path / "d")) == 1


def test_sysfs_release_is_written_after_the_save(make_sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = make_sim(memory=8 << 20)
    assert (sim.sys / "release").read_text() == ""
    save_sim(sim, tmp_path / "d")
    assert (sim.sys / "release").read_text() == "1\n"
