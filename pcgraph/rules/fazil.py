"""``fazil``: Z-IL with full autonomy (Song et al. 2020, sec. 4, Alg. 2).

No update schedule: the network runs one continuous dynamics (every quantity at every
step) and every weight row learns at every step with a local learning rate gated by a
trigger of the node it feeds:

    Delta theta_e(t) = sum_b (d op_e / d theta)^T (trigger_c(t) * eps_c(t))     (e into c)

Two triggers (setting ``trigger``):

- ``wave`` (default): a one-bit *spike* carried by the feedback connections beside the
  error. An output spikes when its target is clamped; a node spikes once, one step after
  any of its children spiked (it receives the spike on the same wires that bring it its
  children's errors). The spike reaches a node at depth ``l`` at ``t = l``, the Z-IL
  moment, whatever the values are, so a row learns at the wave even when its error is
  exactly 0 there (a ``relu`` unit that is off, max pooling's non-maximal inputs, a
  saturated ``tanh``), and never again. Exact wherever Z-IL is.
- ``phi``: Song's ``phi(eps_i)(t) = 1`` iff ``eps_i(t) != 0`` and ``eps_i`` was exactly 0
  for the ``t_d`` steps before. It infers the wave from the error's values, so it misfires
  whenever an error is still exactly 0 when the wave passes and turns non-zero later,
  on a second-order error that is not BP's: ``relu`` units whose ``f'`` is 0, inputs of a
  max pool that were not the maximum, sigmoid/tanh units saturated so far that ``f'``
  rounds to 0 in float32, a node whose children are all inactive for a sample. It is
  exact only on networks where none of that happens (the seeds' sigmoid MLPs).

One sample's run:

1. *Prediction phase* (output free, input presented), ``predict_steps`` steps from the
   zero state: each value relaxes to its own prediction (``x_v <- x_v - gamma * eps_v``),
   so with ``gamma = 1`` the input's wave settles the whole graph at the feed-forward
   values (C1) in (its height) steps. Default length: the height plus ``t_d`` steps at rest.
2. *Learning phase*: the target is clamped at ``t = 0`` and the full PC dynamics run for
   ``T + 1`` steps on the compiled executor (a plan that computes everything every step),
   the kernel's ``learn_signal`` gated by the trigger all the while.

Settings:
    trigger ("wave" | "phi", "wave"): see above.
    t_d (int, 4): window of ``phi`` (and rest steps after the prediction phase's wave).
    T (int | None): learning-phase steps after clamping; None = the deepest update.
    predict_steps (int | None): prediction-phase steps; None = height + t_d.
    gamma (float, 1): integration step (C3).
    reference (bool, False): run the learning phase on the reference interpreter.

``stats`` counts, over the error neurons of nodes fed by a parameter (per sample):
``expected`` (error non-zero at ``t = depth``), ``detected`` (of those, the trigger fired
at ``t = depth`` and never on a non-zero error elsewhere), ``false_fires`` (fires on a
non-zero error at any other step: each one is a wrong update). ``success_rate`` is the
fraction of neurons that learned exactly among those that should have learned or
learned wrongly (a misfire lowers it even where BP's delta is 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..compile import EVERY, PCKernel, State, build_full_plan, run_plan, run_reference
from ..errors import SpecError
from ..settings import check_steps
from .base import RULES, LearningRule, StepInfo


@dataclass
class FaZILSettings:
    trigger: Literal["wave", "phi"] = "wave"
    t_d: int = 4
    T: int | None = None
    predict_steps: int | None = None
    gamma: float = 1.0
    reference: bool = False

    def check(self, where: str = "train.algorithm") -> None:
        if self.t_d < 1:
            raise SpecError(f"t_d must be >= 1, got {self.t_d}", f"{where}.t_d")
        if self.gamma <= 0:
            raise SpecError(f"gamma must be > 0, got {self.gamma}", f"{where}.gamma")
        for k in ("T", "predict_steps"):
            if getattr(self, k) is not None and getattr(self, k) < 0:
                raise SpecError(f"{k} must be >= 0", f"{where}.{k}")
        for k in ("t_d", "T", "predict_steps"):
            check_steps(getattr(self, k), f"{where}.{k}")


@dataclass
class DetectionStats:
    detected: int = 0       # learned exactly: fired at t = depth, no misfire
    expected: int = 0       # error non-zero at t = depth
    judged: int = 0         # expected, or misfired on a non-zero error
    false_fires: int = 0    # fires on a non-zero error at t != depth (or in the prediction phase)

    @property
    def success_rate(self) -> float:
        return self.detected / self.judged if self.judged else 1.0


class TriggeredKernel(PCKernel):
    """The PC kernel with Fa-Z-IL's gate on ``learn_signal`` (and its bookkeeping)."""

    def __init__(self, net, objective, gamma: float, trigger: str, t_d: int):
        super().__init__(net, objective, gamma)
        cg = self.cg
        self.trigger, self.t_d = trigger, t_d
        self.learners = {cg.edges[i].dst for i in range(len(cg.edges)) if cg.has_params(i)}
        self.children = {v: {cg.edges[i].dst for i, _ in cg.out_edges(v)} for v in cg.order}
        self.stats = DetectionStats()

    def begin(self, phase: str, shapes: dict[str, tuple]) -> None:
        self.phase = phase
        self.gate: dict[str, torch.Tensor] = {}
        dev = self.net.device
        if phase == "predict":
            self.rest = {v: torch.zeros(shapes[v], device=dev, dtype=torch.long) for v in shapes}
            self.spiked: dict[str, int] = {}
            self.expected = {v: torch.zeros(shapes[v], device=dev, dtype=torch.bool) for v in self.learners}
            self.right = {v: torch.zeros(shapes[v], device=dev, dtype=torch.bool) for v in self.learners}
            self.wrong = {v: torch.zeros(shapes[v], device=dev, dtype=torch.bool) for v in self.learners}
            self.n_false = torch.zeros((), device=dev, dtype=torch.long)   # summed on the device

    def observe(self, t, eps, computed):
        cg, learning = self.cg, self.phase == "learn"
        self.gate = {}
        for v in computed:
            nonzero = eps[v] != 0
            if self.trigger == "phi":
                fire = nonzero & (self.rest[v] >= self.t_d)
                self.rest[v] = torch.where(nonzero, torch.zeros_like(self.rest[v]), self.rest[v] + 1)
            else:
                fire = None
                if learning and v not in self.spiked and (
                        (t == 0 and cg.role(v) == "output")
                        or any(self.spiked.get(c) == t - 1 for c in self.children[v])):
                    self.spiked[v] = t
                    fire = torch.ones((), dtype=torch.bool, device=nonzero.device)
            if v not in self.learners:
                continue
            at_depth = learning and t == cg.depth[v]
            if at_depth:
                self.expected[v] |= nonzero
            if fire is None:
                continue
            if at_depth:
                self.right[v] |= fire
            else:
                bad = fire & nonzero
                self.wrong[v] |= bad
                self.n_false += bad.sum()
            if bool(fire.any()):
                self.gate[v] = fire

    def learn_signal(self, i, t, eps_c):
        fire = self.gate.get(self.cg.edges[i].dst)
        if fire is None:
            return None
        return eps_c if fire.dim() == 0 else eps_c * fire

    def finish(self) -> None:
        st = self.stats
        for v in self.learners:
            exp, wrong = self.expected[v], self.wrong[v]
            st.expected += int(exp.sum())
            st.detected += int((exp & self.right[v] & ~wrong).sum())
            st.judged += int((exp | wrong).sum())
        st.false_fires += int(self.n_false)


