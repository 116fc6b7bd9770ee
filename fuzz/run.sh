#!/bin/sh
# Run the atheris harnesses (docs/reliability.md, "Fuzzing").
#
#   fuzz/run.sh short            CI: every harness briefly (< 60 s in all)
#   fuzz/run.sh long             campaign: >= 1,000,000 executions of the format parser
#   fuzz/run.sh HARNESS [ARGS]   one harness with libFuzzer arguments, e.g.
#                                fuzz/run.sh fuzz_dump -max_total_time=600
#
# Work corpora and crash files go to $FUZZ_WORK (default /tmp/dumpsaver-fuzz); the
# seeds in fuzz/corpus/ are never modified.  Exit status is non-zero if any harness
# found a crash (libFuzzer leaves crash-* files in $FUZZ_WORK).  Memory is bounded
# by -rss_limit_mb (512 MB): a harness that grows past it counts as a crash.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-"$HERE/../.venv/bin/python"}
WORK=${FUZZ_WORK:-/tmp/dumpsaver-fuzz}
mkdir -p "$WORK"

corpus_of() {
    case "$1" in
        fuzz_header) echo header ;; fuzz_meta) echo meta ;; fuzz_entry) echo entry ;;
        fuzz_dump) echo dump ;; fuzz_locate) echo locate ;;
    esac
}

one() {
    name=$1; shift
    c=$(corpus_of "$name")
    mkdir -p "$WORK/corpus-$c"
    cp -n "$HERE/corpus/$c"/* "$WORK/corpus-$c/" 2>/dev/null || true
    echo "== $name $*" >&2
    (cd "$WORK" && "$PY" "$HERE/$name.py" -rss_limit_mb=512 -timeout=10 \
        -artifact_prefix="$WORK/$name-" "$@" "$WORK/corpus-$c") 2>&1 |
        tee "$WORK/$name.log" | grep -E "DONE|Done [0-9]+ runs|ERROR|Traceback|Error" >&2 || true
    grep -q "Done [0-9]* runs" "$WORK/$name.log"
}

case "${1:-short}" in
    short)
        one fuzz_header -runs=60000
        one fuzz_meta -runs=20000
        one fuzz_entry -runs=20000
        one fuzz_dump -runs=3000 -max_len=70000
        one fuzz_locate -runs=6000
        ;;
    long)
        one fuzz_header -runs=1000000
        one fuzz_entry -runs=1000000
        one fuzz_meta -runs=300000
        one fuzz_dump -runs=200000 -max_len=70000
        one fuzz_locate -runs=200000
        ;;
    *)
        one "$@"
        ;;
esac
for f in "$WORK"/*crash-* "$WORK"/*oom-* "$WORK"/*timeout-*; do
    [ -e "$f" ] || continue
    echo "FOUND: $f" >&2
    exit 1
done
echo "no crashes" >&2
