"""What the benchmark scripts share: one pcgraph training update as a closure, and the
interleaved timing loop."""

from __future__ import annotations

import copy
import time

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


def time_interleaved(methods: dict, rounds: int, steps: int, warmup: int = 3, sync=None) -> dict[str, list[float]]:
    """ms per call of each method, one list entry per round; rounds interleave the methods
    so that machine noise hits them alike. ``sync`` (e.g. ``torch.cuda.synchronize``) is
    called after warm-up and after each method's timed run."""
    sync = sync or (lambda: None)
    for f in methods.values():
        for _ in range(warmup):
            f()
    sync()
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(rounds):
        for name, f in methods.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                f()
            sync()
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    return times
