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

No value is read back to the host inside a step beyond the reported loss (no sync on an
accelerator): the wave's gate is known from the graph; phi's is a mask whose updates are
kept by ``torch.where`` where a node fired (:class:`PhiKernel`; on a CPU, where a read costs
nothing and computing the updates of the steps that do not fire does, it reads the mask and
skips them, the same numbers); the counts are summed on the device and come back when
``stats`` is read.
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
    """The PC kernel with Fa-Z-IL's gate on ``learn_signal`` (and its bookkeeping).

    Nothing is read back to the host inside a step: the wave's gate is a bit known from the
    graph, phi's a tensor mask (:class:`PhiKernel`), and the detection counts are summed on the
    device and added to :attr:`stats` when it is read (one read for any number of steps)."""

    def __init__(self, net, objective, gamma: float, trigger: str, t_d: int):
        super().__init__(net, objective, gamma)
        cg = self.cg
        self.trigger, self.t_d = trigger, t_d
        self.learners = {cg.edges[i].dst for i in range(len(cg.edges)) if cg.has_params(i)}
        self.children = {v: {cg.edges[i].dst for i, _ in cg.out_edges(v)} for v in cg.order}
        self.dst = [e.dst for e in cg.edges]
        self._stats = DetectionStats()
        #: counts taken on the device, not yet in ``_stats``: the event-driven path's (0-dim
        #: integer tensors in ``_counts``, summed every ``_FOLD`` into the int64 ``_pending_n``;
        #: each adds to expected, detected and judged) and the full path's four (int64 ``[4]``
        #: in ``_FIELDS`` order); None: nothing pending
        self._counts: list[torch.Tensor] = []
        self._pending_n: torch.Tensor | None = None
        self._pending_full: torch.Tensor | None = None
        #: the event-driven path's small errors of this run, counted together at :meth:`finish`
        self._small: list[torch.Tensor] = []
        #: the wave's spike time of every node it reaches (outputs 0, a node one step after
        #: its first child): a function of the graph alone, see :func:`spike_times`
        self.spike = spike_times(cg)
        #: set by the rule for the event-driven wave (``fires_at[t]``: the learners whose
        #: spike arrives at step ``t``); None: the trigger is evaluated from the values
        self.fires_at: list[list[str]] | None = None

    @property
    def stats(self) -> DetectionStats:
        """The detection counts, with those still on the device added (a host sync, once per
        read: never inside a step)."""
        self._fold_counts()
        for name in ("_pending_n", "_pending_full"):
            pending = getattr(self, name)
            if pending is None:
                continue
            setattr(self, name, None)
            counts = pending.tolist()
            if name == "_pending_n":
                counts = [counts, counts, counts, 0]
            for field, n in zip(_FIELDS, counts):
                setattr(self._stats, field, getattr(self._stats, field) + n)
        return self._stats

    def _fold_counts(self) -> None:
        """Sum the pending 0-dim counts into ``_pending_n`` (one op for many steps' counts)."""
        counts, self._counts = self._counts, []
        if not counts:
            return
        total = torch.stack([n.to(torch.int64) for n in counts]).sum()
        self._pending_n = total if self._pending_n is None else self._pending_n.add_(total)

    def begin(self, phase: str, shapes: dict[str, tuple] | None) -> None:
        self.phase = phase
        self.gate: dict[str, torch.Tensor | bool] = {}
        if self.fires_at is not None:       # the wave, event-driven: one count per run
            self._small = []
            return
        dev = self.net.device
        if phase == "predict":
            self.rest = {v: torch.zeros(shapes[v], device=dev, dtype=torch.long) for v in shapes}
            #: steps observed since the prediction phase began: ``rest`` is at most this
            self.age = 0
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
        self.gate, self.fire_any = {}, {}
        # phi fires where rest >= t_d, and rest counts zero steps since the prediction phase
        # began: none can fire before t_d steps have passed (known without reading a value)
        can_fire = self.age >= self.t_d
        self.age += 1
        for v in computed:
            nonzero = eps[v] != 0
            if self.trigger == "phi":
                fire = (nonzero & (self.rest[v] >= self.t_d)) if can_fire else None
                self.rest[v] = torch.where(nonzero, torch.zeros_like(self.rest[v]), self.rest[v] + 1)
            else:
                fire = None
                if learning and v not in self.spiked and (
                        (t == 0 and cg.role(v) == "output")
                        or any(self.spiked.get(c) == t - 1 for c in self.children[v])):
                    self.spiked[v] = t
                    fire = True     # the spike: one bit for the whole node, from the graph alone
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
            self.gate[v] = fire
            if fire is not True:        # phi: whether any entry fires, on the device (PhiKernel)
                self.fire_any[v] = fire.any()

    def fired(self, v: str) -> torch.Tensor:
        """Whether node ``v`` fired anywhere in this run (phi: every fire is on a non-zero
        error, so it is in ``right`` or ``wrong``), on the device."""
        return (self.right[v] | self.wrong[v]).any()

    def _observe_wave(self, t, eps):
        """The wave trigger on the event-driven path (learning phase): the learners whose
        spike arrives now fire, each with its whole error (the spike is one bit per node: the
        plan updates an edge only then, and :meth:`learn_signal` passes the error on).
        Statistics as :meth:`observe` counts them: a spike arrives only at ``t = depth``
        (checked when the rule is built), so every non-zero error there is detected and
        none is a false fire."""
        fires_at = self.fires_at
        if t >= len(fires_at) or self.phase != "learn":
            return
        for v in fires_at[t]:
            e = eps.get(v)
            if e is None:           # (absent: never computed, exactly 0)
                continue
            if e.numel() >= _BIG:   # counted now, while the error is in cache
                self._counts.append(_nonzero(e))
            else:                   # small ones together at the end
                self._small.append(e)

    def batched_param_vjp(self, i, signals, inputs, scale):
        """:meth:`PCKernel.batched_param_vjp`, whose stacked errors are also counted where they
        are learners' errors not counted yet (an unrolled RNN's steps: one buffer for both,
        counted in place once the update has been taken from it: no second buffer)."""
        s = torch.cat(list(signals)) if len(signals) > 1 else signals[0]
        u = torch.cat(list(inputs)) if len(inputs) > 1 else inputs[0]
        update = self._dense_update(i, s, u, scale)
        small = self._small
        if len(signals) > 1 and len(small) >= len(signals):
            ids = {id(e) for e in signals}
            if len(ids) == len(signals) and ids <= {id(e) for e in small}:
                self._counts.append(_nonzero(s, own=True))      # (s: this cat's, read by no one now)
                self._small = [e for e in small if id(e) not in ids]
        return update

    def learn_signal(self, i, t, eps_c):
        if self.fires_at is not None:   # the plan updates edge i only at its node's spike
            return eps_c
        return eps_c if self.gate.get(self.dst[i]) is True else None    # (the wave: the bit)

    def finish(self) -> None:
        if self.fires_at is not None:
            small, self._small = self._small, []
            if small:
                self._counts.extend(_nonzero_counts(small))
                if len(self._counts) >= _FOLD:
                    self._fold_counts()
            return
        learners = sorted(self.learners)
        exp = [self.expected[v] for v in learners]
        counts = [[e.sum() for e in exp],
                  [(e & self.right[v] & ~self.wrong[v]).sum() for e, v in zip(exp, learners)],
                  [(e | self.wrong[v]).sum() for e, v in zip(exp, learners)]]
        vec = torch.stack([torch.stack(c).sum() for c in counts] + [self.n_false])
        if self._pending_full is None:
            self._pending_full = vec
        else:
            self._pending_full.add_(vec)


