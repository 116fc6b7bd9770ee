#!/bin/sh
# Build the dumpsaver RPM from this source tree, without touching it.
#
#   packaging/build-rpm.sh [OUTDIR]        (default: ./dist)
#
# Makes the Source0 tarball from the working tree (tracked and untracked files, minus
# build junk), runs rpmbuild -bb in a private _topdir, and copies the .rpm to OUTDIR;
# its path is printed on the last line of stdout.  On a non-RPM distribution (our Debian
# CI) the BuildRequires cannot be resolved by rpm's database: --nodeps, and the spec's
# fallback macros stand in for systemd-rpm-macros.
set -eu
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH VIRTUAL_ENV

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
out=${1:-$src/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$src/pyproject.toml" | head -n1)
specver=$(sed -n 's/^Version: *//p' "$here/rpm/dumpsaver.spec")
if [ "$version" != "$specver" ]; then
    echo "build-rpm.sh: pyproject.toml says $version, the spec says $specver" >&2
    exit 1
fi

top=$(mktemp -d "${TMPDIR:-/tmp}/dumpsaver-rpm.XXXXXX")
trap 'rm -rf "$top"' EXIT INT TERM
mkdir -p "$top/SOURCES" "$top/SPECS" "$top/BUILD" "$top/RPMS" "$top/SRPMS"
tar -C "$src" \
    --exclude=./.git --exclude=./.venv --exclude=./dist --exclude=./build \
    --exclude=./debian --exclude=./work-e2e --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache \
    --exclude=.ruff_cache --exclude=.hypothesis \
    --transform "s,^\.,dumpsaver-$version," \
    -czf "$top/SOURCES/dumpsaver-$version.tar.gz" .
cp "$here/rpm/dumpsaver.spec" "$top/SPECS/"

nodeps=
[ -e /etc/debian_version ] && nodeps=--nodeps
rpmbuild -bb $nodeps --define "_topdir $top" "$top/SPECS/dumpsaver.spec" \
    >"$top/build.log" 2>&1 || {
    tail -n 60 "$top/build.log" >&2
    echo "build-rpm.sh: rpmbuild failed (log above)" >&2
    exit 1
}
rpm=$(find "$top/RPMS" -name 'dumpsaver-[0-9]*.noarch.rpm' | head -n1)
# Every module of the source tree must be in the package (see build-deb.sh).
files=$(rpm -qlp "$rpm")
missing=$(cd "$src" && find dumpsaver -name '*.py' | sort | while read -r f; do
    echo "$files" | grep -q "/site-packages/$f\$" || echo "$f"
done)
if [ -n "$missing" ]; then
    echo "build-rpm.sh: modules missing from $(basename "$rpm") (pyproject.toml packages?):" $missing >&2
    exit 1
fi
cp "$rpm" "$out/"
# The module's subpackage lands beside it (the main one stays the last line).
find "$top/RPMS" -name 'dumpsaver-dkms-*.noarch.rpm' -exec cp {} "$out/" \;
echo "$out/$(basename "$rpm")"
