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

Event-driven (the wave, ``gamma = 1``, a prediction phase at least the graph's height):
the same dynamics, but the executor computes only the quantities that can change, as an
event-driven simulation of the network would; every skip follows from what a node knows
locally (its own spike, its parents' and children's spikes) and the spike rule, which
depends on the graph alone (so its times are known when the rule is built, as the plan's
known zeros are for Z-IL):

- *Prediction phase.* With the output free there is no feedback, and with ``gamma = 1`` a
  value moves to its own prediction (``x_v <- mu_v``): once all of a node's parents have
  settled, its next prediction is final and it settles with it, and nothing after that
  changes it. The values before a node settles never reach a learning event: they only feed
  its children's transient predictions, which are overwritten in turn (the wave trigger
  learns nothing in this phase). So each node computes one prediction, when its parents
  have settled: one feed-forward pass, the state the full phase reaches after ``height``
  steps, to the bit.
- *Known zeros (C1).* After that phase every hidden error is exactly 0, and an error
  stays 0 until the spike reaches the node: the error and the spike travel the same
  feedback wires, one step per edge, so before a node's spike no child of it has a
  non-zero error, it receives no message, its value stays at its prediction, and its
  parents have not moved either. Those errors, their messages and their VJPs are 0 and
  are skipped.
- *Quiescence.* A node whose own spike has passed and whose parents' spikes have passed
  has learned (its rows fire once, at its spike), its parents have learned, and its
  children learned before it: nothing it computes afterwards reaches a learning event,
  so it stops computing.

What remains is the plan Z-IL runs (:func:`pcgraph.compile.build_plan` with each edge's
update time the spike time of its node), with the trigger, not the plan, gating every
update: a Fa-Z-IL update costs one forward and one backward pass, like Z-IL's, and its
numbers are Z-IL's to the bit. ``trigger: phi`` (which reads every error's history),
``gamma != 1`` (the prediction phase never settles exactly), a prediction phase shorter than
the height, and ``reference: true`` run the full dynamics every step.

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

from ..compile import EVERY, PCKernel, State, build_full_plan, build_plan, feedforward, run_plan, run_reference
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
        #: the wave's spike time of every node it reaches (outputs 0, a node one step after
        #: its first child): a function of the graph alone, see :func:`spike_times`
        self.spike = spike_times(cg)
        #: set by the rule for the event-driven wave (``fires_at[t]``: the learners whose
        #: spike arrives at step ``t``); None: the trigger is evaluated from the values
        self.fires_at: list[list[str]] | None = None

    def begin(self, phase: str, shapes: dict[str, tuple] | None) -> None:
        self.phase = phase
        self.gate: dict[str, torch.Tensor] = {}
        dev = self.net.device
        if self.fires_at is not None:       # the wave, event-driven: one count per learner
            if phase == "predict":
                self.n_expected = []
            return
        if phase == "predict":
            self.rest = {v: torch.zeros(shapes[v], device=dev, dtype=torch.long) for v in shapes}
            self.spiked: dict[str, int] = {}
            self.expected = {v: torch.zeros(shapes[v], device=dev, dtype=torch.bool) for v in self.learners}
            self.right = {v: torch.zeros(shapes[v], device=dev, dtype=torch.bool) for v in self.learners}
            self.wrong = {v: torch.zeros(shapes[v], device=dev, dtype=torch.bool) for v in self.learners}
            self.n_false = torch.zeros((), device=dev, dtype=torch.long)   # summed on the device

    def observe(self, t, eps, computed):
        if self.fires_at is not None:
            self._observe_wave(t, eps)
            return
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

    def _observe_wave(self, t, eps):
        """The wave trigger on the event-driven path (learning phase): the learners whose
        spike arrives now fire, each with its whole error (the spike is one bit per node).
        Statistics as :meth:`observe` counts them: a spike arrives only at ``t = depth``
        (checked when the rule is built), so every non-zero error there is detected and
        none is a false fire."""
        self.gate = {}
        if self.phase != "learn" or t >= len(self.fires_at):
            return
        for v in self.fires_at[t]:
            self.gate[v] = True
            e = eps.get(v)
            if e is None:           # (absent: never computed, exactly 0)
                continue
            if _countable(e) and e.numel() >= 2 ** 14:
                # counted now, while the error is in cache (small ones together at the end)
                self.n_expected.append((e, _indicator_sum(e)))
            else:
                self.n_expected.append(e)

    def learn_signal(self, i, t, eps_c):
        fire = self.gate.get(self.cg.edges[i].dst)
        if fire is None:
            return None
        return eps_c if fire is True or fire.dim() == 0 else eps_c * fire

    def finish(self) -> None:
        st = self.stats
        if self.fires_at is not None:
            n = _count_nonzero(self.n_expected)
            self.n_expected = []
            st.expected += n
            st.detected += n
            st.judged += n
            return
        for v in self.learners:
            exp, wrong = self.expected[v], self.wrong[v]
            st.expected += int(exp.sum())
            st.detected += int((exp & self.right[v] & ~wrong).sum())
            st.judged += int((exp | wrong).sum())
        st.false_fires += int(self.n_false)


def _indicator_sum(e: torch.Tensor) -> torch.Tensor:
    """``sum(ceil(min(|e|, 1)))``: the number of non-zero entries of ``e`` as a float (exact
    below 2**24 entries), NaN if ``e`` has one. Branch-free, unlike ``count_nonzero``, which
    branches per entry (slow on errors that are half zeros, relu's)."""
    return e.abs().clamp_(max=1).ceil_().sum()


