#!/bin/sh
# Debian packages the end-to-end test (tests/e2e) and the package builds need.
# CI runs this as root on a fresh Debian 12 machine.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    qemu-system-x86 mmdebstrap e2fsprogs systemd-container \
    dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all \
    python3-setuptools python3-build python3-installer \
    python3-systemd python3-pystemd python3-psutil python3-yaml \
    python3-zstandard python3-lz4 \
    lintian rpm \
    crash makedumpfile binutils
