"""``fazil``: Z-IL with full autonomy (Song et al. 2020, sec. 4, Alg. 2).

No update schedule: the network runs one continuous dynamics and every weight learns at
every step with a local learning rate ``alpha * phi(eps_i)`` gated by its own error
neuron ``eps_i`` (the row of the weight that feeds it):

    phi(eps_i)(t) = 1  iff  eps_i(t) != 0  and  eps_i(t - 1) = ... = eps_i(t - t_d) = 0

i.e. ``phi`` spikes when an error turns non-zero after ``t_d`` steps at rest: the change
caused by feedback from the clamped target, which reaches a node at depth ``l`` exactly at
``t = l`` (the Z-IL moment) when C1 and C3 hold.

One sample's run:

1. *Prediction phase* (output free, input presented), ``predict_steps`` steps starting
   from the zero state. With the output free there is no error to feed back; each value
   relaxes to its own prediction, ``x_v <- x_v - gamma * eps_v``, so with ``gamma = 1``
   the input's wave settles the whole graph in (its height) steps, exactly at the
   feed-forward values (C1). The default length is that height plus ``t_d`` steps at
   rest. (The full relaxation, with feedback, does not settle in finitely many steps:
   at ``gamma = 1`` it diverges on tanh networks, measured.)
2. *Learning phase*: the target is clamped at ``t = 0`` and the full PC dynamics run
   for ``T + 1`` steps (``x_v <- x_v + gamma * (-eps_v + sum_c J^T eps_c)``), every
   weight row gated by ``phi`` all the while.

With ``gamma = 1`` the value update is evaluated as ``mu_v + sum_c J^T eps_c`` (the same
expression, without the cancellation in ``x - (x - mu)``), so an error at rest is
exactly 0 and ``phi`` can test ``eps == 0`` as in the paper.

Settings:
    t_d (int, 4): window of ``phi``.
    T (int | None): learning-phase steps after clamping; None = the deepest update.
    predict_steps (int | None): prediction-phase steps; None = height + t_d.
    gamma (float, 1): integration step (C3).

``stats`` accumulates the detection success rate: among error neurons of nodes fed by a
parameter whose error at ``t = depth`` is non-zero, the fraction for which ``phi`` fired
exactly once, at ``t = depth``; ``false_fires`` counts spikes anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..compile.dynamics import _accumulate, write_grads
from ..errors import SpecError
from .base import RULES, LearningRule, StepInfo


@dataclass
class FaZILSettings:
    t_d: int = 4
    T: int | None = None
    predict_steps: int | None = None
    gamma: float = 1.0

    def check(self, where: str = "train.algorithm") -> None:
        if self.t_d < 1:
            raise SpecError(f"t_d must be >= 1, got {self.t_d}", f"{where}.t_d")
        if self.gamma <= 0:
            raise SpecError(f"gamma must be > 0, got {self.gamma}", f"{where}.gamma")
        for k in ("T", "predict_steps"):
            if getattr(self, k) is not None and getattr(self, k) < 0:
                raise SpecError(f"{k} must be >= 0", f"{where}.{k}")


@dataclass
class DetectionStats:
    detected: int = 0       # fired exactly once, at t = depth
    expected: int = 0       # neurons with a non-zero error at t = depth
    false_fires: int = 0    # spikes anywhere else (prediction phase or t != depth)

    @property
    def success_rate(self) -> float:
        return self.detected / self.expected if self.expected else 1.0


@RULES.register("fazil", "fa-z-il")
class FullyAutonomousZIL(LearningRule):
    name = "fazil"
    Settings = FaZILSettings

    def __init__(self, net, settings=None, seed: int = 0):
        super().__init__(net, settings, seed)
        cg = net.compiled
        s = self.settings
        self.learners = sorted({e.dst for i, e in enumerate(cg.edges) if cg.ops[i].param_shapes()},
                               key=cg.order.index)
        depth_max = max((cg.depth[v] for v in self.learners), default=0)
        self.T = depth_max if s.T is None else s.T
        if self.T < depth_max:
            raise SpecError(f"T = {self.T} ends before the deepest update at t = {depth_max}",
                            "train.algorithm.T")
        height: dict[str, int] = {}
        for v in cg.order:
            height[v] = 0 if cg.role(v) == "input" else 1 + max(height[cg.edges[i].src] for i in cg.in_edges(v))
        self.height = max(height.values())
        self.predict_steps = self.height + s.t_d if s.predict_steps is None else s.predict_steps
        self.stats = DetectionStats()

    @torch.no_grad()
    def compute_grads(self, inputs, targets):
        net, cg, s = self.net, self.net.compiled, self.settings
        order, edges, acts = cg.order, cg.edges, cg.acts
        role = {v: cg.role(v) for v in order}
        free = [v for v in order if role[v] != "input"]
        batch = next(iter(inputs.values())).shape[0]
        shapes = {v: (batch, *cg.graph.nodes[v].shape) for v in order}
        dev, dt = net.device, net.dtype

        def f_src(x, i):
            return acts[i].f(x[edges[i].src])

        def predictions(x):
            return {c: net.predict(c, lambda i: f_src(x, i)) for c in free}

        x = {v: inputs[v] if role[v] == "input" else torch.zeros(shapes[v], device=dev, dtype=dt) for v in order}
        rest = {v: torch.zeros(shapes[v], device=dev, dtype=torch.long) for v in free}  # steps at 0 so far
        fires = {v: torch.zeros(shapes[v], device=dev, dtype=torch.long) for v in self.learners}
        fired_right = {v: torch.zeros(shapes[v], device=dev, dtype=torch.bool) for v in self.learners}
        expected = {v: torch.zeros(shapes[v], device=dev, dtype=torch.bool) for v in self.learners}
        acc: dict = {}

        def learn(eps, t_learn):
            for v in free:
                zero = eps[v] == 0
                if v in fires:
                    phi = (~zero) & (rest[v] >= s.t_d)
                    fires[v] += phi
                    if t_learn is not None and t_learn == cg.depth[v]:
                        fired_right[v] |= phi
                        expected[v] |= ~zero
                    if bool(phi.any()):
                        gated = eps[v] * phi
                        for i in cg.in_edges(v):
                            if cg.ops[i].param_shapes():
                                _accumulate(acc, edges[i].key, net.param_vjp(i, f_src(x, i), gated))
                rest[v] = torch.where(zero, rest[v] + 1, torch.zeros_like(rest[v]))

        # 1. prediction phase: output free, each value relaxes to its own prediction
        for _ in range(self.predict_steps):
            mu = predictions(x)
            eps = {c: x[c] - mu[c] for c in free}
            learn(eps, None)
            for v in free:
                x[v] = mu[v] if s.gamma == 1 else x[v] - s.gamma * eps[v]
        mu = predictions(x)
        outputs = {o: mu[o] for o in cg.graph.outputs}
        loss = net.loss(outputs, targets)

        # 2. learning phase: target clamped at t = 0, full dynamics, phi-gated learning
        for t in range(self.T + 1):
            mu = predictions(x) if t else mu
            eps = {c: (cg.losses[c].error(mu[c], targets[c]) if role[c] == "output" else x[c] - mu[c])
                   for c in free}
            learn(eps, t)
            if t == self.T:
                break
            new_x = dict(x)
            for v in free:
                if role[v] != "hidden":
                    continue
                fb = None
                for i in cg.out_edges(v):
                    u = f_src(x, i)
                    term = net.feedback(i, u, acts[i].df(x[v], u), eps[edges[i].dst])
                    fb = term if fb is None else fb + term
                new_x[v] = mu[v] + fb if s.gamma == 1 else x[v] + s.gamma * (fb - eps[v])
            x = new_x

        for v in self.learners:
            exp_v = expected[v]
            self.stats.expected += int(exp_v.sum())
            self.stats.detected += int((exp_v & fired_right[v] & (fires[v] == 1)).sum())
            self.stats.false_fires += int((fires[v] - fired_right[v].long()).sum())
        write_grads(net, acc, batch)
        return StepInfo(float(loss), outputs)

    def describe(self) -> str:
        s = self.settings
        return (f"rule fazil: t_d={s.t_d} gamma={s.gamma} prediction phase {self.predict_steps} steps "
                f"(graph height {self.height}), learning phase t = 0..{self.T}; every weight row gated "
                f"by phi(eps) each step (no update schedule)")
