"""Compile-time passes over the IR: depth, balancing relays, and the level schedule.

``depth(v)`` is the number of edges on the longest path from ``v`` to an output. Z-IL
needs every hidden node to sit at a *single* distance from the outputs (then the error
of a node at depth ``l`` equals BP's delta at inference step ``t = l``). On a DAG with
skip edges that is not so, and updating by the shortest or the longest distance is not
exact (BRIEF section 4). :func:`balance` restores the property: a source ``p`` of an edge
into ``c`` (every source of a multi-input edge on its own) with ``depth(p) > depth(c) + 1``
is read through a chain of ``depth(p) - depth(c) - 1`` identity *relay* value nodes, like
registers that balance a pipeline. Relays are ordinary PC value nodes with parameter-free identity edges; they
carry the forward value unchanged and delay the error by one step each, so every hidden
node then has one distance to the outputs. Edges out of *inputs* need no relays: an
input is clamped, so its value is the same at every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import CompileError
from ..ir import Edge, PCGraph, ValueNode
from ..ir.graph import gc_paused
from ..ops import Loss, Objective, get_activation, get_loss
from ..ops.activations import Activation
from ..ops.base import Op


def derived_nodes(graph: PCGraph, clamped: set[str] | None = None) -> set[str]:
    """Hidden nodes that are functions of the clamped nodes alone (default: the inputs): every
    in-edge is parameter-free and reads only clamped or other derived nodes (``select`` of a
    sequence, ``flatten`` of an image). Their value is data: no update reads anything but their
    feed-forward value and none of their errors reaches a parameter, so the programs keep them
    clamped there, like inputs (compiled role ``derived``): they need no relays and never move."""
    if clamped is None:
        clamped = set(graph.inputs)
    out: set[str] = set()
    free = [n for n in graph.nodes if n not in clamped and graph.nodes[n].role != "output"]
    all_ins, all_outs = graph._adjacency()
    # the least fixpoint (also on graphs with cycles), by a worklist: a node with in-edges is
    # derived once each of their sources is clamped or derived, if they are all parameter-free
    # (checked then, once: most nodes of a big graph never get there)
    pending: dict[str, int] = {}
    for n in free:
        if all_ins[n]:
            pending[n] = sum(1 for e in all_ins[n] for s in e.sources if s not in clamped)
    work = [n for n in free if pending.get(n) == 0]
    while work:
        n = work.pop()
        if any(graph.make_op(e).param_shapes() for e in all_ins[n]):
            continue
        out.add(n)
        for e in all_outs[n]:
            if e.dst in pending and e.dst not in out:
                pending[e.dst] -= e.sources.count(n)
                if pending[e.dst] == 0:
                    work.append(e.dst)
    return out


def balance(graph: PCGraph, derived: set[str] = frozenset()) -> PCGraph:
    """Return a copy of ``graph`` in which every hidden node has a single depth.

    Each *source* of an edge is balanced on its own: source ``p`` of an edge into ``c`` with
    ``gap = depth(p) - depth(c) - 1 > 0`` is read through the relay ``p~gap``, the end of one
    identity chain ``p -> p~1 -> p~2 -> ..`` shared by every edge that reads ``p`` late
    (relay ``p~k`` sits at depth ``depth(p) - k``, so sharing keeps every depth single).
    """
    g = graph.copy()
    dist = g.distances_to_outputs()
    depth = {n: d[1] for n, d in dist.items()}
    chain: dict[str, int] = {}          # hidden source -> relays built so far
    relay_edges: list[Edge] = []
    new_edges: list[Edge] = []

    def relay(src: str, gap: int) -> str:
        for k in range(chain.get(src, 0) + 1, gap + 1):
            name, prev = f"{src}~{k}", (src if k == 1 else f"{src}~{k - 1}")
            g.nodes[name] = ValueNode(name, g.nodes[src].shape, "hidden", "relay", meta={"relay_of": src})
            relay_edges.append(Edge(prev, name, "identity", "identity", False, None, {}, "relay",
                                    meta={"relay_of": src}))
            chain[src] = k
        return f"{src}~{gap}"

    for e in g.edges:
        sources = []
        for src in e.sources:
            gap = depth[src] - depth[e.dst] - 1
            clamped = g.nodes[src].role == "input" or src in derived
            sources.append(src if gap <= 0 or clamped else relay(src, gap))
        if sources == list(e.sources):
            new_edges.append(e)
        else:
            new_edges.append(Edge(sources, e.dst, e.op, e.activation, e.bias, e.param or e.key, dict(e.options),
                                  e.kind, meta={**e.meta, "relayed_from": ",".join(e.sources)}))
    g.edges = relay_edges + new_edges
    return g


@dataclass
class CompiledGraph:
    """A linted, balanced graph with everything the programs need resolved.

    ``order``: topological order; ``depth[v]``: distance to the outputs (single after
    balancing); ``levels[l]``: nodes at depth ``l``; ``ops[i]``: edge ``i``'s op;
    ``acts[i]``: one activation per source of edge ``i``; ``losses``: per-output loss;
    ``param_edges``: parameter key -> edges that use it (shared parameters sum their
    updates over these edges). ``out_edges(v)`` lists ``(edge, position)`` pairs: edge
    ``i`` reads ``v`` as its source number ``k``.
    """

    source: PCGraph
    graph: PCGraph
    order: list[str]
    depth: dict[str, int]
    levels: list[list[str]]
    ops: list[Op]
    acts: list[tuple[Activation, ...]]
    losses: dict[str, Loss]
    param_edges: dict[str, list[int]] = field(default_factory=dict)
    #: hidden nodes that are functions of the inputs alone (compiled role ``derived``)
    derived: set[str] = field(default_factory=set)
    #: nodes clamped while training (None: by role, inputs to data and outputs to targets)
    clamped: tuple[str, ...] | None = None
    #: a directed cycle of the graph (``[a, b, .., a]``), None for a DAG
    cycle: list[str] | None = None

    @property
    def ordered(self) -> bool:
        """Whether the graph has a feed-forward order with role clamping: an acyclic graph from
        inputs to outputs (relays balanced, ``depth`` and ``levels`` filled). The rules that
        need an order (bp, zil, fazil, fa, dfa, the TP family) run only on such graphs; the
        energy-based ones (il, pc, ipc) run on any."""
        return self.cycle is None and bool(self.levels)

    def require_order(self, rule: str) -> None:
        """Raise a located :class:`CompileError` when rule ``rule`` cannot run on this graph."""
        if self.ordered:
            return
        energy = "il, pc, ipc and their presets"
        if self.cycle is not None:
            i = self.source.cycle_edge(self.cycle)
            raise CompileError(f"rule {rule!r} needs a feed-forward order, but the graph has a cycle: "
                               f"{' -> '.join(self.cycle)} (the energy-based rules accept cycles: {energy})",
                               self.source.where_edge(self.source.edges[i]))
        raise CompileError(f"rule {rule!r} needs inputs clamped to data and outputs clamped to targets, "
                           f"but this graph is clamped by its 'clamp:' section ({', '.join(self.clamped or ())}); "
                           f"use an energy-based rule ({energy})", "clamp")

    def __post_init__(self):
        g = self.graph
        self._in: dict[str, list[int]] = {n: [] for n in g.nodes}
        self._out: dict[str, list[tuple[int, int]]] = {n: [] for n in g.nodes}
        for i, e in enumerate(g.edges):
            self._in[e.dst].append(i)
            for k, src in enumerate(e.sources):
                self._out[src].append((i, k))
            if self.ops[i].param_shapes():
                self.param_edges.setdefault(e.key, []).append(i)

    @property
    def edges(self) -> list[Edge]:
        return self.graph.edges

    @property
    def n_relays(self) -> int:
        return sum(1 for v in self.graph.nodes.values() if v.kind == "relay")

    def priors(self) -> dict[str, float]:
        """``lambda`` of each root's Gaussian prior (nodes declared with ``prior:``)."""
        return {n: v.prior for n, v in self.graph.nodes.items() if v.prior}

    def in_edges(self, v: str) -> list[int]:
        return self._in[v]

    def out_edges(self, v: str) -> list[tuple[int, int]]:
        return self._out[v]

    def role(self, v: str) -> str:
        """``input``, ``hidden``, ``output``, or ``derived`` (a hidden node computed from the
        inputs alone, clamped at its feed-forward value)."""
        return "derived" if v in self.derived else self.graph.nodes[v].role

    def has_params(self, i: int) -> bool:
        return bool(self.ops[i].param_shapes())

    def objective(self, reduction: str = "mean") -> Objective:
        return Objective(self.losses, reduction)

    def to_networkx(self):
        """The compiled graph in the factor encoding (relays ``kind='relay'``), with
        ``depth`` on every value node and ``update_step`` (Z-IL's ``t = depth(dst)``) on
        every factor node."""
        for n in self.graph.nodes.values():
            if n.name in self.depth:
                n.meta["depth"] = self.depth[n.name]
        for e in self.graph.edges:
            if e.dst in self.depth:
                e.meta["update_step"] = self.depth[e.dst]
        return self.graph.to_networkx()

    def describe(self) -> str:
        g = self.graph
        if not self.ordered:
            return self._describe_order_free()
        lines = [f"compiled graph: {len(g.nodes)} nodes ({self.n_relays} relays), {len(g.edges)} edges, "
                 f"depth {len(self.levels) - 1}"]
        lines.append("  forward order: " + " ".join(self.order))
        for l, names in enumerate(self.levels):
            tags = [f"{n}{'*' if g.nodes[n].kind == 'relay' else ''}[{self.role(n)[0]}]" for n in names]
            lines.append(f"  depth {l}: {' '.join(tags)}")
        lines.append("  edges (update step t = depth(dst) under Z-IL):")
        for i, e in enumerate(g.edges):
            op = self.ops[i]
            params = f" params={e.key}" if op.param_shapes() else ""
            tag = " [relay]" if e.kind == "relay" else ""
            f = ",".join(dict.fromkeys(a.name for a in self.acts[i]))
            lines.append(f"    {e.label}: {op!r} f={f}{params} t={self.depth[e.dst]}{tag}")
        if self.n_relays:
            lines.append("  (* = relay value node inserted to balance path lengths; no parameters)")
        return "\n".join(lines)

    def _describe_order_free(self) -> str:
        g = self.graph
        why = (f"a directed cycle ({' -> '.join(self.cycle)})" if self.cycle is not None else
               f"clamped by its clamp section ({', '.join(self.clamped or ())})")
        lines = [f"compiled graph (order-free: {why}): {len(g.nodes)} nodes, {len(g.edges)} edges; "
                 "energy-based rules only"]
        clamped = set(self.clamped) if self.clamped is not None else set(g.inputs) | set(g.outputs)
        has_in = {e.dst for e in g.edges}
        for n in g.nodes:
            tag = "clamped" if n in clamped else ("derived" if n in self.derived else "free")
            root = "" if n in has_in else " (root)"
            lines.append(f"  node {n}: {list(g.nodes[n].shape or [])} {tag}{root}")
        for i, e in enumerate(g.edges):
            op = self.ops[i]
            params = f" params={e.key}" if op.param_shapes() else ""
            f = ",".join(dict.fromkeys(a.name for a in self.acts[i]))
            lines.append(f"    {e.label}: {op!r} f={f}{params}")
        return "\n".join(lines)


