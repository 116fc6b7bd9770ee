"""Build (and cache) the Debian bookworm guest the end-to-end test boots.

Three layers, cheapest last:

1. ``rootfs``: ``mmdebstrap --variant=minbase`` with systemd, Debian's kernel, a small
   initramfs and dumpsaver's runtime dependencies.  Cached under ``cache_dir`` keyed on a
   hash of everything that goes into it (package list, hooks, this file's build recipe).
   The kernel and initrd are copied out next to it.  This is the slow part (~1 min).
2. ``session image``: a copy of the cached rootfs with dumpsaver installed *from the .deb*
   (``dpkg -i`` in a chroot, so the maintainer scripts run and enable the unit) plus the
   e2e runner, turned into an ext4 image with ``mkfs.ext4 -d`` (no loop mount).  Rebuilt
   for every test session, so a new .deb costs seconds, not a re-bootstrap.
3. ``scenario image``: a sparse copy of the session image with the scenario script written
   in by ``debugfs -w``.

Usable from pytest (see conftest.py) or by hand::

    python3 tests/e2e/image.py --deb dist/dumpsaver_0.1.0_all.deb --out /tmp/guest
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
GUEST_FILES = HERE / "guest"

SUITE = "bookworm"
MIRRORS = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
]
# dumpsaver's Depends/Recommends must all be here: the .deb is installed offline.
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "procps",
    "e2fsprogs",
    "linux-image-amd64",
    "initramfs-tools",
    "python3",
    "python3-yaml",
    "python3-psutil",
    "python3-systemd",
    "python3-pystemd",
    "python3-zstandard",
    "python3-lz4",
    # dumpsaver-dkms: DKMS builds the module in the image, as on a user's machine (the
    # headers matching the kernel are added by CUSTOMIZE_HOOK: never a different build)
    "dkms",
    "gcc",
    "make",
    # memmap=SIZE!ADDR: the dump region as legacy persistent memory, given back to the
    # page allocator as movable RAM (namespace to devdax, device to system-ram)
    "ndctl",
    "daxctl",
]
INITRAMFS_MODULES = ["virtio_pci", "virtio_blk", "ext4", "crc32c"]

# Runs after the essential set, before linux-image-amd64 is installed: the initramfs is
# built once, small, with only what a virtio ext4 root needs.
ESSENTIAL_HOOK = (
    'mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d" && '
    'echo MODULES=list > "$1/etc/initramfs-tools/conf.d/e2e" && '
    'echo COMPRESS=zstd >> "$1/etc/initramfs-tools/conf.d/e2e" && '
    f'printf "%s\\n" {" ".join(INITRAMFS_MODULES)} '
    '> "$1/usr/share/initramfs-tools/modules.d/e2e"'
)
CUSTOMIZE_HOOK = r"""
set -e
root="$1"
echo dumpsaver-e2e > "$root/etc/hostname"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' > "$root/etc/fstab"
chroot "$root" passwd -d root
mkdir -p "$root/var/log/journal"
# Timers and jobs that only add noise to a 30 s boot under TCG.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
         fstrim.timer systemd-tmpfiles-clean.timer getty@tty1.service; do
    chroot "$root" systemctl mask "$u" >/dev/null 2>&1 || true
done
# The headers of exactly the kernel installed (linux-headers-amd64 could briefly point
# at another upload): DKMS builds dumpsaver's module against them.
rel=$(ls "$root/usr/lib/modules")
chroot "$root" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "linux-headers-$rel" >&2
# Kernel modules are ~300 MB and the initramfs has what the boot needs.  Keep only the
# compressors dumpsaver's module can use when they are loaded (lz4, zstd), and legacy
# persistent memory with the dax drivers (nd_e820, nd_pmem, dax_pmem, device_dax, kmem).
mods="$root/usr/lib/modules/$rel/kernel"
find "$mods" -name '*.ko*' ! -path "$mods/lib/lz4/*" ! -path "$mods/lib/zstd/*" \
    ! -path "$mods/drivers/nvdimm/*" ! -path "$mods/drivers/dax/*" -delete
