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
The VJPs are ``torch.func.vjp`` of the forward.
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

    def forward(self, params, *inputs):
        uq, ukv = inputs[0], inputs[-1]
        b, lq, lk = uq.shape[0], uq.shape[1], ukv.shape[1]
        h = self.opts.heads
        dh = self.dim // h

        def proj(u, name, length):
            t = u @ params[f"{name}_weight"].t()
            if self.bias and name != "k":
                t = t + params[f"{name}_bias"]
            return t.reshape(b, length, h, dh).transpose(1, 2)  # [B, H, L, dh]

        q, k, v = proj(uq, "q", lq), proj(ukv, "k", lk), proj(ukv, "v", lk)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(dh)  # [B, H, Lq, Lk]
        if self.opts.causal:
            mask = torch.ones(lq, lk, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        heads = torch.softmax(scores, dim=-1) @ v  # [B, H, Lq, dh]
        out = heads.transpose(1, 2).reshape(b, lq, h * dh) @ params["out_weight"].t()
        return out + params["out_bias"] if self.bias else out
