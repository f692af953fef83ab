"""Milliseconds per update of torch / bp / zil on an unrolled RNN or GRU spec.

    python benchmarks/bench_rnn.py [graphs/seq_mnist_rnn.yaml] [--threads 1] [--batch N]
        [--steps 20] [--rounds 5] [--methods torch,bp,zil]

``torch`` is ``nn.RNN`` / ``nn.GRU`` (torch's fused recurrent kernels) plus an
``nn.Linear`` readout, with pcgraph's initial parameters copied in: pcgraph's RNN keeps the
pre-activation ``a_k = W_h tanh(a_{k-1}) + W_x x_k + b`` as its node value, which is
``nn.RNN``'s ``h_k = tanh(W_x x_k + b + W_h h_{k-1})`` with ``h_k = tanh(a_k)``; its GRU is
``nn.GRU`` with the hidden-side biases at 0. Before timing, the outputs of both are
compared. ``bp`` is pcgraph's autograd on the unrolled graph (BPTT), ``zil`` the compiled
PC program. Interleaved rounds; median, spread and ratio to torch.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

import common  # noqa: E402  (benchmarks/common.py)
from pcgraph import Spec
from pcgraph.train import Experiment, make_optimizer


class TorchRNN(nn.Module):
    def __init__(self, exp: Experiment):
        super().__init__()
        u = exp.spec.unrolls[0]
        p = exp.net.params
        d_in, hid = exp.compiled.graph.nodes[u.input].shape[1], u.shape[0]
        self.cell = u.cell
        rnn_cls = nn.RNN if u.cell == "rnn" else nn.GRU
        self.rnn = rnn_cls(d_in, hid, batch_first=True, bias=True)
        ro = [e for e in exp.compiled.edges if exp.compiled.role(e.dst) == "output"][0]
        w_out = p[ro.key]
        self.out = nn.Linear(w_out["weight"].shape[1], w_out["weight"].shape[0], bias="bias" in w_out)
        n = u.name
        with torch.no_grad():
            if u.cell == "rnn":
                self.rnn.weight_ih_l0.copy_(p[f"{n}_Wx"]["weight"])
                self.rnn.weight_hh_l0.copy_(p[f"{n}_Wh"]["weight"])
                self.rnn.bias_ih_l0.copy_(p[f"{n}_Wx"]["bias"] if u.bias else torch.zeros(hid))
            else:   # torch's gate order: r, z, n
                self.rnn.weight_ih_l0.copy_(torch.cat([p[f"{n}_W{g}"]["weight"] for g in "rzn"]))
                self.rnn.weight_hh_l0.copy_(torch.cat([p[f"{n}_U{g}"]["weight"] for g in "rzn"]))
                self.rnn.bias_ih_l0.copy_(torch.cat([p[f"{n}_W{g}"]["bias"] if u.bias else torch.zeros(hid)
                                                     for g in "rzn"]))
            self.rnn.bias_hh_l0.zero_()
            self.rnn.bias_hh_l0.requires_grad_(False)
            self.out.weight.copy_(w_out["weight"])
            if "bias" in w_out:
                self.out.bias.copy_(w_out["bias"])
        if ro.activation != "tanh":
            raise SystemExit("the torch baseline assumes a tanh readout activation")
        # nn.RNN's hidden state is already tanh(a_k); nn.GRU's is pcgraph's h_k itself
        self.act = (lambda t: t) if u.cell == "rnn" else torch.tanh

    def forward(self, s):
        h, _ = self.rnn(s)
        return self.out(self.act(h[:, -1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", nargs="?", default="graphs/seq_mnist_rnn.yaml")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--methods", default="torch,bp,zil")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    spec = Spec.load(args.spec)
    batch = args.batch or spec.data.batch_size
    base = Experiment.build(spec, with_data=False)
    cg = base.compiled
    inp, out = cg.graph.inputs[0], cg.graph.outputs[0]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *cg.graph.nodes[inp].shape, generator=g)
    labels = torch.randint(0, cg.graph.nodes[out].shape[0], (batch,), generator=g)
    inputs, targets = {inp: x}, {out: labels}

    model = TorchRNN(base)
    with torch.no_grad():
        diff = float((model(x) - base.net(inputs)[out]).abs().max())
    print(f"check: torch vs pcgraph forward max |diff| {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit("the torch module does not compute the spec's function")
    topt = make_optimizer(spec.train.optimizer, [p for p in model.parameters() if p.requires_grad])
    loss_fn = cg.losses[out]

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss_fn.value(model(x), labels).backward()
        topt.step()

    def pc_step(name):
        return common.pc_step(base, spec, name, {}, inputs, targets)

    methods = {m: (torch_step if m == "torch" else pc_step(m)) for m in args.methods.split(",")}
    times = common.time_interleaved(methods, args.rounds, args.steps)
    ref = statistics.median(times["torch"]) if "torch" in times else None
    print(f"{spec.name}: batch {batch}, cpu, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} rounds x {args.steps} updates")
    print(f"{'method':<8} {'ms/update':>10} {'min-max':>17} {'x torch':>8}")
    for name, ts in times.items():
        m = statistics.median(ts)
        ratio = f"{m / ref:8.2f}" if ref else ""
        print(f"{name:<8} {m:10.2f} {min(ts):8.2f}-{max(ts):<8.2f} {ratio}")


if __name__ == "__main__":
    main()
