#!/usr/bin/env bash
# Run every test tier: unit, round trip, reliability, real tools (drgn, readelf,
# makedumpfile, crash), systemd-nspawn and the QEMU end-to-end boot. Extra
# arguments go to pytest (e.g. -k roundtrip, -m 'not e2e').
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
# Every tier, the QEMU boots included (they are opt-in for a bare `pytest`).
export DUMPSAVER_E2E=${DUMPSAVER_E2E:-1}
exec .venv/bin/python -m pytest -q -ra "$@"
