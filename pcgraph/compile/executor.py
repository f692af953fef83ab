"""Run an :class:`InferencePlan` through a :class:`PCKernel`: the compiled PC program.

The fast path: each step computes only what the plan lists (predictions, errors, one VJP
per edge serving both its feedback and its update, value moves), caches ``f(x)`` and
``f'(x)`` per node and activation, and never calls autograd on the graph. Every
quantity itself comes from the kernel, so a rule that configures the kernel
(Fa-Z-IL's gate, later feedback alignment's messages) runs on this same loop.
"""

from __future__ import annotations

import torch

from ..ops.base import Op
from .kernel import PCKernel
from .plan import InferencePlan


class InferenceResult:
    """``values``: final values ``x_v`` (computed on first access where a move was
    deferred); ``errors``: last computed errors ``eps_v``; ``updates``: key -> name -> sum_b
    of the local updates taken."""

    def __init__(self, values: dict[str, torch.Tensor], errors: dict[str, torch.Tensor], updates: dict):
        self._values = values
        self.errors = errors
        self.updates = updates

    @property
    def values(self) -> dict[str, torch.Tensor]:
        if isinstance(self._values, _Values):
            self._values = self._values.materialized()
        return self._values

    def __repr__(self) -> str:
        return f"InferenceResult(values={sorted(self.values)}, errors={sorted(self.errors)}, updates={sorted(self.updates)})"


class _Values(dict):
    """Node values, some of them *deferred*: a move ``x_v <- advance(..)`` whose result no
    quantity has read yet is computed when first read (under Z-IL a node's moved value is
    never read: its next error is the move's ``d`` itself), so a value nobody reads costs
    nothing. ``get`` and ``[]`` compute it; iteration sees only computed values (use
    :meth:`materialized`)."""

    __slots__ = ("pending",)

    def __init__(self, *a):
        super().__init__(*a)
        self.pending: dict = {}

    def __missing__(self, v):
        fn_args = self.pending.pop(v, None)
        if fn_args is None:
            raise KeyError(v)
        value = self[v] = fn_args[0](*fn_args[1])
        return value

    def get(self, v, default=None):
        if v in self or v in self.pending:
            return self[v]
        return default

    def defer(self, v, fn, args) -> None:
        self.pop(v, None)
        self.pending[v] = (fn, args)

    def materialized(self) -> dict:
        for v in list(self.pending):
            self[v]
        return dict(self)


class State:
    """Node values ``x`` and predictions ``mu``, with a cache of ``f(x)`` per
    (node, activation) that lives as long as the value (the feed-forward pass's ``f(x)``
    serve the first inference steps)."""

    def __init__(self, kernel: PCKernel, x: dict[str, torch.Tensor], mu: dict[str, torch.Tensor] | None = None):
        cg = kernel.cg
        self.kernel = kernel
        meta = kernel.__dict__.get("_state_meta")
        if meta is None or meta[0] is not cg:    # per graph, once: edges' sources and activations
            meta = kernel.__dict__["_state_meta"] = (
                cg, [e.sources for e in cg.edges], [tuple(a.name for a in acts) for acts in cg.acts],
                [(v, cg.role(v)) for v in cg.order])
        _, self.sources, self.names, self.roles = meta
        self.x = _Values(x)
        self.mu = dict(mu or {})
        self._f: dict[str, dict[str, torch.Tensor]] = {v: {} for v in cg.order}

    def set(self, v: str, value: torch.Tensor) -> None:
        self.x.pending.pop(v, None)
        self.x[v] = value
        self._f[v] = {}

    def defer(self, v: str, fn, args) -> None:
        """``x_v = fn(*args)``, computed when first read."""
        self.x.defer(v, fn, args)
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
        x = self.x.materialized()
        self.kernel.perturb(x, sigma, generator)
        for v, value in x.items():
            if value is not self.x[v]:
                self.set(v, value)


