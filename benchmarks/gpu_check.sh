#!/usr/bin/env bash
# The GPU acceptance command (make gpu-check): benchmarks/gpu_check.py runs its parts in order of value
# within an 8-minute budget and writes each part's results as soon as it ends.
#   bash benchmarks/gpu_check.sh [OUT_DIR] [--budget SECONDS]     (OUT_DIR: else $OUT, else benchmarks/out/gpu_check)
#   bash benchmarks/gpu_check.sh --plan                            (CPU: check every part's command, print the plan)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
    set -- --out "$1" "${@:2}"
fi
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
