"""Graph-network layers from torch-geometric: ``gcn_conv``, ``sage_conv``, ``gat_conv``.

A value node of a graph dataset holds one row per vertex (``[N, F]``): the vertex axis is
the batch axis. A graph op mixes rows along the graph's edges, so besides its sources it
needs the graph structure. That structure is a **side input**, not a value node: a
:class:`Graph` (``edge_index`` ``[2, E]``, ``num_nodes``) *bound* to the compiled graph's
graph ops by the data (:class:`~pcgraph.data.loader.GraphBatches` binds its dataset's
graph when it is built; :meth:`PCNetwork.set_graph <pcgraph.compile.PCNetwork.set_graph>`
binds one by hand). ``forward(params, *inputs)`` and the kernel/executor/interpreter APIs
stay as they are: the op reads its bound graph, the same for the feed-forward pass, every
inference step and every VJP of a training step. A deep copy of the network (``pcgraph
check``'s BP twin) carries the binding with it.

Each op builds the torch-geometric layer once (on the ``meta`` device: a template without
storage) and evaluates it functionally, ``torch.func.functional_call(layer, params,
(u, edge_index, ..))``, on the edge's own parameters. Normalisation, attention, self
loops and aggregation are torch-geometric's; nothing is re-implemented here. The VJPs are
``torch.func.vjp`` of that call (exact: ``tests/test_ops.py`` and ``tests/test_gnn.py``
check them against autograd in float64). ``gcn_conv`` computes the symmetric
normalisation ``D^-1/2 (A + I) D^-1/2`` once per bound graph (and dtype) with
torch-geometric's own ``gcn_norm`` and hands the normalised edge weights to a
``GCNConv(normalize=False)``: the same numbers ``GCNConv`` computes on every call.
``improved: true`` normalises ``A + 2I`` (``gcn_norm`` is given unit edge weights: without
weights it ignores ``improved``, and so does ``GCNConv`` called without them); a vertex
that already has a self loop keeps it with weight 1 (torch-geometric's
``add_remaining_self_loops``).

Parameters are the layer's own, named as torch-geometric names them with ``.`` spelled
``_`` (``GCNConv``'s ``lin.weight`` is ``lin_weight``), and initialised by the layer's own
``reset_parameters`` under a torch RNG seeded from the network's generator.

Ops (sources ``[F_in]`` -> target ``[F_out]``, one source each; ``bias: true`` for a bias):

- ``gcn_conv`` (Kipf & Welling 2017, ``GCNConv``): options ``improved`` (false; true:
  ``A + 2I``, which needs the other two true), ``add_self_loops`` (true), ``normalize`` (true).
- ``sage_conv`` (Hamilton et al. 2017, ``SAGEConv``): ``aggr`` (``mean``, ``max``,
  ``sum``), ``normalize`` (false: L2-normalise the output rows), ``root_weight`` (true).
- ``gat_conv`` (Velickovic et al. 2018, ``GATConv``): ``heads`` (1), ``concat`` (true:
  the target has ``heads * C`` features, ``C`` per head; false: the heads are averaged,
  target ``C``), ``negative_slope`` (0.2), ``add_self_loops`` (true).

- ``gat_conv``'s ``dropout`` (0) drops attention coefficients (``GATConv``'s own dropout)
  with one mask per training step: torch's RNG is seeded with the step's seed on every
  call, so the feed-forward pass, every inference step and every VJP of one step drop the
  same coefficients (see :mod:`pcgraph.ops.dropout`, which also drops features).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from ..errors import DataError, SpecError
from .base import OPS, Op


@dataclass(eq=False)
class Graph:
    """The structure a graph dataset supplies: ``edge_index`` ``[2, E]`` (int64, row 0 the
    source vertex, row 1 the target, torch-geometric's convention) on ``num_nodes``
    vertices. ``cache`` keeps structures derived from it (``gcn_conv``'s normalised edge
    weights), so they are computed once per graph, not once per step."""

    edge_index: torch.Tensor
    num_nodes: int
    cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        ei = self.edge_index
        if not isinstance(ei, torch.Tensor) or ei.dim() != 2 or ei.shape[0] != 2:
            raise DataError(f"edge_index must be a [2, E] tensor, got "
                            f"{tuple(ei.shape) if isinstance(ei, torch.Tensor) else type(ei).__name__}",
                            "data.dataset")
        if ei.dtype != torch.long:
            self.edge_index = ei = ei.long()
        if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= self.num_nodes):
            raise DataError(f"edge_index names vertices outside 0..{self.num_nodes - 1}", "data.dataset")

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def to(self, device) -> Graph:
        device = torch.device(device)
        if self.edge_index.device == device:
            return self
        return Graph(self.edge_index.to(device), self.num_nodes)

    def __repr__(self) -> str:
        return f"Graph({self.num_nodes} vertices, {self.num_edges} edges)"


def pyg(module: str = "nn"):
    """``torch_geometric.<module>``, imported on first use (without its import-time
    FutureWarning about ``torch.jit.script``: torch-geometric's business, not the user's)."""
    import importlib

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        return importlib.import_module(f"torch_geometric.{module}")


def pyg_nn():
    """``torch_geometric.nn`` (see :func:`pyg`)."""
    return pyg("nn")


def graph_ops(compiled) -> list[int]:
    """Indices of the compiled graph's edges whose op needs a graph."""
    return [i for i, op in enumerate(compiled.ops) if getattr(op, "needs_graph", False)]


def bind_graph(compiled, graph: Graph | None) -> None:
    """Give every graph op of ``compiled`` the structure ``graph`` (None unbinds)."""
    for i in graph_ops(compiled):
        compiled.ops[i].graph = graph


class GraphOp(Op):
    """A torch-geometric layer evaluated functionally on the bound :class:`Graph`."""

    needs_graph: ClassVar[bool] = True

    def __init__(self, in_shapes, out_shape, bias=False, options=None):
        super().__init__(in_shapes, out_shape, bias, options)
        self.graph: Graph | None = None
        with torch.device("meta"):
            self.layer = self.make_layer()
        # ours (no dots: ParameterDict keys) <-> torch-geometric's names
        self._pyg = {n.replace(".", "_"): n for n, _ in self.layer.named_parameters()}

    # ---- what a subclass says ---------------------------------------------------------
    def make_layer(self) -> torch.nn.Module:
        raise NotImplementedError

    def structure(self, graph: Graph, dtype: torch.dtype) -> tuple:
        """The layer's arguments after the features (default ``(edge_index,)``)."""
        return (graph.edge_index,)

    # ---- shapes -------------------------------------------------------------------------
    @classmethod
    def check_sources(cls, in_shapes, opts):
        s = in_shapes[0]
        if len(s) != 1:
            return (f"{cls.name} reads vertex features: its source must be a [F] node (one row per "
                    f"vertex), got shape {list(s)}")
        return None

    @classmethod
    def check_shapes(cls, in_shapes, out_shape, opts):
        msg = cls.check_sources(in_shapes, opts)
        if msg:
            return msg
        if len(out_shape) != 1:
            return f"{cls.name} produces vertex features: the target must be a [F] node, got {list(out_shape)}"
        return None

    @property
    def in_channels(self) -> int:
        return self.in_shapes[0][0]

    @property
    def out_channels(self) -> int:
        return self.out_shape[0]

    # ---- parameters ---------------------------------------------------------------------
    def param_shapes(self):
        return {k: tuple(p.shape) for k, p in
                ((k, self.layer.get_parameter(n)) for k, n in self._pyg.items())}

    def init_params(self, generator, dtype, device):
        """The layer's own ``reset_parameters`` (glorot, zeros, ...) under torch's RNG seeded
        from ``generator``: deterministic per network seed."""
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layer = self.make_layer().to(dtype)
        return {k: layer.get_parameter(n).detach().to(device) for k, n in self._pyg.items()}

    # ---- computation --------------------------------------------------------------------
    def prepare(self, dtype, device):
        if self.graph is not None:          # (the structure's cache, e.g. gcn_norm's weights)
            self.structure(self.graph, dtype)

    def bound_graph(self, u: torch.Tensor) -> Graph:
        g = self.graph
        if g is None:
            raise DataError(f"op {self.name!r} needs the graph structure, and none is bound: train it on a "
                            f"graph dataset (cora, citeseer, karate) or call net.set_graph(Graph(edge_index, "
                            f"num_nodes))", "data.dataset")
        if u.shape[0] != g.num_nodes:
            raise DataError(f"op {self.name!r} got {u.shape[0]} rows but the bound graph has {g.num_nodes} "
                            f"vertices (a graph dataset is one full batch: one row per vertex)", "data.dataset")
        return g

    def forward(self, params, *inputs):
        u = inputs[0]
        g = self.bound_graph(u)
        p = {self._pyg[k]: v for k, v in params.items()}
        return torch.func.functional_call(self.layer, p, (u, *self.structure(g, u.dtype)))

    def __deepcopy__(self, memo):
        # the meta template is rebuilt rather than copied (meta tensors carry no data)
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k == "layer":
                continue
            new.__dict__[k] = copy.deepcopy(v, memo)
        with torch.device("meta"):
            new.layer = new.make_layer()
        return new


# ---- gcn_conv -------------------------------------------------------------------------------

@dataclass
class GCNOptions:
    #: ``A + 2I`` instead of ``A + I`` (torch-geometric's ``improved``: self loops of weight 2)
    improved: bool = False
    #: add self loops before normalising
    add_self_loops: bool = True
    #: the symmetric normalisation ``D^-1/2 A D^-1/2`` (false: plain sums over in-edges)
    normalize: bool = True

    def check(self, where: str) -> None:
        if self.improved and not (self.normalize and self.add_self_loops):
            off = "normalize" if not self.normalize else "add_self_loops"
            raise SpecError(f"improved (A + 2I) weighs the self loops that the normalisation adds: it does "
                            f"nothing with {off}: false (drop improved, or set {off}: true)", f"{where}.improved")


@OPS.register("gcn_conv", "gcn")
class GCNConvOp(GraphOp):
    """``GCNConv``: ``D^-1/2 (A + I) D^-1/2 u W^T (+ b)`` (``A + 2I`` with ``improved``)."""

    name = "gcn_conv"
    Options = GCNOptions

    def make_layer(self):
        # normalisation is done once per graph (structure), with GCNConv's own gcn_norm
        return pyg_nn().GCNConv(self.in_channels, self.out_channels, normalize=False, bias=self.bias)

    def structure(self, graph, dtype):
        o = self.opts
        if not o.normalize:
            return (graph.edge_index, None)
        key = ("gcn_norm", o.improved, o.add_self_loops, dtype)
        hit = graph.cache.get(key)
        if hit is None:
            gcn_norm = pyg_nn().conv.gcn_conv.gcn_norm
            # gcn_norm fills the self loops with 2 (improved) only when the edges have weights:
            # without, every weight is 1 and improved does nothing; so pass unit weights
            ei = graph.edge_index
            weight = torch.ones(ei.shape[1], dtype=dtype, device=ei.device) if o.improved else None
            hit = gcn_norm(ei, weight, graph.num_nodes, o.improved, o.add_self_loops,
                           "source_to_target", dtype)
            graph.cache[key] = hit
        return hit

    def vjp(self, params, inputs, g, wanted, want_params):
        """By hand, from the forward's definition ``y = A_hat (u W^T) (+ b)`` with ``A_hat`` the
        (normalised) adjacency the forward propagates with (edge ``j -> i`` of weight ``w``
        adds ``w * (u W^T)_j`` to row ``i``): ``r = A_hat^T g`` once (each edge sends
        ``w * g_i`` back to ``j``), then ``dW = r^T u``, ``du = r W``, ``db = sum_rows g``.
        No forward is recomputed and nothing is linearized (``torch.func`` would trace the
        layer's whole forward for each VJP)."""
        u = inputs[0]
        graph = self.bound_graph(u)
        edge_index, weight = self.structure(graph, u.dtype)
        src, dst = edge_index[0], edge_index[1]
        back = g.index_select(0, dst)
        if weight is not None:
            back = back * weight.view(-1, 1)
        r = g.new_zeros(u.shape[0], g.shape[1]).index_add_(0, src, back)
        w = params["lin_weight"]
        gin = [r.mm(w) if wanted[0] else None]
        if not want_params:
            return gin, None
        grads = {"lin_weight": lambda: r.t().mm(u), "bias": lambda: g.sum(0)}
        return gin, {k: grads[k]() for k in params}       # (in the parameters' order)


# ---- sage_conv ------------------------------------------------------------------------------

@dataclass
class SAGEOptions:
    #: neighbourhood aggregation
    aggr: Literal["mean", "max", "sum"] = "mean"
    #: L2-normalise each output row
    normalize: bool = False
    #: add the vertex's own transformed features (``lin_r``)
    root_weight: bool = True


@OPS.register("sage_conv", "sage")
class SAGEConvOp(GraphOp):
    """``SAGEConv``: ``W_1 u_i + W_2 aggr_{j -> i} u_j (+ b)``."""

    name = "sage_conv"
    Options = SAGEOptions

    def make_layer(self):
        o = self.opts
        return pyg_nn().SAGEConv(self.in_channels, self.out_channels, aggr=o.aggr, normalize=o.normalize,
                        root_weight=o.root_weight, bias=self.bias)


# ---- gat_conv -------------------------------------------------------------------------------

@dataclass
class GATOptions:
    #: attention heads
    heads: int = 1
    #: concatenate the heads (target ``heads * C``); false: average them (target ``C``)
    concat: bool = True
    #: of the attention's leaky relu
    negative_slope: float = 0.2
    add_self_loops: bool = True
    #: dropout on the attention coefficients, one mask per training step (pcgraph/ops/dropout.py)
    dropout: float = 0.0

    def check(self, where: str) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise SpecError(f"dropout must be in [0, 1), got {self.dropout}", f"{where}.dropout")
        if self.heads < 1:
            raise SpecError(f"heads must be a positive integer, got {self.heads}", f"{where}.heads")
        if not self.negative_slope >= 0:
            raise SpecError(f"negative_slope must be >= 0, got {self.negative_slope}", f"{where}.negative_slope")


@OPS.register("gat_conv", "gat")
class GATConvOp(GraphOp):
    """``GATConv``: per head ``sum_j alpha_ij W u_j``, ``alpha`` a softmax over in-edges of
    ``leaky_relu(a_src . W u_j + a_dst . W u_i)``; heads concatenated or averaged (+ b)."""

    name = "gat_conv"
    Options = GATOptions

    @classmethod
    def check_shapes(cls, in_shapes, out_shape, opts):
        msg = super().check_shapes(in_shapes, out_shape, opts)
        if msg is None and opts.concat and out_shape[0] % opts.heads:
            msg = (f"gat_conv concatenates {opts.heads} heads: the target's {out_shape[0]} features must be a "
                   f"multiple of heads (heads * features per head)")
        return msg

    def make_layer(self):
        o = self.opts
        per_head = self.out_channels // o.heads if o.concat else self.out_channels
        return pyg_nn().GATConv(self.in_channels, per_head, heads=o.heads, concat=o.concat,
                                negative_slope=o.negative_slope, dropout=o.dropout,
                                add_self_loops=o.add_self_loops, bias=self.bias)

    @property
    def needs_step(self) -> bool:
        return self.opts.dropout > 0

    def forward(self, params, *inputs):
        if not self.needs_step:
            return super().forward(params, *inputs)
        # GATConv draws its attention dropout from torch's RNG: seeded with the step's seed
        # on every call, every call of one step drops the same coefficients; no step bound
        # (evaluation): the layer in eval mode, no dropout
        seed = getattr(self, "step_seed", None)
        self.layer.train(seed is not None)
        if seed is None:
            return super().forward(params, *inputs)
        u = inputs[0]
        with torch.random.fork_rng(devices=[u.device] if u.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return super().forward(params, *inputs)


__all__ = ["GATConvOp", "GCNConvOp", "Graph", "GraphOp", "SAGEConvOp", "bind_graph", "graph_ops"]