@torch.no_grad()
def run_plan(kernel: PCKernel, plan: InferencePlan, state: State,
             targets: dict[str, torch.Tensor], scale: float | None = None) -> InferenceResult:
    """Run ``plan`` from ``state``: values ``x`` (inputs clamped) whose predictions ``mu``
    are known where the plan does not recompute them (the feed-forward pass's).

    ``scale``: when given, the updates come back multiplied by it (the rule's batch
    reduction, :meth:`pcgraph.rules.base.LearningRule.write_grads` with ``scaled=True``),
    folded into the parameter VJPs where a group is updated once per run and its op
    computes its parameter VJP on its own (:meth:`PCKernel.edge_vjp_scaled`: a dense
    ``linear`` scales inside its matrix product); the other groups (shared ones, ops with
    one joint VJP, kernels that override ``edge_vjp``) are scaled by one multiply at the end."""
    if kernel.memo is None:
        kernel.memo = {}
    try:
        return _run(kernel, plan, state, targets, scale)
    finally:
        kernel.memo = None


class _Program:
    """A plan resolved once for a kernel's graph: per step, plain tuples instead of
    dataclasses, edges and dicts (no per-node lookups in the inner loop)."""

    def __init__(self, kernel: PCKernel, plan: InferencePlan):
        cg = kernel.cg
        edges = cg.edges
        self.steps = []
        contributions: dict[str, int] = {}     # parameter group -> updates per run
        for s in plan.steps:
            for i, _, want_params in s.vjps:
                if want_params:
                    contributions[edges[i].key] = contributions.get(edges[i].key, 0) + 1
        for s in plan.steps:
            vjps = []
            for i, wanted, want_params in s.vjps:
                e = edges[i]
                op = cg.ops[i]
                # the parameter VJP is computed on its own (scaling its signal costs nothing
                # else); ops with one joint VJP (or a linearization) scale their output instead
                # a group updated once per run whose op computes its parameter VJP on its own
                # takes the scaled signal; a shared group (an unrolled RNN's) sums unscaled and
                # is scaled once at the end
                split = not op.uses_default_vjp and type(op).vjp is Op.vjp and contributions.get(e.key) == 1
                # a dense group updated several times (shared weights) stacks its
                # contributions into one product at the end
                if contributions.get(e.key, 0) > 1 and all(kernel.dense[j] for j in cg.param_edges[e.key]):
                    split = "stack"
                msgs = tuple((k, src) for k, (src, w) in enumerate(zip(e.sources, wanted)) if w)
                vjps.append((i, e.dst, e.key, tuple(wanted), any(wanted), want_params,
                             (False,) * len(e.sources), msgs, split))
            adv = [(a.node, a.own_error) for a in s.advance]
            self.steps.append((s.t, tuple(s.mu), tuple(s.eps), list(s.eps), tuple(vjps), tuple(adv)))


def _program(kernel: PCKernel, plan: InferencePlan) -> _Program:
    cache = plan.__dict__.setdefault("_programs", {})
    prog = cache.get(id(kernel.cg))
    if prog is None or prog[0] is not kernel.cg:
        prog = cache[id(kernel.cg)] = (kernel.cg, _Program(kernel, plan))
    return prog[1]


