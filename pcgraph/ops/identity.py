"""Parameter-free edges: ``identity`` (``g(u) = u``), ``flatten`` (to ``[numel]``) and
``reshape`` (to the target node's shape).

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


@OPS.register("flatten")
class Flatten(Op):
    """``g(u) = vec(u)``: infers ``[numel(u)]``; a target of another shape with as many
    elements is accepted too (reshaped into it; ``reshape`` says so explicitly)."""

    name = "flatten"
    supports_bias = False

    @classmethod
    def infer_out_shape(cls, in_shapes, opts):
        return (numel(in_shapes[0]),)

    @classmethod
    def check_shapes(cls, in_shapes, out_shape, opts):
        (s,) = in_shapes
        if numel(s) != numel(out_shape):
            return (f"{cls.name} cannot reshape {list(s)} ({numel(s)} elements) "
                    f"to {list(out_shape)} ({numel(out_shape)} elements)")
        return None

    def forward(self, params, u):
        return u.reshape(u.shape[0], *self.out_shape)

    def vjp_inputs(self, params, inputs, g, wanted):
        return [g.reshape(inputs[0].shape)]


@OPS.register("reshape", "view")
class Reshape(Flatten):
    """``g(u) = u`` reshaped (row-major) to the target node's shape, which must be given and
    hold as many elements; ``vjp_input = eps`` reshaped back."""

    name = "reshape"

    @classmethod
    def infer_out_shape(cls, in_shapes, opts):
        return None