def _countable(e: torch.Tensor) -> bool:
    return e.is_floating_point() and e.numel() < 2 ** 24


def _count_nonzero(items: list) -> int:
    """The number of non-zero entries in the tensors ``items`` (each a tensor, or a pair
    ``(tensor, its _indicator_sum)`` taken earlier). Small tensors are counted together (one
    buffer: four passes in all rather than four ops each); ``count_nonzero`` where the
    indicator is not exact (a NaN somewhere, huge tensors)."""
    tensors, sums, small, rest = [], [], {}, []
    for it in items:
        if isinstance(it, tuple):
            tensors.append(it[0])
            sums.append(it[1])
            continue
        tensors.append(it)
        if not _countable(it):
            rest.append(it)
        elif it.numel() < 2 ** 14:
            small.setdefault((it.dtype, it.device), []).append(it.reshape(-1))
        else:
            sums.append(_indicator_sum(it))
    for group in small.values():
        buf = torch.cat(group) if len(group) > 1 else group[0]
        if _countable(buf):
            sums.append(_indicator_sum(buf))
        else:
            rest.append(buf)
    n = 0
    if sums:
        total = float(torch.stack(sums).sum(dtype=torch.float64)) if len(sums) > 1 else float(sums[0])
        if not (total == total and total != float("inf")):       # a NaN: count exactly
            return sum(int(torch.count_nonzero(e)) for e in tensors)
        n = int(total)
    return n + sum(int(torch.count_nonzero(e)) for e in rest)


def spike_times(cg) -> dict[str, int]:
    """When the wave's spike reaches each node: 0 at an output, else one step after the first
    of its children (nodes from which no output is reached are absent: never)."""
    spike: dict[str, int] = {}
    for v in reversed(cg.order):
        if cg.role(v) == "output":
            spike[v] = 0
            continue
        ts = [spike[c] for i, _ in cg.out_edges(v) for c in (cg.edges[i].dst,) if c in spike]
        if ts:
            spike[v] = 1 + min(ts)
    return spike


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
        #: the full dynamics (every quantity, every step); ``plan`` is the event-driven one
        #: where that applies (``event_driven``), else this same plan
        self.full_plan = self.plan = build_full_plan(cg, self.update_times, self.T)
        self.event_driven = self._event_plan()

    def _event_plan(self) -> bool:
        """Set up the event-driven path where it computes the same numbers as the full
        dynamics (see "Event-driven" in the module doc); False: run the full dynamics."""
        s, k, cg = self.settings, self.kernel, self.net.compiled
        if s.trigger != "wave" or s.reference or s.gamma != 1 or self.predict_steps < self.height:
            return False
        spike = k.spike
        times = [spike.get(cg.edges[i].dst) if cg.has_params(i) else None for i in range(len(cg.edges))]
        if any(t is not None and t != cg.depth[cg.edges[i].dst] for i, t in enumerate(times)):
            return False            # (an unbalanced graph: the spike is not at t = depth)
        plan = build_plan(cg, times, c1=True)
        for i, t in enumerate(times):
            if t is not None and i not in plan.steps[t].updates:
                return False        # a learner whose error is known 0 at its spike: keep the full path
        fires_at: list[list[str]] = [[] for _ in range(plan.T + 1)]
        for v in sorted(k.learners, key=cg.order.index):
            if v in spike:
                fires_at[spike[v]].append(v)
        self.plan = plan
        k.fires_at = fires_at
        return True

    def use_full_dynamics(self) -> None:
        """Run the full dynamics every step even where the event-driven path applies (the
        same numbers: for tests and ablations)."""
        self.event_driven = False
        self.plan = self.full_plan
        self.kernel.fires_at = None

    @property
    def stats(self) -> DetectionStats:
        return self.kernel.stats

    @torch.no_grad()
    def compute_grads(self, inputs, targets):
        if self.event_driven:
            return self._event_driven(inputs, targets)
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
            learned = run_plan(k, self.full_plan, State(k, start, mu), targets).updates
        for key, group in learned.items():
            k.accumulate(updates, key, group)
        k.finish()
        self.write_grads(updates, batch)
        return StepInfo(float(loss), outputs)

    def _event_driven(self, inputs, targets):
        """The same dynamics as :meth:`compute_grads`'s full loop, computing only the
        quantities that can change (the module doc's "Event-driven")."""
        k = self.kernel
        k.begin("predict", None)
        state = feedforward(k, inputs)            # the prediction phase's settled state
        outputs = {o: state.mu[o] for o in self.net.compiled.graph.outputs}
        loss = self.objective.value(outputs, targets)
        k.begin("learn", None)
        batch = next(iter(inputs.values())).shape[0]
        updates = run_plan(k, self.plan, state, targets, scale=self.grad_scale(batch)).updates
        k.finish()
        self.write_grads(updates, batch, scaled=True)
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
                f"every weight row gated by its node's trigger each step (no update schedule)"
                + ("; event-driven: only the quantities that can change are computed (the prediction "
                   "phase as one feed-forward pass, its settled state; the learning phase below)"
                   if self.event_driven else "; full dynamics every step"))
        return head + "\n" + self.plan.describe(self.net.compiled)
