"""``dfa``: direct feedback alignment (Nøkland 2016; Bartunov et al. 2018, sec. 2.1.1).

Every hidden node receives the output error straight from the output, through its own
fixed random projection: with ``e`` the clamped outputs' errors (``-dl/dmu``, flattened and
concatenated in declaration order), the message of edge ``e`` to its hidden source ``k``
is

    m_{e,k} = f_k'(x_{p_k}) * reshape(e @ D_{e,k})

in place of ``f_k'(x) * (d op_e / d u_k)^T eps_c``. On a chain this is Nøkland's
``delta_l = (D_l e) * f'(a_l)`` for every hidden layer, the last one included; a node with
several outgoing edges sums one projection per edge, as BP sums one term per edge.
Relay edges (the identity delays the compiler inserts) keep their exact VJP, so a
relayed source gets exactly what it would get unrelayed. Updates stay local:
``sum_b (d op_e / d theta)^T eps_c`` with ``eps_c`` the node's DFA signal, and the output
layer learns from its own error.

A configuration of the one PC kernel on Z-IL's schedule: :class:`DirectFeedbackKernel`
records the output errors at the clamping step ``t = 0`` (``observe``) and replaces the
messages (:meth:`~pcgraph.rules.fa.FeedbackKernel.replaced_inputs`, FA's hook).
Under Z-IL's conditions (the defaults) the signal of every hidden node at its wave is
exactly DFA's. ``D_{e,k}`` are buffers, drawn uniform in ``±feedback_scale / sqrt(|e|)``
from the rule's seed, saved with every checkpoint.

Settings: ``feedback_scale`` (float, 1.0) only. DFA's messages do not depend on the
child's error, so they cannot wait for the wave: under PC's relaxation (or the
reference interpreter, which computes every quantity at every step) a node would hear
``e`` from ``t = 0`` on, at values already moved. So DFA runs on the compiled Z-IL schedule
only, where each node hears it exactly once, at the Z-IL moment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import SpecError
from .base import RULES
from .fa import FeedbackKernel
from .zil import ZeroDivergenceIL


@dataclass
class DFASettings:
    """Only the scale is a setting: DFA runs on Z-IL's schedule (see the module doc)."""

    feedback_scale: float = 1.0
    # Z-IL's conditions, fixed (class attributes, not settings): the projections do not
    # wait for the wave, so under any other dynamics a node would hear the output error
    # from t = 0 on, at values that have moved, and the rule would no longer be DFA
    T = None
    gamma = 1.0
    update_at = "depth"
    init_noise = 0.0
    reference = False

    def check(self, where: str = "train.algorithm") -> None:
        if self.feedback_scale <= 0:
            raise SpecError(f"feedback_scale must be > 0, got {self.feedback_scale}", f"{where}.feedback_scale")


class DirectFeedbackKernel(FeedbackKernel):
    """PC whose hidden sources hear the outputs' errors at the clamping step (``t = 0``)
    through the rule's projections; the parameter part of every VJP stays exact."""

    def __init__(self, net, objective, gamma, rule):
        super().__init__(net, objective, gamma)
        object.__setattr__(self, "rule", rule)
        self.outputs = list(self.cg.graph.outputs)
        self.e: torch.Tensor | None = None

    def observe(self, t, eps, computed):
        if t == 0:
            self.e = torch.cat([eps[o].reshape(eps[o].shape[0], -1) for o in self.outputs], 1)

    def replaced_inputs(self, i, us, eps_c, wanted):
        D = self.rule.projections(i)
        if D is None:
            return None
        if self.e is None:
            raise RuntimeError("dfa: a hidden node's message was asked for before the output errors were computed")
        return [(self.e @ D[k]).reshape(u.shape) if w and D[k] is not None else None
                for k, (u, w) in enumerate(zip(us, wanted))]


@RULES.register("dfa", "direct_feedback_alignment")
class DirectFeedbackAlignment(ZeroDivergenceIL):
    name = "dfa"
    Settings = DFASettings

    def __init__(self, net, settings=None, seed: int = 0, reduction: str = "mean"):
        super().__init__(net, settings, seed, reduction)
        cg = net.compiled
        n_e = sum(math.prod(cg.graph.nodes[o].shape) for o in cg.graph.outputs)
        bound = self.settings.feedback_scale / math.sqrt(n_e)
        gen = torch.Generator().manual_seed(seed + 70001)
        self._proj: dict[int, list[str | None]] = {}
        for i, e in enumerate(cg.edges):
            if e.kind == "relay":
                continue
            names: list[str | None] = []
            for k, s in enumerate(e.sources):
                if cg.role(s) in ("hidden",):
                    width = math.prod(cg.ops[i].in_shapes[k])
                    D = (torch.rand(n_e, width, generator=gen, dtype=net.dtype) * 2 - 1) * bound
                    name = f"dfa__{i}__{k}"
                    self.register_buffer(name, D.to(net.device))
                    names.append(name)
                else:
                    names.append(None)
            if any(n is not None for n in names):
                self._proj[i] = names
        self.kernel = DirectFeedbackKernel(net, self.objective, self.settings.gamma, self)

    def projections(self, i: int) -> list[torch.Tensor | None] | None:
        names = self._proj.get(i)
        if names is None:
            return None
        return [getattr(self, n) if n is not None else None for n in names]

    def compute_grads(self, inputs, targets):
        self.kernel.e = None
        try:
            return super().compute_grads(inputs, targets)
        finally:
            self.kernel.e = None

    def describe(self) -> str:
        n = sum(getattr(self, m).numel() for ns in self._proj.values() for m in ns if m is not None)
        return (super().describe().replace(f"rule {self.name}:", f"rule {self.name} (direct feedback alignment):", 1)
                + f"\nfixed random projections of the output error: {n} numbers")
