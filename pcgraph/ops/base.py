"""The op interface: what an edge computes and the two vector-Jacobian products PC needs.

An edge ``e = (p -> c)`` with op ``g`` and parameters ``theta_e`` contributes
``g(u; theta_e)`` with ``u = f(x_p)`` to the prediction ``mu_c``. Predictive coding
needs, for an error ``eps_c`` of shape ``[B, *out_shape]``:

- ``vjp_input``:  ``(dg/du)^T eps_c``, shape ``[B, *in_shape]`` (feedback to ``p``);
- ``vjp_params``: ``sum_b (dg/dtheta)^T eps_c`` per parameter (the local weight update).

Both are written out per op, so the PC rules never call autograd; ``forward`` is also
used by the BP reference, under autograd, which is how the hand-written VJPs are tested.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ..errors import SpecError
from ..registry import Registry

Shape = tuple[int, ...]


class Op:
    """A configured op for one edge. Subclasses set ``name`` and override the hooks."""

    name: ClassVar[str] = ""
    #: option keys accepted in the edge spec besides the common ones
    options: ClassVar[tuple[str, ...]] = ()
    #: whether ``bias: true`` is meaningful
    supports_bias: ClassVar[bool] = True

    def __init__(self, in_shape: Shape, out_shape: Shape, bias: bool = False, **options):
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)
        self.bias = bias
        self.opts = options

    # ---- shapes -------------------------------------------------------------------
    @classmethod
    def infer_out_shape(cls, in_shape: Shape, options: dict) -> Shape | None:
        """The output shape implied by the input shape and options, or None if free."""
        return None

    @classmethod
    def check_shapes(cls, in_shape: Shape, out_shape: Shape, options: dict) -> str | None:
        """Return a message if ``in_shape -> out_shape`` is impossible for this op."""
        inferred = cls.infer_out_shape(in_shape, options)
        if inferred is not None and tuple(inferred) != tuple(out_shape):
            return (f"{cls.name} maps shape {list(in_shape)} to {list(inferred)}, "
                    f"but the target node has shape {list(out_shape)}")
        return None

    # ---- parameters ---------------------------------------------------------------
    def param_shapes(self) -> dict[str, Shape]:
        return {}

    def init_params(self, generator: torch.Generator, dtype: torch.dtype,
                    device: torch.device) -> dict[str, torch.Tensor]:
        return {}

    # ---- computation --------------------------------------------------------------
    def forward(self, params: dict[str, torch.Tensor], u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def vjp_input(self, params, u, g):
        raise NotImplementedError

    def vjp_params(self, params, u, g) -> dict[str, torch.Tensor]:
        """Returns fresh tensors (never views of inputs): callers accumulate in place."""
        return {}

    def __repr__(self) -> str:
        b = ", bias" if self.bias else ""
        return f"{self.name}({list(self.in_shape)} -> {list(self.out_shape)}{b})"


OPS: Registry[type[Op]] = Registry("op")


def numel(shape: Shape) -> int:
    return int(math.prod(shape))


def uniform_(shape, bound, generator, dtype, device):
    t = torch.empty(shape, dtype=dtype)
    t.uniform_(-bound, bound, generator=generator)
    return t.to(device)


def get_op(name: str, where: str | None = None) -> type[Op]:
    return OPS.get(name, where)


def check_options(op_cls: type[Op], options: dict, where: str, common: tuple[str, ...] = ()) -> None:
    for key in options:
        if key not in op_cls.options:
            known = ", ".join(op_cls.options) or "none"
            keys = f"edge keys: {', '.join(common)}; " if common else ""
            raise SpecError(f"unknown key {key!r} ({keys}options of op {op_cls.name!r}: {known})",
                            f"{where}.{key}")
