"""Parameter-free combinations of several sources: ``mul`` (product) and ``concat``.

``mul``: ``g(u_1, .., u_n) = u_1 * u_2 * .. * u_n``, elementwise, with numpy broadcasting
between the node shapes (aligned from the last axis; the batch axis is never broadcast);
``vjp_k = sum_to_size(eps * prod_{j != k} u_j)`` back to ``u_k``'s shape.
Options: none. Shapes: sources ``s_1 .. s_n`` (n >= 2) -> ``broadcast(s_1, .., s_n)``.

``concat``: ``g(u_1, .., u_n) = [u_1, .., u_n]`` joined along one axis of the node shape;
``vjp_k`` is the slice of ``eps`` that ``u_k`` filled.
Options: ``axis: int = -1``, counted over the node shape (negative counts from the end;
the batch axis is excluded). Shapes: sources of equal rank that agree on every axis but
``axis`` -> the same shape with ``axis`` the sum of theirs.

Both take no parameters and no bias, and have hand-written VJPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import OPS, Op


def broadcast_shapes(shapes) -> tuple[int, ...] | None:
    """The numpy broadcast of ``shapes``, or None when they do not broadcast."""
    n = max(len(s) for s in shapes)
    out = []
    for i in range(1, n + 1):
        sizes = {s[-i] for s in shapes if len(s) >= i} - {1}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(reversed(out))


def _pad(shape, n: int) -> tuple[int, ...]:
    """``shape`` left-padded with ones to rank ``n``."""
    return (1,) * (n - len(shape)) + tuple(shape)


@OPS.register("mul", "multiply")
class Mul(Op):
    name = "mul"
    supports_bias = False
    arity = (2, None)

    @classmethod
    def infer_out_shape(cls, in_shapes, opts):
        return broadcast_shapes(in_shapes)

    @classmethod
    def check_sources(cls, in_shapes, opts):
        return cls.check_shapes(in_shapes, (), opts) if broadcast_shapes(in_shapes) is None else None

    @classmethod
    def check_shapes(cls, in_shapes, out_shape, opts):
        if broadcast_shapes(in_shapes) is None:
            ins = ", ".join(str(list(s)) for s in in_shapes)
            return (f"mul cannot broadcast the source shapes {ins} together (aligned from the last "
                    "axis, each pair of sizes must be equal or one of them 1)")
        return super().check_shapes(in_shapes, out_shape, opts)

    def _views(self, inputs):
        """The inputs as ``[B, 1.., *s_k]``, all of the output's rank."""
        n = len(self.out_shape)
        return [u.reshape(u.shape[0], *_pad(s, n)) for u, s in zip(inputs, self.in_shapes)]

    def forward(self, params, *inputs):
        xs = self._views(inputs)
        out = xs[0] * xs[1]
        for x in xs[2:]:
            out = out * x
        return out

    def vjp_inputs(self, params, inputs, g, wanted):
        xs = self._views(inputs)
        grads: list[torch.Tensor | None] = [None] * len(inputs)
        for k, w in enumerate(wanted):
            if not w:
                continue
            t = g
            for j, x in enumerate(xs):
                if j != k:
                    t = t * x
            t = t.sum_to_size(xs[k].shape) if t.shape != xs[k].shape else t
            grads[k] = t.reshape(inputs[k].shape)
        return grads


@dataclass
class ConcatOptions:
    #: the axis of the node shape to join along (negative from the end; batch excluded)
    axis: int = -1


@OPS.register("concat", "cat")
class Concat(Op):
    name = "concat"
    Options = ConcatOptions
    supports_bias = False
    arity = (2, None)

    @staticmethod
    def _axis(in_shapes, opts) -> int | None:
        """``opts.axis`` as a non-negative axis of the node shape, or None if out of range."""
        n = len(in_shapes[0])
        ax = opts.axis + n if opts.axis < 0 else opts.axis
        return ax if 0 <= ax < n else None

    @classmethod
    def _problem(cls, in_shapes, opts) -> str | None:
        ranks = {len(s) for s in in_shapes}
        ins = ", ".join(str(list(s)) for s in in_shapes)
        if len(ranks) > 1:
            return f"concat needs sources of equal rank, got shapes {ins}"
        ax = cls._axis(in_shapes, opts)
        n = len(in_shapes[0])
        if ax is None:
            return (f"concat axis {opts.axis} is out of range for sources of rank {n} "
                    f"(shapes {ins}; use {-n} .. {n - 1}, the batch axis not counted)")
        for i in range(n):
            if i != ax and len({s[i] for s in in_shapes}) > 1:
                return (f"concat along axis {ax} needs the sources to agree on every other axis, "
                        f"but they differ on axis {i}: shapes {ins}")
        return None

    @classmethod
    def infer_out_shape(cls, in_shapes, opts):
        if cls._problem(in_shapes, opts):
            return None
        ax = cls._axis(in_shapes, opts)
        out = list(in_shapes[0])
        out[ax] = sum(s[ax] for s in in_shapes)
        return tuple(out)

    @classmethod
    def check_sources(cls, in_shapes, opts):
        return cls._problem(in_shapes, opts)

    @classmethod
    def check_shapes(cls, in_shapes, out_shape, opts):
        return cls._problem(in_shapes, opts) or super().check_shapes(in_shapes, out_shape, opts)

    def forward(self, params, *inputs):
        return torch.cat(inputs, dim=self._axis(self.in_shapes, self.opts) + 1)

    def vjp_inputs(self, params, inputs, g, wanted):
        ax = self._axis(self.in_shapes, self.opts)
        grads: list[torch.Tensor | None] = []
        start = 0
        for s, w in zip(self.in_shapes, wanted):
            grads.append(g.narrow(ax + 1, start, s[ax]) if w else None)
            start += s[ax]
        return grads
