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
    def infer_out_shape(cls, in_shape, options):
        return tuple(in_shape)

    def forward(self, params, u):
        return u

    def vjp_input(self, params, u, g):
        return g


@OPS.register("flatten", "reshape")
class Flatten(Op):
    """Reshape to the target node's shape (same number of elements)."""

    name = "flatten"
    supports_bias = False

    @classmethod
    def infer_out_shape(cls, in_shape, options):
        return (numel(in_shape),)

    @classmethod
    def check_shapes(cls, in_shape, out_shape, options):
        if numel(in_shape) != numel(out_shape):
            return (f"flatten cannot reshape {list(in_shape)} ({numel(in_shape)} elements) "
                    f"to {list(out_shape)} ({numel(out_shape)} elements)")
        return None

    def forward(self, params, u):
        return u.reshape(u.shape[0], *self.out_shape)

    def vjp_input(self, params, u, g):
        return g.reshape(u.shape)
