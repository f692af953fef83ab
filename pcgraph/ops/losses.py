"""Output losses, the error they put on an output node, and the batch reduction.

An output node's error is the per-sample ``eps = -dl/dmu`` (for MSE ``y - mu``, the PC
error of a node clamped to its target). :class:`Objective` is the one place that knows
how a batch is reduced: ``L = r * sum_b sum_o l_o(mu_b, y_b)`` with ``r = 1/B`` (``mean``)
or ``1`` (``sum``); every rule's parameter gradient is ``-r`` times the summed local
updates, and every report of a loss per sample divides by ``B`` only under ``sum``.

**Unlabelled samples.** A sample whose label is :data:`IGNORE` (torch's ``ignore_index``,
-100; for MSE a target row of NaN) has no loss: its output error is exactly 0 and it does
not count in the reduction, ``B`` being the number of labelled samples. Graph datasets use
this for their masks: a vertex outside the training mask is unlabelled in the training
split (:mod:`pcgraph.data.graphs`). Ordinary data have no such label and take the same path
with the same numbers as before.
"""

from __future__ import annotations

import torch

from ..errors import DataError
from ..registry import Registry

#: the label of a sample that has none (torch's ``cross_entropy`` ``ignore_index``)
IGNORE = -100


class Loss:
    name = ""

    def target(self, labels: torch.Tensor, shape: tuple[int, ...], dtype) -> torch.Tensor:
        """Turn dataset labels into what this loss compares the output with."""
        raise NotImplementedError

    def value(self, mu: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Batch-mean loss (differentiable; used by BP and for reporting)."""
        raise NotImplementedError

    def error(self, mu: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample error ``-dl/dmu`` of the output node, shape of ``mu`` (exactly 0 for an
        unlabelled sample)."""
        raise NotImplementedError

    def labelled(self, target: torch.Tensor) -> torch.Tensor:
        """``[B]`` bool: which samples have a label."""
        raise NotImplementedError

    def value_count(self, mu: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(value(mu, target), number of labelled samples)``: one pass where the loss can
        count its labels while it reduces (cross-entropy's ``total_weight``)."""
        value, weight = self.value_weight(mu, target)
        return value, int(weight)

    def value_weight(self, mu: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`value_count` with the count as a 0-dim tensor (no host sync)."""
        return self.value(mu, target), self.labelled(target).sum()


LOSSES: Registry[type[Loss]] = Registry("loss")


def _one_hot(labels, shape, dtype):
    if labels.dim() > 1:  # already dense targets
        return labels.to(dtype).reshape(labels.shape[0], *shape)
    n = 1
    for s in shape:
        n *= s
    unlabelled = labels == IGNORE
    if bool(unlabelled.any()):   # an unlabelled sample's target row is NaN
        out = torch.nn.functional.one_hot(labels.clamp(min=0), n).to(dtype)
        return out.masked_fill_(unlabelled[:, None], float("nan")).reshape(labels.shape[0], *shape)
    return torch.nn.functional.one_hot(labels, n).to(dtype).reshape(labels.shape[0], *shape)


@LOSSES.register("mse")
class MSE(Loss):
    """``l = 1/2 ||mu - y||^2`` (the seeds' energy of a clamped output)."""

    name = "mse"

    def target(self, labels, shape, dtype):
        return _one_hot(labels, shape, dtype)

    def value(self, mu, target):
        lab = self.labelled(target)
        if bool(lab.all()):
            return 0.5 * (mu - target).pow(2).reshape(mu.shape[0], -1).sum(1).mean()
        d = (mu - target)[lab]
        return 0.5 * d.pow(2).reshape(d.shape[0], -1).sum(1).mean()

    def error(self, mu, target):
        e = target - mu
        return e.masked_fill(target.isnan(), 0.0)

    def labelled(self, target):
        return ~target.isnan().reshape(target.shape[0], -1).any(1)


@LOSSES.register("cross_entropy", "ce")
class CrossEntropy(Loss):
    """``l = -log softmax(mu)_y``; error ``onehot(y) - softmax(mu)``."""

    name = "cross_entropy"

    def target(self, labels, shape, dtype):
        return labels

    #: (mu, its version, target, log_softmax(mu)) of the last :meth:`value_count` outside
    #: autograd: the output error of the same prediction reuses the log-softmax
    _last: tuple | None = None
    #: a constant -1 per (dtype, device): the ``grad_output`` of the summed NLL
    _minus_one: dict | None = None

    def value(self, mu, target):
        # the mean over the labelled samples (torch's ignore_index is IGNORE); a soft target
        # (probabilities, the shape of mu) is torch's class-probability cross-entropy
        flat = mu.reshape(mu.shape[0], -1)
        if target.is_floating_point():
            target = target.reshape(flat.shape)
            lab = self.labelled(target)
            if not bool(lab.all()):
                flat, target = flat[lab], target[lab]
            return torch.nn.functional.cross_entropy(flat, target)
        return torch.nn.functional.cross_entropy(flat, target, ignore_index=IGNORE)

    def value_weight(self, mu, target):
        # cross_entropy is log_softmax then nll_loss (the same kernels, the same number);
        # nll_loss's total_weight is the number of labelled samples
        if target.is_floating_point():
            return super().value_weight(mu, target)
        logp = torch.log_softmax(mu.reshape(mu.shape[0], -1), 1)
        loss, total = torch.ops.aten.nll_loss_forward(logp, target, None, 1, IGNORE)
        self._last = None if logp.requires_grad else (mu, mu._version, target, logp)
        return loss, total

    def error(self, mu, target):
        # onehot - softmax(mu), evaluated as autograd evaluates -dl/dmu (NLL's backward with
        # grad -1 under the sum reduction: the one-hot, 0 on an unlabelled row; then the
        # log-softmax backward kernel): autograd's rounding, exactly 0 where unlabelled. The
        # log-softmax is the loss value's when the value was taken of this same ``mu``.
        if target.is_floating_point():      # a soft target (a distribution, e.g. a nudged one)
            flat = mu.reshape(mu.shape[0], -1)
            e = target.reshape(flat.shape) - torch.softmax(flat, 1)
            return e.masked_fill(target.reshape(flat.shape).isnan(), 0.0).reshape(mu.shape)
        last = self._last
        if last is not None and last[0] is mu and last[2] is target and last[1] == mu._version:
            logp = last[3]
        else:
            logp = torch.log_softmax(mu.reshape(mu.shape[0], -1), 1)
        cache = self._minus_one
        if cache is None:
            cache = self._minus_one = {}
        key = (logp.dtype, logp.device)
        m1 = cache.get(key)
        if m1 is None:
            m1 = cache[key] = torch.full((), -1.0, dtype=logp.dtype, device=logp.device)
        onehot = torch.ops.aten.nll_loss_backward(m1, logp, target, None, 2, IGNORE, m1)
        e = torch.ops.aten._log_softmax_backward_data(onehot, logp, 1, logp.dtype)
        return e if e.shape == mu.shape else e.reshape(mu.shape)

    def labelled(self, target):
        if target.is_floating_point():      # soft targets: a row of NaN is unlabelled
            return ~target.reshape(target.shape[0], -1).isnan().any(1)
        return target != IGNORE


REDUCTIONS = ("mean", "sum")


class Objective:
    """The training objective: one loss per output and the batch reduction.

    With unlabelled samples (:data:`IGNORE`) the batch is the labelled samples: their
    number comes from the targets the objective last scored with :meth:`value`, which every
    rule calls on its batch before it writes its gradients (:meth:`scale`) and the trainer
    before it reports a loss per sample (:meth:`per_sample`)."""

    def __init__(self, losses: dict[str, Loss], reduction: str = "mean"):
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r} (known: {', '.join(REDUCTIONS)})")
        self.losses = dict(losses)
        self.reduction = reduction
        #: labelled samples of the batch last scored, when some of its samples are unlabelled
        self.labelled: int | None = None

    def samples(self, batch: int) -> int:
        """The samples the reduction counts: ``batch``, or the labelled ones of the last scored batch."""
        return batch if self.labelled is None else self.labelled

    def scale(self, batch: int) -> float:
        """``r``: the factor between a sum over the batch and the reduced objective."""
        return 1.0 / self.samples(batch) if self.reduction == "mean" else 1.0

    def count_labelled(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> int | None:
        """The number of labelled samples (the same for every output), or None when all are."""
        counts = set()
        for o in outputs:
            counts.add(int(self.losses[o].labelled(targets[o]).sum()))
        if len(counts) > 1:
            raise DataError(f"the outputs have labels for different numbers of samples ({sorted(counts)}): "
                            "unlabelled samples must be the same for every output", "loss")
        n = counts.pop() if counts else None
        return None if n is None or n == next(iter(outputs.values())).shape[0] else n

    def value(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """The reduced objective (differentiable; BP calls backward on it)."""
        terms, counts = [], set()
        for o, mu in outputs.items():
            term, n = self.losses[o].value_count(mu, targets[o])   # mean over the (labelled) samples
            terms.append(term)
            counts.add(n)
        if len(counts) > 1:
            raise DataError(f"the outputs have labels for different numbers of samples ({sorted(counts)}): "
                            "unlabelled samples must be the same for every output", "loss")
        n = counts.pop() if counts else None
        self.labelled = None if n is None or n == next(iter(outputs.values())).shape[0] else n
        total = None
        for term, mu in zip(terms, outputs.values()):
            if self.reduction == "sum":
                term = term * self.samples(mu.shape[0])
            total = term if total is None else total + term
        return total

    def per_sample(self, value: float, batch: int) -> float:
        """A reduced objective's value as a mean over the samples (for reports)."""
        return value / self.samples(batch) if self.reduction == "sum" else value

    def error(self, o: str, mu: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.losses[o].error(mu, target)


def get_loss(name: str, where: str | None = None) -> Loss:
    return LOSSES.get(name, where)()
