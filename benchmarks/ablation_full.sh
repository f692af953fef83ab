#!/usr/bin/env bash
# The seeds' full ablation (Song et al. 2020, sec. 5.1): MNIST, 1-3 hidden layers of 32
# sigmoid units, 64 epochs, all 60k/10k samples, seeds 1482555873, 698841058, 2283198659,
# float64. Hours on a CPU. Needs MNIST: PCGRAPH_DATA (offline root) or network access.
#   bash benchmarks/ablation_full.sh [OUT_DIR] [extra pcgraph ablate args...]
set -euo pipefail
out=${1:-runs/ablation_full}
shift || true
exec pcgraph ablate graphs/mnist_mlp.yaml --full --out "$out" "$@"