def _resolved(g: PCGraph, loss) -> tuple[list, list, dict]:
    ops = [g.make_op(e) for e in g.edges]
    acts = [tuple(get_activation(a) for a in e.activations) for e in g.edges]
    losses = {o: get_loss(loss if isinstance(loss, str) else loss[o], "loss") for o in g.outputs}
    return ops, acts, losses


def _order_free(g: PCGraph) -> list[str]:
    """An evaluation order for a graph that may have cycles: topological where it can be,
    the remaining nodes in declaration order (only the energy-based engine reads it, and
    the energy it descends does not depend on any order)."""
    if g.find_cycle() is None:
        return g.topological_order()
    import heapq

    names = list(g.nodes)
    pos = {n: k for k, n in enumerate(names)}
    _, outs = g._adjacency()
    indeg = {n: 0 for n in g.nodes}
    for e in g.edges:
        indeg[e.dst] += len(e.sources)
    ready = [pos[n] for n in names if indeg[n] == 0]      # a heap of declaration positions
    order, placed, first = [], set(), 0
    while len(order) < len(names):
        while ready and names[ready[0]] in placed:
            heapq.heappop(ready)
        if ready:                        # the first node in declaration order with no pending parent
            n = names[heapq.heappop(ready)]
        else:                            # else the first node not placed
            while names[first] in placed:
                first += 1
            n = names[first]
        order.append(n)
        placed.add(n)
        for e in outs[n]:
            indeg[e.dst] -= e.sources.count(n)
            if indeg[e.dst] == 0:
                heapq.heappush(ready, pos[e.dst])
    return order


