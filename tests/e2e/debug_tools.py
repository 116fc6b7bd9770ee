"""Fetch (once) and cache what reading a real kernel's dump needs: vmlinux, crash.

Both come from Debian's archive through apt, with a private configuration (its own
source list, lists and cache in a temporary directory: the host's apt state is never
touched), and are cached next to the guest rootfs in the e2e cache.

vmlinux
    ``crash`` and drgn need the symbols of the exact kernel build that crashed.  Debian
    ships them in ``linux-image-<release>-dbg`` (858 MB for 6.1.0-57, 5.4 GiB unpacked),
    of which only ``/usr/lib/debug/boot/vmlinux-<release>`` (~630 MB) is needed.  The
    package of the guest kernel's exact version is fetched from the guest's own mirrors
    (image.MIRRORS) and streamed through ``dpkg-deb --fsys-tarfile | tar -x
    --occurrence=1``, so only that member is written (tar stops reading once it has it:
    it comes early in the archive); the .deb is deleted.

crash
    bookworm's crash 8.0.2 cannot build its task table on bookworm's own kernel: Debian's
    6.1.y carries the backport that made ``struct pid``'s ``numbers`` a flexible array,
    and crash learned that in 8.0.3 (upstream 88580068).  Its ``bt`` and ``log`` work,
    ``ps`` lists the idle tasks and the panicking one only.  trixie's crash (8.0.6) lists
    them; it needs trixie's libc, so its package and its libraries' packages are
    unpacked into the cache (~30 MB) and run with their own dynamic loader, nothing
    installed.  The tests read ``bt`` and ``log`` with bookworm's crash (the one a user
    of this kernel has) and ``ps`` with trixie's.

A second run finds the stamps and does nothing.  By hand::

    python3 tests/e2e/debug_tools.py --rootfs /var/cache/dumpsaver-e2e/rootfs-<key>
    python3 tests/e2e/debug_tools.py --release 6.1.0-57-amd64 --version 6.1.192-3
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import image as guest_image  # noqa: E402

VMLINUX_MEMBER = "./usr/lib/debug/boot/vmlinux-{release}"

CRASH_SUITE = ["deb http://deb.debian.org/debian trixie main"]
# crash and the libraries it links (Depends of trixie's crash 8.0.6, and theirs)
CRASH_PACKAGES = [
    "crash",
    "libc6",
    "libgcc-s1",
    "libstdc++6",
    "liblzo2-2",
    "libncursesw6",
    "libtinfo6",
    "libsnappy1v5",
    "libzstd1",
    "zlib1g",
]


@dataclass(frozen=True)
class Vmlinux:
    path: Path
    release: str
    version: str
    build_id: str


def _log(msg: str) -> None:
    print(f"[e2e-debug-tools] {msg}", file=sys.stderr, flush=True)


def build_id(path: Path) -> str:
    """The GNU build id of an ELF file (``readelf -n``), '' when it has none."""
    r = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True, check=True)
    m = re.search(r"Build ID: ([0-9a-f]+)", r.stdout)
    return m.group(1) if m else ""


def apt_download(mirrors: Sequence[str], packages: Sequence[str], dest: Path) -> list[Path]:
    """``apt-get download`` into ``dest`` with a private source list, lists and cache."""
    (dest / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (dest / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (dest / "sources.list").write_text("\n".join(mirrors) + "\n")
    opts = [
        f"-oDir::Etc::SourceList={dest / 'sources.list'}",
        "-oDir::Etc::SourceParts=/nonexistent",
        f"-oDir::State::Lists={dest / 'lists'}",
        f"-oDir::Cache={dest / 'cache'}",
        "-oDebug::NoLocking=1",
        # the .debs land in a root-only directory: no _apt sandbox warning
        "-oAPT::Sandbox::User=root",
    ]
    for args in (["update"], ["download", *packages]):
        subprocess.run(["apt-get", "-q", *opts, *args], check=True, cwd=dest, stdout=sys.stderr)
    return sorted(dest.glob("*.deb"))


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
        pkg = f"linux-image-{release}-dbg"
        _log(f"downloading {pkg}={version} (~860 MB)")
        debs = apt_download(guest_image.MIRRORS, [f"{pkg}={version}"], tmp)
        if len(debs) != 1:
            raise RuntimeError(f"apt-get download gave {debs}")
        t_dl = time.monotonic() - t0
        member = VMLINUX_MEMBER.format(release=release)
        out = tmp / "vmlinux"
        with out.open("wb") as sink:
            # dpkg-deb's complaint about the broken pipe is noise: kept for errors
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


def ensure_crash(cache_dir: Path) -> list[str]:
    """The command that runs trixie's crash from the cache (fetched when missing)."""
    root = cache_dir / "crash-trixie"
    stamp = root.with_name(root.name + ".json")
    if not (stamp.exists() and root.exists()):
        cache_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix="crash-dl.") as td:
            tmp = Path(td)
            debs = apt_download(CRASH_SUITE, CRASH_PACKAGES, tmp / "apt")
            tree = tmp / "root"
            for deb in debs:
                subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
            if root.exists():
                shutil.rmtree(root)
            shutil.move(str(tree), root)
            names = [d.name for d in debs]
        version = _crash_version(_crash_command(root))
        info = {"debs": names, "version": version, "seconds": round(time.monotonic() - t0, 1)}
        stamp.write_text(json.dumps(info) + "\n")
        _log(f"cached {version} in {root}")
    return _crash_command(root)


def _crash_command(root: Path) -> list[str]:
    return [
        str(root / "usr/lib64/ld-linux-x86-64.so.2"),
        "--library-path",
        str(root / "usr/lib/x86_64-linux-gnu"),
        str(root / "usr/bin/crash"),
    ]


def _crash_version(cmd: list[str]) -> str:
    r = subprocess.run([*cmd, "--version"], capture_output=True, text=True, check=False)
    m = re.search(r"crash (\d[\w.]*)", r.stdout)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"the fetched crash does not run: {r.stdout[-500:]}{r.stderr[-500:]}")
    return m.group(0)


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
    crash = ensure_crash(a.cache)
    print(json.dumps({"vmlinux": str(v.path), "build_id": v.build_id, "crash": crash}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
