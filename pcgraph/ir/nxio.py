"""networkx interchange in the *factor encoding*, which round-trips multi-source edges.

``PCGraph.to_networkx()`` returns a bipartite ``networkx.DiGraph``:

- a **value node** per ``ValueNode``, keyed by its name, with attributes ``shape``
  (list), ``role``, ``kind`` (``value`` or ``relay``) and any scalar ``meta``;
- a **factor node** per edge, keyed ``"<label>#<index>"`` (``"h1->h2#1"``,
  ``"[a,b]->c#4"``), with ``kind="factor"``, ``index`` (declaration order), ``op``,
  ``activation`` (str or list), ``bias``, ``param``, ``options`` (dict), ``edge_kind``
  and any scalar ``meta``;
- an arc ``source -> factor`` per distinct source with ``ports``: the positions of that
  source in the edge's ordered source list (``[0, 1]`` for ``mul`` of ``[h, h]``), and
  one arc ``factor -> dst``.

``PCGraph.from_networkx`` reads that back exactly. A graph without factor nodes is read
as the plain encoding users write by hand: every arc ``p -> c`` is a one-source edge
with its attributes (``op``, ``activation``, ``bias``, ``param``, ``options``, ``kind``,
``index`` for the order; missing ones take their defaults).
"""

from __future__ import annotations

from .graph import Edge, ValueNode

SCALARS = (int, float, str, bool)


def to_networkx(graph):
    import networkx as nx

    g = nx.DiGraph()
    for n in graph.nodes.values():
        g.add_node(n.name, shape=list(n.shape) if n.shape else None, role=n.role, kind=n.kind,
                   **({"prior": n.prior} if n.prior is not None else {}),
                   **{k: v for k, v in n.meta.items() if isinstance(v, SCALARS)})
    for i, e in enumerate(graph.edges):
        f = f"{e.label}#{i}"
        act = list(e.activation) if isinstance(e.activation, tuple) else e.activation
        g.add_node(f, **{k: v for k, v in e.meta.items() if isinstance(v, SCALARS)},
                   kind="factor", index=i, op=e.op, activation=act, bias=e.bias, param=e.param,
                   options=dict(e.options), edge_kind=e.kind)
        for k, src in enumerate(e.sources):
            if g.has_edge(src, f):
                g.edges[src, f]["ports"].append(k)
            else:
                g.add_edge(src, f, ports=[k])
        g.add_edge(f, e.dst)
    return g


def _is_factor(attrs) -> bool:
    return attrs.get("kind") == "factor"


def from_networkx(cls, g):
    graph = cls()
    for name, attrs in g.nodes(data=True):
        if not _is_factor(attrs):
            graph.add_node(ValueNode(str(name), attrs.get("shape"), attrs.get("role", "hidden"),
                                     attrs.get("kind", "value"), attrs.get("prior")))
    factors = [(n, a) for n, a in g.nodes(data=True) if _is_factor(a)]
    if factors:
        for f, a in sorted(factors, key=lambda t: t[1].get("index", 0)):
            slots: dict[int, str] = {}
            for src in g.predecessors(f):
                for k in g.edges[src, f].get("ports", [0]):
                    slots[int(k)] = str(src)
            dsts = list(g.successors(f))
            sources = [slots[k] for k in sorted(slots)]
            dst = str(dsts[0]) if len(dsts) == 1 else ""   # lint names a missing or doubled target
            graph.add_edge(Edge(sources, dst, a.get("op", "linear"), a.get("activation", "identity"),
                                bool(a.get("bias", False)), a.get("param"), dict(a.get("options") or {}),
                                a.get("edge_kind", "edge")))
        return graph
    for src, dst, a in sorted(g.edges(data=True), key=lambda t: t[2].get("index", 0)):
        graph.add_edge(Edge(str(src), str(dst), a.get("op", "linear"), a.get("activation", "identity"),
                            bool(a.get("bias", False)), a.get("param"), dict(a.get("options") or {}),
                            a.get("kind", "edge")))
    return graph
