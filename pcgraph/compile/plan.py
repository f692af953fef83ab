"""The inference plan: which quantities of the PC dynamics each step must compute.

The dynamics of a compiled graph, for ``t = 0 .. T`` (``gamma`` the integration step):

    mu_c(t)    = sum_{e: [p_1..p_n] -> c} op_e(f(x_p1(t)), .., f(x_pn(t)))
    eps_c(t)   = x_c(t) - mu_c(t)             (hidden)   |  -dl/dmu_c (output, clamped)
    x_v(t+1)   = x_v(t) + gamma * (-eps_v(t) + sum_{(e, k): v is source k of e} f'(x_v) (d op_e/du_k)^T eps_c(t))
    update e at t_e:  sum_b (d op_e/d theta)^T eps_dst(t_e)  (at the sources' values at t_e)

(:mod:`pcgraph.compile.kernel` defines each quantity; this module only decides which.)

Most of these quantities are either exactly zero or never read. The plan finds them
statically, from the graph and the rule's conditions alone:

* *known zeros* (forward): if C1 holds every hidden error starts at exactly 0; a value
  moves only if its own error or a child's error is non-zero, and an error stays 0
  while neither its value nor its parents' values move.
* *liveness* (backward): a quantity is computed only if some parameter update depends
  on it, through the recurrences above.

For Z-IL (C1, updates at ``t = depth``) what remains is a wave: at step ``t`` exactly the
nodes at depth ``t`` move, which costs one backward pass, as in BP. For IL or any broken
condition the plan keeps every quantity that matters. Skipping a known zero or a dead
value cannot change any update, and tests compare the plan against the reference
interpreter that computes everything every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .graph import CompiledGraph


EVERY = "every"   # an update time meaning: at every step (gated by the kernel's learn_signal)


@dataclass
class Advance:
    node: str
    own_error: bool                   # include -eps_v (False when eps_v(t) is known to be 0)
    feedback: list[tuple[int, int]]   # (edge, source position) whose child error is not known 0


@dataclass
class Step:
    t: int
    mu: list[str] = field(default_factory=list)        # predictions to (re)compute
    eps: list[str] = field(default_factory=list)       # errors to (re)compute
    updates: list[int] = field(default_factory=list)   # edges whose parameter update is taken now
    advance: list[Advance] = field(default_factory=list)  # values moved to t + 1
    #: one VJP per edge and step: (edge, wanted sources, parameters wanted)
    vjps: list[tuple[int, tuple[bool, ...], bool]] = field(default_factory=list)


@dataclass
class InferencePlan:
    T: int
    c1: bool
    update_times: list
    steps: list[Step]
    full: bool = False

    def describe(self, cg: CompiledGraph) -> str:
        kind = "every quantity at every step" if self.full else \
            f"C1 (start at the feed-forward values): {'yes' if self.c1 else 'no'}"
        lines = [f"inference plan: {self.T + 1} steps (t = 0..{self.T}), {kind}"]
        for s in self.steps:
            parts = []
            if s.mu:
                parts.append("mu[" + " ".join(s.mu) + "]")
            if s.eps:
                parts.append("eps[" + " ".join(s.eps) + "]")
            if s.updates:
                parts.append("update[" + " ".join(cg.edges[i].label for i in s.updates) + "]")
            if s.advance:
                parts.append("advance[" + " ".join(a.node for a in s.advance) + "]")
            lines.append(f"  t={s.t}: " + ("  ".join(parts) if parts else "(nothing)"))
        return "\n".join(lines)

    def work(self, cg: CompiledGraph) -> int:
        """Edge evaluations the plan performs (contributions, feedbacks, parameter VJPs)."""
        n = 0
        for s in self.steps:
            n += sum(len(cg.in_edges(c)) for c in s.mu) + len(s.updates)
            n += sum(len(a.feedback) for a in s.advance)
        return n


def _vjps(cg: CompiledGraph, s: Step) -> list[tuple[int, tuple[bool, ...], bool]]:
    """Merge a step's updates and feedback into one VJP per edge."""
    want: dict[int, list[bool]] = {}
    params: dict[int, bool] = {}
    for i in s.updates:
        want.setdefault(i, [False] * len(cg.edges[i].sources))
        params[i] = True
    for a in s.advance:
        for i, k in a.feedback:
            want.setdefault(i, [False] * len(cg.edges[i].sources))[k] = True
    return [(i, tuple(w), params.get(i, False)) for i, w in sorted(want.items())]


