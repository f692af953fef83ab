"""``zil``: zero-divergence inference learning (Song et al. 2020; Salvatori et al. 2021).

IL under the three conditions that make it produce exactly BP's updates:
C1 ``init_noise = 0`` (start at the feed-forward values), C2 ``update_at = depth``
(edge into a node at depth ``l`` updates at ``t = l``), C3 ``gamma = 1``; and as few
steps as that schedule needs (``T`` = the deepest update). Each setting can still be
overridden, which breaks the corresponding condition the way the seeds predict (e.g.
``gamma != 1`` gives layer ``l`` exactly ``gamma**l`` times BP's update).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import RULES
from .il import ILSettings, InferenceLearning


@dataclass
class ZILSettings(ILSettings):
    T: int | None = None
    gamma: float = 1.0
    update_at: int | str | None = "depth"
    init_noise: float = 0.0


@RULES.register("zil", "z-il")
class ZeroDivergenceIL(InferenceLearning):
    name = "zil"
    Settings = ZILSettings
    needs_order = True        # (its condition C2 is a schedule by depth)

    def compute_grads(self, inputs, targets):
        # the step reads only the updates: the executor drops every value, prediction,
        # error and linearization after its last read (BP's peak memory, the same numbers)
        k = self.kernel
        k.release = True
        try:
            return super().compute_grads(inputs, targets)
        finally:
            k.release = False
