#!/usr/bin/env bash
# The GPU run in one command (benchmarks/README.md, "The GPU run"):
#
#   bash benchmarks/gpu_suite.sh [gpu_suite.py options]
#
# Runs benchmarks/gpu_suite.py from the source tree (nothing installed but the carried wheels
# of benchmarks/wheels/, into a temporary folder), at most 9 minutes in all. Results go to
# benchmarks/results/ (or $GPU_SUITE_OUT). Where $OUT is set (the device machine's folder that
# comes back), the files this run wrote are also packed into $OUT/gpu_suite-results.tgz and
# the whole log is in $OUT/gpu_suite.log. Exit status: the suite's (1 if any step failed).
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
results=${GPU_SUITE_OUT:-benchmarks/results}
log=${OUT:-/tmp}/gpu_suite.log
stamp=$(mktemp)
mkdir -p "$results"
# the suite keeps itself to --budget (460 s); this is the backstop if something hangs it
timeout -k 10 540 "${PYTHON:-python3}" benchmarks/gpu_suite.py --out "$results" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then
    find "$results" -type f -newer "$stamp" -print0 |
        tar czf "$OUT/gpu_suite-results.tgz" --null -T -
    echo "packed $(tar tzf "$OUT/gpu_suite-results.tgz" | wc -l) result files into $OUT"
fi
rm -f "$stamp"
exit "$status"
