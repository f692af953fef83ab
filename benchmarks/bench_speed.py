"""Milliseconds per update of torch / bp / zil / fazil / il on one spec: now ``pcgraph bench``.

    python benchmarks/bench_speed.py [graphs/mnist_mlp_wide.yaml] [pcgraph bench options ...]

is ``pcgraph bench SPEC --threads 1 [options]`` (real batches, shuffled interleaved rounds, paired
ratios to a plain torch module with the same optimizer, IQR, peak memory, the machine and the
thread count; see ``pcgraph bench --help`` and ``pcgraph/bench.py``). ``benchmarks/run_all.py``
runs the standard set.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcgraph.cli import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    spec = [] if args and not args[0].startswith("-") else ["graphs/mnist_mlp_wide.yaml"]
    sys.exit(main(["bench", *spec, *args]))
