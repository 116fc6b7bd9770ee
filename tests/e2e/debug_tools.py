"""Fetch (once) and cache the guest kernel's vmlinux with its debug info.

``crash`` and drgn need the symbols of the exact kernel build that crashed.  Debian ships
them in ``linux-image-<release>-dbg`` (858 MB for 6.1.0-57, 5.4 GiB unpacked), of which
only ``/usr/lib/debug/boot/vmlinux-<release>`` (~630 MB) is needed.  This module:

1. asks apt, with a private configuration holding the same mirrors the guest image is
   built from (image.MIRRORS: the host's own sources and lists are not touched), for the
   ``-dbg`` package of the guest's kernel at the exact package version;
2. streams the package through ``dpkg-deb --fsys-tarfile | tar -x --occurrence=1`` so
   only the vmlinux member is written (tar stops reading once it has it: it comes early
   in the archive);
3. deletes the .deb and keeps ``vmlinux-<release>_<version>`` in the e2e cache, with a
   JSON stamp giving its build id and what the download cost.

A second run finds the stamp and does nothing.  By hand::

    python3 tests/e2e/vmlinux.py --release 6.1.0-57-amd64 --version 6.1.192-3
    python3 tests/e2e/vmlinux.py --rootfs /var/cache/dumpsaver-e2e/rootfs-<key>
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import image as guest_image  # noqa: E402

MEMBER = "./usr/lib/debug/boot/vmlinux-{release}"


@dataclass(frozen=True)
class Vmlinux:
    path: Path
    release: str
    version: str
    build_id: str


def _log(msg: str) -> None:
    print(f"[e2e-vmlinux] {msg}", file=sys.stderr, flush=True)


def build_id(path: Path) -> str:
    """The GNU build id of an ELF file (``readelf -n``), '' when it has none."""
    r = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True, check=True)
    m = re.search(r"Build ID: ([0-9a-f]+)", r.stdout)
    return m.group(1) if m else ""


def _apt(tmp: Path, *args: str) -> None:
    """apt-get with a private source list, lists and cache under ``tmp``."""
    opts = [
        f"-oDir::Etc::SourceList={tmp / 'sources.list'}",
        "-oDir::Etc::SourceParts=/nonexistent",
        f"-oDir::State::Lists={tmp / 'lists'}",
        f"-oDir::Cache={tmp / 'cache'}",
        "-oDebug::NoLocking=1",
        # the .deb lands in a root-only directory: no _apt sandbox warning
        "-oAPT::Sandbox::User=root",
    ]
    subprocess.run(["apt-get", "-q", *opts, *args], check=True, cwd=tmp, stdout=sys.stderr)


def ensure_vmlinux(cache_dir: Path, release: str, version: str) -> Vmlinux:
    """The cached vmlinux of ``linux-image-<release>`` at ``version``; fetch it if missing."""
    target = cache_dir / f"vmlinux-{release}_{version}"
    stamp = target.with_name(target.name + ".json")
    if stamp.exists() and target.exists():
        info = json.loads(stamp.read_text())
        return Vmlinux(target, release, version, info["build_id"])
    cache_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="vmlinux-dl.") as td:
        tmp = Path(td)
        (tmp / "lists" / "partial").mkdir(parents=True)
        (tmp / "cache" / "archives" / "partial").mkdir(parents=True)
        (tmp / "sources.list").write_text("\n".join(guest_image.MIRRORS) + "\n")
        _apt(tmp, "update")
        pkg = f"linux-image-{release}-dbg"
        _log(f"downloading {pkg}={version} (~860 MB)")
        _apt(tmp, "download", f"{pkg}={version}")
        debs = list(tmp.glob(f"{pkg}_*.deb"))
        if len(debs) != 1:
            raise RuntimeError(f"apt-get download gave {debs}")
        t_dl = time.monotonic() - t0
        member = MEMBER.format(release=release)
        out = tmp / "vmlinux"
        with out.open("wb") as sink:
            # dpkg-deb's own complaint about the broken pipe is noise: kept for errors
            deb = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[0])],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
            assert deb.stdout is not None
            tar = subprocess.run(
                ["tar", "-x", "--occurrence=1", "-O", member], stdin=deb.stdout, stdout=sink,
                check=False,
            )  # fmt: skip
            deb.stdout.close()
            _, deb_err = deb.communicate()  # killed by SIGPIPE once tar has its member
        debs[0].unlink()
        if tar.returncode != 0 or out.stat().st_size == 0:
            raise RuntimeError(
                f"{member} not extracted from {debs[0].name} (tar rc {tar.returncode}): "
                + deb_err.decode(errors="replace").strip()
            )
        bid = build_id(out)
        if not bid:
            raise RuntimeError(f"{member} has no build id")
        for old in cache_dir.glob(f"vmlinux-{release}_*"):  # an older upload of this ABI
            old.unlink()
        shutil.move(str(out), target)
    info = {
        "release": release,
        "version": version,
        "build_id": bid,
        "bytes": target.stat().st_size,
        "download_s": round(t_dl, 1),
        "total_s": round(time.monotonic() - t0, 1),
    }
    stamp.write_text(json.dumps(info, indent=2) + "\n")
    _log(f"cached {target} ({info['bytes'] >> 20} MiB) in {info['total_s']} s")
    return Vmlinux(target, release, version, bid)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cache", type=Path, default=guest_image.default_cache_dir())
    ap.add_argument("--rootfs", type=Path, help="take the kernel from this guest rootfs")
    ap.add_argument("--release", help="e.g. 6.1.0-57-amd64")
    ap.add_argument("--version", help="the linux-image package version, e.g. 6.1.192-3")
    a = ap.parse_args()
    if a.rootfs:
        release, version = guest_image.kernel_of_rootfs(a.rootfs)
    elif a.release and a.version:
        release, version = a.release, a.version
    else:
        ap.error("give --rootfs, or --release and --version")
    v = ensure_vmlinux(a.cache, release, version)
    print(json.dumps({"path": str(v.path), "build_id": v.build_id}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
