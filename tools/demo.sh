#!/usr/bin/env bash
# The main job on a built-in default: crash a simulated 512 MiB machine, save its
# dump the way the boot job does, and show `dumpsaver status`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
demo=${DUMPSAVER_DEMO_DIR:-/var/tmp/dumpsaver-demo}
rm -rf "$demo"
ds=.venv/bin/dumpsaver
where=(--mem "$demo/machine/mem" --sysfs "$demo/machine/sys" --cmdline /dev/null
       --dest "$demo/dumps" --state-dir "$demo/state")
$ds simulate --memory 512M --profile idle --seed 1 --into "$demo/machine"
$ds save "${where[@]}" --no-restart
echo
$ds status "${where[@]}"
