"""Run an :class:`InferencePlan` through a :class:`PCKernel`: the compiled PC program.

The fast path: each step computes only what the plan lists (predictions, errors, one VJP
per edge serving both its feedback and its update, value moves), caches ``f(x)`` and
``f'(x)`` per node and activation, and never calls autograd on the graph. Every
quantity itself comes from the kernel, so a rule that configures the kernel
(Fa-Z-IL's gate, later feedback alignment's messages) runs on this same loop.

Memory: with ``release`` (a training step that reads only the updates: ``zil``'s) the loop
drops every value, ``f(x)`` cache, prediction, error, move and linearization right after
the plan's last read of it (:func:`_last_reads`, once per plan), as autograd frees a saved
tensor after its backward; in a Z-IL wave a hidden value is read after the feed-forward
pass only through its ``f(x)``, so the pre-activations go at the start. The peak working
memory of an update is then autograd's (measured: 1.00x torch on the CNN, was 2.0x).
"""

from __future__ import annotations

import torch

from ..ops.base import Op
from . import program as _prog
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
             targets: dict[str, torch.Tensor], scale: float | None = None,
             release: bool | None = None) -> InferenceResult:
    """Run ``plan`` from ``state``: values ``x`` (inputs clamped) whose predictions ``mu``
    are known where the plan does not recompute them (the feed-forward pass's).

    ``scale``: when given, the updates come back multiplied by it (the rule's batch
    reduction, :meth:`pcgraph.rules.base.LearningRule.write_grads` with ``scaled=True``),
    folded into the parameter VJPs where a group is updated once per run and its op
    computes its parameter VJP on its own (:meth:`PCKernel.edge_vjp_scaled`: a dense
    ``linear`` scales inside its matrix product); the other groups (shared ones, ops with
    one joint VJP, kernels that override ``edge_vjp``) are scaled by one multiply at the end.

    ``release``: drop every value (with its ``f(x)`` cache), prediction, error, move and
    linearization (``kernel.memo``) right after the plan's last read of it (computed once
    per plan, :func:`_last_reads`), as autograd frees a saved tensor after its backward:
    the peak working memory of a wave is then about BP's. The numbers are the same; the
    result's ``values`` and ``errors`` then hold only what was never released (``updates``
    are complete), and ``state`` is consumed. None: ``kernel.release`` (default False;
    a training step that reads only the updates, such as ``zil``'s, turns it on)."""
    if release is None:
        release = getattr(kernel, "release", False)
    if kernel.memo is None:
        kernel.memo = {}
    try:
        return _run(kernel, plan, state, targets, scale, bool(release))
    finally:
        kernel.memo = None


