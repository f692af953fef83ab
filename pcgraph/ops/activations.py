"""Activation functions ``f`` applied to an edge's *source* value, with explicit derivatives.

An edge ``p -> c`` contributes ``op(f(x_p))``; the feedback it sends to ``p`` is
``f'(x_p) * op^T(eps_c)``. ``f`` must be differentiable almost everywhere; ``df`` is
written out here (never taken from autograd) so the predictive-coding dynamics are
computed from the model's own equations.
"""

from __future__ import annotations

import math

import torch

from ..registry import Registry


class Activation:
    """``f`` and its elementwise derivative ``df(x) = f'(x)``."""

    name: str = ""

    def f(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def df(self, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        """Derivative at ``x``; ``fx = f(x)`` is passed in so it can be reused."""
        raise NotImplementedError

    def backward(self, x: torch.Tensor, fx: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``f'(x) * g``. Overridden with torch's own backward kernel where one exists: one
        pass instead of two, and the same rounding as autograd's (so float32 Z-IL tracks
        float32 BP to the bit where the rest of the arithmetic agrees)."""
        return self.df(x, fx) * g

    is_identity = False


ACTIVATIONS: Registry[Activation] = Registry("activation")


@ACTIVATIONS.register("identity", "linear", "none")
class Identity(Activation):
    name = "identity"
    is_identity = True

    def f(self, x):
        return x

    def df(self, x, fx):
        return torch.ones_like(x)

    def backward(self, x, fx, g):
        return g


@ACTIVATIONS.register("sigmoid")
class Sigmoid(Activation):
    name = "sigmoid"

    def f(self, x):
        return torch.sigmoid(x)

    def df(self, x, fx):
        return fx * (1 - fx)

    def backward(self, x, fx, g):
        return torch.ops.aten.sigmoid_backward(g, fx)


@ACTIVATIONS.register("one_minus_sigmoid")
class OneMinusSigmoid(Activation):
    """``1 - sigmoid(x) = sigmoid(-x)``: a GRU's ``1 - z`` gate as an activation."""

    name = "one_minus_sigmoid"

    def f(self, x):
        return torch.sigmoid(-x)

    def df(self, x, fx):
        return -fx * (1 - fx)

    def backward(self, x, fx, g):
        return -torch.ops.aten.sigmoid_backward(g, fx)


@ACTIVATIONS.register("tanh")
class Tanh(Activation):
    name = "tanh"

    def f(self, x):
        return torch.tanh(x)

    def df(self, x, fx):
        return 1 - fx * fx

    def backward(self, x, fx, g):
        return torch.ops.aten.tanh_backward(g, fx)


@ACTIVATIONS.register("relu")
class ReLU(Activation):
    name = "relu"

    def f(self, x):
        return torch.relu(x)

    def df(self, x, fx):
        return (x > 0).to(x.dtype)

    def backward(self, x, fx, g):
        return torch.ops.aten.threshold_backward(g, x, 0)


@ACTIVATIONS.register("leaky_relu")
class LeakyReLU(Activation):
    name = "leaky_relu"
    slope = 0.01

    def f(self, x):
        return torch.nn.functional.leaky_relu(x, self.slope)

    def df(self, x, fx):
        return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, self.slope))

    def backward(self, x, fx, g):
        return torch.ops.aten.leaky_relu_backward(g, x, self.slope, False)


@ACTIVATIONS.register("softplus")
class Softplus(Activation):
    name = "softplus"

    def f(self, x):
        return torch.nn.functional.softplus(x)

    def df(self, x, fx):
        return torch.sigmoid(x)


@ACTIVATIONS.register("elu")
class ELU(Activation):
    name = "elu"

    def f(self, x):
        return torch.nn.functional.elu(x)

    def df(self, x, fx):
        return torch.where(x > 0, torch.ones_like(x), fx + 1)


_SQRT_HALF = 0.5 ** 0.5                      # 1/sqrt(2)
_INV_SQRT_2PI = (2 * math.pi) ** -0.5        # 1/sqrt(2 pi)
_SQRT_2_OVER_PI = (2 / math.pi) ** 0.5       # sqrt(2/pi)
_GELU_CUBIC = 0.044715


@ACTIVATIONS.register("gelu")
class GELU(Activation):
    """Exact GELU (torch's ``approximate='none'``): ``f(x) = x Phi(x)`` with the standard normal
    CDF ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``; ``f'(x) = Phi(x) + x phi(x)``,
    ``phi(x) = exp(-x^2 / 2) / sqrt(2 pi)``."""

    name = "gelu"

    def f(self, x):
        return torch.nn.functional.gelu(x)

    def df(self, x, fx):
        cdf = 0.5 * (1 + torch.erf(x * _SQRT_HALF))
        pdf = torch.exp(-0.5 * x * x) * _INV_SQRT_2PI
        return cdf + x * pdf

    def backward(self, x, fx, g):
        return torch.ops.aten.gelu_backward(g, x, approximate="none")


@ACTIVATIONS.register("gelu_tanh")
class GELUTanh(Activation):
    """GELU's tanh approximation (torch's ``approximate='tanh'``):
    ``f(x) = x (1 + tanh u) / 2`` with ``u = sqrt(2/pi) (x + 0.044715 x^3)``;
    ``f'(x) = (1 + tanh u) / 2 + x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2``."""

    name = "gelu_tanh"

    def f(self, x):
        return torch.nn.functional.gelu(x, approximate="tanh")

    def df(self, x, fx):
        t = torch.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x))
        du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du

    def backward(self, x, fx, g):
        return torch.ops.aten.gelu_backward(g, x, approximate="tanh")


@ACTIVATIONS.register("silu", "swish")
class SiLU(Activation):
    """SiLU / swish: ``f(x) = x sigmoid(x)``; with ``s = sigmoid(x)``,
    ``f'(x) = s (1 + x (1 - s)) = s + f(x) (1 - s)``."""

    name = "silu"

    def f(self, x):
        return torch.nn.functional.silu(x)

    def df(self, x, fx):
        s = torch.sigmoid(x)
        return s * (1 + x * (1 - s))

    def backward(self, x, fx, g):
        return torch.ops.aten.silu_backward(g, x)


def get_activation(name: str, where: str | None = None) -> Activation:
    return ACTIVATIONS.get(name, where)()