@gc_paused()
def compile_graph(graph: PCGraph, loss: str | dict = "mse", balance_paths: bool = True,
                  clamped=None) -> CompiledGraph:
    """Lint, balance (unless ``balance_paths=False``: then a node's depth is its *longest*
    distance, which is not exact for Z-IL on graphs with skips; for demonstrations) and
    resolve every op, activation and loss.

    ``clamped``: the nodes a spec's ``clamp:`` section clamps while training (None: by role).
    A graph with a directed cycle, or clamped other than by its roles, compiles *order-free*:
    no relays, no depths, ``order`` a best-effort evaluation order; only the energy-based
    rules run it (:meth:`CompiledGraph.require_order`)."""
    graph.lint(clamped)
    cycle = graph.find_cycle()
    by_role = set(graph.inputs) | set(graph.outputs)
    if cycle is not None or (clamped is not None and set(clamped) != by_role) or not graph.inputs \
            or not graph.outputs:
        g = graph.copy()
        clamp_set = set(clamped) if clamped is not None else set(graph.inputs) | set(graph.outputs)
        derived = derived_nodes(g, clamp_set)
        ops, acts, losses = _resolved(g, loss)
        return CompiledGraph(graph, g, _order_free(g), {}, [], ops, acts, losses, derived=derived,
                             clamped=tuple(clamped) if clamped is not None else None, cycle=cycle)
    derived = derived_nodes(graph)
    g = balance(graph, derived) if balance_paths else graph.copy()
    dist = g.distances_to_outputs()
    for n, (lo, hi) in dist.items():
        if balance_paths and lo != hi and g.nodes[n].role != "input" and n not in derived:
            raise CompileError(f"internal error: node {n!r} is at distances {lo} and {hi} after balancing")
    depth = {n: d[1] for n, d in dist.items()}
    order = g.topological_order()
    levels: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
    for n in order:
        levels[depth[n]].append(n)
    ops, acts, losses = _resolved(g, loss)
    return CompiledGraph(graph, g, order, depth, levels, ops, acts, losses, derived=derived,
                         clamped=tuple(clamped) if clamped is not None else None)
