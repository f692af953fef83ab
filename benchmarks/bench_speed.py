"""Milliseconds per update of torch / bp / zil / il on one spec, measured side by side.

    python benchmarks/bench_speed.py [graphs/mnist_mlp_wide.yaml] [--device cpu] [--steps 100]

``torch`` is a plain ``nn.Sequential`` with the same weights trained with autograd (built
for chain graphs of linear edges; ``bench_transformer.py`` does the transformer block);
``bp`` is pcgraph's autograd reference on the compiled graph; ``zil`` and ``il`` run the
compiled PC programs (``il`` with T = 20, gamma = 0.1, update at t = T). Each method runs
the same optimizer on the same batch shapes; rounds are interleaved so that machine noise
hits every method alike, and the median round is reported, with ratios to ``torch``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from pcgraph import Spec
from pcgraph.rules import make_rule
from pcgraph.train import Experiment, make_optimizer

ACT = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "identity": nn.Identity,
       "leaky_relu": lambda: nn.LeakyReLU(0.01), "softplus": nn.Softplus, "elu": nn.ELU}


def torch_model(exp: Experiment) -> nn.Module:
    """The chain graph as nn.Sequential, weights copied from the pcgraph network."""
    cg = exp.compiled
    layers: list[nn.Module] = []
    for i, e in enumerate(cg.edges):
        if e.op != "linear" or len(cg.in_edges(e.dst)) != 1:
            raise SystemExit("the torch baseline needs a chain of linear edges")
        layers.append(ACT[e.activation]())
        w = exp.net.params[e.key]
        lin = nn.Linear(w["weight"].shape[1], w["weight"].shape[0], bias="bias" in w)
        with torch.no_grad():
            lin.weight.copy_(w["weight"])
            if "bias" in w:
                lin.bias.copy_(w["bias"])
        layers.append(lin)
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
        net = copy.deepcopy(base.net)
        rule = make_rule(name, net, settings, seed=spec.seed, reduction=spec.train.reduction)
        opt = make_optimizer(spec.train.optimizer, net.parameters())

        def step():
            opt.zero_grad(set_to_none=True)
            rule.compute_grads(inputs, targets)
            opt.step()
        return step

    model = torch_model(base)
    topt = make_optimizer(spec.train.optimizer, model.parameters())
    loss_fn = base.compiled.losses[out]
    flat = x.reshape(batch, -1)

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss_fn.value(model(flat), targets[out]).backward()
        topt.step()

    methods = {"torch": torch_step, "bp": pc_step("bp", {}), "zil": pc_step("zil", {}),
               "il": pc_step("il", {"T": 20, "gamma": 0.1})}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for f in methods.values():  # warm-up
        for _ in range(10):
            f()
    sync()
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(args.rounds):
        for name, f in methods.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                f()
            sync()
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    ref = statistics.median(times["torch"])
    print(f"{spec.name}: batch {batch}, {args.device}/{args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds x {args.steps} updates")
    print(f"{'method':<8} {'ms/update':>10} {'x torch':>8}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<8} {m:10.3f} {m / ref:8.2f}")


if __name__ == "__main__":
    main()
