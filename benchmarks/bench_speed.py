"""Milliseconds per update of torch / bp / zil / il on one spec, measured side by side.

    python benchmarks/bench_speed.py [graphs/mnist_mlp_wide.yaml] [--device cpu] [--steps 100]

``torch`` is a plain ``nn.Sequential`` with the same weights trained with autograd (built
for chain graphs of linear, conv2d, max/avg pooling and flatten edges, nn.Linear,
nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d; ``locally_connected2d``, which torch lacks, runs the
op's own forward under autograd; ``bench_transformer.py`` does the transformer block);
``bp`` is pcgraph's autograd reference on the compiled graph; ``zil`` and ``il`` run the
compiled PC programs (``il`` with T = 20, gamma = 0.1, update at t = T). Each method runs
the same optimizer on the same batch shapes; rounds are interleaved so that machine noise
hits every method alike, and the median round is reported, with ratios to ``torch``.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

import common  # noqa: E402  (benchmarks/common.py)
from pcgraph import Spec
from pcgraph.train import Experiment, make_optimizer

ACT = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "identity": nn.Identity,
       "leaky_relu": lambda: nn.LeakyReLU(0.01), "softplus": nn.Softplus, "elu": nn.ELU}


class _Reshape(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


class _OpModule(nn.Module):
    """An op without a torch layer (``locally_connected2d``): its own forward on copied
    parameters, differentiated by autograd like the rest of the model."""

    def __init__(self, op, params):
        super().__init__()
        self.op = op
        self.params = nn.ParameterDict({k: nn.Parameter(v.detach().clone()) for k, v in params.items()})

    def forward(self, x):
        return self.op.forward(dict(self.params), x)


def _layer(e, op, w) -> list[nn.Module]:
    """torch modules computing edge ``e``'s op (weights copied from ``w``)."""
    in_shape, out_shape = op.in_shape, op.out_shape
    if e.op == "linear":
        lin = nn.Linear(w["weight"].shape[1], w["weight"].shape[0], bias="bias" in w)
        with torch.no_grad():
            lin.weight.copy_(w["weight"])
            if "bias" in w:
                lin.bias.copy_(w["bias"])
        mods: list[nn.Module] = [nn.Flatten()] if len(in_shape) > 1 else []
        mods.append(lin)
        if len(out_shape) > 1:
            mods.append(_Reshape(out_shape))
        return mods
    o = op.opts
    if e.op == "conv2d":
        conv = nn.Conv2d(in_shape[0], out_shape[0], o.k, o.s, o.p, o.d, o.groups, bias="bias" in w)
        with torch.no_grad():
            conv.weight.copy_(w["weight"])
            if "bias" in w:
                conv.bias.copy_(w["bias"])
        return [conv]
    if e.op == "max_pool2d":
        return [nn.MaxPool2d(o.k, o.s, o.p, o.d)]
    if e.op == "avg_pool2d":
        return [nn.AvgPool2d(o.k, o.s, o.p, count_include_pad=o.count_include_pad)]
    if e.op in ("flatten", "reshape"):
        return [nn.Flatten()] if len(out_shape) == 1 else [_Reshape(out_shape)]
    if e.op == "identity":
        return []
    if e.op == "locally_connected2d":
        return [_OpModule(op, w)]
    raise SystemExit(f"the torch baseline has no layer for op {e.op!r}")


def torch_model(exp: Experiment) -> nn.Module:
    """The chain graph as nn.Sequential (linear, conv2d, locally_connected2d, max/avg
    pooling, flatten/reshape, identity edges), weights copied from the pcgraph network.
    It takes the input in the input node's shape."""
    cg = exp.compiled
    layers: list[nn.Module] = []
    for i, e in enumerate(cg.edges):
        if len(e.sources) != 1 or len(cg.in_edges(e.dst)) != 1:
            raise SystemExit("the torch baseline needs a chain graph (one edge into each node, one source each)")
        layers.append(ACT[e.activation if isinstance(e.activation, str) else e.activation[0]]())
        layers.extend(_layer(e, cg.ops[i], exp.net.params[e.key] if e.key in exp.net.params else {}))
    return nn.Sequential(*[m for m in layers if not isinstance(m, nn.Identity)]).to(exp.net.device,
                                                                                    exp.net.dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", nargs="?", default="graphs/mnist_mlp_wide.yaml")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--steps", type=int, default=100, help="updates per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, help="override data.batch_size")
    ap.add_argument("--methods", default="torch,bp,zil,il", help="comma-separated subset of torch,bp,zil,il")
    args = ap.parse_args()

    spec = Spec.load(args.spec)
    batch = args.batch or spec.data.batch_size
    base = Experiment.build(spec, args.device, args.dtype, with_data=False)
    dev, dt = base.net.device, base.net.dtype
    g = torch.Generator().manual_seed(0)
    inp = base.compiled.graph.inputs[0]
    out = base.compiled.graph.outputs[0]
    shape_in = base.compiled.graph.nodes[inp].shape
    n_cls = base.compiled.graph.nodes[out].shape[0]
    x = torch.rand(batch, *shape_in, generator=g).to(dev, dt)
    labels = torch.randint(0, n_cls, (batch,), generator=g).to(dev)
    targets = {out: base.compiled.losses[out].target(labels, (n_cls,), dt)}
    inputs = {inp: x}

    def pc_step(name, settings):
        return common.pc_step(base, spec, name, settings, inputs, targets)

    def torch_step_maker():
        model = torch_model(base)
        topt = make_optimizer(spec.train.optimizer, model.parameters())
        loss_fn = base.compiled.losses[out]

        def torch_step():
            topt.zero_grad(set_to_none=True)
            loss_fn.value(model(x), targets[out]).backward()
            topt.step()
        return torch_step

    makers = {"torch": torch_step_maker, "bp": lambda: pc_step("bp", {}), "zil": lambda: pc_step("zil", {}),
              "il": lambda: pc_step("il", {"T": 20, "gamma": 0.1})}
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in chosen:
        if m not in makers:
            raise SystemExit(f"unknown method {m!r} (known: {', '.join(makers)})")
    methods = {m: makers[m]() for m in chosen}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = common.time_interleaved(methods, args.rounds, args.steps, warmup=10, sync=sync)
    ref = statistics.median(next(iter(times.values())))
    print(f"{spec.name}: batch {batch}, {args.device}/{args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds x {args.steps} updates")
    print(f"{'method':<8} {'ms/update':>10} {'x ' + chosen[0]:>8}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<8} {m:10.3f} {m / ref:8.2f}")


if __name__ == "__main__":
    main()
