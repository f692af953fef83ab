"""``dtp``: difference target propagation (Lee et al. 2015; Bartunov et al. 2018, sec. 2.1.2).

Target propagation (:mod:`pcgraph.rules.tp`) with the difference correction
``h^_l = h_l - g_{l+1}(h_{l+1}) + g_{l+1}(h^_{l+1})`` below the top, and the penultimate
target by a gradient step through the last layer, ``h^_{L-1} = h_{L-1} - alpha *
dl/dh_{L-1}`` (per sample; the last layer's input VJP of the output error, the one place
DTP uses a transported weight). The last layer has no inverse to learn. The inverse loss
is noise-preserving by default (Lee et al.'s; Bartunov et al. kept it for DTP).

Settings: TP's plus ``alpha`` (float, 0.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError
from .base import RULES
from .tp import TargetPropagation, TPSettings


@dataclass
class DTPSettings(TPSettings):
    alpha: float = 0.1

    def check(self, where: str = "train.algorithm") -> None:
        super().check(where)
        if self.alpha <= 0:
            raise SpecError(f"alpha must be > 0, got {self.alpha}", f"{where}.alpha")


@RULES.register("dtp", "difference_target_propagation")
class DifferenceTargetPropagation(TargetPropagation):
    name = "dtp"
    Settings = DTPSettings
    default_inverse_loss = "noise_preserving"
    penultimate_by_inverse = False
    difference = True

    def penultimate_target(self, xs, hs, h_hat_L, eps_L):
        L = len(self.layers)
        top = self.layers[-1]
        op = self.net.compiled.ops[top.edge]
        # -dl/dh_{L-1} = (d op_L / d h)^T eps_L
        push = op.vjp_inputs(self.net.edge_params(top.edge), [hs[L - 1]], eps_L, [True])[0]
        return hs[L - 1] + self.settings.alpha * push
