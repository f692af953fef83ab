"""``dropout``: inverted dropout with one mask per training step.

    g(u) = u * m / (1 - p),   m ~ Bernoulli(1 - p) per element, drawn once per training step

Predictive coding with dropout is exact only if the feed-forward pass, every inference step
and every VJP of one training step see the same mask (else the energy changes under the
dynamics and Z-IL is no longer BP with that mask). So the mask is not drawn on each call:
:meth:`PCNetwork.begin_step <pcgraph.compile.PCNetwork.begin_step>` binds a per-step seed to
every op that samples (``needs_step``), and the op draws its mask from a generator seeded
with it (cached for the step). :class:`~pcgraph.train.trainer.Experiment` begins a step
``k`` before each update, with the seed mixed from the network's seed, ``k`` and the edge,
so BP and a rule trained side by side (``pcgraph check``) draw the same masks, and a
resumed run the masks the uninterrupted run would have drawn. Outside a training step (no
seed bound: evaluation, the reference interpreter, a rule called by hand) dropout is the
identity. ``gat_conv``'s ``dropout`` option (dropout on the attention coefficients) uses
the same per-step seed.

Options: ``p`` (0.5), the probability of dropping an element, in ``[0, 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SpecError
from .base import OPS, Op

_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def step_seed(seed: int, step: int, edge: int) -> int:
    """A seed for edge ``edge`` at training step ``step`` of a network seeded ``seed``."""
    return (int(seed) * _MIX[0] + int(step) * _MIX[1] + (int(edge) + 1) * _MIX[2]) % (2 ** 63)


def step_ops(compiled) -> list[int]:
    """Indices of the compiled graph's edges whose op samples per training step."""
    return [i for i, op in enumerate(compiled.ops) if getattr(op, "needs_step", False)]


def bind_step(compiled, seed: int | None, step: int | None) -> None:
    """Bind the seeds of training step ``step`` (None: no step, the ops are deterministic)."""
    for i in step_ops(compiled):
        compiled.ops[i].step_seed = None if step is None else step_seed(seed, step, i)


@dataclass
class DropoutOptions:
    #: probability of dropping an element
    p: float = 0.5

    def check(self, where: str) -> None:
        if not 0.0 <= self.p < 1.0:
            raise SpecError(f"p must be in [0, 1), got {self.p}", f"{where}.p")


@OPS.register("dropout")
class Dropout(Op):
    name = "dropout"
    Options = DropoutOptions
    supports_bias = False
    needs_step = True

    def __init__(self, in_shapes, out_shape, bias=False, options=None):
        super().__init__(in_shapes, out_shape, bias, options)
        #: the seed of the current training step (None: identity)
        self.step_seed: int | None = None
        self._cache: tuple | None = None

    @classmethod
    def infer_out_shape(cls, in_shapes, opts):
        return tuple(in_shapes[0])

    def mask(self, u: torch.Tensor) -> torch.Tensor | None:
        """``m / (1 - p)`` of the current step for inputs like ``u`` (None: identity)."""
        if self.step_seed is None or self.opts.p == 0:
            return None
        return self.mask_for(tuple(u.shape), u.dtype, u.device)

    def mask_for(self, shape: tuple, dtype, device) -> torch.Tensor:
        """The current step's ``m / (1 - p)`` of that shape (cached for the step)."""
        key = (self.step_seed, tuple(shape), dtype, device)
        if self._cache is None or self._cache[0] != key:
            gen = torch.Generator(device=device).manual_seed(self.step_seed)
            keep = torch.rand(shape, generator=gen, device=device) >= self.opts.p
            self._cache = (key, keep.to(dtype) / (1.0 - self.opts.p))
        return self._cache[1]

    def program_mask(self, shape: tuple, dtype, device) -> torch.Tensor:
        """The mask a traced program (:mod:`pcgraph.compile.program`) takes as an argument:
        the step's, or ones when no step is bound (``u * 1`` is ``u``)."""
        if self.step_seed is None or self.opts.p == 0:
            return torch.ones(shape, dtype=dtype, device=device)
        return self.mask_for(shape, dtype, device)

    def use_program_mask(self, shape: tuple, mask: torch.Tensor) -> None:
        """While a program is traced: ``mask`` (its argument) is this step's mask."""
        seed = 0 if self.step_seed is None else self.step_seed
        self.step_seed = seed
        self._cache = ((seed, tuple(shape), mask.dtype, mask.device), mask)

    def forward(self, params, u):
        m = self.mask(u)
        return u if m is None else u * m

    def vjp_inputs(self, params, inputs, g, wanted):
        m = self.mask(inputs[0])
        return [g if m is None else g * m]
