"""Untied convolution over ``[C, H, W]`` nodes: ``locally_connected2d`` (Bartunov et al. 2018).

A convolution whose kernel is not shared across positions: output position ``l = (i, j)``
has its own weights ``W[l]`` (and every output unit its own bias):

    g(u)[o, i, j] = sum_{c, a < kh, b < kw}
                        W[l, o, (c, a, b)] * u_pad[c, s_h i + d_h a, s_w j + d_w b]  (+ b[o, i, j])

With ``U = unfold(u)``, the ``[K, L]`` matrix of the ``L = H_out W_out`` receptive fields
(``K = C_in kh kw`` values each, ``torch.nn.functional.unfold``), that is one small matrix
product per position, ``g[:, l] = W[l] U[:, l]``, batched over ``l`` (``bmm``): the memory
is ``L C_out K`` weights, never a dense ``[C_out H_out W_out, C_in H W]`` matrix. The VJPs:

    vjp_input = fold(eps_l W[l] for every l)       (fold: unfold's adjoint, summing overlaps)
    d W[l]    = sum_b eps[b, :, l]^T U[b, :, l],     d b = sum_b eps

two ``bmm`` and one ``fold``, written out in :meth:`LocallyConnected2d.linearize`, whose
pullback reuses the forward's ``U``: the executor keeps it from the feed-forward pass to
the wave (measured on ``graphs/bartunov_mnist_lc.yaml``, Z-IL: 114 ms per update against
121 with ``torch.func``'s linearization and 125 with hand-written VJPs that unfold again;
bp 114). Other callers get ``torch.func.vjp`` of the forward.

Options: ``kernel_size`` (required), ``stride = 1``, ``padding = 0`` (or ``"valid"``,
``"same"``), ``dilation = 1``, each an int or a ``[h, w]`` pair, as for ``conv2d``.
Shapes: ``[C_in, H, W] -> [C_out, H_out, W_out]`` with ``H_out, W_out`` as for ``conv2d``;
``C_out`` from the target node (``[C_out]`` alone is completed). Parameters: ``weight
[H_out W_out, C_out, C_in kh kw]`` (positions row-major, ``(c, a, b)`` in unfold's order)
and with ``bias: true`` ``bias [C_out, H_out, W_out]``, both uniform in
``+-1/sqrt(C_in kh kw)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import OPS, check_init, init_weights
from .conv import WindowOp, WindowOptions


@dataclass
class LocalOptions(WindowOptions):
    #: weight initialisation (see :class:`~pcgraph.ops.base.WeightOptions`)
    init: str = "default"

    def check(self, where: str) -> None:
        super().check(where)
        check_init(self.init, where)


@OPS.register("locally_connected2d", "local2d", "untied_conv2d")
class LocallyConnected2d(WindowOp):
    name = "locally_connected2d"
    Options = LocalOptions

    @property
    def _fan_in(self) -> int:
        kh, kw = self.opts.k
        return self.in_shape[0] * kh * kw

    def param_shapes(self):
        c_out, h_out, w_out = self.out_shape
        shapes = {"weight": (h_out * w_out, c_out, self._fan_in)}
        if self.bias:
            shapes["bias"] = (c_out, h_out, w_out)
        return shapes

    def init_params(self, generator, dtype, device):
        kh, kw = self.opts.k
        return init_weights(self, self._fan_in, self.out_shape[0] * kh * kw, generator, dtype, device)

    def _unfold(self, u):
        """The receptive fields as ``[L, B, K]`` (a view of unfold's ``[B, K, L]``)."""
        o = self.opts
        return F.unfold(u, o.k, o.d, o.p, o.s).permute(2, 0, 1)

    def _apply(self, params, cols, batch):
        out = torch.bmm(cols, params["weight"].transpose(1, 2))    # [L, B, C_out]
        out = out.permute(1, 2, 0).reshape(batch, *self.out_shape)
        return out + params["bias"] if self.bias else out

    def forward(self, params, u):
        return self._apply(params, self._unfold(u), u.shape[0])

    def _vjp(self, params, u, cols, g, wanted, want_params):
        gl = g.reshape(g.shape[0], self.out_shape[0], -1).permute(2, 0, 1).contiguous()  # [L, B, C_out]
        gin = [None]
        if wanted[0]:
            o = self.opts
            gcols = torch.bmm(gl, params["weight"]).permute(1, 2, 0).contiguous()       # [B, K, L]
            gin = [F.fold(gcols, u.shape[2:], o.k, o.d, o.p, o.s)]
        gp = None
        if want_params:
            gp = {"weight": torch.bmm(gl.transpose(1, 2), cols)}                       # [L, C_out, K]
            if self.bias:
                gp["bias"] = g.sum(0)
        return gin, gp

    def linearize(self, params, inputs, needed=None):
        """The forward and a pullback by the formulas above that reuses the forward's
        receptive fields ``U`` (no second unfold). The executor keeps it from the
        feed-forward pass to the wave; elsewhere the VJPs are ``torch.func``'s."""
        u = inputs[0].detach()
        p = {k: v.detach() for k, v in params.items()}
        cols = self._unfold(u)
        out = self._apply(p, cols, u.shape[0])

        def pullback(g, wanted, want_params):
            return self._vjp(p, u, cols, g, wanted, want_params)

        return out, pullback
