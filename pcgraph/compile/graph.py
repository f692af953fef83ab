"""Compile-time passes over the IR: depth, balancing relays, and the level schedule.

``depth(v)`` is the number of edges on the longest path from ``v`` to an output. Z-IL
needs every hidden node to sit at a *single* distance from the outputs (then the error
of a node at depth ``l`` equals BP's delta at inference step ``t = l``). On a DAG with
skip edges that is not so, and updating by the shortest or the longest distance is not
exact (BRIEF section 4). :func:`balance` restores the property: an edge ``p -> c`` from a
hidden node with ``depth(p) > depth(c) + 1`` is replaced by a chain of
``depth(p) - depth(c) - 1`` identity *relay* value nodes, like registers that balance a
pipeline. Relays are ordinary PC value nodes with parameter-free identity edges; they
carry the forward value unchanged and delay the error by one step each, so every hidden
node then has one distance to the outputs. Edges out of *inputs* need no relays: an
input is clamped, so its value is the same at every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import CompileError
from ..ir import Edge, PCGraph, ValueNode
from ..ops import get_activation, get_loss
from ..ops.activations import Activation
from ..ops.base import Op


def balance(graph: PCGraph) -> PCGraph:
    """Return a copy of ``graph`` in which every hidden node has a single depth."""
    g = graph.copy()
    dist = g.distances_to_outputs()
    depth = {n: d[1] for n, d in dist.items()}
    new_edges: list[Edge] = []
    for e in g.edges:
        gap = depth[e.src] - depth[e.dst] - 1
        if gap <= 0 or g.nodes[e.src].role == "input":
            new_edges.append(e)
            continue
        prev = e.src
        for k in range(1, gap + 1):
            name = f"{e.src}~{e.dst}.{k}"
            g.nodes[name] = ValueNode(name, g.nodes[e.src].shape, "hidden", "relay",
                                      meta={"relay_of": e.label})
            new_edges.append(Edge(prev, name, "identity", "identity", False, None, {}, "relay",
                                  meta={"relay_of": e.label}))
            prev = name
        new_edges.append(Edge(prev, e.dst, e.op, e.activation, e.bias, e.param or e.key,
                              dict(e.options), e.kind, meta={**e.meta, "relayed_from": e.src}))
    g.edges = new_edges
    return g


@dataclass
class CompiledGraph:
    """A linted, balanced graph with everything the programs need resolved.

    ``order``: topological order; ``depth[v]``: distance to the outputs (single after
    balancing); ``levels[l]``: nodes at depth ``l``; ``ops``/``acts``: per-edge op and
    activation objects; ``losses``: per-output loss; ``param_edges``: parameter key ->
    edges that use it (shared parameters sum their updates over these edges).
    """

    source: PCGraph
    graph: PCGraph
    order: list[str]
    depth: dict[str, int]
    levels: list[list[str]]
    ops: list[Op]
    acts: list[Activation]
    losses: dict[str, object]
    param_edges: dict[str, list[int]] = field(default_factory=dict)
    reduction: str = "mean"   # over the batch: mean or sum (of the loss and of the updates)

    @property
    def edges(self) -> list[Edge]:
        return self.graph.edges

    @property
    def n_relays(self) -> int:
        return sum(1 for v in self.graph.nodes.values() if v.kind == "relay")

    def in_edges(self, v: str) -> list[int]:
        return self._in[v]

    def out_edges(self, v: str) -> list[int]:
        return self._out[v]

    def role(self, v: str) -> str:
        return self.graph.nodes[v].role

    def to_networkx(self):
        """The compiled graph (relays marked ``kind='relay'``) with ``depth`` on every node
        and ``update_step`` (Z-IL's ``t = depth(dst)``) on every edge."""
        for n in self.graph.nodes.values():
            n.meta["depth"] = self.depth[n.name]
        for e in self.graph.edges:
            e.meta["update_step"] = self.depth[e.dst]
        return self.graph.to_networkx()

    def describe(self) -> str:
        g = self.graph
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
            lines.append(f"    {e.label}: {op!r} f={self.acts[i].name}{params} t={self.depth[e.dst]}{tag}")
        if self.n_relays:
            lines.append("  (* = relay value node inserted to balance path lengths; no parameters)")
        return "\n".join(lines)


def compile_graph(graph: PCGraph, loss: str | dict = "mse", reduction: str = "mean",
                  balance_paths: bool = True) -> CompiledGraph:
    """Lint, balance (unless ``balance_paths=False``: then a node's depth is its *longest*
    distance, which is not exact for Z-IL on graphs with skips; for demonstrations) and
    resolve every op, activation and loss."""
    graph.lint()
    g = balance(graph) if balance_paths else graph.copy()
    dist = g.distances_to_outputs()
    for n, (lo, hi) in dist.items():
        if balance_paths and lo != hi and g.nodes[n].role != "input":
            raise CompileError(f"internal error: node {n!r} is at distances {lo} and {hi} after balancing")
    depth = {n: d[1] for n, d in dist.items()}
    order = g.topological_order()
    levels: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
    for n in order:
        levels[depth[n]].append(n)
    ops = [g.make_op(e) for e in g.edges]
    acts = [get_activation(e.activation) for e in g.edges]
    losses = {o: get_loss(loss if isinstance(loss, str) else loss[o], "loss") for o in g.outputs}
    cg = CompiledGraph(graph, g, order, depth, levels, ops, acts, losses, reduction=reduction)
    cg._in = {n: [] for n in g.nodes}
    cg._out = {n: [] for n in g.nodes}
    for i, e in enumerate(g.edges):
        cg._in[e.dst].append(i)
        cg._out[e.src].append(i)
        if ops[i].param_shapes():
            cg.param_edges.setdefault(e.key, []).append(i)
    return cg
