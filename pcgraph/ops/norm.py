"""Normalisation: ``layer_norm`` over the last axis of the node shape.

    y = (u - mean(u)) / sqrt(var(u) + eps) * weight + bias

with ``mean`` and the biased ``var`` taken over the last axis (like
``torch.nn.functional.layer_norm``). The VJPs are written out: with
``xhat = (u - mean) * r``, ``r = 1 / sqrt(var + eps)`` and ``d = eps_y * weight``,

    vjp_input = r * (d - mean(d) - xhat * mean(d * xhat))     (means over the last axis)
    d weight = sum(eps_y * xhat),   d bias = sum(eps_y)        (over batch and leading axes)

Options: ``eps: float = 1e-5`` (positive); ``affine: bool = True`` (learn ``weight``,
initialised to ones, and ``bias``, to zeros, both ``[D_last]``; with ``affine: false``
there are no parameters, i.e. weight 1 and bias 0). ``bias: true`` is not accepted: the
affine bias is part of ``affine``.

Shapes: ``s -> s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import SpecError
from .base import OPS, Op


@dataclass
class LayerNormOptions:
    #: added to the variance
    eps: float = 1e-5
    #: learn a per-feature scale (weight) and shift (bias)
    affine: bool = True

    def check(self, where: str) -> None:
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise SpecError(f"eps must be a positive number, got {self.eps}", f"{where}.eps")


@OPS.register("layer_norm", "layernorm")
class LayerNorm(Op):
    name = "layer_norm"
    Options = LayerNormOptions
    supports_bias = False

    @classmethod
    def infer_out_shape(cls, in_shapes, opts):
        return tuple(in_shapes[0])

    def param_shapes(self):
        if not self.opts.affine:
            return {}
        return {"weight": (self.in_shape[-1],), "bias": (self.in_shape[-1],)}

    def init_params(self, generator, dtype, device):
        if not self.opts.affine:
            return {}
        d = self.in_shape[-1]
        return {"weight": torch.ones(d, dtype=dtype, device=device),
                "bias": torch.zeros(d, dtype=dtype, device=device)}

    def forward(self, params, u):
        return F.layer_norm(u, (u.shape[-1],), params.get("weight"), params.get("bias"), self.opts.eps)

    def _xhat(self, u):
        c = u - u.mean(-1, keepdim=True)
        r = torch.rsqrt((c * c).mean(-1, keepdim=True) + self.opts.eps)   # faster than u.var on CPU
        return c * r, r

    def vjp(self, params, inputs, g, wanted, want_params):
        """Both VJPs from one ``xhat`` (the input's and the parameters' share it)."""
        xhat, r = self._xhat(inputs[0])
        gin = [None]
        if wanted[0]:
            d = g * params["weight"] if self.opts.affine else g
            gin = [r * (d - d.mean(-1, keepdim=True) - xhat * (d * xhat).mean(-1, keepdim=True))]
        gp = None
        if want_params:
            gp = {}
            if self.opts.affine:
                g2 = g.reshape(-1, g.shape[-1])
                gp = {"weight": (g2 * xhat.reshape(g2.shape)).sum(0), "bias": g2.sum(0)}
        return gin, gp

    def vjp_inputs(self, params, inputs, g, wanted):
        return self.vjp(params, inputs, g, wanted, False)[0]

    def vjp_params(self, params, inputs, g):
        return self.vjp(params, inputs, g, [False], True)[1]
