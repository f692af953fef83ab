"""Run an :class:`InferencePlan`: the compiled predictive-coding program.

Everything here is computed from the model's own equations with the per-edge
primitives of :class:`PCNetwork` (no autograd): a feed-forward pass sets every hidden
value to its prediction (C1), optional noise breaks C1, then each step recomputes the
predictions and errors the plan lists, takes the parameter updates due at that step,
and moves the listed values by ``gamma * (-eps_v + sum_children f'(x_v) op^T eps_c)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .network import PCNetwork
from .plan import InferencePlan


@dataclass
class InferenceResult:
    loss: torch.Tensor                   # batch-mean loss of the feed-forward prediction
    outputs: dict[str, torch.Tensor]     # feed-forward predictions of the outputs
    values: dict[str, torch.Tensor]      # final values x_v
    errors: dict[str, torch.Tensor]      # last computed errors eps_v


class _Values:
    """Node values with a cache of ``f(x)`` and ``f'(x)`` per (node, activation)."""

    def __init__(self, net: PCNetwork):
        cg = net.compiled
        self.src = [e.src for e in cg.edges]
        self.acts = cg.acts
        self.x: dict[str, torch.Tensor] = {}
        self._f: dict[str, dict[str, torch.Tensor]] = {v: {} for v in cg.order}
        self._df: dict[str, dict[str, torch.Tensor]] = {v: {} for v in cg.order}

    def set(self, v: str, value: torch.Tensor) -> None:
        self.x[v] = value
        self._f[v] = {}
        self._df[v] = {}

    def f(self, i: int) -> torch.Tensor:
        v, act = self.src[i], self.acts[i]
        cache = self._f[v]
        out = cache.get(act.name)
        if out is None:
            out = cache[act.name] = act.f(self.x[v])
        return out

    def df(self, i: int) -> torch.Tensor:
        v, act = self.src[i], self.acts[i]
        cache = self._df[v]
        out = cache.get(act.name)
        if out is None:
            out = cache[act.name] = act.df(self.x[v], self.f(i))
        return out


def _accumulate(acc: dict, key: str, grads: dict[str, torch.Tensor]) -> None:
    """Sum local updates per parameter group (ops return fresh tensors: summed in place)."""
    group = acc.setdefault(key, {})
    for name, g in grads.items():
        if name in group:
            group[name].add_(g)
        else:
            group[name] = g


def write_grads(net: PCNetwork, acc: dict, batch: int) -> None:
    """Store ``dF/dtheta = -(1/B) * sum of the local updates`` in ``.grad`` (accumulating;
    without the ``1/B`` under ``reduction: sum``)."""
    scale = -1.0 / batch if net.compiled.reduction == "mean" else -1.0
    for key, group in acc.items():
        for name, g in group.items():
            p = net.params[key][name]
            g.mul_(scale)
            p.grad = g if p.grad is None else p.grad.add_(g)


@torch.no_grad()
def run_inference(net: PCNetwork, plan: InferencePlan, inputs: dict, targets: dict, gamma: float,
                  init_noise: float = 0.0, generator: torch.Generator | None = None) -> InferenceResult:
    cg = net.compiled
    roles = {v: cg.role(v) for v in cg.order}
    vals = _Values(net)
    mu: dict[str, torch.Tensor] = {}
    for v in cg.order:
        if roles[v] == "input":
            vals.set(v, inputs[v])
        else:
            mu[v] = net.predict(v, vals.f)
            if roles[v] == "hidden":
                vals.set(v, mu[v])
    outputs = {o: mu[o] for o in cg.graph.outputs}
    loss = net.loss(outputs, targets)
    if init_noise:
        for v in cg.order:
            if roles[v] == "hidden":
                noise = torch.randn(mu[v].shape, generator=generator, device=mu[v].device, dtype=mu[v].dtype)
                vals.set(v, mu[v] + init_noise * noise)

    eps: dict[str, torch.Tensor] = {}
    acc: dict = {}
    for step in plan.steps:
        for c in step.mu:
            mu[c] = net.predict(c, vals.f)
        for c in step.eps:
            if roles[c] == "output":
                eps[c] = cg.losses[c].error(mu[c], targets[c])
            else:
                eps[c] = vals.x[c] - mu[c]
        for i in step.updates:
            _accumulate(acc, cg.edges[i].key, net.param_vjp(i, vals.f(i), eps[cg.edges[i].dst]))
        for a in step.advance:
            drive = -eps[a.node] if a.own_error else None
            for i in a.feedback:
                fb = net.feedback(i, vals.f(i), vals.df(i), eps[cg.edges[i].dst])
                drive = fb if drive is None else drive + fb
            vals.set(a.node, vals.x[a.node] + gamma * drive if gamma != 1 else vals.x[a.node] + drive)
    batch = next(iter(inputs.values())).shape[0]
    write_grads(net, acc, batch)
    return InferenceResult(loss.detach(), outputs, vals.x, eps)
