"""Pooling over ``[C, H, W]`` nodes, channel by channel: ``avg_pool2d`` and ``max_pool2d``.

With windows ``R(i, j) = {(s_h i + d_h a - p_h, s_w j + d_w b - p_w): a < kh, b < kw}``
(``d = 1`` for the average):

    avg_pool2d:  g(u)[c, i, j] = (1 / n_ij) sum_{(y, x) in R(i, j)} u_pad[c, y, x]
    max_pool2d:  g(u)[c, i, j] = max_{(y, x) in R(i, j)} u[c, y, x]        (padding never wins)

``n_ij = kh kw`` (``count_include_pad: true``, torch's default: the zero padding counts)
or the number of window cells inside the image. Output size ``H_out = floor((H + 2 p_h -
d_h (kh - 1) - 1) / s_h) + 1`` (likewise ``W_out``). The VJPs:

    avg: vjp_input[c, y, x] = sum_{(i, j): (y, x) in R(i, j)} eps[c, i, j] / n_ij
    max: vjp_input[c, y, x] = sum_{(i, j): argmax R(i, j) = (y, x)} eps[c, i, j]

so a max pool routes each window's error to its maximal input alone: every other input gets
exactly 0 (the derivative of the max there; on ties the one index torch's kernel picks,
the same as autograd's). ``avg_pool2d``'s VJP is torch's native backward kernel;
``max_pool2d``'s is ``torch.func``'s, linearized once in the feed-forward pass
(:meth:`MaxPool2d.linearize`: the argmax indices of that pass feed the native backward at
the wave; no second forward).

Options (spelled as torch spells them): ``kernel_size`` (required), ``stride`` (default:
``kernel_size``, non-overlapping windows), ``padding = 0`` (at most half the window span,
as torch requires), each an int or a ``[h, w]`` pair; ``avg_pool2d``: also
``count_include_pad: bool = True``; ``max_pool2d``: also ``dilation = 1``.
Shapes: ``[C, H, W] -> [C, H_out, W_out]`` (inferred; ``[C]`` alone is completed).
No parameters, no bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import SpecError
from .base import OPS, Op
from .conv import (IntOrPair, Pair, check_image_source, check_pair, check_spatial_target, describe_geometry,
                   fmt, out_hw, pair, span)


@dataclass
class PoolOptions:
    #: window height and width (required)
    kernel_size: IntOrPair | None = None
    #: None = kernel_size (non-overlapping windows)
    stride: IntOrPair | None = None
    #: added on each side: zeros (avg) or -inf (max: never the maximum)
    padding: IntOrPair = 0

    def check(self, where: str) -> None:
        check_pair(self.kernel_size, where, "kernel_size", 1, required=True)
        check_pair(self.stride, where, "stride", 1)
        check_pair(self.padding, where, "padding", 0)
        e = span(self.k, self.d)
        if any(p > x // 2 for p, x in zip(self.p, e)):
            raise SpecError(f"padding {fmt(self.p)} is more than half the window span {fmt(e)} "
                            "(torch requires padding <= span / 2)", f"{where}.padding")

    @property
    def k(self) -> Pair:
        return pair(self.kernel_size)

    @property
    def s(self) -> Pair:
        return self.k if self.stride is None else pair(self.stride)

    @property
    def p(self) -> Pair:
        return pair(self.padding)

    @property
    def d(self) -> Pair:
        return (1, 1)


@dataclass
class AvgPool2dOptions(PoolOptions):
    #: divide by the whole window, padding included (torch's default), or by its cells inside
    count_include_pad: bool = True


@dataclass
class MaxPool2dOptions(PoolOptions):
    dilation: IntOrPair = 1

    def check(self, where: str) -> None:
        check_pair(self.dilation, where, "dilation", 1)
        super().check(where)

    @property
    def d(self) -> Pair:
        return pair(self.dilation)


class _Pool2d(Op):
    supports_bias = False

    @classmethod
    def check_sources(cls, in_shapes, opts):
        return check_image_source(cls.name, in_shapes, opts.k, opts.s, opts.p, opts.d)

    @classmethod
    def infer_out_shape(cls, in_shapes, opts):
        if cls.check_sources(in_shapes, opts):
            return None
        return (in_shapes[0][0], *out_hw(in_shapes[0][1:], opts.k, opts.s, opts.p, opts.d))

    @classmethod
    def complete_shape(cls, in_shapes, given, opts):
        if len(given) == 1:
            return cls.infer_out_shape(in_shapes, opts)
        return None

    @classmethod
    def check_shapes(cls, in_shapes, out_shape, opts):
        msg = cls.check_sources(in_shapes, opts)
        if msg:
            return msg
        dil = opts.d if opts.d != (1, 1) else None
        return check_spatial_target(cls.name, in_shapes[0], out_shape,
                                    out_hw(in_shapes[0][1:], opts.k, opts.s, opts.p, opts.d),
                                    describe_geometry(opts.k, opts.s, opts.p, dil), channels=in_shapes[0][0])


@OPS.register("avg_pool2d", "avgpool2d")
class AvgPool2d(_Pool2d):
    name = "avg_pool2d"
    Options = AvgPool2dOptions

    def forward(self, params, u):
        o = self.opts
        return F.avg_pool2d(u, o.k, o.s, o.p, False, o.count_include_pad)

    def vjp(self, params, inputs, g, wanted, want_params):
        o = self.opts
        gin = None
        if wanted[0]:
            gin = torch.ops.aten.avg_pool2d_backward(g, inputs[0], list(o.k), list(o.s), list(o.p),
                                                     False, o.count_include_pad, None)
        return [gin], ({} if want_params else None)


@OPS.register("max_pool2d", "maxpool2d")
class MaxPool2d(_Pool2d):
    name = "max_pool2d"
    Options = MaxPool2dOptions

    def forward(self, params, u):
        o = self.opts
        return F.max_pool2d(u, o.k, o.s, o.p, o.d)

    def _args(self):
        o = self.opts
        return list(o.k), list(o.s), list(o.p), list(o.d), False

    def linearize(self, params, inputs, needed=None):
        """The forward and its pullback from the argmax indices of one native forward:
        the executor keeps them from the feed-forward pass to the wave, so the argmax is
        never recomputed (the VJPs themselves stay ``torch.func``'s, which the executor
        therefore linearizes; measured faster than a hand-written VJP that recomputes
        the argmax)."""
        u = inputs[0].detach()
        out, idx = torch.ops.aten.max_pool2d_with_indices(u, *self._args())

        def pullback(g, wanted, want_params):
            gin = torch.ops.aten.max_pool2d_with_indices_backward(g, u, *self._args(), idx) if wanted[0] else None
            return [gin], ({} if want_params else None)

        return out, pullback