class PhiKernel(TriggeredKernel):
    """Song's ``phi``: a mask per error entry, applied without reading it on the host. At
    every step where an entry could fire, each learner's update is computed from its masked
    error and added where some entry of its node fired (``torch.where`` on the device), as
    ``-0.0`` elsewhere, which leaves every sum bit for bit as it was (``x + -0.0 == x`` for
    every float, NaN and infinities included): the sums are those of the steps that fired,
    whatever the others computed (``0 * inf`` is NaN). A group none of whose nodes fired in
    the whole run is dropped by the rule (its ``grad`` untouched).

    ``read_gate`` (default: on a CPU, where reading a value is no sync and the updates of the
    steps that do not fire are the cost): read whether a node fires and skip its update where
    none does, the same numbers."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.read_gate = self.net.device.type == "cpu"

    def learn_signal(self, i, t, eps_c):
        v = self.dst[i]
        fire = self.gate.get(v)
        if fire is None:
            return None
        if self.read_gate:
            if not bool(self.fire_any[v]):
                return None
            self._fired_now = True
        else:
            self._fired_now = self.fire_any[v]      # read by accumulate, which follows
        return eps_c * fire

    def accumulate(self, acc: dict, key: str, grads: dict[str, torch.Tensor]) -> None:
        """The update just computed from :meth:`learn_signal`'s masked error, where its node
        fired (``-0.0`` elsewhere)."""
        fired = self._fired_now
        if fired is not True:
            grads = {name: torch.where(fired, g, -0.0) for name, g in grads.items()}
        PCKernel.accumulate(acc, key, grads)


#: DetectionStats' counts, in the order of the kernel's pending ``[4]``
_FIELDS = ("expected", "detected", "judged", "false_fires")
#: errors at least this large are counted on their own (the rest are concatenated first)
_BIG = 2 ** 14
#: pending 0-dim counts summed into one at a time
_FOLD = 256
#: a float dtype -> (the integer dtype of its size, the mask of all bits but the sign)
_BITS = {torch.float32: (torch.int32, 0x7FFF_FFFF), torch.float64: (torch.int64, 0x7FFF_FFFF_FFFF_FFFF),
         torch.float16: (torch.int16, 0x7FFF), torch.bfloat16: (torch.int16, 0x7FFF)}
#: (integer dtype, device) -> that mask as a 0-dim tensor (a Python int is converted at every call)
_MASKS: dict = {}


def _nonzero(e: torch.Tensor, own: bool = False) -> torch.Tensor:
    """The number of non-zero entries of ``e`` (a NaN counts, ``-0.0`` does not: ``e != 0``),
    a 0-dim integer tensor on ``e``'s device: branch-free (``count_nonzero`` branches per
    entry, slow on errors that are half zeros, relu's) and exact for any value: an entry is
    non-zero iff its bits other than the sign are, which ``clamp(bits & mask, max=1)`` counts.
    ``own``: ``e`` is a buffer no one reads afterwards, overwritten by the bits (a large fresh
    integer buffer costs more than the count: its page faults on a CPU)."""
    spec = _BITS.get(e.dtype)
    if spec is None:
        return torch.count_nonzero(e)
    dtype, mask = spec
    key = (dtype, e.device)
    m = _MASKS.get(key)
    if m is None:
        m = _MASKS[key] = torch.tensor(mask, dtype=dtype, device=e.device)
    bits = e.view(dtype)
    ones = (bits.bitwise_and_(m) if own else bits.bitwise_and(m)).clamp_(max=1)
    return ones.sum(dtype=torch.int32 if e.numel() < 2 ** 31 else torch.int64)


def _nonzero_counts(tensors: list) -> list[torch.Tensor]:
    """0-dim integer tensors whose sum is the number of non-zero entries in ``tensors``: large
    tensors counted one by one, small ones of a dtype, device and sample shape by
    ``count_nonzero`` when there are a few (one op each), else concatenated along the batch
    into one buffer and counted at once."""
    if len(tensors) <= 4 and all(e.numel() < _BIG for e in tensors):
        return [torch.count_nonzero(e) for e in tensors]
    out, small = [], {}
    for e in tensors:
        if e.numel() >= _BIG:
            out.append(_nonzero(e))
        else:
            small.setdefault((e.dtype, e.device, e.shape[1:]), []).append(e)
    for group in small.values():
        if len(group) <= 4 or group[0].dim() == 0:
            out.extend(torch.count_nonzero(e) for e in group)
        else:
            out.append(_nonzero(torch.cat(group), own=True))     # (the cat's own buffer)
    return out


def _count_nonzero(tensors: list) -> int:
    """The number of non-zero entries in ``tensors`` (a host read)."""
    return sum(int(n) for n in _nonzero_counts(tensors))


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
        kernel = PhiKernel if s.trigger == "phi" else TriggeredKernel
        self.kernel = kernel(net, self.objective, s.gamma, s.trigger, s.t_d)
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
        #: parameter group -> the nodes its edges feed (a group learns when one of them fires)
        self.group_nodes = {key: {cg.edges[i].dst for i in edges} for key, edges in cg.param_edges.items()}
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
            PCKernel.accumulate(updates, key, group)        # (not gated: summed as they are)
        k.finish()
        loss = self._drop_silent(updates, loss)
        self.write_grads(updates, batch)
        return StepInfo(loss, outputs)

    def _drop_silent(self, updates: dict, loss: torch.Tensor) -> float:
        """The reported loss, as a float; under ``phi`` also drop the updates of every parameter
        group none of whose nodes fired in this run (sums of the zeros the mask let through, where
        the gate used to skip them), so that their ``grad`` stays untouched as it always did
        (``None`` after ``zero_grad``, which an optimizer skips). Whether a node fired is read with
        the loss, in one host read."""
        k = self.kernel
        if k.trigger != "phi" or k.read_gate or not updates:
            return float(loss)
        learners = sorted(k.learners)
        flags = torch.stack([k.fired(v) for v in learners])
        read = torch.cat([loss.detach().reshape(1).to(torch.float64), flags.to(torch.float64)]).tolist()
        fired = {v for v, f in zip(learners, read[1:]) if f}
        for key in [key for key in updates if not fired & self.group_nodes[key]]:
            del updates[key]
        return read[0]

    def _event_driven(self, inputs, targets):
        """The same dynamics as :meth:`compute_grads`'s full loop, computing only the
        quantities that can change (the module doc's "Event-driven")."""
        k = self.kernel
        state = feedforward(k, inputs)            # the prediction phase's settled state
        outputs = {o: state.mu[o] for o in self.net.compiled.graph.outputs}
        loss = self.objective.value(outputs, targets)
        k.begin("learn", None)
        batch = next(iter(inputs.values())).shape[0]
        # the step reads only the updates (and the kernel counts the errors it keeps): the
        # executor drops each quantity after its last read, as under zil (the same numbers)
        updates = run_plan(k, self.plan, state, targets, scale=self.grad_scale(batch), release=True).updates
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