def _updates_at(update_times, t: int) -> list[int]:
    return [i for i, te in enumerate(update_times) if te == t or te == EVERY]


def build_full_plan(cg: CompiledGraph, update_times: list, T: int) -> InferencePlan:
    """Every prediction, error, update and value move at every step: no analysis (rules
    whose learning reads every error every step, such as Fa-Z-IL's phi)."""
    noninput = [v for v in cg.order if cg.role(v) != "input"]
    hidden = [v for v in cg.order if cg.role(v) == "hidden"]
    steps = []
    for t in range(T + 1):
        s = Step(t, list(noninput), list(noninput), _updates_at(update_times, t))
        if t < T:
            s.advance = [Advance(v, True, list(cg.out_edges(v))) for v in hidden]
        s.vjps = _vjps(cg, s)
        steps.append(s)
    return InferencePlan(T, False, list(update_times), steps, full=True)


def build_plan(cg: CompiledGraph, update_times: list, c1: bool) -> InferencePlan:
    """``update_times[i]``: the step at which edge ``i``'s parameters update (None: no params)."""
    g = cg.graph
    times = [t for t in update_times if isinstance(t, int)]
    T = max(times) if times else 0
    hidden = [v for v in cg.order if cg.role(v) == "hidden"]
    noninput = [v for v in cg.order if cg.role(v) != "input"]
    children = {v: list(dict.fromkeys(cg.edges[i].dst for i, _ in cg.out_edges(v))) for v in g.nodes}

    def hsrc(i: int) -> list[str]:
        return [p for p in cg.edges[i].sources if cg.role(p) == "hidden"]

    hparents = {v: list(dict.fromkeys(p for i in cg.in_edges(v) for p in hsrc(i))) for v in g.nodes}

    # forward: known-zero errors Z[t] and values that may move at step t, chg[t]
    Z: list[set[str]] = [set(hidden) if c1 else set()]
    chg: list[set[str]] = []
    for t in range(T + 1):
        z = Z[t]
        moving = {v for v in hidden if not (v in z and all(c in z for c in children[v]))}
        chg.append(moving)
        Z.append({v for v in z if v not in moving and not any(p in moving for p in hparents[v])})

    # backward: which errors / predictions / values are needed at each t
    need_e = [set() for _ in range(T + 2)]
    need_m = [set() for _ in range(T + 2)]
    need_x = [set() for _ in range(T + 2)]
    for t in range(T, -1, -1):
        for i, te in enumerate(update_times):
            if te == t and cg.edges[i].dst not in Z[t]:
                need_e[t].add(cg.edges[i].dst)
                need_x[t].update(hsrc(i))
        for v in need_x[t + 1]:
            need_x[t].add(v)
            if v in chg[t]:
                if v not in Z[t]:
                    need_e[t].add(v)
                for i, _ in cg.out_edges(v):
                    if cg.edges[i].dst not in Z[t]:
                        need_e[t].add(cg.edges[i].dst)
                        need_x[t].update(hsrc(i))      # the VJP reads every source of the edge
        for c in need_e[t]:
            if c not in Z[t]:
                need_m[t].add(c)
                if cg.role(c) == "hidden":
                    need_x[t].add(c)
        for c in need_m[t]:
            need_x[t].update(hparents[c])

    # forward again: emit the steps, recomputing mu / eps only when stale
    stale_m = {c: (not c1) and bool(hparents[c]) for c in noninput}
    stale_e = {c: True for c in noninput}
    steps: list[Step] = []
    for t in range(T + 1):
        s = Step(t)
        for c in noninput:
            if c in need_m[t] and stale_m[c]:
                s.mu.append(c)
                stale_m[c] = False
                stale_e[c] = True
            if c in need_e[t] and c not in Z[t] and stale_e[c]:
                s.eps.append(c)
                stale_e[c] = False
        s.updates = [i for i, te in enumerate(update_times) if te == t and cg.edges[i].dst not in Z[t]]
        if t < T:
            for v in hidden:
                if v in chg[t] and v in need_x[t + 1]:
                    fb = [(i, k) for i, k in cg.out_edges(v) if cg.edges[i].dst not in Z[t]]
                    s.advance.append(Advance(v, v not in Z[t], fb))
            for a in s.advance:
                stale_e[a.node] = True
                for c in children[a.node]:
                    stale_m[c] = True
        s.vjps = _vjps(cg, s)
        steps.append(s)
    return InferencePlan(T, c1, list(update_times), steps)
