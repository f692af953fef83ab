"""Output losses and the error they put on an output node.

With batch-mean reduction ``L = (1/B) sum_b l(mu_b, y_b)``; an output node's error is
the per-sample ``eps = -dl/dmu`` (so for MSE it is ``y - mu``, the PC error of a node
clamped to its target), and every parameter gradient carries the ``1/B``.
"""

from __future__ import annotations

import torch

from ..registry import Registry


class Loss:
    name = ""

    def target(self, labels: torch.Tensor, shape: tuple[int, ...], dtype) -> torch.Tensor:
        """Turn dataset labels into what this loss compares the output with."""
        raise NotImplementedError

    def value(self, mu: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Batch-mean loss (differentiable; used by BP and for reporting)."""
        raise NotImplementedError

    def error(self, mu: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample error ``-dl/dmu`` of the output node, shape of ``mu``."""
        raise NotImplementedError


LOSSES: Registry[type[Loss]] = Registry("loss")


def _one_hot(labels, shape, dtype):
    if labels.dim() > 1:  # already dense targets
        return labels.to(dtype).reshape(labels.shape[0], *shape)
    n = 1
    for s in shape:
        n *= s
    return torch.nn.functional.one_hot(labels, n).to(dtype).reshape(labels.shape[0], *shape)


@LOSSES.register("mse")
class MSE(Loss):
    """``l = 1/2 ||mu - y||^2`` (the seeds' energy of a clamped output)."""

    name = "mse"

    def target(self, labels, shape, dtype):
        return _one_hot(labels, shape, dtype)

    def value(self, mu, target):
        return 0.5 * (mu - target).pow(2).reshape(mu.shape[0], -1).sum(1).mean()

    def error(self, mu, target):
        return target - mu


@LOSSES.register("cross_entropy", "ce")
class CrossEntropy(Loss):
    """``l = -log softmax(mu)_y``; error ``onehot(y) - softmax(mu)``."""

    name = "cross_entropy"

    def target(self, labels, shape, dtype):
        return labels

    def value(self, mu, target):
        return torch.nn.functional.cross_entropy(mu.reshape(mu.shape[0], -1), target)

    def error(self, mu, target):
        flat = mu.reshape(mu.shape[0], -1)
        onehot = torch.nn.functional.one_hot(target, flat.shape[1]).to(mu.dtype)
        return (onehot - torch.softmax(flat, dim=1)).reshape(mu.shape)


def get_loss(name: str, where: str | None = None) -> Loss:
    return LOSSES.get(name, where)()
