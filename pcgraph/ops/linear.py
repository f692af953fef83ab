"""Dense edge: ``g(u) = W vec(u) (+ b)``, reshaped to the target node's shape.

``W`` has shape ``[numel(out), numel(in)]``; ``vjp_input = eps W``,
``vjp_params: dW = eps^T u, db = sum_b eps``. Initialised like ``torch.nn.Linear``
(uniform in ``+-1/sqrt(fan_in)``).
"""

from __future__ import annotations

import math

import torch

from .base import OPS, Op, numel, uniform_


@OPS.register("linear", "dense")
class Linear(Op):
    name = "linear"

    def param_shapes(self):
        shapes = {"weight": (numel(self.out_shape), numel(self.in_shape))}
        if self.bias:
            shapes["bias"] = (numel(self.out_shape),)
        return shapes

    def init_params(self, generator, dtype, device):
        bound = 1.0 / math.sqrt(numel(self.in_shape))
        return {k: uniform_(s, bound, generator, dtype, device) for k, s in self.param_shapes().items()}

    def forward(self, params, u):
        flat = u.reshape(u.shape[0], -1)
        if self.bias:
            out = torch.addmm(params["bias"], flat, params["weight"].t())
        else:
            out = flat @ params["weight"].t()
        return out.reshape(u.shape[0], *self.out_shape)

    def vjp_input(self, params, u, g):
        flat = g.reshape(g.shape[0], -1) @ params["weight"]
        return flat.reshape(u.shape)

    def vjp_params(self, params, u, g):
        g2 = g.reshape(g.shape[0], -1)
        grads = {"weight": g2.t() @ u.reshape(u.shape[0], -1)}
        if self.bias:
            grads["bias"] = g2.sum(0)
        return grads
