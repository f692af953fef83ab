"""The graph IR: :class:`ValueNode`, :class:`Edge` and :class:`PCGraph`.

A PC graph is a DAG. Every node holds a value ``x_v`` of shape ``[B, *shape]``; every
edge ``p -> c`` contributes ``op(f(x_p))`` to ``mu_c``, the sum of a node's incoming
contributions. Inputs are clamped to data, outputs (sinks) to targets while learning.

:meth:`PCGraph.lint` checks every invariant and raises a :class:`GraphError` that names
the spec path of the offending node or edge (``model.edges[2].to``), so messages line up
with the YAML a user wrote. Passes keep what they derive in ``meta``.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..errors import GraphError, SpecError
from ..ops import ACTIVATIONS, OPS
from ..ops.base import check_arity, check_options

ROLES = ("input", "hidden", "output")
EDGE_KEYS = ("from", "to", "op", "activation", "bias", "param", "kind")


@dataclass
class ValueNode:
    """A value node ``x_v``. ``kind`` is ``value`` or ``relay`` (inserted by the compiler)."""

    name: str
    shape: tuple[int, ...] | None = None
    role: str = "hidden"
    kind: str = "value"
    #: weight ``lambda`` of a Gaussian prior energy ``lambda/2 ||x||^2`` on a free root (a latent)
    prior: float | None = None
    meta: dict = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name}
        if self.shape is not None:
            d["shape"] = list(self.shape)
        if self.role != "hidden":
            d["role"] = self.role
        if self.kind != "value":
            d["kind"] = self.kind
        if self.prior is not None:
            d["prior"] = self.prior
        return d


@dataclass
class Edge:
    """``[src_1 .. src_n] -> dst`` computing ``op(f_1(x_src_1), .., f_n(x_src_n))``.

    ``sources`` is ordered, like a torch.fx node's args (a single name is accepted and
    becomes a one-tuple); ``activation`` is one name for every source or one per source
    (kept as a single string when all agree). ``param`` names a shared parameter group.
    """

    sources: tuple[str, ...]
    dst: str
    op: str = "linear"
    activation: str | tuple[str, ...] = "identity"
    bias: bool = False
    param: str | None = None
    options: dict = field(default_factory=dict)
    kind: str = "edge"
    meta: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        # options as YAML holds them (a pair given as a tuple equals the same pair read back)
        self.options = {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()}
        if isinstance(self.sources, (list, tuple)):
            self.sources = tuple(self.sources)
        else:
            self.sources = (self.sources,)
        if isinstance(self.activation, (list, tuple)):
            acts = tuple(self.activation)
            if len(acts) == len(self.sources) and all(isinstance(a, str) for a in acts) and len(set(acts)) == 1:
                self.activation = acts[0]
            else:
                self.activation = acts

    @property
    def src(self) -> str:
        """The source of a one-source edge."""
        if len(self.sources) != 1:
            raise AttributeError(f"edge {self.label} has {len(self.sources)} sources; use .sources")
        return self.sources[0]

    @property
    def activations(self) -> tuple[str, ...]:
        """One activation name per source."""
        if isinstance(self.activation, tuple):
            return self.activation
        return (self.activation,) * len(self.sources)

    @property
    def key(self) -> str:
        """Name of the parameter group this edge uses (shared edges share a key): ``param``,
        else ``<from>_to_<to>`` (``lint`` appends ``~k`` where two edges' names coincide)."""
        return self.param or self.meta.get("auto_key") or f"{'+'.join(self.sources)}_to_{self.dst}"

    @property
    def label(self) -> str:
        if len(self.sources) == 1:
            return f"{self.sources[0]}->{self.dst}"
        return f"[{','.join(self.sources)}]->{self.dst}"

    def to_dict(self) -> dict:
        src = self.sources[0] if len(self.sources) == 1 else list(self.sources)
        d: dict[str, Any] = {"from": src, "to": self.dst, "op": self.op}
        if self.activation != "identity":
            d["activation"] = list(self.activation) if isinstance(self.activation, tuple) else self.activation
        d["bias"] = bool(self.bias)
        if self.param is not None:
            d["param"] = self.param
        if self.kind != "edge":
            d["kind"] = self.kind
        d.update(self.options)
        return d


#: what a node or parameter name may contain. Not '.', which torch's module and state-dict
#: keys reserve, nor '~', which names the compiler's relays (``h~1``), nor '+', which joins
#: the sources in automatic parameter names.
#: the largest node (values per sample) and edge parameter group (values) accepted
MAX_NODE_NUMEL = 2 ** 31
MAX_PARAM_NUMEL = 2 ** 31
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
NAME_RULE = "letters, digits, '_' and '-' (not starting with '-')"


_ATOMS = (str, int, float, bool, type(None))


@contextlib.contextmanager
def gc_paused():
    """Hold off Python's cyclic garbage collector while a pass builds many small objects
    that stay alive (the nodes, edges, ops and plans of a long unrolled graph): each
    collection it would trigger walks every object of the process, torch's included, which
    made compiling such a graph 2-3x slower. Reference counting still frees
    everything as usual; the collector resumes (if it ran before) when the pass ends."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _copy_value(v, memo: dict):
    """``copy.deepcopy(v, memo)``, without its machinery for atoms and flat containers."""
    t = type(v)
    if t in _ATOMS:
        return v
    if t is tuple and all(type(x) in _ATOMS for x in v):
        return v
    hit = memo.get(id(v))
    if hit is not None:
        return hit
    if t is dict and all(type(k) in _ATOMS and type(x) in _ATOMS for k, x in v.items()):
        new = dict(v)
    elif t is list and all(type(x) in _ATOMS for x in v):
        new = list(v)
    else:
        return copy.deepcopy(v, memo)
    memo[id(v)] = new
    return new


def _frozen(v):
    """A hashable key for an options value that tells apart what parsing tells apart
    (``1``, ``1.0`` and ``True``; a list and a tuple); TypeError for anything else."""
    t = type(v)
    if t in _ATOMS:
        return t, v
    if t in (list, tuple):
        return t, tuple(_frozen(x) for x in v)
    if t is dict:
        return t, tuple((type(k), k, type(x), x) if type(k) in _ATOMS and type(x) in _ATOMS
                        else (_frozen(k), _frozen(x)) for k, x in v.items())
    raise TypeError(t)


#: ``(op class, options) -> parsed options``: an edge's options are parsed (and checked) once,
#: not at each of the passes that build its op (a parse is far slower than the op itself)
_PARSED: dict = {}


def _parse_options(op_cls, options: dict, where: str):
    try:
        key = (op_cls, op_cls.Options, _frozen(options))
    except TypeError:
        return op_cls.parse_options(options, where)
    opts = _PARSED.get(key)
    if opts is None:
        opts = op_cls.parse_options(options, where)
        if len(_PARSED) >= 1 << 16:
            _PARSED.clear()
        _PARSED[key] = opts
    return opts


def _copy_item(obj, memo: dict):
    """A deep copy of a :class:`ValueNode` or :class:`Edge` (anything else: ``deepcopy``)."""
    if type(obj) not in (ValueNode, Edge):
        return copy.deepcopy(obj, memo)
    hit = memo.get(id(obj))
    if hit is not None:
        return hit
    new = object.__new__(type(obj))
    memo[id(obj)] = new
    new.__dict__.update({k: v if type(v) in _ATOMS else _copy_value(v, memo) for k, v in obj.__dict__.items()})
    return new


def check_name(name, where: str, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise SpecError(f"{what} must be a non-empty string, got {name!r}", where)
    if not NAME_PATTERN.fullmatch(name):
        raise SpecError(f"{what} may contain only {NAME_RULE}, got {name!r}", where)


class PCGraph:
    """A directed acyclic graph of value nodes and edges, kept in declaration order."""

    def __init__(self, nodes: Iterable[ValueNode] = (), edges: Iterable[Edge] = ()):
        self.nodes: dict[str, ValueNode] = {}
        self.edges: list[Edge] = []
        for n in nodes:
            self.add_node(n)
        for e in edges:
            self.add_edge(e)

    # ---- construction ---------------------------------------------------------------
    def add_node(self, node: ValueNode) -> ValueNode:
        where = f"model.nodes[{len(self.nodes)}]"
        if not isinstance(node.name, str) or not node.name:
            raise SpecError("a node needs a non-empty string 'name'", f"{where}.name")
        if node.kind != "relay":
            check_name(node.name, f"{where}.name", "a node name")
        if node.name in self.nodes:
            raise SpecError(f"duplicate node name {node.name!r}", f"{where}.name")
        if node.role not in ROLES:
            raise SpecError(f"unknown role {node.role!r} (known: {', '.join(ROLES)})", f"{where}.role")
        if node.prior is not None:
            p = node.prior
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 <= p < float("inf")):
                raise SpecError(f"prior must be a finite number >= 0 (the weight of a Gaussian prior), got {p!r}",
                                f"{where}.prior")
            node.prior = float(p)
        if node.shape is not None:
            shape = node.shape
            if isinstance(shape, int):
                shape = (shape,)
            if not isinstance(shape, (list, tuple)) or not shape or not all(
                    isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
                raise SpecError(f"shape must be a non-empty list of positive integers, got {node.shape!r}",
                                f"{where}.shape")
            if math.prod(shape) > MAX_NODE_NUMEL:
                raise SpecError(f"shape {list(shape)} has {math.prod(shape)} values per sample; at most "
                                f"2**31 ({MAX_NODE_NUMEL}) are supported", f"{where}.shape")
            node.shape = tuple(shape)
        self.nodes[node.name] = node
        return node

    def add_edge(self, edge: Edge) -> Edge:
        where = f"model.edges[{len(self.edges)}]"
        op_cls = OPS.get(edge.op, f"{where}.op")
        srcs = edge.sources
        if not srcs or not all(isinstance(n, str) and n for n in srcs):
            raise SpecError(f"'from' needs a node name or a list of node names, got {list(srcs)!r}", f"{where}.from")
        check_arity(op_cls, len(srcs), where)
        if edge.param is not None:
            check_name(edge.param, f"{where}.param", "a parameter name")
        acts = edge.activations
        if len(acts) != len(srcs):
            raise SpecError(f"give one activation for all sources or one per source ({len(srcs)}), "
                            f"got {len(acts)}: {list(acts)}", f"{where}.activation")
        for k, a in enumerate(acts):
            ACTIVATIONS.get(a, f"{where}.activation" + (f"[{k}]" if isinstance(edge.activation, tuple) else ""))
        try:                            # (parsed once per distinct value: see _parse_options)
            _parse_options(op_cls, edge.options, where)
        except SpecError:               # the message that also names the edge's own keys
            check_options(op_cls, edge.options, where, common=EDGE_KEYS)
            raise
        if edge.bias and not op_cls.supports_bias:
            raise SpecError(f"op {edge.op!r} has no bias (use bias: false)", f"{where}.bias")
        self.edges.append(edge)
        return edge

    def copy(self) -> "PCGraph":
        """A deep copy (as ``copy.deepcopy``), with a fast path for the nodes and edges: a
        long unrolled graph holds tens of thousands of small dataclasses and dicts."""
        memo: dict = {}
        new = self.__class__.__new__(self.__class__)
        for k, v in self.__dict__.items():
            if k == "nodes":
                new.nodes = {name: _copy_item(n, memo) for name, n in v.items()}
            elif k == "edges":
                new.edges = [_copy_item(e, memo) for e in v]
            elif k != "_pos":            # (a cache of positions, rebuilt on demand)
                new.__dict__[k] = copy.deepcopy(v, memo)
        return new

    # ---- queries ----------------------------------------------------------------------
    def where_edge(self, edge: Edge) -> str:
        """The spec path of an edge: ``model.edges[i]``, or the construct that generated it
        (``meta['where']``, e.g. ``model.unroll[0]``)."""
        if edge.meta.get("where"):
            return edge.meta["where"]
        i = self._edge_index(edge)
        if i is None:
            raise ValueError(f"{edge.label} is not an edge of this graph")
        return f"model.edges[{i}]"

    def _edge_index(self, edge: Edge) -> int | None:
        """Position of ``edge`` itself in ``edges``, else of the first edge equal to it (None:
        no such edge). O(1) for an edge of the list (``edges.index`` compares every edge field
        by field, which made locating each edge of a long graph quadratic): a cache of
        positions by identity, checked on every hit and rebuilt on a miss."""
        pos = self.__dict__.get("_pos")
        i = pos.get(id(edge)) if pos is not None else None
        if i is None or i >= len(self.edges) or self.edges[i] is not edge:
            self._pos = pos = {id(e): k for k, e in reversed(list(enumerate(self.edges)))}
            i = pos.get(id(edge))
        if i is None:
            i = next((k for k, e in enumerate(self.edges) if e == edge), None)
        return i

    def where_node(self, name: str) -> str:
        return self.nodes[name].meta.get("where") or f"model.nodes[{list(self.nodes).index(name)}]"

    def _at(self, i: int, key: str | None = None) -> str:
        where = self.edges[i].meta.get("where")
        if where:
            return where
        return f"model.edges[{i}]" + (f".{key}" if key else "")

    @property
    def inputs(self) -> list[str]:
        return [n for n, v in self.nodes.items() if v.role == "input"]

    @property
    def outputs(self) -> list[str]:
        return [n for n, v in self.nodes.items() if v.role == "output"]

    @property
    def hidden(self) -> list[str]:
        return [n for n, v in self.nodes.items() if v.role == "hidden"]

    def in_edges(self, name: str) -> list[Edge]:
        return [e for e in self.edges if e.dst == name]

    def out_edges(self, name: str) -> list[Edge]:
        """Edges that have ``name`` among their sources."""
        return [e for e in self.edges if name in e.sources]

    def parents(self, name: str) -> list[str]:
        return list(dict.fromkeys(p for e in self.in_edges(name) for p in e.sources))

    def children(self, name: str) -> list[str]:
        return list(dict.fromkeys(e.dst for e in self.out_edges(name)))

    def _adjacency(self) -> tuple[dict[str, list[Edge]], dict[str, list[Edge]]]:
        """``(ins, outs)``: :meth:`in_edges` and :meth:`out_edges` of every node at once, in
        one pass over the edges (the passes below use it rather than scanning every edge once
        per node, which is quadratic in the size of the graph)."""
        ins: dict[str, list[Edge]] = {n: [] for n in self.nodes}
        outs: dict[str, list[Edge]] = {n: [] for n in self.nodes}
        for e in self.edges:
            ins.setdefault(e.dst, []).append(e)
            for s in dict.fromkeys(e.sources):
                outs.setdefault(s, []).append(e)
        return ins, outs

    def topological_order(self) -> list[str]:
        """Kahn's algorithm over in-degrees, ties broken by declaration order."""
        from collections import deque

        _, outs = self._adjacency()
        indeg = {n: 0 for n in self.nodes}
        for e in self.edges:
            indeg[e.dst] += len(e.sources)
        ready = deque(n for n in self.nodes if indeg[n] == 0)
        order: list[str] = []
        while ready:
            n = ready.popleft()
            order.append(n)
            for e in outs[n]:
                indeg[e.dst] -= e.sources.count(n)
                if indeg[e.dst] == 0:
                    ready.append(e.dst)
        if len(order) != len(self.nodes):
            placed = set(order)
            cycle = self._find_cycle({n for n in self.nodes if n not in placed})
            raise GraphError(f"the graph has a cycle: {' -> '.join(cycle)} "
                             "(a PC graph must be acyclic; unroll recurrences over time)", "model.edges")
        return order

    def find_cycle(self) -> list[str] | None:
        """One directed cycle as ``[a, b, .., a]``, or None for a DAG."""
        indeg = {n: 0 for n in self.nodes}
        outs: dict[str, list[str]] = {n: [] for n in self.nodes}
        for e in self.edges:
            if e.dst not in indeg:
                continue
            for s in e.sources:
                if s in outs:
                    indeg[e.dst] += 1
                    outs[s].append(e.dst)
        ready = [n for n in self.nodes if indeg[n] == 0]
        done = 0
        while ready:
            n = ready.pop()
            done += 1
            for c in outs[n]:
                indeg[c] -= 1
                if indeg[c] == 0:
                    ready.append(c)
        if done == len(self.nodes):
            return None
        return self._find_cycle({n for n, d in indeg.items() if d > 0})

    def cycle_edge(self, cycle: list[str]) -> int:
        """Index of the edge that closes ``cycle`` (its last arc), for locating errors."""
        a, b = cycle[-2], cycle[-1]
        return next(i for i, e in enumerate(self.edges) if e.dst == b and a in e.sources)

    def _reaching(self, targets: set[str]) -> set[str]:
        """Nodes with a directed path to one of ``targets`` (targets included); cycles allowed."""
        return self._flood(targets, both_ways=False)

    def _connected(self, seeds: set[str]) -> set[str]:
        """Nodes joined to ``seeds`` by edges in either direction."""
        return self._flood(seeds, both_ways=True)

    def _flood(self, seeds: set[str], both_ways: bool) -> set[str]:
        """``seeds`` and every node reached from them against the edges (from a target to its
        sources), and also along them when ``both_ways``."""
        nbr: dict[str, set[str]] = {n: set() for n in self.nodes}
        for e in self.edges:
            for s in e.sources:
                nbr.setdefault(e.dst, set()).add(s)
                if both_ways:
                    nbr.setdefault(s, set()).add(e.dst)
        seen, stack = set(seeds), list(seeds)
        while stack:
            for p in nbr.get(stack.pop(), ()):
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
        return seen

    def _find_cycle(self, candidates: set[str]) -> list[str]:
        """Every node Kahn could not order has a predecessor that it could not order either,
        so walking predecessors from any of them must come back to a node on a cycle."""
        ins, _ = self._adjacency()
        pred = {n: [p for p in dict.fromkeys(p for e in ins[n] for p in e.sources) if p in candidates]
                for n in candidates}
        start = next(n for n in self.nodes if n in candidates)
        path, seen = [start], {start: 0}
        while True:
            prev = pred[path[-1]][0]
            if prev in seen:
                cycle = path[seen[prev]:] + [prev]
                return list(reversed(cycle))
            seen[prev] = len(path)
            path.append(prev)

    def distances_to_outputs(self) -> dict[str, tuple[int, int]]:
        """``(shortest, longest)`` number of edges from each node to any output.

        Nodes that reach no output get ``None``-free entries only if they reach one; call
        :meth:`lint` first, which rejects nodes that reach none.
        """
        dist: dict[str, tuple[int, int]] = {}
        _, outs = self._adjacency()
        for n in reversed(self.topological_order()):
            if self.nodes[n].role == "output":
                dist[n] = (0, 0)
                continue
            ds = [dist[c] for c in dict.fromkeys(e.dst for e in outs[n]) if c in dist]
            if ds:
                dist[n] = (1 + min(d[0] for d in ds), 1 + max(d[1] for d in ds))
        return dist

    # ---- validation -----------------------------------------------------------------
    @gc_paused()
    def lint(self, clamped: Iterable[str] | None = None) -> None:
        """Check every invariant of a trainable PC graph; raise a located GraphError.

        ``clamped``: the nodes a spec's ``clamp:`` section clamps while training (energy-based
        specs: a label at the top of a generative net, an image inside a cyclic graph). Without
        it clamping follows the roles (inputs to data, outputs to targets) and the graph needs
        both; with it, roles only constrain edges and free roots (latents) are allowed.
        Directed cycles are accepted here: the rules that need a feed-forward order refuse
        them when they are built (:meth:`find_cycle` names one)."""
        names = list(self.nodes)
        for i, e in enumerate(self.edges):
            ends = [(s, "from" if len(e.sources) == 1 else f"from[{k}]") for k, s in enumerate(e.sources)]
            for end, attr in ends + [(e.dst, "to")]:
                if end not in self.nodes:
                    raise GraphError(f"edge end {end!r} is not a node (known: {', '.join(names)})",
                                     self._at(i, attr))
            if e.dst in e.sources:
                raise GraphError(f"self-loop on {e.dst!r} (a node cannot predict itself; route the "
                                 "recurrence through a second node, or unroll it over time)", self._at(i))
        seen: dict[str, int] = {}
        for i, e in enumerate(self.edges):
            e.meta.pop("auto_key", None)
            if e.param is None and e.key in seen and self.edges[seen[e.key]].label != e.label:
                # different edges whose automatic names '<from>_to_<to>' coincide (nodes named
                # like 'a_to_b'): the later one gets '<name>~<k>'; '~' is in no user name
                base, k = e.key, 2
                while f"{base}~{k}" in seen:
                    k += 1
                e.meta["auto_key"] = f"{base}~{k}"
            elif e.param is None and e.key in seen:
                raise GraphError(f"duplicate edge {e.label} (also edges[{seen[e.key]}]); give one of them "
                                 "its own 'param' name, or route one through an intermediate node",
                                 self._at(i))
            seen[e.key] = i
        explicit = clamped is not None
        clamped = set(clamped or ())
        if explicit and not clamped:
            raise GraphError("the clamp section clamps no node (name at least one node and the data "
                             "field it is clamped to, e.g. {image: image})", "clamp")
        if not explicit and not self.inputs:
            raise GraphError("the graph has no input node (give one node role: input)", "model.nodes")
        if not explicit and not self.outputs:
            raise GraphError("the graph has no output node (give one node role: output)", "model.nodes")
        for i, e in enumerate(self.edges):
            if self.nodes[e.dst].role == "input":
                raise GraphError(f"edge into input node {e.dst!r}: inputs are clamped to data and "
                                 "cannot have incoming edges", self._at(i, "to"))
            for src in e.sources:
                if self.nodes[src].role == "output":
                    raise GraphError(f"output node {src!r} is not a sink: an output is clamped to its "
                                     "target while learning and must not feed other nodes "
                                     "(add a hidden node before it and take the branch from there)",
                                     self._at(i, "from"))
        has_in = {e.dst for e in self.edges}
        for n, v in self.nodes.items():
            if v.prior is not None and n in has_in:
                raise GraphError(f"node {n!r} has a prior but also incoming edges; a prior is the energy of "
                                 "a root (a latent with no parents)", self.where_node(n) + ".prior")
        if explicit:
            # every node must touch the energy of a clamped node through some path (either way)
            near = self._connected(clamped)
            for n in self.nodes:
                if n not in near:
                    raise GraphError(f"node {n!r} is not connected to any clamped node "
                                     f"({', '.join(sorted(clamped))}), so nothing it does changes the "
                                     "energy; connect it or remove it", self.where_node(n))
        else:
            for n, v in self.nodes.items():
                if v.role != "input" and n not in has_in:
                    raise GraphError(f"node {n!r} has no incoming edge (only inputs may be sources; "
                                     "a free latent root needs a spec 'clamp:' section)", self.where_node(n))
            reach = self._reaching(set(self.outputs))
            for n in self.nodes:
                if n not in reach:
                    raise GraphError(f"node {n!r} reaches no output, so no error ever reaches it "
                                     "(connect it to an output or remove it)", self.where_node(n))
        self.infer_shapes()
        self._check_shared_params()

    def infer_shapes(self) -> None:
        """Fill in omitted shapes from ops that imply them; check every edge's shapes (in
        topological order; on a cyclic graph, in declaration order, shapes on a cycle given)."""
        order = self.topological_order() if self.find_cycle() is None else list(self.nodes)
        ins: dict[str, list[tuple[int, Edge]]] = {n: [] for n in self.nodes}
        for i, e in enumerate(self.edges):
            ins.setdefault(e.dst, []).append((i, e))
        for n in order:
            node = self.nodes[n]
            for i, e in ins[n]:
                where = e.meta.get("where") or f"model.edges[{i}]"
                for src in e.sources:
                    if self.nodes[src].shape is None:
                        raise GraphError(f"the shape of node {src!r} is unknown; give it a shape",
                                         self.where_node(src))
                src_shapes = [self.nodes[s].shape for s in e.sources]
                op_cls = OPS.get(e.op)
                opts = _parse_options(op_cls, e.options, where)
                msg = op_cls.check_sources(src_shapes, opts)
                if msg:
                    raise GraphError(msg, where)
                if node.shape is not None:
                    completed = op_cls.complete_shape(src_shapes, node.shape, opts)
                    if completed is not None:
                        node.shape = tuple(completed)
                if node.shape is None:
                    inferred = op_cls.infer_out_shape(src_shapes, opts)
                    if inferred is not None:
                        node.shape = tuple(inferred)
                        continue
                    raise GraphError(f"the shape of node {n!r} cannot be inferred from op {e.op!r}; "
                                     "give it a shape", self.where_node(n))
                msg = op_cls.check_shapes(src_shapes, node.shape, opts)
                if msg:
                    raise GraphError(msg, where)

    def make_op(self, e: Edge):
        op_cls = OPS.get(e.op)
        opts = _parse_options(op_cls, e.options, self.where_edge(e) if self._edge_index(e) is not None
                              else "model.edges")
        return op_cls([self.nodes[s].shape for s in e.sources], self.nodes[e.dst].shape, e.bias, opts)

    def _check_shared_params(self) -> None:
        first: dict[str, tuple[int, Edge, dict]] = {}
        for i, e in enumerate(self.edges):
            shapes = self.make_op(e).param_shapes()
            numel = sum(math.prod(v) for v in shapes.values())
            if numel > MAX_PARAM_NUMEL:
                raise GraphError(f"this edge's parameters would hold {numel} values (shapes "
                                 f"{ {k: list(v) for k, v in shapes.items()} }); at most 2**31 "
                                 f"({MAX_PARAM_NUMEL}) per edge are supported", self._at(i))
            if e.param is None:
                continue
            if not shapes:
                raise GraphError(f"op {e.op!r} has no parameters to share", self._at(i, "param"))
            if e.param in first:
                j, other, other_shapes = first[e.param]
                if other.op != e.op or other_shapes != shapes:
                    desc = {k: list(v) for k, v in shapes.items()}
                    odesc = {k: list(v) for k, v in other_shapes.items()}
                    raise GraphError(f"parameter {e.param!r} is shared with edges[{j}] ({other.op} {odesc}) "
                                     f"but this edge needs {e.op} {desc}", self._at(i, "param"))
            else:
                first[e.param] = (i, e, shapes)
        auto = {e.key for e in self.edges if e.param is None}
        for name in first:
            if name in auto:
                raise GraphError(f"parameter name {name!r} collides with an edge's own parameter name",
                                 "model.edges")

    # ---- interchange ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"nodes": [n.to_dict() for n in self.nodes.values()],
                "edges": [e.to_dict() for e in self.edges]}

    def to_networkx(self):
        """A ``networkx.DiGraph`` in the factor encoding (see :mod:`pcgraph.ir.nxio`)."""
        from .nxio import to_networkx

        return to_networkx(self)

    @classmethod
    def from_networkx(cls, g) -> "PCGraph":
        """Inverse of :meth:`to_networkx`; also reads plain value-to-value DiGraphs."""
        from .nxio import from_networkx

        return from_networkx(cls, g)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PCGraph) and list(self.nodes.values()) == list(other.nodes.values()) \
            and self.edges == other.edges

    def __repr__(self) -> str:
        lines = [f"PCGraph({len(self.nodes)} nodes, {len(self.edges)} edges)"]
        for n in self.nodes.values():
            shape = list(n.shape) if n.shape else "?"
            tag = "" if n.kind == "value" else f" [{n.kind}]"
            lines.append(f"  node {n.name}: {shape} {n.role}{tag}")
        for e in self.edges:
            extra = f" param={e.param}" if e.param else ""
            tag = "" if e.kind == "edge" else f" [{e.kind}]"
            act = ",".join(e.activation) if isinstance(e.activation, tuple) else e.activation
            lines.append(f"  edge {e.label}: {e.op}({act}){' +bias' if e.bias else ''}{extra}{tag}")
        return "\n".join(lines)
