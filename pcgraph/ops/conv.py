"""2-D convolution over ``[C, H, W]`` nodes: ``conv2d`` (plus the shared spatial helpers).

    g(u)[o, i, j] = sum_{c in group(o), a < kh, b < kw}
                        W[o, c', a, b] * u_pad[c, s_h i + d_h a, s_w j + d_w b]  (+ b[o])

with ``u_pad`` the source zero-padded by ``p_h, p_w`` on each side, ``c'`` the index of
``c`` within its group and ``group(o)`` the ``C_in / groups`` input channels that output
channel ``o``'s group reads (``torch.nn.functional.conv2d``). Output size per axis:

    H_out = floor((H + 2 p_h - d_h (kh - 1) - 1) / s_h) + 1                       (1)

The VJPs are the transposed convolution ``(dg/du)^T eps`` and the correlation of ``eps``
with ``u`` for ``dW`` (``db = sum eps`` over batch and positions), both from one call of
torch's own convolution backward (``aten.convolution_backward``, what autograd runs).

Options (spelled as ``torch.nn.Conv2d`` spells them): ``kernel_size`` (required),
``stride = 1``, ``padding = 0`` (or ``"valid"`` = 0, or ``"same"``: ``H_out = H`` for
stride 1 and an odd effective kernel ``d (k - 1) + 1``), ``dilation = 1``, each an int or
a ``[h, w]`` pair; ``groups = 1``. Shapes: ``[C_in, H, W] -> [C_out, H_out, W_out]``;
``C_out`` is the target node's (give ``[C_out]`` alone and the compiler completes ``H_out,
W_out`` by (1)); ``C_in`` and ``C_out`` divisible by ``groups``. Parameters: ``weight
[C_out, C_in / groups, kh, kw]`` and with ``bias: true`` ``bias [C_out]``, both uniform in
``+-1/sqrt(C_in / groups * kh * kw)`` like ``torch.nn.Conv2d``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import SpecError
from .base import OPS, Op, check_init, init_weights

Pair = tuple[int, int]


# ---- shared spatial helpers (conv2d, locally_connected2d, the pools) -------------------

def pair(v) -> Pair:
    """An int or an ``(h, w)`` pair as a pair."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def fmt(v) -> str:
    """A pair for messages: ``3`` for ``(3, 3)``, else ``3x5``."""
    h, w = pair(v)
    return str(h) if h == w else f"{h}x{w}"


def check_pair(value, where: str, key: str, minimum: int, required: bool = False) -> None:
    """``value`` (int or pair) has every entry ``>= minimum``; None only if not required."""
    if value is None:
        if required:
            raise SpecError(f"{key} is required (an int or a [h, w] pair)", where)
        return
    for v in pair(value):
        if v < minimum:
            what = "positive" if minimum == 1 else f">= {minimum}"
            got = value if isinstance(value, int) else list(value)
            raise SpecError(f"{key} must be {what} (an int or a [h, w] pair), got {got}", f"{where}.{key}")


def span(kernel: Pair, dilation: Pair) -> Pair:
    """The extent of a dilated kernel, ``d (k - 1) + 1`` per axis."""
    return tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))  # type: ignore[return-value]


def out_hw(hw, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair) -> Pair:
    """Equation (1) per axis."""
    return tuple((n + 2 * p - e) // s + 1
                 for n, p, e, s in zip(hw, padding, span(kernel, dilation), stride))  # type: ignore[return-value]


