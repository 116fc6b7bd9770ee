"""Fixtures for the end-to-end tests: a real kernel in QEMU, dumpsaver from its .deb.

Opt-in (they take minutes): run with ``-m e2e`` or ``DUMPSAVER_E2E=1``.  They skip, with
the reason, when not root or when qemu-system-x86_64, mmdebstrap, e2fsprogs or
dpkg-buildpackage are missing (``tests/e2e/setup-deps.sh`` installs them).

Environment:
  DUMPSAVER_E2E_CACHE   base rootfs cache (default /var/cache/dumpsaver-e2e)
  DUMPSAVER_E2E_WORK    keep scenario disks, serial logs and extracted evidence here
  DUMPSAVER_E2E_DEB     use this .deb instead of building one with packaging/build-deb.sh
  DUMPSAVER_E2E_ACCEL   tcg (default) or kvm
  DUMPSAVER_E2E_TIMEOUT hard limit per scenario in seconds (default 600)
  DUMPSAVER_E2E_DKMS_DEB use this dumpsaver-dkms .deb (default: the one build-deb.sh made)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import debug_tools  # noqa: E402
import image as guest_image  # noqa: E402
import qemu  # noqa: E402

TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "mmdebstrap": "mmdebstrap",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "dpkg-buildpackage": "dpkg-dev",
    "journalctl": "systemd",
    "unshare": "util-linux",
    # reading the real kernel's dumps (test_realcrash.py)
    "crash": "crash",
    "makedumpfile": "makedumpfile",
    "readelf": "binutils",
}


def _wanted(config: pytest.Config) -> bool:
    if os.environ.get("DUMPSAVER_E2E") == "1":
        return True
    markexpr = config.getoption("-m", default="") or ""
    return "e2e" in markexpr and "not e2e" not in markexpr


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mmdebstrap --mode=root, chroot dpkg -i)"
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if qemu.qemu_binary() is None and "qemu-system-x86" not in missing:
        missing.append("qemu-system-x86")
    if missing:
        return "missing " + ", ".join(missing) + " (run tests/e2e/setup-deps.sh)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = str(HERE)
    ours = [it for it in items if str(it.path).startswith(here)]
    if not ours:
        return
    reason = None
    if not _wanted(config):
        reason = "end-to-end boots are opt-in: pytest -m e2e (or DUMPSAVER_E2E=1)"
    else:
        reason = _missing()
    for it in ours:
        it.add_marker(pytest.mark.e2e)
        if reason:
            it.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def e2e_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("DUMPSAVER_E2E_WORK")
    if env:
        p = Path(env)
        p.mkdir(parents=True, exist_ok=True)
        return p
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def e2e_timings(e2e_workdir: Path) -> Iterator[dict[str, float]]:
    """Measured numbers: a report, not a test.  Printed at the end of the session and
    written to timings.json next to the evidence."""
    timings: dict[str, float] = {}
    yield timings
    if timings:
        (e2e_workdir / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")


@pytest.fixture(scope="session")
def dumpsaver_deb(e2e_workdir: Path, e2e_timings: dict[str, float]) -> Path:
    env = os.environ.get("DUMPSAVER_E2E_DEB")
    if env:
        return Path(env)
    t0 = time.monotonic()
    r = subprocess.run(
        [str(REPO / "packaging" / "build-deb.sh"), str(e2e_workdir / "deb")],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.fail("packaging/build-deb.sh failed:\n" + r.stderr[-4000:])
    e2e_timings["deb_build_s"] = round(time.monotonic() - t0, 1)
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def base_rootfs(e2e_timings: dict[str, float]) -> guest_image.BaseRootfs:
    t0 = time.monotonic()
    base = guest_image.build_rootfs(guest_image.default_cache_dir())
    e2e_timings["rootfs_s"] = round(time.monotonic() - t0, 1)
    return base


@pytest.fixture(scope="session")
def guest(
    base_rootfs: guest_image.BaseRootfs,
    dumpsaver_deb: Path,
    e2e_workdir: Path,
    e2e_timings: dict[str, float],
) -> guest_image.GuestImage:
    """dumpsaver alone: the simulator writes the dumps (no kernel module)."""
    t0 = time.monotonic()
    img = guest_image.build_session_image(base_rootfs, dumpsaver_deb, e2e_workdir)
    e2e_timings["image_s"] = round(time.monotonic() - t0, 1)
    return img


@pytest.fixture(scope="session")
def dkms_deb(dumpsaver_deb: Path) -> Path:
    """The dumpsaver-dkms package built next to dumpsaver's (or DUMPSAVER_E2E_DKMS_DEB)."""
    env = os.environ.get("DUMPSAVER_E2E_DKMS_DEB")
    if env:
        return Path(env)
    found = sorted(dumpsaver_deb.parent.glob("dumpsaver-dkms_*.deb"))
    if not found:
        pytest.fail(f"packaging/build-deb.sh made no dumpsaver-dkms .deb in {dumpsaver_deb.parent}")
    return found[-1]


@pytest.fixture(scope="session")
def real_guest(
    base_rootfs: guest_image.BaseRootfs,
    dumpsaver_deb: Path,
    dkms_deb: Path,
    e2e_workdir: Path,
    e2e_timings: dict[str, float],
) -> guest_image.GuestImage:
    """dumpsaver and dumpsaver-dkms installed together (DKMS builds the module in the
    image's chroot, as apt does on a user's machine), plus the e2e_oops test module."""
    t0 = time.monotonic()
    img = guest_image.build_session_image(
        base_rootfs,
        dumpsaver_deb,
        e2e_workdir / "real",
        extra_debs=(dkms_deb,),
        test_modules=(HERE / "oops",),
    )
    e2e_timings["real_image_s"] = round(time.monotonic() - t0, 1)
    return img


@pytest.fixture(scope="session")
def vmlinux(
    base_rootfs: guest_image.BaseRootfs, e2e_timings: dict[str, float]
) -> debug_tools.Vmlinux:
    """The guest kernel's vmlinux with debug info (downloaded once, then cached)."""
    t0 = time.monotonic()
    v = debug_tools.ensure_vmlinux(
        guest_image.default_cache_dir(), base_rootfs.release, base_rootfs.version
    )
    e2e_timings["vmlinux_s"] = round(time.monotonic() - t0, 1)
    return v


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    timings = getattr(config, "_e2e_timings", None)
    if timings:
        terminalreporter.write_sep("-", "e2e timings")
        for k, v in timings.items():
            terminalreporter.write_line(f"{k}: {v}")


@pytest.fixture(scope="session", autouse=True)
def _publish_timings(
    request: pytest.FixtureRequest, e2e_timings: dict[str, float]
) -> Iterator[None]:
    request.config._e2e_timings = e2e_timings  # type: ignore[attr-defined]
    yield
    work = os.environ.get("DUMPSAVER_E2E_WORK")
    if e2e_timings and work:  # whichever test files ran: their figures, kept
        (Path(work) / "timings.json").write_text(json.dumps(e2e_timings, indent=2) + "\n")


@pytest.fixture(scope="session")
def crash_cmd(e2e_timings: dict[str, float]) -> list[str]:
    """trixie's crash, run from the cache (bookworm's cannot list this kernel's tasks)."""
    t0 = time.monotonic()
    cmd = debug_tools.ensure_crash(guest_image.default_cache_dir())
    e2e_timings["crash_tool_s"] = round(time.monotonic() - t0, 1)
    return cmd
