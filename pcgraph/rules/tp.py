"""``tp``: target propagation with learned inverses (Bengio 2014; Bartunov et al. 2018,
sec. 2.1.2), and the machinery its variants ``dtp``, ``sdtp`` and ``ao_sdtp`` share.

The network is a chain of layers ``x_0 -> x_1 -> .. -> x_L`` (Bartunov's nets; a graph
whose nodes have several parents or children is refused with a spec error that says why).
In pcgraph's terms a value node holds a pre-activation, so layer ``l``'s *activity* is
``h_l = f_l(x_l)`` with ``f_l`` the activation on ``x_l``'s outgoing edge; the output's
activity ``h_L`` is the loss's prediction space (``softmax(x_L)`` for cross-entropy,
``x_L`` for mse), and the loss-optimal output ``h^_L = h_L + eps_L`` (``eps_L = -dl/dx_L``)
is the label distribution (cross-entropy) or the target (mse).

**Inverses.** Every edge ``l`` that must send a target down owns ``lambda_l = (V_l, c_l)``
and computes ``g_l(h_l) = f_{l-1}(op_l^T(h_l; V_l) + c_l)``: ``op_l^T(.; V)`` is the edge's
own op transposed with its own weights ``V_l`` (the shape of ``W_l``), i.e. the op's input
VJP with ``V_l`` in place of ``W_l`` (``h V`` for a linear edge; a transposed convolution /
transposed locally-connected op for conv and LC edges: Bartunov's Appendix 5.4 trick,
``V = (dz/dx)^T`` of a dummy forward op, which is not a use of the network's gradients).
``c_l`` has the shape of ``h_{l-1}`` (one bias per unit).

**Targets**, top down (``l = L-1 .. 1``); the penultimate one by variant:

- ``tp``:     ``h^_{L-1} = g_L(h^_L)``; below, ``h^_l = g_{l+1}(h^_{l+1})``.
- ``dtp``:    ``h^_{L-1} = h_{L-1} - alpha * dl/dh_{L-1}`` (a gradient step through the last
  layer, as in Lee et al. 2015); below, the difference correction
  ``h^_l = h_l - g_{l+1}(h_{l+1}) + g_{l+1}(h^_{l+1})``.
- ``sdtp``:   ``h^_{L-1} = h_{L-1} - g_L(h_L) + g_L(h^_L)``; below as ``dtp``.
- ``ao_sdtp``: the output layer also computes ``aux_width`` fixed random features
  ``z = h_{L-1} A^T`` (never trained), ``g_L`` reads ``[h_L, z]`` (``V_L`` has extra columns
  ``V_z``), and ``h^_{L-1} = h_{L-1} - g_L(h_L, z) + g_L(h^_L, z)``.

**Losses** (all local, one layer's parameters each). Forward: layer ``l < L`` minimises
``1/2 ||h_l - h^_l||^2`` through its own op (``h_{l-1}`` fixed); the last layer the task
loss (the delta rule). Inverse (every edge with an inverse): with
``h~_{l-1} = h_{l-1} + N(0, sigma^2)``, ``1/2 ||r - g_l(F_l(h~_{l-1}))||^2`` where ``F_l`` is
layer ``l``'s forward and the reconstruction target ``r`` is ``h~_{l-1}`` for
``inverse_loss: noise_preserving`` (Lee et al.'s DTP; the default of ``tp``/``dtp``) or
``h_{l-1}`` for ``denoising`` (Bartunov's SDTP / AO-SDTP, their default). Both are sums
over units and, like every rule here, reduced over the batch by the objective's reduction.

**Schedules.** ``parallel``: both losses on every batch. ``alternating`` (Lee et al.'s
original schedule): whole epochs of one loss, then the other, starting with the
inverses (odd epochs train the inverses, even epochs the forward weights): with one
epoch only the inverses learn. Forward parameters use the spec's optimizer; the
inverses ``inverse_optimizer`` (Adam by default, as in the paper). The ``V, c`` (and
``ao_sdtp``'s ``A``) are the rule's parameters (buffers): saved and resumed with it.

Every quantity is computed in closed form from the edges' ops (their forward and VJPs):
no autograd runs through the network.

Settings: ``alpha`` (dtp, 0.1), ``sigma`` (0.1), ``schedule`` ("parallel"),
``inverse_loss`` (per variant), ``inverse_optimizer`` ({name: adam, lr: 0.001}),
``aux_width`` (ao_sdtp, 256).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import SpecError
from .base import RULES, LearningRule, StepInfo

#: ops a layer of a TP chain may have: linear in their input, with a weight to transpose
INVERTIBLE_OPS = ("linear", "conv2d", "locally_connected2d")
SCHEDULES = ("parallel", "alternating")
INVERSE_LOSSES = ("noise_preserving", "denoising")


@dataclass
class TPSettings:
    sigma: float = 0.1
    schedule: str = "parallel"
    inverse_loss: str | None = None
    inverse_optimizer: dict = field(default_factory=lambda: {"name": "adam", "lr": 0.001})

    def check(self, where: str = "train.algorithm") -> None:
        if self.sigma < 0:
            raise SpecError(f"sigma must be >= 0, got {self.sigma}", f"{where}.sigma")
        if self.schedule not in SCHEDULES:
            raise SpecError(f"unknown schedule {self.schedule!r} (known: {', '.join(SCHEDULES)})",
                            f"{where}.schedule")
        if self.inverse_loss is not None and self.inverse_loss not in INVERSE_LOSSES:
            raise SpecError(f"unknown inverse_loss {self.inverse_loss!r} (known: {', '.join(INVERSE_LOSSES)})",
                            f"{where}.inverse_loss")
        opt = self.inverse_optimizer
        if not isinstance(opt, dict) or "name" not in opt:
            raise SpecError(f"expected an optimizer mapping such as {{name: adam, lr: 0.001}}, got {opt!r}",
                            f"{where}.inverse_optimizer")
        from ..train.optim import check_optimizer_config   # (lazily: pcgraph.train imports the rules)
        check_optimizer_config(opt, f"{where}.inverse_optimizer")


@dataclass
class Layer:
    edge: int                 # the edge x_{l-1} -> x_l
    src: str                  # x_{l-1}
    dst: str                  # x_l
    key: str                  # the edge's parameter group


@RULES.register("tp", "target_propagation")
class TargetPropagation(LearningRule):
    name = "tp"
    Settings = TPSettings
    #: the reconstruction target of the inverse loss when the settings leave it open
    default_inverse_loss = "noise_preserving"
    #: does the penultimate layer's target come through g_L (else a gradient step)?
    penultimate_by_inverse = True
    #: difference correction below the top (``h - g(h) + g(h^)``) or plain ``g(h^)``?
    difference = False

    def __init__(self, net, settings=None, seed: int = 0, reduction: str = "mean"):
        super().__init__(net, settings, seed, reduction)
        cg = net.compiled
        self.layers = self._chain()
        self.out = self.layers[-1].dst
        loss = cg.losses[self.out].name
        if loss not in ("cross_entropy", "mse"):
            raise SpecError(f"{self.name} needs a cross_entropy or mse output (its loss-optimal output "
                            f"is then the label distribution or the target), got {loss!r}", "loss")
        self.softmax = loss == "cross_entropy"
        self.inverse_loss = self.settings.inverse_loss or self.default_inverse_loss
        gen = torch.Generator().manual_seed(seed + 80021)
        #: inverse parameters per edge l >= 2 that sends a target down: {"V.<name>", "c"}
        self.inv = nn.ModuleDict()
        for layer in self.inverse_layers():
            op = cg.ops[layer.edge]
            fresh = op.init_params(gen, net.dtype, torch.device("cpu"))
            group = nn.ParameterDict()
            for n in self.weight_names(layer):
                group[f"V_{n}"] = nn.Parameter(fresh[n].to(net.device))
            group["c"] = nn.Parameter(torch.zeros(op.in_shapes[0], dtype=net.dtype, device=net.device))
            self.inv[layer.key] = group
        self.generator = torch.Generator(device=net.device).manual_seed(seed + 7919)
        self.epoch = 1

    # ---- the chain ---------------------------------------------------------------------
    def _chain(self) -> list[Layer]:
        cg = self.net.compiled
        g = cg.graph
        why = (f"{self.name} propagates one target per layer through one learned inverse, "
               "which needs a chain of layers (each hidden node with one incoming and one "
               "outgoing edge of one source); fa and dfa train any DAG")
        if len(g.outputs) != 1:
            raise SpecError(f"{self.name} needs exactly one output node, the graph has {len(g.outputs)}: {why}",
                            "model.nodes")
        layers: list[Layer] = []
        v = g.outputs[0]
        while cg.role(v) not in ("input", "derived"):
            ins = list(cg.in_edges(v))
            if len(ins) != 1:
                raise SpecError(f"node {v!r} has {len(ins)} incoming edges: {why}", f"model.nodes.{v}")
            i = ins[0]
            e = cg.edges[i]
            if len(e.sources) != 1:
                raise SpecError(f"the edge into {v!r} has {len(e.sources)} sources: {why}", f"model.edges.{e.key}")
            if e.op not in INVERTIBLE_OPS:
                raise SpecError(f"the edge into {v!r} is a {e.op!r} edge; {self.name} learns an inverse for "
                                f"ops that are linear in their input with a weight to transpose "
                                f"({', '.join(INVERTIBLE_OPS)})", f"model.edges.{e.key}")
            src = e.sources[0]
            if cg.role(src) == "hidden" and len(cg.out_edges(src)) != 1:
                raise SpecError(f"node {src!r} has {len(cg.out_edges(src))} outgoing edges: {why}",
                                f"model.nodes.{src}")
            layers.append(Layer(i, src, v, e.key))
            v = src
        if len(layers) < 2:
            raise SpecError(f"{self.name} needs at least two layers (one hidden node)", "model.edges")
        if len({layer.key for layer in layers}) != len(layers):
            raise SpecError(f"{self.name} needs every layer to have its own parameters (shared weights "
                            "would take two different local losses)", "model.edges")
        return layers[::-1]

    def weight_names(self, layer: Layer) -> list[str]:
        return [n for n, p in self.net.params[layer.key].items() if n != "bias" and p.dim() >= 2]

    def inverse_layers(self) -> list[Layer]:
        """The layers whose inverse sends a target down (layer 1's target goes nowhere)."""
        top = len(self.layers) if self.penultimate_by_inverse else len(self.layers) - 1
        return self.layers[1:top]

    def optimizer_config(self) -> dict | None:
        return dict(self.settings.inverse_optimizer)

    # ---- quantities -------------------------------------------------------------------
    def act(self, l: int):
        """``f_l``: the activation that turns ``x_l`` into ``h_l`` (l < L)."""
        return self.net.compiled.acts[self.layers[l].edge][0]

    def activity(self, l: int, x: torch.Tensor) -> torch.Tensor:
        if l == len(self.layers):
            if not self.softmax:
                return x
            return torch.softmax(x.reshape(x.shape[0], -1), 1).reshape(x.shape)
        return self.act(l).f(x)

    def forward_layer(self, l: int, h_prev: torch.Tensor) -> torch.Tensor:
        """``F_l``: layer ``l``'s activity ``h_l`` from ``h_{l-1}``."""
        return self.activity(l, self.net.contribution(self.layers[l - 1].edge, [h_prev]))

    def inverse_params(self, layer: Layer) -> dict:
        """The edge's op parameters with its weights replaced by ``V``: its transpose."""
        params = dict(self.net.edge_params(layer.edge))
        group = self.inv[layer.key]
        for n in self.weight_names(layer):
            params[n] = group[f"V_{n}"]
        return params

    def inverse_pre(self, l: int, y: torch.Tensor, like: torch.Tensor, extra=None) -> torch.Tensor:
        """``op_l^T(y; V_l) + c_l``: the pre-activation of ``g_l`` (``like``: a tensor of
        ``h_{l-1}``'s shape)."""
        layer = self.layers[l - 1]
        op = self.net.compiled.ops[layer.edge]
        pre = op.vjp_inputs(self.inverse_params(layer), [like], y, [True])[0]
        return pre + self.inv[layer.key]["c"]

    def g(self, l: int, y: torch.Tensor, like: torch.Tensor, extra=None) -> torch.Tensor:
        """The learned inverse ``g_l(y) = f_{l-1}(op_l^T(y; V_l) + c_l)``."""
        pre = self.inverse_pre(l, y, like, extra)
        return self.act(l - 1).f(pre)          # (l >= 2: layer 1 has no inverse)

    def feedforward(self, inputs) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``x_l`` and ``h_l`` for ``l = 0..L``."""
        values = self.net.values(inputs)
        xs = [values[self.layers[0].src]] + [values[layer.dst] for layer in self.layers]
        hs = [self.activity(l, x) for l, x in enumerate(xs)]
        return xs, hs

    def penultimate_target(self, xs, hs, h_hat_L, eps_L) -> torch.Tensor:
        L = len(self.layers)
        if self.difference:
            return hs[L - 1] - self.g(L, hs[L], hs[L - 1]) + self.g(L, h_hat_L, hs[L - 1])
        return self.g(L, h_hat_L, hs[L - 1])

    def targets_from(self, xs, hs, eps_L) -> dict[int, torch.Tensor]:
        """``h^_l`` for ``l = 1..L`` from the feed-forward pass and the output error."""
        L = len(self.layers)
        hat = {L: hs[L] + eps_L}
        hat[L - 1] = self.penultimate_target(xs, hs, hat[L], eps_L)
        for l in range(L - 2, 0, -1):
            if self.difference:
                hat[l] = hs[l] - self.g(l + 1, hs[l + 1], hs[l]) + self.g(l + 1, hat[l + 1], hs[l])
            else:
                hat[l] = self.g(l + 1, hat[l + 1], hs[l])
        return hat

    @torch.no_grad()
    def targets(self, inputs, targets) -> dict[str, torch.Tensor]:
        """The layers' targets ``h^_l`` for a batch, by node name (for inspection and tests)."""
        xs, hs = self.feedforward(inputs)
        eps_L = self.objective.error(self.out, xs[-1], targets[self.out])
        hat = self.targets_from(xs, hs, eps_L)
        names = [self.layers[0].src] + [layer.dst for layer in self.layers]
        return {names[l]: t for l, t in hat.items()}

    # ---- learning ---------------------------------------------------------------------
    def phase(self) -> tuple[bool, bool]:
        """(train forward, train inverses) this epoch."""
        if self.settings.schedule == "parallel":
            return True, True
        inverse = self.epoch % 2 == 1
        return not inverse, inverse

    def start_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @torch.no_grad()
    def compute_grads(self, inputs, targets):
        xs, hs = self.feedforward(inputs)
        L = len(self.layers)
        out = self.out
        loss = self.objective.value({out: xs[L]}, targets)
        eps_L = self.objective.error(out, xs[L], targets[out])
        batch = xs[0].shape[0]
        train_fwd, train_inv = self.phase()
        if train_fwd:
            hat = self.targets_from(xs, hs, eps_L)
            updates: dict = {}
            ops = self.net.compiled.ops
            for l, layer in enumerate(self.layers, start=1):
                if l == L:
                    s = eps_L
                else:     # -d/dx_l of 1/2 ||f_l(x_l) - h^_l||^2
                    s = self.act(l).backward(xs[l], hs[l], hat[l] - hs[l])
                updates[layer.key] = ops[layer.edge].vjp_params(self.net.edge_params(layer.edge), [hs[l - 1]], s)
            self.write_grads(updates, batch)
        if train_inv:
            self._inverse_grads(hs, batch)
        return StepInfo(float(loss), {out: xs[L]})

    def corrupt(self, h: torch.Tensor) -> torch.Tensor:
        if self.settings.sigma == 0:
            return h
        noise = torch.randn(h.shape, generator=self.generator, device=h.device, dtype=h.dtype)
        return h + self.settings.sigma * noise

    def inverse_input(self, l: int, h_noisy: torch.Tensor) -> tuple[torch.Tensor, object]:
        """What ``g_l`` reads when layer ``l`` sees ``h_noisy``: ``F_l(h_noisy)`` (and extras)."""
        return self.forward_layer(l, h_noisy), None

    def _inverse_grads(self, hs, batch) -> None:
        scale = -self.objective.scale(batch)
        ops = self.net.compiled.ops
        for layer in self.inverse_layers():
            l = self.layers.index(layer) + 1
            h_noisy = self.corrupt(hs[l - 1])
            y, extra = self.inverse_input(l, h_noisy)
            pre = self.inverse_pre(l, y, hs[l - 1], extra)
            rec = self.act(l - 1).f(pre)
            goal = h_noisy if self.inverse_loss == "noise_preserving" else hs[l - 1]
            delta = self.act(l - 1).backward(pre, rec, goal - rec)
            grads = ops[layer.edge].vjp_params(self.inverse_params(layer), [delta], y)
            group = self.inv[layer.key]
            for n in self.weight_names(layer):
                self._add_grad(group[f"V_{n}"], grads[n], scale)
            self._add_grad(group["c"], delta.sum(0), scale)
            self.extra_inverse_grads(layer, delta, extra, scale)

    def extra_inverse_grads(self, layer, delta, extra, scale) -> None:
        """Gradients of parameters a variant adds to an inverse (``ao_sdtp``'s ``V_z``)."""

    @staticmethod
    def _add_grad(p: torch.Tensor, g: torch.Tensor, scale: float) -> None:
        g = g * scale
        p.grad = g if p.grad is None else p.grad.add_(g)

    # ---- state ------------------------------------------------------------------------
    def get_extra_state(self):
        return {"generator": self.generator.get_state(), "epoch": self.epoch}

    def set_extra_state(self, state):
        if state:
            if state.get("generator") is not None:
                self.generator.set_state(state["generator"])
            self.epoch = int(state.get("epoch", self.epoch))

    def describe(self) -> str:
        s = self.settings
        names = " -> ".join([self.layers[0].src] + [layer.dst for layer in self.layers])
        inv = ", ".join(layer.key for layer in self.inverse_layers()) or "none"
        return (f"rule {self.name}: chain {names}; inverses on {inv}; sigma={s.sigma} "
                f"schedule={s.schedule} inverse_loss={self.inverse_loss} "
                f"inverse optimizer {s.inverse_optimizer}")

