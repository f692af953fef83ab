"""Sequence slicing: ``select`` picks one position of a node along an axis.

    g(u) = u[.., index, ..]        (``axis`` of the node shape; the batch axis excluded)

The unrolled recurrent networks feed step ``k`` of a ``[T, D]`` input node to their
step-``k`` cell through ``select`` (``index: k - 1``). No parameters; the VJP puts the
error back at the selected position and zeros elsewhere.

Options: ``index: int`` (required; negative counts from the end), ``axis: int = 0``.
Shapes: ``[.., n, ..] -> [.., ..]`` (the axis removed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SpecError
from .base import OPS, Op


@dataclass
class SelectOptions:
    #: position along the axis (negative: from the end)
    index: int | None = None
    #: axis of the node shape (negative: from the end)
    axis: int = 0

    def check(self, where: str) -> None:
        if self.index is None:
            raise SpecError("select needs an 'index' (the position to pick)", f"{where}.index")


@OPS.register("select")
class Select(Op):
    name = "select"
    Options = SelectOptions
    supports_bias = False

    @classmethod
    def _resolved(cls, shape, opts):
        n = len(shape)
        if not -n <= opts.axis < n:
            return None, None, f"select's axis {opts.axis} is out of range for a source of shape {list(shape)}"
        ax = opts.axis % n
        size = shape[ax]
        if not -size <= opts.index < size:
            return None, None, (f"select's index {opts.index} is out of range for axis {opts.axis} of size "
                                f"{size} (source shape {list(shape)})")
        return ax, opts.index % size, None

    @classmethod
    def check_sources(cls, in_shapes, opts):
        if len(in_shapes[0]) < 2:
            return f"select needs a source of rank >= 2 (it removes an axis), got shape {list(in_shapes[0])}"
        return cls._resolved(in_shapes[0], opts)[2]

    @classmethod
    def infer_out_shape(cls, in_shapes, opts):
        (s,) = in_shapes
        if len(s) < 2:
            return None
        ax, _, msg = cls._resolved(s, opts)
        return None if msg else tuple(s[:ax]) + tuple(s[ax + 1:])

    def forward(self, params, u):
        ax, idx, _ = self._resolved(self.in_shape, self.opts)
        return u.select(ax + 1, idx)

    def vjp_inputs(self, params, inputs, g, wanted):
        ax, idx, _ = self._resolved(self.in_shape, self.opts)
        out = torch.zeros_like(inputs[0])
        out.select(ax + 1, idx).copy_(g)
        return [out]
