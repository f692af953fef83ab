"""The PC dynamics kernel: the one place that defines predictive coding's quantities.

On a compiled graph, with integration step ``gamma``:

    prediction   mu_c      = sum_{e: [p_1..p_n] -> c} op_e(f_1(x_p1), .., f_n(x_pn))
    error        eps_c     = x_c - mu_c                (hidden)  |  -dl/dmu_c  (clamped output)
    message      m_{e,k}   = f_k'(x_pk) * (d op_e / d u_k)^T eps_c       (edge e to its source k)
    aggregate    drive_v   = sum of the messages to v
    advance      x_v(t+1)  = x_v + gamma * (drive_v - eps_v)   (= mu_v + drive_v when gamma = 1)
    update       Delta_e   = sum_b (d op_e / d theta_e)^T s_c   with s_c = learn_signal(e, t, eps_c)

Each quantity is a method, so a rule changes PC by overriding the one it changes, as a
PyG layer overrides ``message``: feedback alignment will replace ``edge_vjp``'s input
part with fixed random matrices, Fa-Z-IL gates ``learn_signal`` by its ``phi``,
target propagation will replace ``error``. :func:`pcgraph.compile.executor.run_plan` (the
fast path: only what the plan lists, with caches) and
:func:`pcgraph.compile.interpreter.run_reference` (every quantity at every step) both
compute through a kernel; neither imports the other.

``advance`` with ``gamma = 1`` evaluates ``mu_v + drive_v`` rather than
``x_v + (drive_v - eps_v)``: the same number without the cancellation, so an error at
rest stays exactly 0 (Fa-Z-IL's ``phi`` tests ``eps == 0``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..ops import Objective
from ..ops.linear import Linear
from .network import PCNetwork

Tensor = torch.Tensor


class PCKernel:
    """PC's equations on ``net`` with a training ``objective`` and step ``gamma``."""

    def __init__(self, net: PCNetwork, objective: Objective, gamma: float = 1.0):
        self.net = net
        self.cg = net.compiled
        self.objective = objective
        self.gamma = float(gamma)
        #: let the executor evaluate ``eps_v = x_v - mu_v`` as ``d`` when ``x_v`` was formed as
        #: ``mu_v + d`` from this same ``mu_v`` (the same number, without the cancellation that
        #: costs float32 its last bits); a subclass whose ``error`` is not ``x - mu`` turns it off
        self.exact_split = type(self).error is PCKernel.error
        #: linearizations kept by the executor between an edge's forward and its VJPs (edges
        #: whose op has no hand-written VJP): edge -> (inputs, pullback); None = off
        self.memo: dict | None = None
        #: edges whose op is a dense ``linear`` between vector nodes (``[B, n]`` values): on
        #: the executor's path (``memo`` set) the kernel evaluates them with Linear's own
        #: kernels (``addmm``, ``mm``, ``sum``: the same numbers) minus its reshapes, which are
        #: no-ops there; the reference interpreter keeps calling the op
        self.dense = [type(op) is Linear and len(op.in_shapes[0]) == 1 and len(op.out_shape) == 1
                      for op in self.cg.ops]
        self._zeros: dict = {}
        self._needed: dict[int, list[bool]] = {}

    # ---- per-source activations ------------------------------------------------------
    def f(self, i: int, k: int, x: Tensor) -> Tensor:
        return self.cg.acts[i][k].f(x)

    def inputs(self, i: int, x: dict[str, Tensor]) -> list[Tensor]:
        """Edge ``i``'s activated sources ``[f_k(x_pk)]`` from the values ``x`` (uncached)."""
        return [self.f(i, k, x[s]) for k, s in enumerate(self.cg.edges[i].sources)]

    # ---- quantities ------------------------------------------------------------------
    def prediction(self, c: str, inputs_of: Callable[[int], Sequence[Tensor]]) -> Tensor:
        """``mu_c``; ``inputs_of(i)`` gives edge ``i``'s activated sources ``[f_k(x_pk)]``."""
        return self.net.predict(c, inputs_of, None if self.memo is None else self._linearized)

    def _linearized(self, i: int, us: Sequence[Tensor]) -> Tensor:
        """Edge ``i``'s term, keeping its pullback in ``memo`` when the op has no
        hand-written VJP (the VJP at the wave then reuses this forward)."""
        if self.dense[i]:
            p = self.net.edge_params(i)
            w = p["weight"]
            return torch.addmm(p["bias"], us[0], w.t()) if self.cg.ops[i].bias else us[0].mm(w.t())
        op = self.cg.ops[i]
        if not op.uses_default_vjp:
            return op.forward(self.net.edge_params(i), *us)
        needed = self._needed.get(i)
        if needed is None:      # sources that ever receive a message: hidden ones (never data)
            needed = self._needed[i] = [self.cg.role(p) == "hidden" for p in self.cg.edges[i].sources]
        term, pullback = op.linearize(self.net.edge_params(i), us, needed)
        self.memo[i] = (us, pullback)
        return term

    def error(self, c: str, x_c: Tensor | None, mu_c: Tensor, target: Tensor | None) -> Tensor:
        if self.cg.role(c) == "output" and target is not None:   # clamped; a free output relaxes
            return self.objective.error(c, mu_c, target)
        return x_c - mu_c

    def edge_vjp(self, i: int, us: Sequence[Tensor], eps_c: Tensor, wanted: Sequence[bool],
                 want_params: bool) -> tuple[list[Tensor | None], dict[str, Tensor] | None]:
        """``(d op_e/d u_k)^T eps_c`` for the wanted sources and, if asked, the local update
        ``sum_b (d op_e/d theta)^T eps_c``: one call, so ops share work between the two."""
        if self.dense[i] and self.memo is not None:
            p = self.net.edge_params(i)
            gin = [eps_c.mm(p["weight"]) if wanted[0] else None]
            if not want_params:
                return gin, None
            gp = {"weight": eps_c.t().mm(us[0])}
            if self.cg.ops[i].bias:
                gp["bias"] = eps_c.sum(0)
            return gin, gp
        if self.memo:
            hit = self.memo.get(i)
            if hit is not None and len(hit[0]) == len(us) and all(a is b for a, b in zip(hit[0], us)):
                return hit[1](eps_c, wanted, want_params)
        return self.cg.ops[i].vjp(self.net.edge_params(i), us, eps_c, wanted, want_params)

    def edge_vjp_scaled(self, i: int, us: Sequence[Tensor], eps_c: Tensor, signal: Tensor,
                        wanted: Sequence[bool], scale: float) -> tuple[list[Tensor | None], dict[str, Tensor]]:
        """:meth:`edge_vjp`'s input part for ``eps_c`` and its parameter part for ``signal``
        times ``scale`` (the batch reduction folded in, so no pass over the updates scales
        them afterwards). Used by the executor only where :meth:`edge_vjp` is this class's
        (a VJP linear in the signal); a dense ``linear`` edge scales inside its matrix
        product, any other op scales the smaller of its signal and its update."""
        n = len(us)
        if self.dense[i] and self.memo is not None:
            p = self.net.edge_params(i)
            gin = [eps_c.mm(p["weight"]) if wanted[0] else None]
            return gin, self._dense_update(i, signal, us[0], scale)
        gin = self.edge_vjp(i, us, eps_c, wanted, False)[0] if any(wanted) else [None] * n
        if signal.numel() < sum(t.numel() for t in self.net.edge_params(i).values()):
            return gin, self.edge_vjp(i, us, signal * scale, [False] * n, True)[1]
        gp = self.edge_vjp(i, us, signal, [False] * n, True)[1]
        if gp:
            torch._foreach_mul_(list(gp.values()), scale)
        return gin, gp

    def batched_param_vjp(self, i: int, signals: Sequence[Tensor], inputs: Sequence[Tensor],
                          scale: float) -> dict[str, Tensor]:
        """``scale * sum_j sum_b (d op/d theta)^T signals[j]`` at ``inputs[j]`` (edge ``i``'s
        single activated source at each), for a dense ``linear`` group updated several times
        per run (an unrolled RNN's shared weights): one matrix product over the samples of
        every contribution stacked, instead of one product and one sum per contribution."""
        s = torch.cat(list(signals)) if len(signals) > 1 else signals[0]
        u = torch.cat(list(inputs)) if len(inputs) > 1 else inputs[0]
        return self._dense_update(i, s, u, scale)

    def _dense_update(self, i: int, s: Tensor, u: Tensor, scale: float) -> dict[str, Tensor]:
        """A dense ``linear`` edge's ``scale * sum_b`` update for signal ``s`` at input ``u``,
        the scale inside the matrix product (addmm's alpha, onto a cached scalar zero)."""
        zero = self._zeros.get((s.dtype, s.device))
        if zero is None:
            zero = self._zeros[s.dtype, s.device] = s.new_zeros(())
        gp = {"weight": torch.addmm(zero, s.t(), u, beta=0, alpha=scale)}
        if self.cg.ops[i].bias:
            gp["bias"] = s.sum(0).mul_(scale)
        return gp

    def message(self, i: int, k: int, g: Tensor, x: Tensor, fx: Tensor) -> Tensor:
        """The message of edge ``i`` to its source ``k``: ``f_k'(x) * g`` (``x`` the source's
        value, ``fx = f_k(x)``)."""
        return self.cg.acts[i][k].backward(x, fx, g)

    def aggregate(self, v: str, messages: list[Tensor]) -> Tensor | None:
        drive = None
        for m in messages:
            drive = m if drive is None else drive + m
        return drive

    def advance(self, v: str, x_v: Tensor, mu_v: Tensor | None, eps_v: Tensor | None,
                drive: Tensor | None) -> Tensor:
        """``x_v + gamma * (drive - eps_v)``; ``eps_v`` None means known to be 0."""
        if eps_v is None:
            if drive is None:
                return x_v
            return x_v + drive if self.gamma == 1 else x_v + self.gamma * drive
        if self.gamma == 1:
            return mu_v if drive is None else mu_v + drive
        if drive is None:
            return x_v.add(eps_v, alpha=-self.gamma)
        return x_v.add(drive - eps_v, alpha=self.gamma)       # one pass for the multiply-add

    def advanced_from(self, x_v: Tensor, mu_v: Tensor | None, eps_v: Tensor | None,
                      drive: Tensor | None) -> Tensor | None:
        """The tensor ``b`` for which :meth:`advance` returned exactly ``b + drive`` (``x_v``
        or ``mu_v`` when ``gamma = 1``), or None; with it the executor evaluates the next
        ``eps_v = x_v - mu_v`` as ``drive`` when ``b`` is still ``mu_v`` (see
        ``exact_split``)."""
        if not self.exact_split or self.gamma != 1 or drive is None:
            return None
        return x_v if eps_v is None else mu_v

    # ---- learning hooks --------------------------------------------------------------
    def observe(self, t: int, eps: dict[str, Tensor], computed: Sequence[str]) -> None:
        """Called once per step after the errors listed in ``computed`` were (re)computed."""

    def learn_signal(self, i: int, t: int, eps_c: Tensor) -> Tensor | None:
        """The error that drives edge ``i``'s update at step ``t`` (None: no update now)."""
        return eps_c

    @staticmethod
    def accumulate(acc: dict, key: str, grads: dict[str, Tensor]) -> None:
        """Sum local updates per parameter group (ops return fresh tensors: summed in place)."""
        group = acc.setdefault(key, {})
        for name, g in grads.items():
            if name in group:
                group[name].add_(g)
            else:
                group[name] = g

    # ---- the starting state ----------------------------------------------------------
    def perturb(self, x: dict[str, Tensor], sigma: float, generator: torch.Generator | None) -> None:
        """Add ``N(0, sigma^2)`` to every hidden value (breaking C1), in topological order."""
        for v in self.cg.order:
            if self.cg.role(v) == "hidden":
                noise = torch.randn(x[v].shape, generator=generator, device=x[v].device, dtype=x[v].dtype)
                x[v] = x[v] + sigma * noise
