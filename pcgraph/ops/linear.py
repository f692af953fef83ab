"""Dense edges: ``linear`` (all of the source's values) and ``token_linear`` (last axis).

``linear``: ``g(u) = W vec(u) (+ b)``, reshaped to the target node's shape;
``W: [numel(out), numel(in)]``; ``vjp_input = eps W``, ``dW = eps^T u``, ``db = sum_b eps``.

``token_linear``: ``g(u)[.., :] = W u[.., :] (+ b)``, the same ``W: [D_out, D_in]`` applied
to every position of the leading axes (a token-wise MLP layer on ``[L, D]`` nodes);
the target node's shape is the source's with the last axis replaced by ``D_out``.

Both are initialised like ``torch.nn.Linear`` (uniform in ``+-1/sqrt(fan_in)``; option
``init: glorot_uniform`` for Glorot's) and
have hand-written VJPs (two matmuls each, cheaper than ``torch.func.vjp``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import OPS, Op, WeightOptions, init_weights, numel


@OPS.register("linear", "dense")
class Linear(Op):
    name = "linear"
    Options = WeightOptions

    def param_shapes(self):
        shapes = {"weight": (numel(self.out_shape), numel(self.in_shape))}
        if self.bias:
            shapes["bias"] = (numel(self.out_shape),)
        return shapes

    def init_params(self, generator, dtype, device):
        return init_weights(self, numel(self.in_shape), numel(self.out_shape), generator, dtype, device)

    def forward(self, params, u):
        if u.dim() == 2 and len(self.out_shape) == 1:      # vector to vector: no reshapes (autograd
            return F.linear(u, params["weight"], params["bias"] if self.bias else None)   # records none)
        flat = u.reshape(u.shape[0], -1)
        if self.bias:
            out = torch.addmm(params["bias"], flat, params["weight"].t())
        else:
            out = flat @ params["weight"].t()
        return out.reshape(u.shape[0], *self.out_shape)

    def vjp_inputs(self, params, inputs, g, wanted):
        u = inputs[0]
        flat = g.reshape(g.shape[0], -1) @ params["weight"]
        return [flat.reshape(u.shape)]

    def vjp_params(self, params, inputs, g):
        u = inputs[0]
        g2 = g.reshape(g.shape[0], -1)
        grads = {"weight": g2.t() @ u.reshape(u.shape[0], -1)}
        if self.bias:
            grads["bias"] = g2.sum(0)
        return grads


@OPS.register("token_linear", "linear_last")
class TokenLinear(Op):
    name = "token_linear"
    Options = WeightOptions

    @classmethod
    def check_shapes(cls, in_shapes, out_shape, opts):
        (s,) = in_shapes
        if tuple(s[:-1]) != tuple(out_shape[:-1]):
            return (f"token_linear acts on the last axis only: source shape {list(s)} and target shape "
                    f"{list(out_shape)} must agree on the leading axes {list(s[:-1])}")
        return None

    def param_shapes(self):
        shapes = {"weight": (self.out_shape[-1], self.in_shape[-1])}
        if self.bias:
            shapes["bias"] = (self.out_shape[-1],)
        return shapes

    def init_params(self, generator, dtype, device):
        return init_weights(self, self.in_shape[-1], self.out_shape[-1], generator, dtype, device)

    def forward(self, params, u):
        out = u @ params["weight"].t()
        return out + params["bias"] if self.bias else out

    def vjp_inputs(self, params, inputs, g, wanted):
        return [g @ params["weight"]]

    def vjp_params(self, params, inputs, g):
        u = inputs[0]
        g2 = g.reshape(-1, g.shape[-1])
        grads = {"weight": g2.t() @ u.reshape(-1, u.shape[-1])}
        if self.bias:
            grads["bias"] = g2.sum(0)
        return grads
