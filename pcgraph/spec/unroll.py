"""``unroll``: a recurrent cell declared once, unrolled over ``T`` steps into the graph.

An unrolled RNN is not a special model: it is a DAG of value nodes whose edges share
parameters across steps (their updates sum over the steps, which is BPTT). A spec's
``model.unroll`` lists cells; each expands, at load time, into ordinary nodes and edges
that ``pcgraph show`` and ``to_networkx`` display like any other:

``cell: rnn`` (the seeds' many-to-one RNN; ``f`` = ``activation``, ``g`` = ``input_activation``)

    x_k = s[k - 1]                                   (select: row k of the [T, D] input)
    h_1 = W_x g(x_1) (+ b)
    h_k = W_h f(h_{k-1}) + W_x g(x_k) (+ b)          k = 2 .. T

``cell: gru`` (torch's GRU, ``h_0 = 0``; the hidden-side biases are merged into the
input-side ones, except ``b_hn``, which is left out; its gates' activations are fixed, so
``activation`` other than its default ``tanh`` is an error, while ``input_activation`` applies)

    z_k = W_z x_k + U_z h_{k-1} (+ b_z)              r_k = W_r x_k + U_r h_{k-1} (+ b_r)
    a_k = U_n h_{k-1}                                 c_k = sigmoid(r_k) * a_k      (mul)
    n_k = W_n x_k (+ b_n) + c_k
    h_k = (1 - sigmoid(z_k)) * tanh(n_k) + sigmoid(z_k) * h_{k-1}                    (two muls)

(at ``k = 1`` the terms in ``h_0`` vanish). Node names: ``<name><k>`` for ``h_k``
(``h1 .. h28``), ``<name>_x<k>`` for the input slices and ``<name>_z<k>``,
``_r<k>``, ``_a<k>``, ``_c<k>``, ``_n<k>`` for a GRU's gates; shared parameters
``<name>_Wx``, ``<name>_Wh`` (rnn) or ``<name>_Wz``, ``_Uz``, ``_Wr``, ``_Ur``, ``_Wn``,
``_Un`` (gru).

``readout`` (optional) adds outputs: ``{to: y, shape: [10], op: linear, activation: tanh,
bias: true, steps: last}`` makes output ``y`` from ``h_T`` (many-to-one); ``steps: all``
or a list of steps makes outputs ``y1 .. yT`` (or ``y<k>`` for the listed ``k``), one per
step, sharing one parameter ``<to>_W`` (many-to-many; per-step targets come from a
dataset whose labels have a time axis). Other edges of the spec may read any unrolled node
(``{from: h28, to: y, ...}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import SpecError
from ..ir import Edge, PCGraph, ValueNode
from ..ir.graph import gc_paused
from ..settings import parse_dataclass, to_mapping


@dataclass
class Readout:
    to: str = ""
    shape: tuple[int, ...] = ()
    op: str = "linear"
    activation: str = "identity"
    bias: bool = False
    steps: Literal["last", "all"] | tuple[int, ...] = "last"

    def check(self, where: str) -> None:
        if not self.to:
            raise SpecError("a readout needs 'to' (the output node's name)", f"{where}.to")
        if not self.shape or any(s <= 0 for s in self.shape):
            raise SpecError("a readout needs 'shape' (the output node's shape), a list of positive integers",
                            f"{where}.shape")


@dataclass
class Unroll:
    name: str = ""
    steps: int = 0
    input: str = ""
    shape: tuple[int, ...] = ()
    cell: Literal["rnn", "gru"] = "rnn"
    activation: str = "tanh"
    input_activation: str = "identity"
    bias: bool = False
    readout: dict | None = None

    def check(self, where: str) -> None:
        if not self.name:
            raise SpecError("an unrolled cell needs a 'name' (the prefix of its nodes)", f"{where}.name")
        if self.steps < 1:
            raise SpecError(f"steps must be a positive integer, got {self.steps}", f"{where}.steps")
        if not self.input:
            raise SpecError("an unrolled cell needs 'input' (an input node of shape [T, D])", f"{where}.input")
        if not self.shape or any(s <= 0 for s in self.shape):
            raise SpecError("an unrolled cell needs 'shape' (the hidden state's shape)", f"{where}.shape")
        if self.cell == "gru" and self.activation != Unroll.activation:
            raise SpecError(f"a GRU's activations are fixed (sigmoid gates, a tanh candidate): 'activation: "
                            f"{self.activation}' would be ignored; remove it (input_activation still applies "
                            f"to the input slices), or use cell: rnn", f"{where}.activation")
        if self.readout is not None:
            steps = self.parsed_readout(where).steps
            if isinstance(steps, tuple) and any(not 1 <= k <= self.steps for k in steps):
                raise SpecError(f"readout steps must lie in 1..{self.steps}, got {list(steps)}",
                                f"{where}.readout.steps")

    def parsed_readout(self, where: str) -> Readout | None:
        """``readout`` as a checked :class:`Readout` (None when there is none)."""
        if self.readout is None:
            return None
        return parse_dataclass(Readout, self.readout, f"{where}.readout", "a readout")

    def to_dict(self) -> dict:
        d = {"name": self.name, "steps": self.steps, "input": self.input, **to_mapping(self)}
        d["shape"] = list(self.shape)
        return d


def parse_unroll(raw, where: str) -> Unroll:
    return parse_dataclass(Unroll, raw, where, "an unrolled cell")


@gc_paused()
def expand(graph: PCGraph, u: Unroll, where: str) -> None:
    """Add the unrolled nodes and edges of ``u`` to ``graph`` (every one tagged with
    ``meta['unroll']`` and located at ``where``)."""
    if u.input not in graph.nodes:
        raise SpecError(f"input {u.input!r} is not a node (known: {', '.join(graph.nodes)})", f"{where}.input")
    src = graph.nodes[u.input]
    if src.role != "input" or src.shape is None or len(src.shape) < 2 or src.shape[0] < u.steps:
        raise SpecError(f"input {u.input!r} must be an input node of shape [T, ...] with T >= steps "
                        f"({u.steps}); it is a {src.role} node of shape {list(src.shape or [])}", f"{where}.input")
    meta = {"unroll": u.name, "where": where}
    shape = list(u.shape)
    d_in = list(src.shape[1:])

    def node(name, shp, role="hidden"):
        if name in graph.nodes:
            raise SpecError(f"unrolling {u.name!r} makes node {name!r}, which already exists", f"{where}.name")
        graph.add_node(ValueNode(name, shp, role, meta=dict(meta)))
        return name

    def edge(sources, dst, op="linear", activation="identity", bias=False, param=None, **options):
        graph.add_edge(Edge(sources, dst, op, activation, bias, param, options, meta=dict(meta)))

    n = u.name
    hs: list[str] = []
    for k in range(1, u.steps + 1):
        x = node(f"{n}_x{k}", d_in)
        edge(u.input, x, "select", index=k - 1)
        h = f"{n}{k}"
        prev = hs[-1] if hs else None
        if u.cell == "rnn":
            node(h, shape)
            edge(x, h, activation=u.input_activation, bias=u.bias, param=f"{n}_Wx")
            if prev:
                edge(prev, h, activation=u.activation, param=f"{n}_Wh")
        else:
            z, r, a, c, nn_ = (f"{n}_{g}{k}" for g in ("z", "r", "a", "c", "n"))
            node(z, shape)
            edge(x, z, activation=u.input_activation, bias=u.bias, param=f"{n}_Wz")
            if prev:
                edge(prev, z, param=f"{n}_Uz")
                node(r, shape)
                edge(x, r, activation=u.input_activation, bias=u.bias, param=f"{n}_Wr")
                edge(prev, r, param=f"{n}_Ur")
                node(a, shape)
                edge(prev, a, param=f"{n}_Un")
                node(c, shape)
                edge([r, a], c, "mul", ["sigmoid", "identity"])
            node(nn_, shape)
            edge(x, nn_, activation=u.input_activation, bias=u.bias, param=f"{n}_Wn")
            if prev:
                edge(c, nn_, "identity")
            node(h, shape)
            edge([z, nn_], h, "mul", ["one_minus_sigmoid", "tanh"])
            if prev:
                edge([z, prev], h, "mul", ["sigmoid", "identity"])
        hs.append(h)

    ro = u.parsed_readout(where)
    if ro is not None:
        steps = [u.steps] if ro.steps == "last" else list(range(1, u.steps + 1)) if ro.steps == "all" \
            else list(ro.steps)
        many = ro.steps != "last"
        for k in steps:
            y = node(ro.to if not many else f"{ro.to}{k}", list(ro.shape), "output")
            edge(hs[k - 1], y, ro.op, ro.activation, ro.bias, param=f"{ro.to}_W" if many else None)
