#!/usr/bin/env bash
# The GPU check (issue 16): `pcgraph check` in float64 and float32 on CUDA for every spec in graphs/,
# each traceable step under torch.cuda.set_sync_debug_mode("error"), then `pcgraph bench` for the
# standard set (CUDA events, max_memory_allocated, @program and @cudagraph beside eager).
# Writes benchmarks/results/gpu.md and gpu.json. Datasets: set PCGRAPH_DATA (specs whose data is
# missing are listed as skipped). Usage: bash benchmarks/gpu_check.sh [--device cuda:1] [--only a,b]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_check.py "$@"