def resolve_padding(padding, kernel: Pair, dilation: Pair) -> Pair:
    """Numeric padding from an int, a pair, ``"valid"`` or ``"same"`` (symmetric)."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        return tuple(e // 2 for e in span(kernel, dilation))  # type: ignore[return-value]
    return pair(padding)


def check_image_source(name: str, in_shapes, kernel: Pair, stride: Pair, padding: Pair,
                       dilation: Pair) -> str | None:
    """Messages common to every op over ``[C, H, W]`` sources: rank, and a kernel that
    does not fit the padded input."""
    (s,) = in_shapes
    if len(s) != 3:
        return (f"{name} needs a [C, H, W] source (channels, height, width; the batch axis not "
                f"counted), but the source has shape {list(s)}")
    _, h, w = s
    e = span(kernel, dilation)
    ph, pw = h + 2 * padding[0], w + 2 * padding[1]
    if e[0] > ph or e[1] > pw:
        dil = f" (dilation {fmt(dilation)}: it spans {fmt(e)})" if dilation != (1, 1) else ""
        return (f"{name}'s kernel {fmt(kernel)}{dil} is larger than the padded input {ph}x{pw} "
                f"(source {list(s)}, padding {fmt(padding)})")
    return None


def describe_geometry(kernel: Pair, stride: Pair, padding: Pair, dilation: Pair | None = None) -> str:
    parts = [f"kernel {fmt(kernel)}", f"stride {fmt(stride)}", f"padding {fmt(padding)}"]
    if dilation is not None:
        parts.append(f"dilation {fmt(dilation)}")
    return ", ".join(parts)


def check_spatial_target(name: str, in_shape, out_shape, hw: Pair, geometry: str,
                         channels: int | None = None) -> str | None:
    """The target must be ``[C_out, H_out, W_out]`` with ``H_out, W_out = hw`` (and, for
    ops that keep the channels, ``C_out = channels``)."""
    want_c = "C_out" if channels is None else str(channels)
    want = f"[{want_c}, {hw[0]}, {hw[1]}]"
    if len(out_shape) != 3:
        partial = " (or [C_out] alone, completed to that)" if channels is None else ""
        return (f"{name} maps {list(in_shape)} to {want} ({geometry}), but the target node has shape "
                f"{list(out_shape)}: give it {want}{partial}")
    if tuple(out_shape[1:]) != tuple(hw) or (channels is not None and out_shape[0] != channels):
        return (f"{name} maps {list(in_shape)} to {want} ({geometry}), but the target node has shape "
                f"{list(out_shape)}")
    return None


# ---- conv2d ---------------------------------------------------------------------------

IntOrPair = int | tuple[int, int]


@dataclass
class WindowOptions:
    """The geometry of a sliding window (conv2d, locally_connected2d)."""

    #: kernel height and width (required)
    kernel_size: IntOrPair | None = None
    stride: IntOrPair = 1
    #: zeros added on each side; "valid" = 0, "same" = keep H, W (stride 1, odd span)
    padding: IntOrPair | Literal["same", "valid"] = 0
    dilation: IntOrPair = 1

    def check(self, where: str) -> None:
        check_pair(self.kernel_size, where, "kernel_size", 1, required=True)
        check_pair(self.stride, where, "stride", 1)
        check_pair(self.dilation, where, "dilation", 1)
        if not isinstance(self.padding, str):
            check_pair(self.padding, where, "padding", 0)
        elif self.padding == "same":
            if pair(self.stride) != (1, 1):
                raise SpecError(f"padding 'same' needs stride 1 (as in torch), got stride {fmt(self.stride)}; "
                                "give the padding as numbers", f"{where}.padding")
            e = span(pair(self.kernel_size), pair(self.dilation))
            if e[0] % 2 == 0 or e[1] % 2 == 0:
                raise SpecError(f"padding 'same' needs an odd kernel span d (k - 1) + 1, got {fmt(e)} "
                                f"(kernel_size {fmt(self.kernel_size)}, dilation {fmt(self.dilation)}): "
                                "the padding would be uneven; give it as numbers", f"{where}.padding")

    # the options as pairs
    @property
    def k(self) -> Pair:
        return pair(self.kernel_size)

    @property
    def s(self) -> Pair:
        return pair(self.stride)

    @property
    def d(self) -> Pair:
        return pair(self.dilation)

    @property
    def p(self) -> Pair:
        return resolve_padding(self.padding, self.k, self.d)


@dataclass
class Conv2dOptions(WindowOptions):
    #: input and output channels split into this many independent groups
    groups: int = 1
    #: weight initialisation (see :class:`~pcgraph.ops.base.WeightOptions`)
    init: str = "default"

    def check(self, where: str) -> None:
        super().check(where)
        check_init(self.init, where)
        if self.groups < 1:
            raise SpecError(f"groups must be a positive integer, got {self.groups}", f"{where}.groups")


class WindowOp(Op):
    """``[C_in, H, W] -> [C_out, H_out, W_out]`` by a sliding window (options: a
    :class:`WindowOptions`); ``C_out`` from the target node, ``H_out, W_out`` by (1)."""

    Options = WindowOptions

    @classmethod
    def _out_hw(cls, in_shapes, opts) -> Pair:
        return out_hw(in_shapes[0][1:], opts.k, opts.s, opts.p, opts.d)

    @classmethod
    def check_sources(cls, in_shapes, opts):
        return check_image_source(cls.name, in_shapes, opts.k, opts.s, opts.p, opts.d)

    @classmethod
    def complete_shape(cls, in_shapes, given, opts):
        if len(given) == 1 and cls.check_sources(in_shapes, opts) is None:
            return (given[0], *cls._out_hw(in_shapes, opts))
        return None

    @classmethod
    def check_shapes(cls, in_shapes, out_shape, opts):
        msg = cls.check_sources(in_shapes, opts)
        if msg:
            return msg
        return check_spatial_target(cls.name, in_shapes[0], out_shape, cls._out_hw(in_shapes, opts),
                                    describe_geometry(opts.k, opts.s, opts.p, opts.d))


@OPS.register("conv2d")
class Conv2d(WindowOp):
    name = "conv2d"
    Options = Conv2dOptions

    @classmethod
    def check_sources(cls, in_shapes, opts):
        msg = super().check_sources(in_shapes, opts)
        if msg:
            return msg
        c_in = in_shapes[0][0]
        if c_in % opts.groups:
            return (f"{cls.name} with groups={opts.groups} needs input channels divisible by {opts.groups}, "
                    f"but the source has {c_in} (shape {list(in_shapes[0])})")
        return None

    @classmethod
    def check_shapes(cls, in_shapes, out_shape, opts):
        msg = super().check_shapes(in_shapes, out_shape, opts)
        if msg:
            return msg
        if out_shape[0] % opts.groups:
            return (f"{cls.name} with groups={opts.groups} needs output channels divisible by {opts.groups}, "
                    f"but the target node has {out_shape[0]} (shape {list(out_shape)})")
        return None

    # ---- parameters -------------------------------------------------------------------
    def param_shapes(self):
        c_out, c_in = self.out_shape[0], self.in_shape[0]
        kh, kw = self.opts.k
        shapes = {"weight": (c_out, c_in // self.opts.groups, kh, kw)}
        if self.bias:
            shapes["bias"] = (c_out,)
        return shapes

    def init_params(self, generator, dtype, device):
        kh, kw = self.opts.k
        g = self.opts.groups
        return init_weights(self, self.in_shape[0] // g * kh * kw, self.out_shape[0] // g * kh * kw,
                            generator, dtype, device)

    # ---- computation ------------------------------------------------------------------
    def forward(self, params, u):
        o = self.opts
        return F.conv2d(u, params["weight"], params.get("bias"), o.s, o.p, o.d, o.groups)

    def vjp(self, params, inputs, g, wanted, want_params):
        o = self.opts
        w = params["weight"]
        want_in = bool(wanted[0])
        bias = want_params and self.bias
        if not (want_in or want_params):
            return [None], None
        gi, gw, gb = torch.ops.aten.convolution_backward(
            g, inputs[0], w, [w.shape[0]] if bias else None, list(o.s), list(o.p), list(o.d),
            False, [0, 0], o.groups, [want_in, bool(want_params), bias])
        gp = None
        if want_params:
            gp = {"weight": gw}
            if bias:
                gp["bias"] = gb
        return [gi if want_in else None], gp
