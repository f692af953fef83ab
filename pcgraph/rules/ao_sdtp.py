"""``ao_sdtp``: auxiliary-output SDTP (Bartunov et al. 2018, Alg. 2).

SDTP whose output layer also computes ``aux_width`` fixed random features of the
penultimate activity, ``z = h_{L-1} A^T`` (``A`` drawn like a linear layer's weights from
the rule's seed and never trained: "z is just a set of random features of h_{L-1}"). The
last inverse reads ``[h_L, z]``,

    g_L(h_L, z) = f_{L-1}(op_L^T(h_L; V_L) + z V_z + c_L),

and the penultimate target is ``h^_{L-1} = h_{L-1} - g_L(h_L, z) + g_L(h^_L, z)``: ``z``
carries what the low-entropy label cannot, so targets differ between samples of one
class. ``V_z`` is trained with the inverse loss like ``V_L`` (the corrupted input's
``z`` with it). The output edge must be ``linear``.

Settings: SDTP's plus ``aux_width`` (int, 256).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..compile.memory import check_tensor
from ..errors import SpecError
from .base import RULES
from .sdtp import SimplifiedDTP
from .tp import TPSettings


@dataclass
class AOSDTPSettings(TPSettings):
    aux_width: int = 256

    def check(self, where: str = "train.algorithm") -> None:
        super().check(where)
        if self.aux_width < 1:
            raise SpecError(f"aux_width must be >= 1, got {self.aux_width}", f"{where}.aux_width")


@RULES.register("ao_sdtp", "ao-sdtp", "aosdtp")
class AuxiliaryOutputSDTP(SimplifiedDTP):
    name = "ao_sdtp"
    Settings = AOSDTPSettings

    def __init__(self, net, settings=None, seed: int = 0, reduction: str = "mean"):
        super().__init__(net, settings, seed, reduction)
        top = self.layers[-1]
        op = net.compiled.ops[top.edge]
        if op.name != "linear":
            raise SpecError(f"ao_sdtp adds its auxiliary outputs beside a linear output layer; the edge into "
                            f"{top.dst!r} is {op.name!r}", f"model.edges.{top.key}")
        n_in, k = math.prod(op.in_shapes[0]), self.settings.aux_width
        check_tensor((k, n_in), net.dtype, net.device, "train.algorithm.aux_width",     # A and V_aux
                     f"ao_sdtp's auxiliary features (aux_width {k})", copies=2)
        gen = torch.Generator().manual_seed(seed + 90011)
        bound = 1.0 / math.sqrt(n_in)
        A = (torch.rand(k, n_in, generator=gen, dtype=net.dtype) * 2 - 1) * bound
        self.register_buffer("aux_weight", A.to(net.device))
        Vz = (torch.rand(k, n_in, generator=gen, dtype=net.dtype) * 2 - 1) / math.sqrt(k)
        self.inv[top.key]["V_aux"] = nn.Parameter(Vz.to(net.device))

    def aux(self, h: torch.Tensor) -> torch.Tensor:
        return h.reshape(h.shape[0], -1) @ self.aux_weight.t()

    def inverse_pre(self, l, y, like, extra=None):
        pre = super().inverse_pre(l, y, like)
        if l == len(self.layers):
            pre = pre + (extra @ self.inv[self.layers[-1].key]["V_aux"]).reshape(like.shape)
        return pre

    def penultimate_target(self, xs, hs, h_hat_L, eps_L):
        L = len(self.layers)
        z = self.aux(hs[L - 1])
        return hs[L - 1] - self.g(L, hs[L], hs[L - 1], z) + self.g(L, h_hat_L, hs[L - 1], z)

    def inverse_input(self, l, h_noisy):
        y = self.forward_layer(l, h_noisy)
        return y, (self.aux(h_noisy) if l == len(self.layers) else None)

    def extra_inverse_grads(self, layer, delta, extra, scale):
        if extra is not None:
            self._add_grad(self.inv[layer.key]["V_aux"], extra.t() @ delta.reshape(delta.shape[0], -1), scale)