@RULES.register("fazil", "fa-z-il")
class FullyAutonomousZIL(LearningRule):
    name = "fazil"
    Settings = FaZILSettings

    def __init__(self, net, settings=None, seed: int = 0, reduction: str = "mean"):
        super().__init__(net, settings, seed, reduction)
        cg = net.compiled
        s = self.settings
        self.kernel = TriggeredKernel(net, self.objective, s.gamma, s.trigger, s.t_d)
        depth_max = max((cg.depth[v] for v in self.kernel.learners), default=0)
        self.T = depth_max if s.T is None else s.T
        if self.T < depth_max:
            raise SpecError(f"T = {self.T} ends before the deepest update at t = {depth_max}",
                            "train.algorithm.T")
        height: dict[str, int] = {}
        for v in cg.order:
            height[v] = 0 if cg.role(v) == "input" else \
                1 + max(height[p] for i in cg.in_edges(v) for p in cg.edges[i].sources)
        self.height = max(height.values())
        self.predict_steps = self.height + s.t_d if s.predict_steps is None else s.predict_steps
        self.update_times = [EVERY if cg.has_params(i) else None for i in range(len(cg.edges))]
        self.plan = build_full_plan(cg, self.update_times, self.T)

    @property
    def stats(self) -> DetectionStats:
        return self.kernel.stats

    @torch.no_grad()
    def compute_grads(self, inputs, targets):
        k, cg = self.kernel, self.net.compiled
        edges = cg.edges
        free = [v for v in cg.order if cg.role(v) != "input"]
        batch = next(iter(inputs.values())).shape[0]
        dev, dt = self.net.device, self.net.dtype
        shapes = {v: (batch, *cg.graph.nodes[v].shape) for v in free}

        def activated(i):
            return k.inputs(i, x)

        # 1. prediction phase: output free, each value relaxes to its own prediction
        k.begin("predict", shapes)
        x = {**inputs, **{v: torch.zeros(shapes[v], device=dev, dtype=dt) for v in free}}
        updates: dict = {}
        for t in range(self.predict_steps):
            mu = {c: k.prediction(c, activated) for c in free}
            eps = {c: k.error(c, x[c], mu[c], None) for c in free}
            k.observe(t, eps, free)
            for i in range(len(edges)):
                signal = k.learn_signal(i, t, eps[edges[i].dst]) if cg.has_params(i) else None
                if signal is not None:
                    grads = k.edge_vjp(i, activated(i), signal, [False] * len(edges[i].sources), True)[1]
                    k.accumulate(updates, edges[i].key, grads)
            x = {**x, **{c: k.advance(c, x[c], mu[c], eps[c], None) for c in free}}
        mu = {c: k.prediction(c, activated) for c in free}
        outputs = {o: mu[o] for o in cg.graph.outputs}
        loss = self.objective.value(outputs, targets)

        # 2. learning phase: target clamped at t = 0, full dynamics, trigger-gated learning
        k.begin("learn", shapes)
        start = {v: x[v] for v in cg.order if cg.role(v) != "output"}
        if self.settings.reference:
            _, _, learned = run_reference(k, self.update_times, inputs, targets, self.T, start=start)
        else:
            learned = run_plan(k, self.plan, State(k, start, mu), targets).updates
        for key, group in learned.items():
            k.accumulate(updates, key, group)
        k.finish()
        self.write_grads(updates, batch)
        return StepInfo(float(loss), outputs)

    def get_extra_state(self):
        return {"stats": vars(self.stats).copy()}

    def set_extra_state(self, state):
        if state and "stats" in state:
            for key, val in state["stats"].items():
                setattr(self.stats, key, val)

    def describe(self) -> str:
        s = self.settings
        head = (f"rule fazil: trigger={s.trigger} t_d={s.t_d} gamma={s.gamma} prediction phase "
                f"{self.predict_steps} steps (graph height {self.height}), learning phase t = 0..{self.T}; "
                f"every weight row gated by its node's trigger each step (no update schedule)")
        return head + "\n" + self.plan.describe(self.net.compiled)
