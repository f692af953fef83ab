"""Normalisation: ``layer_norm`` over the last axis of the node shape.

    y = (u - mean(u)) / sqrt(var(u) + eps) * weight + bias

with ``mean`` and the biased ``var`` taken over the last axis (like
``torch.nn.functional.layer_norm``). The VJPs: with
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

    def vjp(self, params, inputs, g, wanted, want_params):
        """Both VJPs by torch's own layer-norm backward kernel (the formulas above), from the
        mean and ``r`` of one native forward: faster on CPU than the formulas written out."""
        u = inputs[0]
        shape = [u.shape[-1]]
        w, b = params.get("weight"), params.get("bias")
        _, mean, rstd = torch.native_layer_norm(u, shape, w, b, self.opts.eps)
        affine = want_params and self.opts.affine
        gi, gw, gb = torch.ops.aten.native_layer_norm_backward(
            g, u, shape, mean, rstd, w, b, [bool(wanted[0]), affine, affine])
        gp = ({"weight": gw, "bias": gb} if affine else {}) if want_params else None
        return [gi if wanted[0] else None], gp
