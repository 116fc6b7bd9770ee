"""(4) Full and failing disks.

Each case: the save fails with one clear ``error:`` line and its exit code, the dump
stays in memory (header still valid, not released), nothing partial is left that
looks like a dump, and the next run succeeds once the cause is gone.

Needs root and mount(8) (tmpfs, loop devices, ext4); skipped with the reason
otherwise.  Real I/O errors from the block layer come from a loop device whose
backing file is shrunk under a mounted ext4 (this kind of machine's kernel has no
device-mapper, so its ``error``/``flakey`` targets cannot be used here).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dumpsaver import cli
from dumpsaver import format as fmt
from dumpsaver.errors import EXIT_FAILURE, EXIT_NO_SPACE

from . import interrupt as I
from .harness import Sim, make_machine


def sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True)


@functools.cache
def _mount_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount)"
    if not shutil.which("mount") or not shutil.which("losetup"):
        return "needs mount and losetup"
    import tempfile

    d = tempfile.mkdtemp()
    try:
        sh("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d)
        sh("umount", d)
    except subprocess.CalledProcessError as e:
        return f"cannot mount a tmpfs here: {e.stderr.strip()}"
    finally:
        os.rmdir(d)
    return None


@pytest.fixture(autouse=True)
def _needs_mount(request: pytest.FixtureRequest) -> None:
    if "retention" in request.node.name:
        return
    why = _mount_problem()
    if why:
        pytest.skip(why)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def loop_ext4(image: Path, mnt: Path, size: str = "32M") -> Iterator[str]:
    """ext4 (no journal, errors=continue) on a loop device over ``image``."""
    sh("truncate", "-s", size, str(image))
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "^has_journal", str(image))
    dev = sh("losetup", "-f", "--show", str(image)).stdout.strip()
    try:
        mnt.mkdir(parents=True, exist_ok=True)
        sh("mount", "-o", "errors=continue", dev, str(mnt))
        try:
            yield dev
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def run_save(m: Sim, dest: Path, tmp: Path, capsys: pytest.CaptureFixture[str],
             *extra: str) -> tuple[int, str]:  # fmt: skip
    cfg = tmp / "config.yaml"
    if not cfg.exists():
        cfg.write_text("minfree: 0\n")
    capsys.readouterr()
    rc = cli.main([*I.save_argv(m, dest, tmp / "state", cfg), *extra])
    return rc, capsys.readouterr().err


def assert_failed_cleanly(m: Sim, dest: Path, rc: int, err: str, code: int,
                          *words: str) -> None:  # fmt: skip
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == code, err
    assert len(errors) == 1, err
    assert "hint:" in errors[0]
    for w in words:
        assert w in errors[0], errors[0]
    assert "stays in memory" in errors[0] or code != EXIT_NO_SPACE
    assert I.header_magic(m) == fmt.MAGIC  # the dump is still there
    assert (m.sysfs / "release").read_text() == ""
    if dest.is_dir() and os.access(dest, os.R_OK):
        assert I.visible_dumps(dest) == []
        assert not [p for p in dest.iterdir() if p.name.startswith(".tmp-")]


def assert_saved(m: Sim, dest: Path, rc: int, err: str) -> None:
    assert rc == 0, err
    (d,) = I.visible_dumps(dest)
    assert I.check_visible(m, dest, m.truth_pages()) == []
    assert json.loads((d / "info.json").read_text())["complete"]
    assert I.header_magic(m) == fmt.SAVED_MAGIC


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Sim:
    """An 8M busy machine: a 1 MiB vmcore."""
    return make_machine(tmp_path_factory.mktemp("big") / "m", memory=8 << 20, profile="busy",
                        seed=2)  # fmt: skip


def test_no_space_before_writing(machine: Sim, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    with tmpfs(tmp_path / "var", "64k") as var:
        dest = var / "dumps"
        rc, err = run_save(machine, dest, tmp_path, capsys)
        assert_failed_cleanly(machine, dest, rc, err, EXIT_NO_SPACE, "needed", "available")
        sh("mount", "-o", "remount,size=8m", str(var))
        assert_saved(machine, dest, *run_save(machine, dest, tmp_path, capsys))


def test_no_space_before_writing_counts_minfree(
    machine: Sim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tmpfs(tmp_path / "var", "4m") as var:
        dest = var / "dumps"
        (tmp_path / "config.yaml").write_text("minfree: 8M\n")
        rc, err = run_save(machine, dest, tmp_path, capsys)
        assert_failed_cleanly(machine, dest, rc, err, EXIT_NO_SPACE, "minfree")
        (tmp_path / "config.yaml").write_text("minfree: 1M\n")
        assert_saved(machine, dest, *run_save(machine, dest, tmp_path, capsys))


def test_no_space_half_way_thin_disk(big: Sim, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """ext4 says there is room, but the disk under it (a loop device over a file on a
    nearly full tmpfs: thin provisioning) runs out while the vmcore is written."""
    m = big.copy(tmp_path / "m")
    with tmpfs(tmp_path / "back", "4m") as back, loop_ext4(back / "disk", tmp_path / "mnt"):
        used = int(sh("du", "-k", str(back / "disk")).stdout.split()[0])
        sh("mount", "-o", f"remount,size={used + 256}k", str(back))
        dest = tmp_path / "mnt" / "dumps"
        rc, err = run_save(m, dest, tmp_path, capsys)
        assert rc in (EXIT_NO_SPACE, EXIT_FAILURE), err  # ENOSPC, or EIO from the loop device
        assert_failed_cleanly(m, dest, rc, err, rc)
        sh("mount", "-o", "remount,size=64m", str(back))
        assert_saved(m, dest, *run_save(m, dest, tmp_path, capsys))


def test_no_space_half_way_other_writer(machine: Sim, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Someone else fills the disk between the space check and the write (statvfs is
    made to report plenty of room; the tmpfs really is too small)."""
    real = os.statvfs

    class Roomy:
        def __init__(self, st: os.statvfs_result) -> None:
            self.f_frsize, self.f_bsize = st.f_frsize, st.f_bsize
            self.f_bavail = self.f_bfree = 1 << 30

    with tmpfs(tmp_path / "var", "96k") as var:
        dest = var / "dumps"
        monkeypatch.setattr(os, "statvfs", lambda p: Roomy(real(p)))
        rc, err = run_save(machine, dest, tmp_path, capsys)
        monkeypatch.setattr(os, "statvfs", real)
        assert_failed_cleanly(machine, dest, rc, err, EXIT_NO_SPACE, "ran out of space")
        sh("mount", "-o", "remount,size=8m", str(var))
        assert_saved(machine, dest, *run_save(machine, dest, tmp_path, capsys))


