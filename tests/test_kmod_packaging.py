"""dumpsaver-dkms, the way distributions ship out-of-tree modules: the .deb (dh_dkms)
and the RPM subpackage carry the module's sources with a versioned dkms.conf, the arm
unit and the opt-in grub.d reservation; DKMS builds the packaged sources against the
installed kernel headers (in a private DKMS tree: nothing is installed on the host)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .test_kmod_build import kernel_headers

REPO = Path(__file__).resolve().parent.parent
SOURCES = {"Kbuild", "Makefile", "dkms.conf", "dumpsaver_format.h", "encode.c", "main.c",
           "panic.c"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="package builds run as root here")


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("dpkg-buildpackage") is None or shutil.which("dh_dkms") is None:
        pytest.skip("dpkg-buildpackage or dh_dkms missing (tools/bootstrap.sh installs them)")
    out = tmp_path_factory.mktemp("debs")
    r = subprocess.run(["sh", str(REPO / "packaging/build-deb.sh"), str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def _version() -> str:
    return subprocess.run(["dpkg-parsechangelog", "-l", str(REPO / "packaging/debian/changelog"),
                           "-S", "Version"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_dkms_deb(debs: Path, tmp_path: Path) -> None:
    ver = _version()
    (deb,) = debs.glob("dumpsaver-dkms_*_all.deb")
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    src = root / f"usr/src/dumpsaver-{ver}"
    assert {p.name for p in src.iterdir()} >= SOURCES
    conf = (src / "dkms.conf").read_text()
    assert f'PACKAGE_VERSION="{ver}"' in conf and 'BUILT_MODULE_NAME[0]="dumpsaver"' in conf
    assert (root / "lib/systemd/system/dumpsaver-arm.service").exists()
    grub = (root / "etc/default/grub.d/dumpsaver.cfg").read_text()
    active = [ln for ln in grub.splitlines() if ln.strip() and not ln.startswith("#")]
    assert active == [] and "memmap=" in grub  # opt-in: every line commented
    ctrl = tmp_path / "ctrl"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(ctrl)], check=True)
    assert "common.postinst" in (ctrl / "postinst").read_text()  # dkms add/build/install
    assert "dumpsaver-arm.service" in (ctrl / "postinst").read_text()
    info = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True,
                          text=True, check=True).stdout
    assert "dkms" in info and f"dumpsaver (= {ver})" in info
    lint = subprocess.run(["lintian", "--fail-on", "error,warning", str(deb)],
                          capture_output=True, text=True, timeout=600)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    # DKMS builds the packaged sources for the installed headers' kernel.
    kdir = kernel_headers()
    if kdir is None or shutil.which("dkms") is None:
        pytest.skip("no dkms or kernel headers (tools/bootstrap.sh installs them)")
    kver = kdir.name.removeprefix("linux-headers-")
    if not Path(f"/lib/modules/{kver}/build").exists():
        pytest.skip(f"/lib/modules/{kver}/build missing")
    tree, srct = tmp_path / "dkms", tmp_path / "src"
    tree.mkdir()
    srct.mkdir()
    shutil.copytree(src, srct / f"dumpsaver-{ver}")
    common = ["--sourcetree", str(srct), "--dkmstree", str(tree)]
    for cmd in (["add"], ["build", "-k", kver]):
        r = subprocess.run(["dkms", *cmd, "-m", "dumpsaver", "-v", ver, *common],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
    built = {p.name.split(".")[0] for p in tree.glob(f"dumpsaver/{ver}/{kver}/*/module/*.ko*")}
    assert built == {"dumpsaver", "dumpsaver_lz4", "dumpsaver_zstd"}


def test_dkms_rpm(tmp_path: Path) -> None:
    if shutil.which("rpmbuild") is None:
        pytest.skip("rpmbuild is not installed (tools/bootstrap.sh installs it)")
    r = subprocess.run(["sh", str(REPO / "packaging/build-rpm.sh"), str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (rpm,) = tmp_path.glob("dumpsaver-dkms-*.noarch.rpm")
    files = subprocess.run(["rpm", "-qlp", str(rpm)], capture_output=True, text=True,
                           check=True).stdout
    ver = _version()
    for name in SOURCES:
        assert f"/usr/src/dumpsaver-{ver}/{name}" in files
    assert "dumpsaver-arm.service" in files and "/etc/default/grub.d/dumpsaver.cfg" in files
    scripts = subprocess.run(["rpm", "-qp", "--scripts", str(rpm)], capture_output=True,
                             text=True, check=True).stdout
    assert "dkms add" in scripts and "dkms remove" in scripts
