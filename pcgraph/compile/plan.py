"""The inference plan: which quantities of the PC dynamics each step must compute.

The dynamics of a compiled graph, for ``t = 0 .. T`` (``gamma`` the integration step):

    mu_c(t)    = sum_{e: p->c} op_e(f_e(x_p(t)))
    eps_c(t)   = x_c(t) - mu_c(t)             (hidden)   |  -dl/dmu_c (output, clamped)
    x_v(t+1)   = x_v(t) + gamma * (-eps_v(t) + sum_{e: v->c} f_e'(x_v) op_e^T eps_c(t))
    update e at t_e:  grad_e += -(1/B) sum_b op_e^T eps_dst(t_e)  (wrt theta, at f_e(x_src(t_e)))

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


@dataclass
class Advance:
    node: str
    own_error: bool          # include -eps_v (False when eps_v(t) is known to be 0)
    feedback: list[int]      # out-edges whose child error is not known to be 0


@dataclass
class Step:
    t: int
    mu: list[str] = field(default_factory=list)        # predictions to (re)compute
    eps: list[str] = field(default_factory=list)       # errors to (re)compute
    updates: list[int] = field(default_factory=list)   # edges whose parameter update is taken now
    advance: list[Advance] = field(default_factory=list)  # values moved to t + 1


@dataclass
class InferencePlan:
    T: int
    c1: bool
    update_times: list[int | None]
    steps: list[Step]

    def describe(self, cg: CompiledGraph) -> str:
        lines = [f"inference plan: {self.T + 1} steps (t = 0..{self.T}), "
                 f"C1 (start at the feed-forward values): {'yes' if self.c1 else 'no'}"]
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


def build_plan(cg: CompiledGraph, update_times: list[int | None], c1: bool) -> InferencePlan:
    """``update_times[i]``: the step at which edge ``i``'s parameters update (None: no params)."""
    g = cg.graph
    times = [t for t in update_times if t is not None]
    T = max(times) if times else 0
    hidden = [v for v in cg.order if g.nodes[v].role == "hidden"]
    noninput = [v for v in cg.order if g.nodes[v].role != "input"]
    children = {v: [cg.edges[i].dst for i in cg.out_edges(v)] for v in g.nodes}
    hparents = {v: [cg.edges[i].src for i in cg.in_edges(v) if g.nodes[cg.edges[i].src].role == "hidden"]
                for v in g.nodes}

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
                if g.nodes[cg.edges[i].src].role == "hidden":
                    need_x[t].add(cg.edges[i].src)
        for v in need_x[t + 1]:
            need_x[t].add(v)
            if v in chg[t]:
                if v not in Z[t]:
                    need_e[t].add(v)
                need_e[t].update(c for c in children[v] if c not in Z[t])
        for c in need_e[t]:
            if c not in Z[t]:
                need_m[t].add(c)
                if g.nodes[c].role == "hidden":
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
                    fb = [i for i in cg.out_edges(v) if cg.edges[i].dst not in Z[t]]
                    s.advance.append(Advance(v, v not in Z[t], fb))
            for a in s.advance:
                stale_e[a.node] = True
                for c in children[a.node]:
                    stale_m[c] = True
        steps.append(s)
    return InferencePlan(T, c1, list(update_times), steps)
