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

from ..ir.graph import gc_paused
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


@gc_paused()
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


@gc_paused()
def build_plan(cg: CompiledGraph, update_times: list, c1: bool) -> InferencePlan:
    """``update_times[i]``: the step at which edge ``i``'s parameters update (None: no params).

    The sets below are monotone in ``t``, so they are kept as one threshold per node rather
    than one set per step: hidden errors only ever leave the known zeros (``v`` is in ``Z[t]``
    iff ``t < zero_until[v]``), values only ever start moving (``v`` moves at ``t`` iff
    ``t >= moves_from[v]``), and a value read at ``t`` is read at every earlier step (``v`` is in
    ``need_x[t]`` iff ``t <= needed_until[v]``). The cost is linear in the size of the graph plus
    the size of the plan, not the number of steps times the number of nodes (an unrolled RNN
    of thousands of steps has thousands of both)."""
    from collections import deque

    g = cg.graph
    times = [t for t in update_times if isinstance(t, int)]
    T = max(times) if times else 0
    hidden = [v for v in cg.order if cg.role(v) == "hidden"]
    noninput = [v for v in cg.order if cg.role(v) != "input"]
    children = {v: list(dict.fromkeys(cg.edges[i].dst for i, _ in cg.out_edges(v))) for v in g.nodes}

    def hsrc(i: int) -> list[str]:
        return [p for p in cg.edges[i].sources if cg.role(p) == "hidden"]

    hparents = {v: list(dict.fromkeys(p for i in cg.in_edges(v) for p in hsrc(i))) for v in g.nodes}
    hset = set(hidden)
    never = T + 1                        # a threshold past the last step

    # forward: known-zero errors and moving values. Z[0] = hidden (C1) or nothing;
    # moving[t] = hidden minus {v in Z[t] whose children are all in Z[t]} (a child that is
    # not hidden is never a known zero); Z[t+1] = Z[t] minus moving[t] minus the nodes with a
    # hidden parent in moving[t]. Earliest times by a 0-1 breadth-first search.
    zero_until = {v: (never if c1 else 0) for v in hidden}     # first t with v not in Z[t]
    moves_from = {v: never for v in hidden}                      # first t with v in moving[t]
    hchildren: dict[str, list[str]] = {v: [] for v in hidden}   # v -> hidden nodes it is a hidden parent of
    for v in hidden:
        for p in hparents[v]:
            hchildren[p].append(v)
    parents_of: dict[str, list[str]] = {v: [] for v in g.nodes}  # c -> hidden v with c in children[v]
    for v in hidden:
        for c in children[v]:
            parents_of[c].append(v)
    queue: deque = deque()
    for v in hidden:
        if zero_until[v] == 0:
            queue.append(("z", v, 0))
        if any(c not in hset for c in children[v]):
            moves_from[v] = 0
            queue.append(("m", v, 0))
    while queue:
        what, v, t = queue.popleft()
        if what == "z":
            if zero_until[v] != t:
                continue
            if moves_from[v] > t:                        # v not in Z[t]: v moves at t
                moves_from[v] = t
                queue.appendleft(("m", v, t))
            for u in parents_of[v]:                      # so do the hidden nodes v is a child of
                if moves_from[u] > t:
                    moves_from[u] = t
                    queue.appendleft(("m", u, t))
        else:
            if moves_from[v] != t or t + 1 >= never:
                continue
            for u in [v] + hchildren[v]:                 # v and its hidden children leave Z at t + 1
                if zero_until[u] > t + 1:
                    zero_until[u] = t + 1
                    queue.append(("z", u, t + 1))

    def in_z(v: str, t: int) -> bool:
        return v in zero_until and t < zero_until[v]

    upd: dict = {}                       # update time -> edges, in declaration order
    for i, te in enumerate(update_times):
        if te is not None:
            upd.setdefault(te, []).append(i)

    # backward: which errors / predictions / values are needed at each t. need_x[t] contains
    # need_x[t + 1]; active[t] lists need_x[t + 1] & moving[t] (the values advanced at t)
    need_e: list[set[str]] = [set() for _ in range(T + 2)]
    need_m: list[set[str]] = [set() for _ in range(T + 2)]
    needed_until: dict[str, int] = {}
    active: list[list[str]] = [[] for _ in range(T + 2)]
    for t in range(T, -1, -1):
        entered: list[str] = []

        def need_x(v: str) -> None:
            if v not in needed_until:
                needed_until[v] = t
                entered.append(v)

        for i in upd.get(t, ()):
            if not in_z(cg.edges[i].dst, t):
                need_e[t].add(cg.edges[i].dst)
                for p in hsrc(i):
                    need_x(p)
        for v in active[t]:
            if not in_z(v, t):
                need_e[t].add(v)
            for i, _ in cg.out_edges(v):
                if not in_z(cg.edges[i].dst, t):
                    need_e[t].add(cg.edges[i].dst)
                    for p in hsrc(i):                    # the VJP reads every source of the edge
                        need_x(p)
        for c in need_e[t]:
            if not in_z(c, t):
                need_m[t].add(c)
                if cg.role(c) == "hidden":
                    need_x(c)
        for c in need_m[t]:
            for p in hparents[c]:
                need_x(p)
        for v in entered:                                # v in need_x[t'] for t' <= t
            for tt in range(t - 1, moves_from[v] - 1, -1):
                active[tt].append(v)

    # forward again: emit the steps, recomputing mu / eps only when stale
    pos = {v: k for k, v in enumerate(cg.order)}
    noninput_set = set(noninput)
    stale_m = {c: (not c1) and bool(hparents[c]) for c in noninput}
    stale_e = {c: True for c in noninput}
    steps: list[Step] = []
    for t in range(T + 1):
        s = Step(t)
        for c in sorted((need_m[t] | need_e[t]) & noninput_set, key=pos.__getitem__):
            if c in need_m[t] and stale_m[c]:
                s.mu.append(c)
                stale_m[c] = False
                stale_e[c] = True
            if c in need_e[t] and not in_z(c, t) and stale_e[c]:
                s.eps.append(c)
                stale_e[c] = False
        s.updates = [i for i in upd.get(t, ()) if not in_z(cg.edges[i].dst, t)]
        if t < T:
            for v in sorted(active[t], key=pos.__getitem__):
                fb = [(i, k) for i, k in cg.out_edges(v) if not in_z(cg.edges[i].dst, t)]
                s.advance.append(Advance(v, not in_z(v, t), fb))
            for a in s.advance:
                stale_e[a.node] = True
                for c in children[a.node]:
                    stale_m[c] = True
        s.vjps = _vjps(cg, s)
        steps.append(s)
    return InferencePlan(T, c1, list(update_times), steps)
