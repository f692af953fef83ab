"""What the benchmark scripts share: one pcgraph training update as a closure."""

from __future__ import annotations

import copy

from pcgraph.rules import make_rule
from pcgraph.train import make_optimizer


def pc_step(base, spec, name: str, settings: dict, inputs: dict, targets: dict):
    """One update of rule ``name`` (zero_grad, compute_grads, optimizer step) on a copy of
    ``base.net`` with the spec's optimizer and reduction."""
    net = copy.deepcopy(base.net)
    rule = make_rule(name, net, settings, seed=spec.seed, reduction=spec.train.reduction)
    opt = make_optimizer(spec.train.optimizer, net.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        rule.compute_grads(inputs, targets)
        opt.step()
    return step
