"""Output losses, the error they put on an output node, and the batch reduction.

An output node's error is the per-sample ``eps = -dl/dmu`` (for MSE ``y - mu``, the PC
error of a node clamped to its target). :class:`Objective` is the one place that knows
how a batch is reduced: ``L = r * sum_b sum_o l_o(mu_b, y_b)`` with ``r = 1/B`` (``mean``)
or ``1`` (``sum``); every rule's parameter gradient is ``-r`` times the summed local
updates, and every report of a loss per sample divides by ``B`` only under ``sum``.
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
        # onehot - softmax(mu), evaluated by torch's log-softmax backward kernel (as autograd
        # evaluates -dl/dmu): the same number with autograd's rounding
        flat = mu.reshape(mu.shape[0], -1)
        onehot = torch.nn.functional.one_hot(target, flat.shape[1]).to(mu.dtype)
        logp = torch.log_softmax(flat, dim=1)
        return -torch.ops.aten._log_softmax_backward_data(-onehot, logp, 1, flat.dtype).reshape(mu.shape)


REDUCTIONS = ("mean", "sum")


class Objective:
    """The training objective: one loss per output and the batch reduction."""

    def __init__(self, losses: dict[str, Loss], reduction: str = "mean"):
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r} (known: {', '.join(REDUCTIONS)})")
        self.losses = dict(losses)
        self.reduction = reduction

    def scale(self, batch: int) -> float:
        """``r``: the factor between a sum over the batch and the reduced objective."""
        return 1.0 / batch if self.reduction == "mean" else 1.0

    def value(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """The reduced objective (differentiable; BP calls backward on it)."""
        total = None
        for o, mu in outputs.items():
            term = self.losses[o].value(mu, targets[o])        # batch mean of this output's loss
            if self.reduction == "sum":
                term = term * mu.shape[0]
            total = term if total is None else total + term
        return total

    def per_sample(self, value: float, batch: int) -> float:
        """A reduced objective's value as a mean over the samples (for reports)."""
        return value / batch if self.reduction == "sum" else value

    def error(self, o: str, mu: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.losses[o].error(mu, target)


def get_loss(name: str, where: str | None = None) -> Loss:
    return LOSSES.get(name, where)()