class _Program:
    """A plan resolved once for a kernel's graph: per step, plain tuples instead of
    dataclasses, edges and dicts (no per-node lookups in the inner loop)."""

    def __init__(self, kernel: PCKernel, plan: InferencePlan):
        cg = kernel.cg
        edges = cg.edges
        self.steps = []
        self.labels = []
        contributions: dict[str, int] = {}     # parameter group -> updates per run
        dense: dict[str, bool] = {}            # parameter group -> all its edges dense (once per group)
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
                if contributions.get(e.key, 0) > 1:
                    if e.key not in dense:
                        dense[e.key] = all(kernel.dense[j] for j in cg.param_edges[e.key])
                    if dense[e.key]:
                        split = "stack"
                msgs = tuple((k, src) for k, (src, w) in enumerate(zip(e.sources, wanted)) if w)
                vjps.append((i, e.dst, e.key, tuple(wanted), any(wanted), want_params,
                             (False,) * len(e.sources), msgs, split))
            adv = [(a.node, a.own_error) for a in s.advance]
            self.steps.append((s.t, tuple(s.mu), tuple(s.eps), list(s.eps), tuple(vjps), tuple(adv)))
            # comments of the program (pcgraph.compile.program): where the wave is
            head = f"t={s.t}: " + "; ".join(([f"predictions {' '.join(s.mu)}"] if s.mu else []) +
                                             ([f"errors {' '.join(s.eps)}"] if s.eps else []))
            per_edge = {}
            for i, wanted, want_params in s.vjps:
                to = [src for src, w in zip(edges[i].sources, wanted) if w]
                what = ([f"message to {', '.join(to)}"] if to else []) + (["update"] if want_params else [])
                per_edge[i] = f"t={s.t}: edge {edges[i].label}: VJP ({', '.join(what)})"
            self.labels.append((head, per_edge, f"t={s.t}: move {' '.join(a.node for a in s.advance)}"))
        #: parameter group -> contributions stacked into one product (an unrolled RNN's shared
        #: weights: a third of its updates per run, so that the stack holds a third of the
        #: steps' errors and inputs at a time: backprop's memory, a few large products)
        self.stack_chunk = {key: -(-n // _STACK_PARTS) for key, n in contributions.items() if n > 1}
        self._plan_steps = plan.steps
        self._moving = tuple(dict.fromkeys(a.node for s in plan.steps for a in s.advance))
        self._releases: dict = {}

    def releases(self, kernel: PCKernel, state: State) -> "_Releases":
        """:func:`_last_reads` for this kernel and starting state (cached: the key is what
        decides them, the same for every run of a training loop)."""
        x, mget = state.x, state.mu.get         # (dict.get on x: a deferred move is not computed)
        same = tuple(v for v in self._moving if (u := dict.get(x, v)) is not None and u is mget(v))
        warm = tuple(map(tuple, state._f.values()))
        kt = type(kernel)
        fx_ok = kt.message is PCKernel.message
        dead_ok = (kt.advance is PCKernel.advance and kt.advanced_from is PCKernel.advanced_from
                   and kt.aggregate is PCKernel.aggregate and kernel.exact_split and kernel.gamma == 1)
        key = (fx_ok, dead_ok, same, warm)
        rel = self._releases.get(key)
        if rel is None:
            if len(self._releases) > 8:
                self._releases.clear()
            warm = frozenset((v, n) for v, names in zip(state._f, warm) for n in names)
            rel = self._releases[key] = _last_reads(kernel.cg, self._plan_steps, fx_ok, dead_ok, frozenset(same), warm)
        return rel


# the quantities :func:`_last_reads` tracks: a value x_v, its f(x) cache for one activation,
# a prediction, an error, a move (base, d), an edge's linearization
_X, _F, _MU, _EPS, _MOVED, _MEMO = range(6)
#: a stacked group's updates are taken in this many products (see _Program.stack_chunk)
_STACK_PARTS = 3
#: a move's base that is exactly the node's current prediction (see :func:`_last_reads`)
_EXACT = object()


def _backward_from_fx(act) -> bool:
    """The activation's ``backward(x, fx, g)`` equals ``backward(fx, fx, g)`` bit for bit:
    identity, sigmoid, 1 - sigmoid and tanh read only ``fx``; relu's ``threshold_backward``
    masks by ``x <= 0``, the same elements as ``relu(x) <= 0`` (NaN included), as autograd's
    relu backward from its result. A message through it needs ``f(x)`` alone, so the
    pre-activation ``x`` can go (by exact type: a subclass may read ``x``)."""
    from ..ops import activations as A
    return type(act) in (A.Identity, A.Sigmoid, A.OneMinusSigmoid, A.Tanh, A.ReLU)


class _Releases:
    """What :func:`_run` drops, and where (see :func:`_last_reads`)."""

    __slots__ = ("pre", "frees", "dead", "fx")

    def __init__(self, pre, frees, dead, fx):
        self.pre, self.frees, self.dead, self.fx = pre, frees, dead, fx


def _last_reads(cg, steps: list, fx_ok: bool, dead_ok: bool, same: frozenset,
                warm: frozenset) -> _Releases:
    """Where each quantity is read for the last time, from the plan (and three facts of the
    starting state, part of the cache key): ``pre``, the quantities of the starting state
    that no step reads (dropped before the first step), and ``frees[s] = (mu, eps, vjps,
    advance)``: for each item of step ``s`` (each prediction, error, VJP and move, in the
    order :func:`_run` takes them) the ``(kind, key)`` dropped right after it, those whose
    next access, if any, overwrites them.

    Reads, as :func:`_run` makes them: ``f_k(x_v)`` reads its cache, or ``x_v`` where the
    cache is empty (``warm``: the caches filled at the start; a move empties a node's); a
    prediction ``mu_c`` reads ``f(x)`` of its in-edges' sources and writes ``mu_c`` and
    their linearizations; an error ``eps_c`` reads ``c``'s move, ``mu_c`` and ``x_c``; an
    edge's VJP reads its destination's error, ``f(x)`` of its sources, its linearization,
    and the value of each source it sends a message to, unless the activation's backward
    needs ``f(x)`` alone (``fx_ok``: the kernel's own ``message``); a move of ``v`` reads
    ``x_v`` and ``mu_v`` (``eps_v`` with its own error) and writes ``x_v`` and its move.

    *Dead moves* (``dead_ok``: the kernel's own lazy ``advance``, ``gamma = 1``): a move
    whose new value nothing reads but ``v``'s next errors, formed from exactly the
    prediction those errors subtract (its own error is in it, or ``x_v is mu_v`` from the
    start: ``same``) and with a non-empty drive, only records ``eps_v = d``
    (``moved[v] = (_EXACT, d)``): it reads neither ``x_v`` nor ``mu_v``, and those errors
    read only the move. This is Z-IL's wave: a hidden value is then read after the
    feed-forward pass through its ``f(x)`` alone, and is dropped at the start."""
    edges, names = cg.edges, [tuple(a.name for a in acts) for acts in cg.acts]
    fx = [tuple(fx_ok and _backward_from_fx(a) for a in acts) for acts in cg.acts]
    out_names: dict[str, set] = {}
    for i, e in enumerate(edges):
        for k, src in enumerate(e.sources):
            out_names.setdefault(src, set()).add(names[i][k])

    # the items in program order, each with the nodes whose value it may touch
    items: list = []            # (step, phase, index, payload)
    for si, s in enumerate(steps):
        items += [(si, 0, j, c) for j, c in enumerate(s.mu)]
        items += [(si, 1, j, c) for j, c in enumerate(s.eps)]
        items += [(si, 2, j, v) for j, v in enumerate(s.vjps)]
        items += [(si, 3, j, a) for j, a in enumerate(s.advance)]

    # the last item that uses node v's value or prediction other than through its error (its
    # move): a prediction of v (rewrites mu_v) or of a child, a VJP of an edge v feeds, a
    # move of v (each may read x_v). Found in one pass, not by scanning the items after
    # each move (quadratic in the length of a long unrolled graph's plan)
    last_use: dict[str, int] = {}
    for n, (_, phase, _, pay) in enumerate(items):
        if phase == 0:
            last_use[pay] = n
            for i in cg.in_edges(pay):
                for src in edges[i].sources:
                    last_use[src] = n
        elif phase == 2:
            for src in edges[pay[0]].sources:
                last_use[src] = n
        elif phase == 3:
            last_use[pay.node] = n

    dead: list = [[False] * len(s.advance) for s in steps]
    written: set = set()        # nodes whose value or prediction was written since the start
    drives: dict[int, dict[str, int]] = {}      # step -> node -> messages it receives
    for n, item in enumerate(items):
        si, phase, j, pay = item
        if phase == 0:
            written.add(pay)
            continue
        if phase != 3:
            continue
        v = pay.node
        if si not in drives:
            count: dict[str, int] = {}
            for i, wanted, _ in steps[si].vjps:
                for src, w in zip(edges[i].sources, wanted):
                    if w:
                        count[src] = count.get(src, 0) + 1
            drives[si] = count
        drive = drives[si].get(v, 0)
        exact = pay.own_error or (v in same and v not in written)
        ok = dead_ok and drive > 0 and exact and last_use.get(v, -1) <= n
        dead[si][j] = ok
        written.add(v)

    events: dict[tuple, list] = {}      # quantity -> [(position, wrote)], in program order
    where: list = []                    # position -> (step, phase, index)
    populated = set(warm)
    exact_moved: set = set()

    def at(reads=(), writes=()) -> None:
        pos = len(where) - 1
        for q in reads:
            events.setdefault(q, []).append((pos, False))
        for q in writes:
            events.setdefault(q, []).append((pos, True))

    def fread(v, name) -> None:
        if (v, name) in populated:
            at(reads=[(_F, (v, name))])
        else:
            at(reads=[(_X, v)], writes=[(_F, (v, name))])
            populated.add((v, name))

    where.append(None)                  # position 0: the starting state
    at(writes=[(_X, v) for v in cg.order] + [(_MU, v) for v in cg.order if cg.role(v) != "input"]
       + [(_MEMO, i) for i in range(len(edges))] + [(_F, q) for q in sorted(warm)])
    for si, phase, j, pay in items:
        where.append((si, phase, j))
        if phase == 0:
            c = pay
            for i in cg.in_edges(c):
                for k, src in enumerate(edges[i].sources):
                    fread(src, names[i][k])
            at(writes=[(_MU, c)] + [(_MEMO, i) for i in cg.in_edges(c)])
            exact_moved.discard(c)
        elif phase == 1:
            c = pay
            at(reads=[(_MOVED, c)] if c in exact_moved else [(_MOVED, c), (_MU, c), (_X, c)],
               writes=[(_EPS, c)])
        elif phase == 2:
            i, wanted, _ = pay
            at(reads=[(_EPS, edges[i].dst), (_MEMO, i)])
            for k, src in enumerate(edges[i].sources):
                fread(src, names[i][k])
            at(reads=[(_X, src) for k, (src, w) in enumerate(zip(edges[i].sources, wanted))
                      if w and not fx[i][k]])
        else:
            v = pay.node
            resets = [(_F, (v, nm)) for nm in sorted(out_names.get(v, ()))]
            populated.difference_update(q[1] for q in resets)
            if dead[si][j]:
                at(writes=[(_X, v), (_MOVED, v)] + resets)
                exact_moved.add(v)
            else:
                at(reads=[(_X, v), (_MU, v)] + ([(_EPS, v)] if pay.own_error else []),
                   writes=[(_X, v), (_MOVED, v)] + resets)
                exact_moved.discard(v)

    frees = [([[] for _ in s.mu], [[] for _ in s.eps], [[] for _ in s.vjps], [[] for _ in s.advance])
             for s in steps]
    pre: list = []
    for q, evs in events.items():
        for n, (pos, _) in enumerate(evs):
            nxt = evs[n + 1] if n + 1 < len(evs) else None
            if nxt is not None and nxt[0] == pos:
                continue                # the quantity's last access at this position decides
            if nxt is None or nxt[1]:   # never read again before it is overwritten
                if pos == 0:
                    pre.append(q)
                else:
                    si, phase, j = where[pos]
                    frees[si][phase][j].append(q)
    frees = [tuple(tuple(tuple(qs) for qs in phase) for phase in step) for step in frees]
    fx_msgs = [tuple(fx[i][k] for k, _ in enumerate(edges[i].sources)) for i in range(len(edges))]
    return _Releases(tuple(pre), frees, [tuple(d) for d in dead], fx_msgs)


def _program(kernel: PCKernel, plan: InferencePlan) -> _Program:
    cache = plan.__dict__.setdefault("_programs", {})
    prog = cache.get(id(kernel.cg))
    if prog is None or prog[0] is not kernel.cg:
        prog = cache[id(kernel.cg)] = (kernel.cg, _Program(kernel, plan))
    return prog[1]


def _run(kernel, plan, state, targets, scale, release=False):
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
    labels = _prog._marker is not None and prog.labels
    if release:         # drop each quantity after its last read (see _last_reads)
        rel = prog.releases(kernel, state)
        frees, fx_msg = rel.frees, rel.fx
        memo, fcache = kernel.memo, vals._f
        keep_eps = type(kernel).observe is not PCKernel.observe     # (an observer may read any error)

        def drop(qs):
            for kind, key in qs:
                if kind == _X:
                    x.pop(key, None)
                    x.pending.pop(key, None)
                elif kind == _F:
                    fcache[key[0]].pop(key[1], None)
                elif kind == _MU:
                    mu.pop(key, None)
                elif kind == _EPS:
                    if not keep_eps:
                        eps.pop(key, None)
                elif kind == _MOVED:
                    moved.pop(key, None)
                else:
                    memo.pop(key, None)
        drop(rel.pre)
    else:
        frees = [(None, None, None, None)] * len(prog.steps)
    for si, ((t, mus, eps_list, computed, vjps, advs), (f_mu, f_eps, f_vjp, f_adv)) in enumerate(zip(prog.steps, frees)):
        if labels:
            _prog.mark(labels[t][0])
        for n, c in enumerate(mus):
            mu[c] = prediction(c, inputs)
            if release and f_mu[n]:
                drop(f_mu[n])
        for n, c in enumerate(eps_list):
            mv = moved.get(c)          # (only hidden values move: never an output's)
            if mv is not None and (mv[0] is _EXACT or mv[0] is mu[c]):
                eps[c] = mv[1]          # x_c = mu_c + d was formed from this same mu_c: eps_c = d exactly
            elif mv is not None:        # mu_c recomputed: d where it came out the same, without a host sync
                eps[c] = torch.where((mv[0] == mu[c]).all(), mv[1], error(c, x.get(c), mu[c], targets.get(c)))
            else:
                eps[c] = error(c, x.get(c), mu[c], targets.get(c))
            if release:
                mv = None
                if f_eps[n]:
                    drop(f_eps[n])
        observe(t, eps, computed)
        messages: dict[str, list[torch.Tensor]] = {}
        for n, (i, dst, key, wanted, any_wanted, want_params, nothing, msgs, split) in enumerate(vjps):
            if labels:
                _prog.mark(labels[t][1][i])
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
                    box = stacked[key] = (i, [], [])
                box[1].append(signal)
                box[2].append(us[0])
                if len(box[1]) == prog.stack_chunk[key]:        # one product for these
                    accumulate(acc, key, kernel.batched_param_vjp(i, box[1], box[2], scale))
                    del stacked[key]
                box = None
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
                if release and fx_msg[i][k]:    # (its backward reads f(x) alone: x may be gone)
                    fv = f(i, k)
                    m = message(i, k, gin[k], fv, fv)
                    fv = None
                else:
                    m = message(i, k, gin[k], x[src], f(i, k))
                box = messages.get(src)
                if box is None:
                    messages[src] = [m]
                else:
                    box.append(m)
            if release:         # (the locals too: the next item must not hold these)
                eps_c = us = signal = gin = gp = m = box = None
                if f_vjp[n]:
                    drop(f_vjp[n])
        if labels and advs:
            _prog.mark(labels[t][2])
        for n, (node, own_error) in enumerate(advs):
            if release and rel.dead[si][n]:     # only eps_v = d is ever read of this move
                moved[node] = (_EXACT, aggregate(node, messages.pop(node, [])))
                x.pop(node, None)
                x.pending.pop(node, None)
                fcache[node] = {}
                if f_adv[n]:
                    drop(f_adv[n])
                continue
            x_v, mu_v, own = x[node], mu.get(node), (eps[node] if own_error else None)
            drive = aggregate(node, messages.pop(node, []))
            if lazy:
                vals.defer(node, advance, (node, x_v, mu_v, own, drive))
            else:
                vals.set(node, advance(node, x_v, mu_v, own, drive))
            base = advanced_from(x_v, mu_v, own, drive)
            if base is None:
                moved.pop(node, None)
            else:
                moved[node] = (base, drive)
            if release:
                x_v = mu_v = own = drive = base = None
                if f_adv[n]:
                    drop(f_adv[n])
        messages = None
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
    _prog.mark("the feed-forward pass (C1's start: every hidden value at its prediction)")
    for v, role in state.roles:
        if role == "input":
            state.set(v, inputs[v])
        else:
            state.mu[v] = kernel.prediction(v, state.inputs)
            if role != "output":          # hidden and derived nodes start at their prediction
                state.set(v, state.mu[v])
    return state
