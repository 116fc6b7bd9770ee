#!/bin/sh
# Build the dumpsaver .deb from this source tree, without touching it.
#
#   packaging/build-deb.sh [OUTDIR]        (default: ./dist)
#
# The tree is copied (tracked and untracked files, minus build junk) to a temporary
# directory, packaging/debian becomes ./debian there, and dpkg-buildpackage -b runs.
# The .deb (and .buildinfo/.changes) land in OUTDIR; the path of the .deb is printed on
# the last line of stdout.  Set LINTIAN=1 to run lintian on the result.
set -eu

# A system build: never the pyenv/venv python that may be first on PATH.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH VIRTUAL_ENV

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
out=${1:-$src/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dumpsaver-deb.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

tree="$tmp/dumpsaver"
mkdir "$tree"
tar -C "$src" \
    --exclude=./.git --exclude=./.venv --exclude=./dist --exclude=./build \
    --exclude=./debian --exclude=./work-e2e --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache \
    --exclude=.ruff_cache --exclude=.hypothesis \
    -cf - . | tar -C "$tree" -xf -
cp -a "$src/packaging/debian" "$tree/debian"

for f in etc/dumpsaver/dumpsaver.yaml units/tmpfiles.d/dumpsaver.conf docs/man/dumpsaver.8 docs/man/dumpsaver.yaml.5 \
         units/dumpsaver.service units/dumpsaver.catalog completions/dumpsaver \
         units/dumpsaver-upload.service units/dumpsaver-upload.timer; do
    [ -e "$tree/$f" ] || { echo "build-deb.sh: missing $f" >&2; exit 1; }
done

# Same version as pyproject.toml, so the .deb never disagrees with the wheel.
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$src/pyproject.toml" | head -n1)
debver=$(dpkg-parsechangelog -l "$tree/debian/changelog" -S Version)
if [ "$version" != "$debver" ]; then
    echo "build-deb.sh: pyproject.toml says $version, debian/changelog says $debver" >&2
    exit 1
fi

(cd "$tree" && dpkg-buildpackage -us -uc -b >"$tmp/build.log" 2>&1) || {
    tail -n 60 "$tmp/build.log" >&2
    echo "build-deb.sh: dpkg-buildpackage failed (log above)" >&2
    exit 1
}
for f in "$tmp"/*.deb "$tmp"/*.buildinfo "$tmp"/*.changes; do
    [ -e "$f" ] && cp "$f" "$out/"
done
deb="$out/$(cd "$tmp" && ls dumpsaver_*_all.deb)"

# Every module of the source tree must be in the package (a subpackage missing from
# pyproject.toml's package list only shows at run time otherwise, on the machine that
# just crashed).
contents=$(dpkg-deb -c "$deb")
missing=$(cd "$tree" && find dumpsaver -name '*.py' | sort | while read -r f; do
    echo "$contents" | grep -q "/dist-packages/$f\$" || echo "$f"
done)
if [ -n "$missing" ]; then
    echo "build-deb.sh: modules missing from $deb (pyproject.toml packages?):" $missing >&2
    exit 1
fi
if [ "${LINTIAN:-0}" = 1 ]; then
    lintian --info --display-info --pedantic "$deb" >&2 || true
fi
echo "$deb"
