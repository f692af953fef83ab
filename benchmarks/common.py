"""What the hand-written benchmark scripts share (``bench_transformer.py``): one pcgraph
training update as a closure, and the interleaved timing loop (methods in a fresh random order
every round, like ``pcgraph bench``, whose module ``pcgraph/bench.py`` is the general tool)."""

from __future__ import annotations

import copy
import random
import statistics
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


def time_interleaved(methods: dict, rounds: int, steps: int, warmup: int = 3, sync=None,
                     seed: int = 0) -> dict[str, list[float]]:
    """ms per call of each method, one list entry per round; rounds interleave the methods, in
    a fresh random order each round, so that machine noise hits them alike. ``sync`` (e.g.
    ``torch.cuda.synchronize``) is called after warm-up and after each method's timed run."""
    sync = sync or (lambda: None)
    for f in methods.values():
        for _ in range(warmup):
            f()
    sync()
    times: dict[str, list[float]] = {k: [] for k in methods}
    rng = random.Random(seed)
    for _ in range(rounds):
        order = list(methods.items())
        rng.shuffle(order)
        for name, f in order:
            t0 = time.perf_counter()
            for _ in range(steps):
                f()
            sync()
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    return times


def paired(times: dict[str, list[float]], ref: str) -> dict[str, tuple[float, float, float]]:
    """Per method: the median of its per-round ratios to ``ref`` and their quartiles."""
    out = {}
    for name, ts in times.items():
        r = [a / b for a, b in zip(ts, times[ref])]
        q = statistics.quantiles(r, n=4, method="inclusive") if len(r) > 1 else [r[0], r[0], r[0]]
        out[name] = (statistics.median(r), q[0], q[2])
    return out
