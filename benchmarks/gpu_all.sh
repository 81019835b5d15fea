#!/usr/bin/env bash
# Every GPU check and benchmark in one command, within 8 minutes on one H100/H200 (--quick: 3 minutes):
# builds the extension, runs the kernel tests on the GPU, the per-kernel table, the search-step grid and one
# timed CIFAR-10 search epoch, and prints one summary table (then every section's table) even when a piece
# fails. Results: ${OUT:-bench-out}/gpu_all.md and gpu_all.json, one log per piece. See benchmarks/gpu.py.
#   bash benchmarks/gpu_all.sh [--quick] [--budget SECONDS]
set -uo pipefail
cd "$(dirname "$0")/.."
exec python -m benchmarks.gpu "$@"
