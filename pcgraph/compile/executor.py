"""Run an :class:`InferencePlan` through a :class:`PCKernel`: the compiled PC program.

The fast path: each step computes only what the plan lists (predictions, errors, one VJP
per edge serving both its feedback and its update, value moves), caches ``f(x)`` and
``f'(x)`` per node and activation, and never calls autograd on the graph. Every
quantity itself comes from the kernel, so a rule that configures the kernel
(Fa-Z-IL's gate, later feedback alignment's messages) runs on this same loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kernel import PCKernel
from .plan import InferencePlan


@dataclass
class InferenceResult:
    values: dict[str, torch.Tensor]      # final values x_v
    errors: dict[str, torch.Tensor]      # last computed errors eps_v
    updates: dict                        # key -> name -> sum_b of the local updates taken


class State:
    """Node values ``x`` and predictions ``mu``, with a cache of ``f(x)`` per
    (node, activation) that lives as long as the value (the feed-forward pass's ``f(x)``
    serve the first inference steps)."""

    def __init__(self, kernel: PCKernel, x: dict[str, torch.Tensor], mu: dict[str, torch.Tensor] | None = None):
        cg = kernel.cg
        self.kernel = kernel
        self.sources = [e.sources for e in cg.edges]
        self.names = [tuple(a.name for a in acts) for acts in cg.acts]
        self.x = dict(x)
        self.mu = dict(mu or {})
        self._f: dict[str, dict[str, torch.Tensor]] = {v: {} for v in cg.order}

    def set(self, v: str, value: torch.Tensor) -> None:
        self.x[v] = value
        self._f[v] = {}

    def f(self, i: int, k: int) -> torch.Tensor:
        v, name = self.sources[i][k], self.names[i][k]
        cache = self._f[v]
        out = cache.get(name)
        if out is None:
            out = cache[name] = self.kernel.f(i, k, self.x[v])
        return out

    def inputs(self, i: int) -> list[torch.Tensor]:
        return [self.f(i, k) for k in range(len(self.sources[i]))]

    def perturb(self, sigma: float, generator: torch.Generator | None) -> None:
        """Break C1: ``N(0, sigma^2)`` on every hidden value (through the kernel)."""
        x = dict(self.x)
        self.kernel.perturb(x, sigma, generator)
        for v, value in x.items():
            if value is not self.x[v]:
                self.set(v, value)


@torch.no_grad()
def run_plan(kernel: PCKernel, plan: InferencePlan, state: State,
             targets: dict[str, torch.Tensor]) -> InferenceResult:
    """Run ``plan`` from ``state``: values ``x`` (inputs clamped) whose predictions ``mu``
    are known where the plan does not recompute them (the feed-forward pass's)."""
    if kernel.memo is None:
        kernel.memo = {}
    try:
        return _run(kernel, plan, state, targets)
    finally:
        kernel.memo = None


def _run(kernel, plan, state, targets):
    edges = kernel.cg.edges
    vals, mu = state, state.mu
    eps: dict[str, torch.Tensor] = {}
    acc: dict = {}
    moved: dict = {}     # node -> (base, d) for a value formed as base + d at its last move
    for step in plan.steps:
        t = step.t
        for c in step.mu:
            mu[c] = kernel.prediction(c, vals.inputs)
        for c in step.eps:
            split = moved.get(c)       # (only hidden values move: never an output's)
            if split is not None and (split[0] is mu[c] or torch.equal(split[0], mu[c])):
                eps[c] = split[1]       # x_c = mu_c + d was formed from this same mu_c: eps_c = d exactly
            else:
                eps[c] = kernel.error(c, vals.x.get(c), mu[c], targets.get(c))
        kernel.observe(t, eps, step.eps)
        messages: dict[str, list[torch.Tensor]] = {}
        for i, wanted, want_params in step.vjps:
            e = edges[i]
            eps_c = eps[e.dst]
            us = vals.inputs(i)
            signal = kernel.learn_signal(i, t, eps_c) if want_params else None
            if signal is eps_c:
                gin, gp = kernel.edge_vjp(i, us, eps_c, wanted, True)
            else:
                gin = kernel.edge_vjp(i, us, eps_c, wanted, False)[0] if any(wanted) else None
                gp = kernel.edge_vjp(i, us, signal, [False] * len(us), True)[1] if signal is not None else None
            if gp:
                kernel.accumulate(acc, e.key, gp)
            for k, w in enumerate(wanted):
                if w:
                    messages.setdefault(e.sources[k], []).append(
                        kernel.message(i, k, gin[k], vals.x[e.sources[k]], vals.f(i, k)))
        for a in step.advance:
            drive = kernel.aggregate(a.node, messages.get(a.node, []))
            x_v, mu_v, own = vals.x[a.node], mu.get(a.node), (eps[a.node] if a.own_error else None)
            vals.set(a.node, kernel.advance(a.node, x_v, mu_v, own, drive))
            base = kernel.advanced_from(x_v, mu_v, own, drive)
            if base is None:
                moved.pop(a.node, None)
            else:
                moved[a.node] = (base, drive)
    return InferenceResult(dict(vals.x), eps, acc)


@torch.no_grad()
def feedforward(kernel: PCKernel, inputs: dict[str, torch.Tensor]) -> State:
    """C1's starting state: every hidden value at its prediction (outputs are not in
    ``x``: they are clamped or free; their feed-forward prediction is in ``mu``)."""
    cg = kernel.cg
    state = State(kernel, {})
    kernel.memo = {}      # kept for run_plan: the VJPs at the wave reuse these linearizations
    for v in cg.order:
        role = cg.role(v)
        if role == "input":
            state.set(v, inputs[v])
        else:
            state.mu[v] = kernel.prediction(v, state.inputs)
            if role != "output":          # hidden and derived nodes start at their prediction
                state.set(v, state.mu[v])
    return state
