"""The seeds' sharpest test that Z-IL really runs its dynamics: with gamma != 1 (C1, C2
kept) the edge into a node at depth l receives exactly gamma**l times BP's update.

    python examples/gamma_per_layer.py [--gamma 0.5]
"""

import argparse
import copy

import torch

import pcgraph
from pcgraph.compile import PCNetwork
from pcgraph.rules import make_rule


def grads(net, rule, settings, inputs, targets):
    net = copy.deepcopy(net)
    make_rule(rule, net, settings).compute_grads(inputs, targets)
    return {k: p.grad for k, p in net.named_parameters()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gamma", type=float, default=0.5)
    args = ap.parse_args()
    spec = pcgraph.Spec.load("graphs/residual_mlp.yaml")
    cg = pcgraph.compile_graph(spec.model, spec.loss)
    net = PCNetwork(cg, seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    inputs = {"x": torch.rand(16, 64, generator=g, dtype=torch.float64)}
    targets = {"y": torch.randint(0, 10, (16,), generator=g)}
    bp = grads(net, "bp", {}, inputs, targets)
    zil = grads(net, "zil", {"gamma": args.gamma}, inputs, targets)
    print(f"gamma = {args.gamma}: ratio of Z-IL's update to BP's, per edge")
    for e in cg.edges:
        if e.kind == "relay":
            continue
        k = f"params.{e.key}.weight"
        l = cg.depth[e.dst]
        ratio = float((zil[k] * bp[k]).sum() / (bp[k] * bp[k]).sum())
        shared = len(cg.param_edges[e.key]) > 1
        note = "  (shared parameter: a mix of its edges' depths)" if shared else ""
        print(f"  {e.label:14} depth {l}  ratio {ratio:.12f}  gamma**l {args.gamma ** l:.12f}{note}")


if __name__ == "__main__":
    main()
