#!/usr/bin/env bash
# Run every test tier: unit, round trip, reliability, real tools (drgn, readelf,
# makedumpfile, crash), systemd-nspawn and the QEMU end-to-end boot. Extra
# arguments go to pytest (e.g. -k roundtrip, -m 'not e2e').
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
# Every tier, the QEMU boots included (they are opt-in for a bare `pytest`).
export DUMPSAVER_E2E=${DUMPSAVER_E2E:-1}
# The long reliability tier (~12 min, tests marked `long`) is not part of CI: it is
# deselected here, by name, so that it never shows as a skip (a bare pytest skips it
# with the reason; DUMPSAVER_LONG=1 runs it, here too; docs/reliability.md).
# A -m given in "$@" comes last and wins.
# The same for the e2e figure boots (marker `figures`, DUMPSAVER_E2E_FIGURES=1 runs
# them): they measure numbers for the docs, one boot each, and assert little.
not_long="not long"
if [ "${DUMPSAVER_LONG:-0}" != 0 ]; then not_long=""; fi
not_figures="not figures"
if [ "${DUMPSAVER_E2E_FIGURES:-0}" = 1 ]; then not_figures=""; fi
expr="${not_long}${not_long:+${not_figures:+ and }}${not_figures}"
select=()
if [ -n "$expr" ]; then select=(-m "$expr"); fi
exec .venv/bin/python -m pytest -q -ra "${select[@]}" "$@"
