"""Milliseconds per update on an unrolled RNN or GRU spec: now ``pcgraph bench``.

    python benchmarks/bench_rnn.py [graphs/seq_mnist_rnn.yaml] [pcgraph bench options ...]

is ``pcgraph bench SPEC --algorithms torch,torch_nn,bp,zil [options]``: ``torch_nn`` is
``nn.RNN`` / ``nn.GRU`` (torch's fused recurrent kernels) plus an ``nn.Linear`` readout with
pcgraph's initial parameters (``pcgraph.bench.RecurrentModel``: pcgraph's RNN keeps the
pre-activation ``a_k = W_h tanh(a_{k-1}) + W_x x_k + b``, which is ``nn.RNN``'s ``h_k`` with
``h_k = tanh(a_k)``; its GRU is ``nn.GRU`` with the hidden-side biases at 0), ``torch`` the
unrolled graph as a plain module, ``bp`` pcgraph's autograd (BPTT), ``zil`` the compiled program.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcgraph.cli import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    spec = [] if args and not args[0].startswith("-") else ["graphs/seq_mnist_rnn.yaml"]
    if "--algorithms" not in args:
        args += ["--algorithms", "torch,torch_nn,bp,zil"]
    sys.exit(main(["bench", *spec, *args]))