def _run(kernel, plan, state, targets, scale):
    prog = _program(kernel, plan)
    vals, mu = state, state.mu
    x = vals.x
    eps: dict[str, torch.Tensor] = {}
    acc: dict = {}
    moved: dict = {}     # node -> (base, d) for a value formed as base + d at its last move
    late: set = set()    # groups whose updates are scaled at the end
    prediction, error, observe = kernel.prediction, kernel.error, kernel.observe
    learn_signal, edge_vjp, message = kernel.learn_signal, kernel.edge_vjp, kernel.message
    aggregate, advance, advanced_from = kernel.aggregate, kernel.advance, kernel.advanced_from
    accumulate, inputs, f = kernel.accumulate, vals.inputs, vals.f
    edge_vjp_scaled = kernel.edge_vjp_scaled
    stacked: dict = {}   # group -> (edge, signals, inputs): shared dense groups, one product at the end
    stack_ok = type(kernel).accumulate is PCKernel.accumulate
    # scaling the signal instead of the update is exact only where the VJP is the op's
    # own (linear in the signal); a kernel that overrides edge_vjp gets its updates scaled
    fold = scale is not None and type(kernel).edge_vjp is PCKernel.edge_vjp
    # a move is computed when its value is first read, if ever (only with the kernel's own
    # advance, which has no side effects: a rule's override runs when the plan says)
    lazy = type(kernel).advance is PCKernel.advance
    for t, mus, eps_list, computed, vjps, advs in prog.steps:
        for c in mus:
            mu[c] = prediction(c, inputs)
        for c in eps_list:
            mv = moved.get(c)          # (only hidden values move: never an output's)
            if mv is not None and (mv[0] is mu[c] or torch.equal(mv[0], mu[c])):
                eps[c] = mv[1]          # x_c = mu_c + d was formed from this same mu_c: eps_c = d exactly
            else:
                eps[c] = error(c, x.get(c), mu[c], targets.get(c))
        observe(t, eps, computed)
        messages: dict[str, list[torch.Tensor]] = {}
        for i, dst, key, wanted, any_wanted, want_params, nothing, msgs, split in vjps:
            eps_c = eps[dst]
            us = inputs(i)
            signal = learn_signal(i, t, eps_c) if want_params else None
            gp = None
            if signal is None:
                gin = edge_vjp(i, us, eps_c, wanted, False)[0] if any_wanted else None
            elif fold and split == "stack" and stack_ok:
                gin = edge_vjp(i, us, eps_c, wanted, False)[0] if any_wanted else None
                box = stacked.get(key)
                if box is None:
                    stacked[key] = (i, [signal], [us[0]])
                else:
                    box[1].append(signal)
                    box[2].append(us[0])
            elif fold and split:
                gin, gp = edge_vjp_scaled(i, us, eps_c, signal, wanted, scale)
            else:
                if signal is eps_c:
                    gin, gp = edge_vjp(i, us, eps_c, wanted, True)
                else:
                    gin = edge_vjp(i, us, eps_c, wanted, False)[0] if any_wanted else None
                    gp = edge_vjp(i, us, signal, nothing, True)[1]
                if gp and scale is not None:
                    late.add(key)
            if gp:
                accumulate(acc, key, gp)
            for k, src in msgs:
                m = message(i, k, gin[k], x[src], f(i, k))
                box = messages.get(src)
                if box is None:
                    messages[src] = [m]
                else:
                    box.append(m)
        for node, own_error in advs:
            x_v, mu_v, own = x[node], mu.get(node), (eps[node] if own_error else None)
            drive = aggregate(node, messages.get(node, []))
            if lazy:
                vals.defer(node, advance, (node, x_v, mu_v, own, drive))
            else:
                vals.set(node, advance(node, x_v, mu_v, own, drive))
            base = advanced_from(x_v, mu_v, own, drive)
            if base is None:
                moved.pop(node, None)
            else:
                moved[node] = (base, drive)
    for key, (i, signals, us) in stacked.items():
        accumulate(acc, key, kernel.batched_param_vjp(i, signals, us, scale))
    if late:            # one multiply for every update not scaled on the way
        torch._foreach_mul_([g for key in late for g in acc[key].values()], scale)
    values = _Values(vals.x)
    values.pending.update(vals.x.pending)
    return InferenceResult(values, eps, acc)


@torch.no_grad()
def feedforward(kernel: PCKernel, inputs: dict[str, torch.Tensor]) -> State:
    """C1's starting state: every hidden value at its prediction (outputs are not in
    ``x``: they are clamped or free; their feed-forward prediction is in ``mu``)."""
    state = State(kernel, {})
    kernel.memo = {}      # kept for run_plan: the VJPs at the wave reuse these linearizations
    for v, role in state.roles:
        if role == "input":
            state.set(v, inputs[v])
        else:
            state.mu[v] = kernel.prediction(v, state.inputs)
            if role != "output":          # hidden and derived nodes start at their prediction
                state.set(v, state.mu[v])
    return state
