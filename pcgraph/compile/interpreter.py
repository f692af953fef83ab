"""Reference interpreter: the full PC dynamics, every quantity at every step.

The slow, obviously-right path the compiled plan is tested against. It recomputes every
prediction and error at every step and moves every hidden value, exactly as the
equations in :mod:`pcgraph.compile.plan` read, with no caching and no skipping.
"""

from __future__ import annotations

import torch

from .dynamics import InferenceResult, _accumulate, write_grads
from .network import PCNetwork


@torch.no_grad()
def run_reference(net: PCNetwork, update_times: list[int | None], inputs: dict, targets: dict,
                  gamma: float, init_noise: float = 0.0, generator: torch.Generator | None = None,
                  T: int | None = None) -> InferenceResult:
    cg = net.compiled
    order, edges, acts = cg.order, cg.edges, cg.acts
    role = {v: cg.role(v) for v in order}
    if T is None:
        T = max((t for t in update_times if t is not None), default=0)

    def f_src(x, i):
        return acts[i].f(x[edges[i].src])

    def predictions(x):
        return {c: net.predict(c, lambda i: f_src(x, i)) for c in order if role[c] != "input"}

    x: dict[str, torch.Tensor] = {}
    for v in order:  # feed-forward pass
        if role[v] == "input":
            x[v] = inputs[v]
        else:
            x[v] = net.predict(v, lambda i: f_src(x, i))
    outputs = {o: x[o] for o in cg.graph.outputs}
    loss = net.loss(outputs, targets)
    if init_noise:
        for v in order:
            if role[v] == "hidden":
                noise = torch.randn(x[v].shape, generator=generator, device=x[v].device, dtype=x[v].dtype)
                x[v] = x[v] + init_noise * noise

    acc: dict = {}
    eps: dict[str, torch.Tensor] = {}
    for t in range(T + 1):
        mu = predictions(x)
        eps = {c: (cg.losses[c].error(mu[c], targets[c]) if role[c] == "output" else x[c] - mu[c])
               for c in mu}
        for i, te in enumerate(update_times):
            if te == t:
                _accumulate(acc, edges[i].key, net.param_vjp(i, f_src(x, i), eps[edges[i].dst]))
        if t == T:
            break
        new_x = dict(x)
        for v in order:
            if role[v] != "hidden":
                continue
            drive = -eps[v]
            for i in cg.out_edges(v):
                u = f_src(x, i)
                drive = drive + net.feedback(i, u, acts[i].df(x[v], u), eps[edges[i].dst])
            new_x[v] = x[v] + gamma * drive
        x = new_x
    write_grads(net, acc, next(iter(inputs.values())).shape[0])
    return InferenceResult(loss.detach(), outputs, x, eps)
