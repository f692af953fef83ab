"""``fa``: feedback alignment (Lillicrap et al. 2016; Bartunov et al. 2018, sec. 2.1.1).

Every edge sends its error back through fixed random weights instead of its own: the
message of edge ``e`` to source ``k`` is ``f_k'(x) * (d op_e(.; B_e) / d u_k)^T eps_c``,
the same op's input VJP with each weight tensor (every parameter but ``bias`` with two or more axes)
replaced by a fixed random tensor ``B_e`` of the same shape. A linear edge then sends
``eps_c B_e`` in place of ``eps_c W_e``; a conv / locally-connected edge a transposed
convolution with a random kernel of the kernel's shape. Biases and other one-axis
parameters are not transported weights and stay the forward ones (they do not enter a
linear op's input VJP). Edges without parameters (pooling, concat, mul, relays) keep their
exact VJPs: they carry no weights to transport. Updates stay local:
``sum_b (d op_e / d theta)^T eps_c``.

FA is a configuration of the one PC kernel (:class:`FeedbackKernel` overrides
``edge_vjp``) on Z-IL's schedule, so under Z-IL's conditions (the defaults: ``T`` = the
deepest update, ``gamma = 1``, ``update_at: depth``, ``init_noise = 0``) the error of a
node at depth ``l`` at ``t = l`` is exactly FA's backward signal and the updates are FA's
(``tests/test_baselines.py`` checks this against an autograd implementation of FA, and
that ``B_e = W_e`` gives BP's updates exactly). The same rule with PC's relaxation
settings (e.g. ``T: 20, gamma: 0.1, update_at: null``) is **FA-PC**: predictive coding
whose feedback connections are the random ``B_e`` instead of the forward weights' transposes
(inference and learning both local, no weight transport).

Settings: IL's (``T``, ``gamma``, ``update_at``, ``init_noise``, ``reference``) with Z-IL's
defaults, plus ``feedback_scale`` (float, 1.0): ``B_e`` is drawn like the op's own
initial weights (``init_params`` of the edge's op, from the rule's seed), times this.
The ``B_e`` are buffers: saved with the rule's ``state_dict`` in every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..compile import PCKernel
from ..errors import SpecError
from .base import RULES
from .zil import ZeroDivergenceIL, ZILSettings


@dataclass
class FASettings(ZILSettings):
    feedback_scale: float = 1.0

    def check(self, where: str = "train.algorithm") -> None:
        super().check(where)
        if self.feedback_scale <= 0:
            raise SpecError(f"feedback_scale must be > 0, got {self.feedback_scale}", f"{where}.feedback_scale")


def _buffer_name(key: str, name: str) -> str:
    return f"fb__{key}__{name}"


class FeedbackKernel(PCKernel):
    """PC whose messages come from :meth:`replaced_inputs` where it gives them (FA: the op's
    input VJP through ``feedback(i)``, a parameter dict with the weights replaced; DFA
    overrides the hook); the parameter part of every VJP stays exact."""

    def __init__(self, net, objective, gamma, feedback=None):
        super().__init__(net, objective, gamma)
        self.feedback = feedback         # edge index -> params dict for the input VJP, or None

    def replaced_inputs(self, i, us, eps_c, wanted) -> list | None:
        """Edge ``i``'s input part in place of ``(d op_e/d u_k)^T eps_c`` (None: the exact one)."""
        fb = self.feedback(i)
        return None if fb is None else self.cg.ops[i].vjp(fb, us, eps_c, wanted, False)[0]

    def edge_vjp(self, i, us, eps_c, wanted, want_params):
        gin = self.replaced_inputs(i, us, eps_c, wanted) if any(wanted) else None
        if gin is None:
            return super().edge_vjp(i, us, eps_c, wanted, want_params)
        gp = super().edge_vjp(i, us, eps_c, [False] * len(us), True)[1] if want_params else None
        return gin, gp


@RULES.register("fa", "feedback_alignment")
class FeedbackAlignment(ZeroDivergenceIL):
    name = "fa"
    Settings = FASettings

    def __init__(self, net, settings=None, seed: int = 0, reduction: str = "mean"):
        super().__init__(net, settings, seed, reduction)
        cg = net.compiled
        gen = torch.Generator().manual_seed(seed + 60013)
        #: param key -> names of the weights replaced by buffers (shared groups share them)
        self.fb_names: dict[str, list[str]] = {}
        for key, idxs in cg.param_edges.items():
            op = cg.ops[idxs[0]]
            fresh = op.init_params(gen, net.dtype, torch.device("cpu"))
            names = [n for n, p in net.params[key].items() if n != "bias" and p.dim() >= 2]
            for n in names:
                self.register_buffer(_buffer_name(key, n),
                                     (fresh[n] * self.settings.feedback_scale).to(net.device))
            if names:
                self.fb_names[key] = names
        self.kernel = FeedbackKernel(net, self.objective, self.settings.gamma, self.feedback)

    def feedback(self, i: int) -> dict | None:
        """Edge ``i``'s parameters with its weights replaced by ``B_e`` (None: no weights)."""
        key = self.net.compiled.edges[i].key
        names = self.fb_names.get(key)
        if not names:
            return None
        params = dict(self.net.edge_params(i))
        for n in names:
            params[n] = getattr(self, _buffer_name(key, n))
        return params

    def set_feedback(self, key: str, name: str, value: torch.Tensor) -> None:
        """Replace ``B`` of parameter ``name`` in group ``key`` (e.g. ``B = W`` gives BP)."""
        getattr(self, _buffer_name(key, name)).copy_(value)

    def describe(self) -> str:
        n = sum(getattr(self, _buffer_name(k, m)).numel() for k, ns in self.fb_names.items() for m in ns)
        return (super().describe().replace(f"rule {self.name}:", f"rule {self.name} (feedback alignment):", 1)
                + f"\nfixed random feedback weights: {len(self.fb_names)} groups, {n} numbers")
