"""Reference interpreter: the full PC dynamics, every quantity at every step.

The slow, obviously-right path the compiled plan is tested against. It shares the
equations (the :class:`PCKernel` a rule configures) and nothing else: no plan, no
caches, no skipping. Every step recomputes every prediction and error, takes the
updates due at that step, and moves every hidden value.
"""

from __future__ import annotations

import torch

from .kernel import PCKernel


@torch.no_grad()
def run_reference(kernel: PCKernel, update_times: list, inputs: dict, targets: dict, T: int,
                  init_noise: float = 0.0, generator: torch.Generator | None = None,
                  start: dict | None = None):
    """``update_times[i]``: an int step, ``"every"`` or None. ``start``: initial hidden
    values (default: the feed-forward pass, plus ``init_noise``). Returns
    ``(values, errors, updates)``."""
    cg = kernel.cg
    kernel.memo = None    # recompute everything: no linearization kept by the fast path
    order, edges = cg.order, cg.edges
    role = {v: cg.role(v) for v in order}

    x: dict[str, torch.Tensor] = {}
    for v in order:
        if role[v] == "input":
            x[v] = inputs[v]
        elif role[v] != "output":       # hidden, and derived nodes (constant: never move)
            x[v] = start[v] if start is not None else kernel.prediction(v, lambda i: kernel.inputs(i, x))
    if init_noise and start is None:
        kernel.perturb(x, init_noise, generator)

    acc: dict = {}
    eps: dict[str, torch.Tensor] = {}
    for t in range(T + 1):
        mu = {c: kernel.prediction(c, lambda i: kernel.inputs(i, x)) for c in order if role[c] != "input"}
        eps = {c: kernel.error(c, x.get(c), mu[c], targets.get(c)) for c in mu}
        kernel.observe(t, eps, list(eps))
        for i, te in enumerate(update_times):
            if te == t or te == "every":
                signal = kernel.learn_signal(i, t, eps[edges[i].dst])
                if signal is not None:
                    n = len(edges[i].sources)
                    grads = kernel.edge_vjp(i, kernel.inputs(i, x), signal, [False] * n, True)[1]
                    kernel.accumulate(acc, edges[i].key, grads)
        if t == T:
            break
        new_x = dict(x)
        for v in order:
            if role[v] != "hidden":
                continue
            messages = []
            for i, k in cg.out_edges(v):
                wanted = [j == k for j in range(len(edges[i].sources))]
                g = kernel.edge_vjp(i, kernel.inputs(i, x), eps[edges[i].dst], wanted, False)[0][k]
                u = kernel.f(i, k, x[v])
                messages.append(kernel.message(i, k, g, x[v], u))
            new_x[v] = kernel.advance(v, x[v], mu[v], eps[v], kernel.aggregate(v, messages))
        x = new_x
    return x, eps, acc
