"""``sdtp``: simplified difference target propagation (Bartunov et al. 2018, Alg. 1).

DTP without its gradient step: the penultimate target comes through the last layer's
learned inverse too, ``h^_{L-1} = h_{L-1} - g_L(h_L) + g_L(h^_L)`` with ``h^_L`` the label
distribution (cross-entropy) or the target (mse), so no weight is ever transported. The
inverse loss is de-noising by default (``||h_{l-1} - g_l(F_l(h_{l-1} + noise))||^2``), as in
the paper. See :mod:`pcgraph.rules.tp` for the shared machinery.
"""

from __future__ import annotations

from .base import RULES
from .tp import TargetPropagation, TPSettings


@RULES.register("sdtp", "simplified_difference_target_propagation")
class SimplifiedDTP(TargetPropagation):
    name = "sdtp"
    Settings = TPSettings
    default_inverse_loss = "denoising"
    penultimate_by_inverse = True
    difference = True