find "$mods" -depth -type d -empty -delete
chroot "$root" depmod "$rel"
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
       "$root"/usr/share/info/* "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
"""
# Bump when the recipe changes in a way the hash of the strings above cannot see.
RECIPE_VERSION = "2"
#: Where a variant's hook goes in CUSTOMIZE_HOOK: before the kernel modules are stripped.
_BEFORE_STRIP = 'mods="$root/usr/lib/modules/$rel/kernel"'


@dataclass(frozen=True)
class Variant:
    """A rootfs with more in it (a benchmark's guest, e.g. Debian's kdump-tools beside
    dumpsaver): ``packages`` on top of PACKAGES, and ``hook``, shell run in the customize
    hook (``$root``, ``$rel`` set) before the kernel modules are stripped.  Both go into
    the cache key; the base recipe's key is unchanged."""

    name: str
    packages: tuple[str, ...]
    hook: str = ""

    def customize_hook(self) -> str:
        assert _BEFORE_STRIP in CUSTOMIZE_HOOK
        return CUSTOMIZE_HOOK.replace(_BEFORE_STRIP, f"{self.hook}\n{_BEFORE_STRIP}")


@dataclass(frozen=True)
class BaseRootfs:
    rootfs: Path
    kernel: Path
    initrd: Path
    key: str
    release: str  # uname -r of the guest kernel, e.g. 6.1.0-57-amd64
    version: str  # its linux-image package version, e.g. 6.1.192-3


@dataclass(frozen=True)
class GuestImage:
    image: Path
    kernel: Path
    initrd: Path
    release: str = ""
    version: str = ""
    # files copied out of the image for the host-side checks (e.g. a test module's .ko)
    artifacts: dict[str, Path] = field(default_factory=dict)


def default_cache_dir() -> Path:
    env = os.environ.get("DUMPSAVER_E2E_CACHE")
    if env:
        return Path(env)
    return Path("/var/cache/dumpsaver-e2e")


def recipe_key(variant: Variant | None = None) -> str:
    h = hashlib.sha256()
    for part in (RECIPE_VERSION, SUITE, *MIRRORS, *PACKAGES, ESSENTIAL_HOOK, CUSTOMIZE_HOOK):
        h.update(part.encode())
        h.update(b"\0")
    if variant is not None:
        for part in (variant.name, *variant.packages, variant.hook):
            h.update(part.encode())
            h.update(b"\1")
    return h.hexdigest()[:16]


def _log(msg: str) -> None:
    print(f"[e2e-image] {msg}", file=sys.stderr, flush=True)


def build_rootfs(
    cache_dir: Path, *, force: bool = False, variant: Variant | None = None
) -> BaseRootfs:
    """Return the cached base rootfs (or ``variant``'s), building it with mmdebstrap when
    missing."""
    key = recipe_key(variant)
    packages = PACKAGES + list(variant.packages if variant else ())
    customize = variant.customize_hook() if variant else CUSTOMIZE_HOOK
    final = cache_dir / f"rootfs-{key}"
    kernel = cache_dir / f"vmlinuz-{key}"
    initrd = cache_dir / f"initrd-{key}"
    stamp = cache_dir / f"rootfs-{key}.done"
    if stamp.exists() and not force:
        return BaseRootfs(final, kernel, initrd, key, *kernel_of_rootfs(final))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f"rootfs-{key}.tmp"
    for p in (tmp, final):
        if p.exists():
            shutil.rmtree(p)
    t0 = time.monotonic()
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--format=directory",
        "--include=" + ",".join(packages),
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--essential-hook=" + ESSENTIAL_HOOK,
        "--customize-hook=" + customize,
        SUITE,
        str(tmp),
        *MIRRORS,
    ]
    _log("building base rootfs: " + " ".join(cmd[:6]) + " ...")
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    boot = tmp / "boot"
    vmlinuz = sorted(boot.glob("vmlinuz-*"))
    initrds = sorted(boot.glob("initrd.img-*"))
    if len(vmlinuz) != 1 or len(initrds) != 1:
        raise RuntimeError(f"expected one kernel and one initrd in {boot}: {vmlinuz} {initrds}")
    shutil.copyfile(vmlinuz[0], kernel)
    shutil.copyfile(initrds[0], initrd)
    tmp.rename(final)
    stamp.write_text(json.dumps({"seconds": round(time.monotonic() - t0, 1), "key": key}))
    _log(f"base rootfs built in {time.monotonic() - t0:.1f} s -> {final}")
    return BaseRootfs(final, kernel, initrd, key, *kernel_of_rootfs(final))


def kernel_of_rootfs(rootfs: Path) -> tuple[str, str]:
    """(release, package version) of the one kernel installed in a guest rootfs."""
    releases = sorted(p.name for p in (rootfs / "usr/lib/modules").iterdir())
    if len(releases) != 1:
        raise RuntimeError(f"expected one kernel in {rootfs}, found {releases}")
    release = releases[0]
    r = subprocess.run(
        ["dpkg-query", "--admindir", str(rootfs / "var/lib/dpkg"), "-W", "-f", "${Version}",
         f"linux-image-{release}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return release, r.stdout.strip()


def build_session_image(
    base: BaseRootfs,
    deb: Path,
    out_dir: Path,
    *,
    size: str = "2048M",
    name: str = "base.img",
    extra_debs: tuple[Path, ...] = (),
    test_modules: tuple[Path, ...] = (),
) -> GuestImage:
    """Copy the base rootfs, install the .deb(s) and the e2e runner, make an ext4 image.

    ``extra_debs`` are installed with the main one in a single ``dpkg -i`` (a
    dumpsaver-dkms package builds its module for the guest kernel right there, in its
    postinst, as apt does on a user's machine).  Each of ``test_modules``
    is a kbuild directory built against the guest kernel's headers in the chroot; its
    .ko goes to /usr/local/lib/e2e/ in the guest and is copied out as an artifact.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    artifacts: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix="rootfs.") as td:
        root = Path(td) / "root"
        subprocess.run(["cp", "-a", "--reflink=auto", str(base.rootfs), str(root)], check=True)
        debs = (deb, *extra_debs)
        for d in debs:
            shutil.copyfile(d, root / "tmp" / d.name)
        _chroot(root, "dpkg", "-i", *(f"/tmp/{d.name}" for d in debs))
        for d in debs:
            (root / "tmp" / d.name).unlink()
        for src in test_modules:
            artifacts.update(_build_test_module(root, src, base.release, out_dir))
        install_runner(root)
        image = out_dir / name
        if image.exists():
            image.unlink()
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(image), size],
            check=True,
        )
    _log(f"session image built in {time.monotonic() - t0:.1f} s -> {image}")
    return GuestImage(image, base.kernel, base.initrd, base.release, base.version, artifacts)


def _chroot(root: Path, *cmd: str) -> None:
    """Run ``cmd`` in the rootfs, with /proc mounted (kbuild and dkms look at it)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8")
    env.pop("PYTHONPATH", None)
    script = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
    subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(root), *cmd],
        check=True,
        env=env,
        stdout=sys.stderr,
    )


def _build_test_module(root: Path, src: Path, release: str, out_dir: Path) -> dict[str, Path]:
    """Build a kbuild module directory in the chroot; install and copy out its .ko files."""
    guest_src = root / "usr/src" / f"e2e-{src.name}"
    shutil.copytree(src, guest_src)
    rel = "/" + str(guest_src.relative_to(root))
    _chroot(root, "make", "-s", "-C", f"/usr/lib/modules/{release}/build", f"M={rel}", "modules")
    dest = root / "usr/local/lib/e2e"
    dest.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for ko in guest_src.glob("*.ko"):
        shutil.copyfile(ko, dest / ko.name)
        shutil.copyfile(ko, out_dir / ko.name)
        found[ko.name] = out_dir / ko.name
    if not found:
        raise RuntimeError(f"no .ko built in {src}")
    return found


def install_runner(root: Path) -> None:
    """The runner unit: after multi-user.target, run /e2e/scenario.sh (put in by debugfs)."""
    sbin = root / "usr/local/sbin"
    sbin.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(GUEST_FILES / "e2e-runner", sbin / "e2e-runner")
    (sbin / "e2e-runner").chmod(0o755)
    unit_dir = root / "etc/systemd/system"
    shutil.copyfile(GUEST_FILES / "e2e-runner.service", unit_dir / "e2e-runner.service")
    wants = unit_dir / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    link = wants / "e2e-runner.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/e2e-runner.service")
    (root / "e2e").mkdir(exist_ok=True)


def scenario_image(session: GuestImage, dest: Path, files: dict[str, str | bytes]) -> GuestImage:
    """Sparse-copy the session image and write ``files`` (absolute guest paths) into it."""
    subprocess.run(["cp", "--sparse=always", str(session.image), str(dest)], check=True)
    with tempfile.TemporaryDirectory() as td:
        cmds = []
        for i, (guest_path, content) in enumerate(files.items()):
            local = Path(td) / f"f{i}"
            local.write_bytes(content.encode() if isinstance(content, str) else content)
            local.chmod(0o755)
            parent, name = guest_path.rsplit("/", 1)
            cmds += [f"cd {parent or '/'}", f"rm {name}", f"write {local} {name}"]
        script = Path(td) / "cmds"
        script.write_text("\n".join(cmds) + "\n")
        debugfs(dest, "-w", "-f", str(script))
    return GuestImage(dest, session.kernel, session.initrd)


def debugfs(image: Path, *args: str) -> bytes:
    r = subprocess.run(["debugfs", *args, str(image)], capture_output=True, check=True)
    return r.stdout


def read_file(image: Path, path: str) -> bytes | None:
    """A file's content from the image, None when it does not exist."""
    r = subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, check=False
    )
    if b"File not found" in r.stderr:
        return None
    return r.stdout


def rdump(image: Path, path: str, dest: Path) -> Path | None:
    """Copy a directory tree out of the image into ``dest``; return dest/basename."""
    dest.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["debugfs", "-R", f"rdump {path} {dest}", str(image)], capture_output=True, check=False
    )
    out = dest / path.rstrip("/").rsplit("/", 1)[-1]
    if not out.exists():
        sys.stderr.write(r.stderr.decode(errors="replace"))
        return None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cache", type=Path, default=default_cache_dir())
    ap.add_argument("--deb", type=Path, help="dumpsaver .deb to install (else: base rootfs only)")
    ap.add_argument("--out", type=Path, help="where to put base.img (with --deb)")
    ap.add_argument("--force", action="store_true", help="rebuild the base rootfs")
    ap.add_argument("--print-key", action="store_true")
    a = ap.parse_args()
    if a.print_key:
        print(recipe_key())
        return 0
    base = build_rootfs(a.cache, force=a.force)
    print(base)
    if a.deb:
        print(build_session_image(base, a.deb, a.out or Path.cwd()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
