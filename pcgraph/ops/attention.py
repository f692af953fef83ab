"""Multi-head scaled dot-product attention over ``[L, D]`` nodes: ``attention``.

    Q = u_q W_q^T (+ b_q),  K = u_kv W_k^T,  V = u_kv W_v^T (+ b_v)
    A_h = softmax(Q_h K_h^T / sqrt(dim / heads) + M) V_h        (per head h)
    g(u_q, u_kv) = [A_1 .. A_heads] W_out^T (+ b_out)

with ``Q_h`` the ``h``-th block of ``dim / heads`` columns of ``Q`` (likewise ``K_h``,
``V_h``) and ``M[i, j] = -inf`` where ``causal`` and ``j > i`` (key after query, aligned
at the top left like ``torch``'s ``is_causal``), else 0. One source is self attention
(``u_q = u_kv``); two sources ``[q_src, kv_src]`` are cross attention.

Options: ``heads: int = 1``; ``causal: bool = False``; ``dim: int | None = None`` (the
inner q/k/v width, default the output width ``D_out``; divisible by ``heads``).

Shapes: ``[Lq, Dq]`` (and ``[Lk, Dkv]``) -> ``[Lq, D_out]``, ``D_out`` taken from the
target node. Parameters: ``q_weight [dim, Dq]``, ``k_weight [dim, Dkv]``, ``v_weight
[dim, Dkv]``, ``out_weight [D_out, dim]``; with ``bias: true`` also ``q_bias``,
``v_bias [dim]`` and ``out_bias [D_out]``. There is no key bias: it adds the same
``q_i . b_k`` to every score of query ``i``, which the softmax cancels, so its gradient is
identically 0 (and its "update" would be round-off that Adam blows up to ``lr``). Each is initialised like ``torch.nn.Linear``:
uniform in ``+-1/sqrt(fan_in)`` of its projection (biases with their weight's bound).

The VJPs, with ``P_h = softmax(S_h)`` the forward's probabilities, ``s = 1/sqrt(dim/heads)``,
an error ``eps`` ``[Lq, D_out]`` and ``dA = eps W_out`` split into heads ``dA_h``:

    dS_h = P_h * (dA_h V_h^T - rowsum(P_h * dA_h V_h^T))        (softmax's backward; 0 where masked)
    dQ_h = s dS_h K_h,   dK_h = s dS_h^T Q_h,   dV_h = P_h^T dA_h
    vjp_{u_q} = dQ W_q,   vjp_{u_kv} = dK W_k + dV W_v          (self attention: their sum)
    d W_q = sum_b dQ^T u_q,  d W_k = sum_b dK^T u_kv,  d W_v = sum_b dV^T u_kv,
    d W_out = sum_b eps^T [A_1 .. A_heads],   d b_q, d b_v, d b_out = sum_b of dQ, dV, eps

written out in :meth:`Attention.linearize`, whose pullback reuses the forward's ``Q, K,
V``, ``P`` and heads (no second forward, no second softmax): the executor keeps it from
the feed-forward pass to the wave. Each call computes only what it is asked for (``dK,
dV`` not for the query source of cross attention alone, ``dQ`` not for its key/value
source alone, parameter products only with ``want_params``). The forward projects a
self attention's source to ``Q, K, V`` by one matrix product (the three weights stacked),
a cross attention's key/value source to ``K, V`` likewise. Other callers (the reference
interpreter) get ``torch.func.vjp`` of the forward (``tests/test_attention_vjp.py``
checks both against autograd in float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import SpecError
from .base import OPS, Op, uniform_


@dataclass
class AttentionOptions:
    #: number of heads (divides ``dim``)
    heads: int = 1
    #: mask key ``j > `` query ``i``
    causal: bool = False
    #: inner q/k/v width; None = the output width
    dim: int | None = None

    def check(self, where: str) -> None:
        if self.heads < 1:
            raise SpecError(f"heads must be a positive integer, got {self.heads}", f"{where}.heads")
        if self.dim is not None:
            if self.dim < 1:
                raise SpecError(f"dim must be a positive integer, got {self.dim}", f"{where}.dim")
            if self.dim % self.heads:
                raise SpecError(f"dim ({self.dim}) must be divisible by heads ({self.heads})", f"{where}.dim")


@OPS.register("attention")
class Attention(Op):
    name = "attention"
    Options = AttentionOptions
    arity = (1, 2)

    @classmethod
    def check_shapes(cls, in_shapes, out_shape, opts):
        roles = ["source"] if len(in_shapes) == 1 else ["query source", "key/value source"]
        for role, s in zip(roles, in_shapes):
            if len(s) != 2:
                return f"attention needs [L, D] nodes, but the {role} has shape {list(s)}"
        if len(out_shape) != 2:
            return f"attention produces an [L, D] node, but the target node has shape {list(out_shape)}"
        lq = in_shapes[0][0]
        if out_shape[0] != lq:
            return (f"attention maps {lq} queries to {lq} positions, but the target node has shape "
                    f"{list(out_shape)} (want [{lq}, D_out])")
        dim = opts.dim if opts.dim is not None else out_shape[1]
        if dim % opts.heads:
            return (f"attention's inner width dim={dim}" + (" (the target width)" if opts.dim is None else "")
                    + f" must be divisible by heads={opts.heads}; set dim to a multiple of heads")
        return None

    @property
    def dim(self) -> int:
        return self.opts.dim if self.opts.dim is not None else self.out_shape[1]

    def param_shapes(self):
        dq, dkv, d, dout = self.in_shapes[0][1], self.in_shapes[-1][1], self.dim, self.out_shape[1]
        shapes = {"q_weight": (d, dq), "k_weight": (d, dkv), "v_weight": (d, dkv), "out_weight": (dout, d)}
        if self.bias:
            shapes.update(q_bias=(d,), v_bias=(d,), out_bias=(dout,))
        return shapes

    def init_params(self, generator, dtype, device):
        fan_in = {"q": self.in_shapes[0][1], "k": self.in_shapes[-1][1], "v": self.in_shapes[-1][1],
                  "out": self.dim}
        return {k: uniform_(s, 1.0 / math.sqrt(fan_in[k.split("_")[0]]), generator, dtype, device)
                for k, s in self.param_shapes().items()}

    def _groups(self) -> tuple[tuple[int, tuple[str, ...]], ...]:
        """The projections by source: self attention projects its one source to q, k and v
        by one matrix product; cross attention its query source to q and its key/value
        source to k and v."""
        return ((0, ("q", "k", "v")),) if len(self.in_shapes) == 1 else ((0, ("q",)), (1, ("k", "v")))

    @staticmethod
    def _mask(lq: int, lk: int, like: torch.Tensor) -> torch.Tensor:
        """``M``: ``-inf`` where key ``j > `` query ``i``, else 0."""
        return torch.full((lq, lk), float("-inf"), dtype=like.dtype, device=like.device).triu_(1)

    def _forward(self, params, inputs):
        """The output and what its VJPs need: per projection group ``(src, u, W, names)``
        (the source as ``[B L, D]``, the group's stacked weights), ``q, k, v`` as ``[B H, L, dh]``,
        the probabilities ``P = softmax(S)`` ``[B H, Lq, Lk]`` and the heads ``[B Lq, dim]``."""
        b, lq = inputs[0].shape[0], inputs[0].shape[1]
        h, d = self.opts.heads, self.dim
        dh = d // h
        proj, groups = {}, []
        for src, names in self._groups():
            u = inputs[src]
            length = u.shape[1]
            u2 = u.reshape(b * length, u.shape[2])
            w = params[f"{names[0]}_weight"] if len(names) == 1 else \
                torch.cat([params[f"{n}_weight"] for n in names])
            if self.bias:
                bias = torch.cat([params[f"{n}_bias"] if n != "k" else w.new_zeros(d) for n in names]) \
                    if len(names) > 1 else params[f"{names[0]}_bias"]
                t = torch.addmm(bias, u2, w.t())
            else:
                t = u2.mm(w.t())
            # [B L, n dim] -> [n, B H, L, dh] (one copy)
            t = t.view(b, length, len(names), h, dh).permute(2, 0, 3, 1, 4).reshape(len(names), b * h, length, dh)
            proj.update(zip(names, t.unbind(0)))
            groups.append((src, u2, w, names))
        q, k, v = proj["q"], proj["k"], proj["v"]
        scale = 1.0 / math.sqrt(dh)
        # S = M + scale q k^T in one product
        if self.opts.causal:
            scores = torch.baddbmm(self._mask(lq, k.shape[1], q), q, k.transpose(1, 2), alpha=scale)
        else:
            scores = torch.baddbmm(q.new_zeros(()), q, k.transpose(1, 2), beta=0, alpha=scale)
        p = torch.softmax(scores, dim=-1)
        heads = torch.bmm(p, v).view(b, h, lq, dh).transpose(1, 2).reshape(b * lq, d)
        wo = params["out_weight"]
        out = torch.addmm(params["out_bias"], heads, wo.t()) if self.bias else heads.mm(wo.t())
        return out.view(b, lq, wo.shape[0]), (groups, q, k, v, p, heads)

    def forward(self, params, *inputs):
        return self._forward(params, inputs)[0]

    def _pullback(self, params, saved, g, wanted, want_params):
        """The VJPs by the formulas in the module docstring from the forward's ``saved``
        tensors; only the parts that the wanted inputs (and, with ``want_params``, the
        parameters) need."""
        groups, q, k, v, p, heads = saved
        gin: list = [None] * len(self.in_shapes)
        need_q = want_params or bool(wanted[0])
        need_kv = want_params or bool(wanted[-1])
        if not (need_q or need_kv):         # nothing asked
            return gin, None
        b, lq = g.shape[0], g.shape[1]
        h, d = self.opts.heads, self.dim
        dh = d // h
        scale = 1.0 / math.sqrt(dh)
        wo = params["out_weight"]
        g2 = g.reshape(b * lq, wo.shape[0])
        # dA = eps W_out, per head [B H, Lq, dh]
        da = g2.mm(wo).view(b, lq, h, dh).transpose(1, 2).reshape(b * h, lq, dh)
        ds = torch._softmax_backward_data(torch.bmm(da, v.transpose(1, 2)), p, -1, p.dtype)
        zero = g.new_zeros(())
        grads = {}
        if need_q:
            grads["q"] = torch.baddbmm(zero, ds, k, beta=0, alpha=scale)
        if need_kv:
            grads["k"] = torch.baddbmm(zero, ds.transpose(1, 2), q, beta=0, alpha=scale)
            grads["v"] = torch.bmm(p.transpose(1, 2), da)
        gp, pieces = None, {}
        for src, u2, w, names in groups:
            if not (want_params or wanted[src]):
                continue
            length = u2.shape[0] // b
            parts = [grads[nm].view(b, h, length, dh).transpose(1, 2) for nm in names]
            # [B L, n dim]: the group's projections' gradients side by side
            dt = (parts[0] if len(parts) == 1 else torch.stack(parts, 2)).reshape(b * length, len(names) * d)
            if wanted[src]:
                gin[src] = dt.mm(w).view(b, length, u2.shape[1])
            if want_params:
                dw = dt.t().mm(u2)
                db = dt.sum(0) if self.bias else None
                for j, nm in enumerate(names):
                    pieces[f"{nm}_weight"] = dw[j * d:(j + 1) * d]
                    if self.bias and nm != "k":
                        pieces[f"{nm}_bias"] = db[j * d:(j + 1) * d]
        if want_params:
            pieces["out_weight"] = g2.t().mm(heads)
            if self.bias:
                pieces["out_bias"] = g2.sum(0)
            gp = {name: pieces[name] for name in self.param_shapes()}
        return gin, gp

    def linearize(self, params, inputs, needed=None):
        """The forward and a pullback by the formulas above from the forward's own ``q, k,
        v`` and probabilities (no second forward, no second softmax): the executor keeps it
        from the feed-forward pass to the wave. Every input's VJP is available (``needed``
        is not consulted); each call computes only what it is asked for."""
        p = {name: t.detach() for name, t in params.items()}
        us = [u.detach() for u in inputs]
        with torch.no_grad():
            out, saved = self._forward(p, us)

        def pullback(g, wanted, want_params):
            with torch.no_grad():
                return self._pullback(p, saved, g, wanted, want_params)

        return out, pullback