def test_read_only_dest(machine: Sim, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    with tmpfs(tmp_path / "var", "8m") as var:
        dest = var / "dumps"
        dest.mkdir(mode=0o700)
        sh("mount", "-o", "remount,ro", str(var))
        rc, err = run_save(machine, dest, tmp_path, capsys)
        assert_failed_cleanly(machine, dest, rc, err, EXIT_FAILURE, "read-only")
        sh("mount", "-o", "remount,rw", str(var))
        assert_saved(machine, dest, *run_save(machine, dest, tmp_path, capsys))


def test_read_only_var_without_dest(machine: Sim, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    with tmpfs(tmp_path / "var", "8m") as var:
        sh("mount", "-o", "remount,ro", str(var))
        dest = var / "dumps"
        rc, err = run_save(machine, dest, tmp_path, capsys)
        assert_failed_cleanly(machine, dest, rc, err, EXIT_FAILURE, "read-only")
        sh("mount", "-o", "remount,rw", str(var))
        assert_saved(machine, dest, *run_save(machine, dest, tmp_path, capsys))


def test_missing_dest_is_created_0700(machine: Sim, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    dest = tmp_path / "var" / "dumps"
    assert_saved(machine, dest, *run_save(machine, dest, tmp_path, capsys))
    assert (dest.stat().st_mode & 0o777) == 0o700


def test_wrong_owned_dest(machine: Sim, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    dest = tmp_path / "dumps"
    dest.mkdir(mode=0o700)
    os.chown(dest, 4242, 4242)
    rc, err = run_save(machine, dest, tmp_path, capsys)
    assert_failed_cleanly(machine, dest, rc, err, EXIT_FAILURE, "owned by uid 4242")
    os.chown(dest, 0, 0)
    assert_saved(machine, dest, *run_save(machine, dest, tmp_path, capsys))


def test_io_error_loop_shrunk(big: Sim, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Real EIO from the block layer: the loop device under a mounted ext4 is cut to
    2 MiB, so writing the vmcore's blocks fails ("attempt to access beyond end of
    device"); restoring its size is the repair."""
    m = big.copy(tmp_path / "m")
    img = tmp_path / "disk"
    with loop_ext4(img, tmp_path / "mnt") as dev:
        dest = tmp_path / "mnt" / "dumps"
        dest.mkdir(mode=0o700)
        sh("sync")
        sh("truncate", "-s", "2M", str(img))
        sh("losetup", "-c", dev)
        rc, err = run_save(m, dest, tmp_path, capsys)
        assert_failed_cleanly(m, dest, rc, err, EXIT_FAILURE, "Input/output error", "I/O error")
        sh("truncate", "-s", "32M", str(img))
        sh("losetup", "-c", dev)
        assert_saved(m, dest, *run_save(m, dest, tmp_path, capsys))


# -- injected errors: every write and fsync of a save, one at a time --------------------


def _count_calls(machine: Sim, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                 monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:  # fmt: skip
    counts = {"fsync": 0, "pwrite": 0, "write": 0}
    m = machine.copy(tmp_path / "count")
    for name in counts:
        real = getattr(os, name)

        def wrap(*a: object, _real: object = real, _n: str = name) -> object:
            counts[_n] += 1
            return _real(*a)  # type: ignore[operator]

        monkeypatch.setattr(os, name, wrap)
    rc, err = run_save(m, tmp_path / "count-dest", tmp_path, capsys)
    monkeypatch.undo()
    assert rc == 0, err
    return counts


@pytest.mark.parametrize("call", ["fsync", "pwrite", "write"])
def test_injected_eio_at_every_call(machine: Sim, tmp_path: Path, call: str,
                                    capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """EIO from the n-th os.<call> of a save, for every n: the same clean failure each
    time (or, for the fsync of the memory image after the header is invalidated, a
    saved dump), and a clean save once the error is gone."""
    total = _count_calls(machine, tmp_path, capsys, monkeypatch)[call]
    assert total > 0
    for n in range(1, total + 1):
        m = machine.copy(tmp_path / f"m{n}")
        dest = tmp_path / f"dest{n}"
        seen = [0]
        real = getattr(os, call)

        def failing(*a: object, _real: object = real, _seen: list[int] = seen,
                    _n: int = n) -> object:  # fmt: skip
            _seen[0] += 1
            if _seen[0] == _n:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return _real(*a)  # type: ignore[operator]

        monkeypatch.setattr(os, call, failing)
        rc, err = run_save(m, dest, tmp_path, capsys)
        monkeypatch.undo()
        if rc == 0:  # the failing call came after the dump was durable and released
            assert I.header_magic(m) == fmt.SAVED_MAGIC
            assert I.check_visible(m, dest, m.truth_pages()) == []
            continue
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, (n, err)
        assert "internal error" not in errors[0], (n, err)
        assert I.check_visible(m, dest, m.truth_pages()) == [], n
        if I.header_magic(m) == fmt.MAGIC:
            assert "stays in memory" in errors[0] or "release" in errors[0], (n, err)
        rc, err = run_save(m, dest, tmp_path, capsys)
        assert rc == 0, (n, err)
        assert len(I.visible_dumps(dest)) == 1, n
        assert I.header_magic(m) == fmt.SAVED_MAGIC
        shutil.rmtree(tmp_path / f"m{n}")


def test_retention_failure_is_only_a_warning(
    machines: dict[str, Sim], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Regression: an error deleting an old dump (keep_dumps) escaped as an internal
    error after the new dump was saved and released."""
    old, new = machines["m3"].copy(tmp_path / "old"), machines["m1"].copy(tmp_path / "new")
    dest = tmp_path / "dest"
    (tmp_path / "config.yaml").write_text("minfree: 0\nkeep_dumps: 1\n")
    assert run_save(old, dest, tmp_path, capsys)[0] == 0

    def broken(*a: object, **kw: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(shutil, "rmtree", broken)
    rc, err = run_save(new, dest, tmp_path, capsys)
    monkeypatch.undo()
    assert rc == 0, err
    assert "retention: cannot remove" in err
    assert I.header_magic(new) == fmt.SAVED_MAGIC
    assert not [ln for ln in err.splitlines() if ln.startswith("error:")]
