"""The parameters of a compiled graph and its feed-forward pass.

:class:`PCNetwork` is an ``nn.Module``: its ``state_dict`` holds one entry per parameter
group (``params.<key>.weight``); shared edges share one group. ``predict`` is the
model's one equation, ``mu_c = sum_{e: [p_1..p_n] -> c} op_e(f_1(x_p1), .., f_n(x_pn))``;
``forward`` chains it in topological order (differentiable: the BP reference calls
autograd on it) and the PC kernel (:mod:`pcgraph.compile.kernel`) calls it for the
prediction of a node from the current values.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..ops.dropout import bind_step
from ..ops.graph_conv import bind_graph, graph_ops
from .graph import CompiledGraph


class PCNetwork(nn.Module):
    def __init__(self, compiled: CompiledGraph, seed: int = 0, device=None, dtype=torch.float32):
        super().__init__()
        self.compiled = compiled
        #: mixed into the per-step seeds of ops that sample (``dropout``): see :meth:`begin_step`
        self.seed = int(seed)
        gen = torch.Generator().manual_seed(int(seed))
        device = torch.device(device) if device is not None else torch.device("cpu")
        params = nn.ModuleDict()
        for key, idxs in compiled.param_edges.items():
            op = compiled.ops[idxs[0]]
            group = op.init_params(gen, dtype, device)
            params[key] = nn.ParameterDict({k: nn.Parameter(v) for k, v in group.items()})
        self.params = params
        empty: dict = {}
        # per-edge parameter dicts (shared groups appear under several edges)
        self._edge_params = [params[e.key] if e.key in params else empty for e in compiled.edges]

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def edge_params(self, i: int):
        return self._edge_params[i]

    # ---- side inputs: the structure of a graph dataset ----------------------------------------
    def set_graph(self, graph) -> None:
        """Bind a :class:`pcgraph.ops.graph_conv.Graph` (``edge_index``, ``num_nodes``) to the
        graph ops (``gcn_conv``, ``sage_conv``, ``gat_conv``); rows of every value node are
        then its vertices. A graph dataset's loader binds its graph itself."""
        bind_graph(self.compiled, None if graph is None else graph.to(self.device))

    def begin_step(self, step: int | None) -> None:
        """Training step ``step`` begins: ops that sample (``dropout``, ``gat_conv`` with
        attention dropout) draw its masks, the same for the whole step; None ends sampling
        (evaluation: those ops are deterministic)."""
        bind_step(self.compiled, self.seed, step)

    @property
    def graph(self):
        """The graph bound to the graph ops (None: none bound, or no graph ops)."""
        idx = graph_ops(self.compiled)
        return self.compiled.ops[idx[0]].graph if idx else None

    def contribution(self, i: int, us: Sequence[torch.Tensor]) -> torch.Tensor:
        """``op_e(u_1, .., u_n)`` of edge ``i`` (``u_k = f_k(x_{p_k})``)."""
        return self.compiled.ops[i].forward(self._edge_params[i], *us)

    def predict(self, c: str, inputs_of: Callable[[int], Sequence[torch.Tensor]],
                contribution: Callable | None = None) -> torch.Tensor:
        """``mu_c = sum_e op_e(..)``; ``inputs_of(i)`` returns edge ``i``'s activated sources;
        ``contribution(i, us)`` computes one term (default :meth:`contribution`)."""
        contribution = contribution or self.contribution
        mu = None
        for i in self.compiled.in_edges(c):
            term = contribution(i, inputs_of(i))
            mu = term if mu is None else mu + term
        return mu

    def activated(self, x: dict[str, torch.Tensor], i: int) -> list[torch.Tensor]:
        """``[f_k(x_{p_k})]`` for edge ``i`` (no caching: the BP forward pass)."""
        e = self.compiled.edges[i]
        return [a.f(x[s]) for a, s in zip(self.compiled.acts[i], e.sources)]

    # ---- feed-forward pass ----------------------------------------------------------------
    def values(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Feed-forward value of every node (outputs hold their prediction ``mu``)."""
        cg = self.compiled
        x: dict[str, torch.Tensor] = {}
        for v in cg.order:
            if cg.role(v) == "input":
                x[v] = inputs[v]
            else:
                x[v] = self.predict(v, lambda i: self.activated(x, i))
        return x

    def forward(self, inputs: dict[str, torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        """The feed-forward prediction of the output nodes.

        ``inputs``: a dict from every input node's name to its batch (``{"x": x}``), or, when
        the graph has exactly one input node, that batch as a plain tensor. Returns a dict from
        every output node's name to its prediction for a dict; for a tensor, the output's tensor
        when the graph has one output node (``net(x)``, as an ``nn.Module`` is called), else the
        dict. A tensor for a graph of several inputs, or a dict that misses one, is an error
        naming the input nodes."""
        names = self.compiled.graph.inputs
        plain = isinstance(inputs, torch.Tensor)
        if plain:
            if len(names) != 1:
                raise TypeError(f"this graph has {len(names)} input nodes ({', '.join(names)}): call it with a "
                                f"dict of them, {{{', '.join(f'{n!r}: tensor' for n in names)}}}, not one tensor")
            inputs = {names[0]: inputs}
        elif not isinstance(inputs, dict):
            raise TypeError(f"expected a dict of input tensors ({', '.join(names)}) or, for a graph of one input, "
                            f"a tensor; got {type(inputs).__name__}")
        else:
            missing = [n for n in names if n not in inputs]
            if missing:
                raise ValueError(f"the inputs miss {', '.join(map(repr, missing))} (the input nodes: "
                               f"{', '.join(names)}; got {', '.join(map(repr, inputs)) or 'none'})")
        x = self.values(inputs)
        outs = self.compiled.graph.outputs
        if plain and len(outs) == 1:
            return x[outs[0]]
        return {o: x[o] for o in outs}

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"{len(self.params)} parameter groups, {n} parameters"
