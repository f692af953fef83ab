"""Parameter-free edges: ``identity`` (``g(u) = u``) and ``flatten`` (a reshape).

Identity edges are what the compiler uses for relay nodes; they carry no parameters
and their VJP is the identity.
"""

from __future__ import annotations

from .base import OPS, Op, numel


@OPS.register("identity")
class IdentityOp(Op):
    name = "identity"
    supports_bias = False

    @classmethod
    def infer_out_shape(cls, in_shapes, opts):
        return tuple(in_shapes[0])

    def forward(self, params, u):
        return u

    def vjp_inputs(self, params, inputs, g, wanted):
        return [g]


@OPS.register("flatten", "reshape")
class Flatten(Op):
    """Reshape to the target node's shape (same number of elements)."""

    name = "flatten"
    supports_bias = False

    @classmethod
    def infer_out_shape(cls, in_shapes, opts):
        return (numel(in_shapes[0]),)

    @classmethod
    def check_shapes(cls, in_shapes, out_shape, opts):
        (s,) = in_shapes
        if numel(s) != numel(out_shape):
            return (f"flatten cannot reshape {list(s)} ({numel(s)} elements) "
                    f"to {list(out_shape)} ({numel(out_shape)} elements)")
        return None

    def forward(self, params, u):
        return u.reshape(u.shape[0], *self.out_shape)

    def vjp_inputs(self, params, inputs, g, wanted):
        return [g.reshape(inputs[0].shape)]
