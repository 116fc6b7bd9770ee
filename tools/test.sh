#!/usr/bin/env bash
# Run every test tier: unit, round trip, reliability, real tools (drgn, readelf,
# makedumpfile, crash), systemd-nspawn and the QEMU end-to-end boot. Extra
# arguments go to pytest (e.g. -k roundtrip, -m 'not e2e').
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
if [ -x tests/e2e/setup-deps.sh ] || [ -f tests/e2e/setup-deps.sh ]; then
  bash tests/e2e/setup-deps.sh
fi
exec .venv/bin/python -m pytest -q "$@"
