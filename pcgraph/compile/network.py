"""The parameters of a compiled graph and the per-edge primitives every program uses.

:class:`PCNetwork` is an ``nn.Module``: its ``state_dict`` holds one entry per parameter
group (``params.<key>.weight``), shared edges share one group. Its ``forward`` is the
feed-forward pass (differentiable, so the BP reference can call autograd on it); the
three primitives below are what predictive coding computes locally at an edge
``e = (p -> c)`` with ``u = f(x_p)``:

- ``contribution(e, u)``            = ``op_e(u)``                        (into ``mu_c``)
- ``feedback(e, u, df, eps_c)``     = ``f'(x_p) * op_e^T eps_c``         (into ``x_p``'s update)
- ``param_vjp(e, u, eps_c)``        = ``sum_b op_e^T eps_c (wrt theta)`` (the local update)
"""

from __future__ import annotations

import torch
from torch import nn

from .graph import CompiledGraph


class PCNetwork(nn.Module):
    def __init__(self, compiled: CompiledGraph, seed: int = 0, device=None, dtype=torch.float32):
        super().__init__()
        self.compiled = compiled
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

    # ---- primitives ---------------------------------------------------------------------
    def contribution(self, i: int, u: torch.Tensor) -> torch.Tensor:
        return self.compiled.ops[i].forward(self._edge_params[i], u)

    def feedback(self, i: int, u: torch.Tensor, df: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        g = self.compiled.ops[i].vjp_input(self._edge_params[i], u, eps)
        return g if self.compiled.acts[i].is_identity else df * g

    def param_vjp(self, i: int, u: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.compiled.ops[i].vjp_params(self._edge_params[i], u, eps)

    def predict(self, c: str, act_of) -> torch.Tensor:
        """``mu_c = sum_e op_e(f_e(x_p))``; ``act_of(i)`` returns ``f_e(x_p)`` for edge ``i``."""
        mu = None
        for i in self.compiled.in_edges(c):
            term = self.contribution(i, act_of(i))
            mu = term if mu is None else mu + term
        return mu

    # ---- feed-forward pass ----------------------------------------------------------------
    def values(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Feed-forward value of every node (outputs hold their prediction ``mu``)."""
        cg = self.compiled
        x: dict[str, torch.Tensor] = {}
        for v in cg.order:
            if cg.role(v) == "input":
                x[v] = inputs[v]
            else:
                x[v] = self.predict(v, lambda i: cg.acts[i].f(x[cg.edges[i].src]))
        return x

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.values(inputs)
        return {o: x[o] for o in self.compiled.graph.outputs}

    def loss(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum over outputs of each output's loss, batch-mean (or batch-sum) reduced."""
        total = None
        for o, mu in outputs.items():
            term = self.compiled.losses[o].value(mu, targets[o])
            if self.compiled.reduction == "sum":
                term = term * mu.shape[0]
            total = term if total is None else total + term
        return total

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"{len(self.params)} parameter groups, {n} parameters"
