"""``il``: inference learning (Whittington & Bogacz 2017; Song et al. 2020, Alg. 1).

Hidden values start at their feed-forward predictions (plus ``N(0, init_noise^2)``),
the output is clamped to the target, the values relax for ``T`` steps of
``x <- x + gamma * (-eps_v + sum_c J_cv^T eps_c)``, and edge ``p -> c`` takes its local
update ``-(1/B) sum_b op^T eps_c`` at step ``update_at`` — one integer ``t_c`` for every
edge, or ``depth`` for ``t = depth(c)`` (Z-IL's condition C2).

Settings:
    T (int, 20): inference steps.
    gamma (float, 0.1): integration step (C3 is ``gamma = 1``).
    update_at (int | "depth" | None): when to update; None means ``t_c = T``.
    init_noise (float, 0): std of the noise on the initial hidden values (C1 is 0).
    reference (bool, False): run the reference interpreter (every quantity, every step)
        instead of the compiled plan; for testing, the results are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..compile import PCKernel, build_plan, feedforward, run_plan, run_reference
from ..compile.energy import Clamps, EnergyEngine, EngineConfig
from ..errors import CompileError, SpecError
from ..settings import check_steps
from .base import RULES, GeneratorState, LearningRule, StepInfo


@dataclass
class ILSettings:
    T: int | None = 20
    gamma: float = 0.1
    update_at: int | str | None = None
    init_noise: float = 0.0
    reference: bool = False

    def check(self, where: str = "train.algorithm") -> None:
        if self.T is not None and self.T < 0:
            raise SpecError(f"T must be >= 0, got {self.T}", f"{where}.T")
        check_steps(self.T, f"{where}.T")
        check_steps(self.update_at, f"{where}.update_at")
        if isinstance(self.update_at, str) and self.update_at != "depth":
            raise SpecError(f"update_at must be an integer step or 'depth', got {self.update_at!r}",
                            f"{where}.update_at")
        if isinstance(self.update_at, int) and self.update_at < 0:
            raise SpecError(f"update_at must be >= 0, got {self.update_at}", f"{where}.update_at")
        if self.gamma <= 0:
            raise SpecError(f"gamma must be > 0, got {self.gamma}", f"{where}.gamma")
        if self.init_noise < 0:
            raise SpecError(f"init_noise must be >= 0, got {self.init_noise}", f"{where}.init_noise")


@RULES.register("il")
class InferenceLearning(GeneratorState, LearningRule):
    name = "il"
    Settings = ILSettings
    Kernel = PCKernel

    needs_order = False

    def __init__(self, net, settings=None, seed: int = 0, reduction: str = "mean"):
        super().__init__(net, settings, seed, reduction)
        s = self.settings
        cg = net.compiled
        t_c = None
        if s.update_at == "depth":
            if not cg.ordered:      # a graph with cycles, or clamped by a clamp: section
                raise CompileError(f"update_at: depth needs depths, which a graph "
                                   f"{'with a cycle' if cg.cycle else 'clamped by clamp:'} does not have; "
                                   "give an integer step", "train.algorithm.update_at")
            depth_max = max((cg.depth[cg.edges[i].dst] for i in range(len(cg.edges)) if cg.has_params(i)),
                            default=0)
            T = depth_max if s.T is None else s.T
            if T < depth_max:
                raise SpecError(f"T = {T} is too short for update_at: depth (the deepest update is at "
                                f"t = {depth_max})", "train.algorithm.T")
            times = [cg.depth[e.dst] for e in cg.edges]
        else:
            T = s.T if s.T is not None else 20
            t_c = T if s.update_at is None else s.update_at
            if t_c > T:
                raise SpecError(f"update_at = {t_c} is after the last inference step T = {T}",
                                "train.algorithm.update_at")
            times = [t_c] * len(cg.edges)
        self.T = T
        self.kernel = self.Kernel(net, self.objective, s.gamma)
        self.generator = torch.Generator(device=net.device).manual_seed(seed + 7919)
        self.engine = EnergyEngine(self.kernel, EngineConfig(T=T, optimizer={"name": "sgd", "lr": s.gamma},
                                                             init="forward", init_std=s.init_noise, update_at=t_c),
                                   cg.priors())
        if cg.ordered:
            self.update_times = [t if cg.has_params(i) else None for i, t in enumerate(times)]
            self.plan = build_plan(cg, self.update_times, c1=(s.init_noise == 0))
        else:               # order-free: the engine's general loop (same step, start and update time)
            self.update_times = None
            self.plan = None

    def compute_grads(self, inputs, targets):
        s, k = self.settings, self.kernel
        if self.plan is None:           # order-free: the engine's general loop
            return self.programmed_step(inputs, targets) or engine_step(self, Clamps.by_role(inputs, targets))
        if not s.reference:
            return self.programmed_step(inputs, targets) or planned_step(self, inputs, targets, s.init_noise)
        state = feedforward(k, inputs)         # the reference interpreter: every quantity, every step
        outputs = {o: state.mu[o] for o in self.net.compiled.graph.outputs}
        loss = self.objective.value(outputs, targets)
        _, _, updates = run_reference(k, self.update_times, inputs, targets, self.T, s.init_noise, self.generator)
        self.write_grads(updates, next(iter(inputs.values())).shape[0])
        return StepInfo(float(loss), outputs)

    def functional_step(self, inputs, targets):
        if self.plan is None:
            return engine_updates(self, Clamps.by_role(inputs, targets))
        return (*planned_updates(self, inputs, targets, self.settings.init_noise), None)

    def program_refusal(self) -> str | None:
        s = self.settings
        if s.reference:
            return "reference: true runs the reference interpreter"
        if s.init_noise:
            return "init_noise draws noise every step (its randomness would be baked into the program)"
        return super().program_refusal()

    def describe(self) -> str:
        s = self.settings
        head = (f"rule {self.name}: T={self.T} gamma={s.gamma} update_at={s.update_at if s.update_at is not None else self.T} "
                f"init_noise={s.init_noise}{' (reference interpreter)' if s.reference else ''}")
        if self.plan is None:
            return head + "\n(order-free graph: the energy engine's general loop, every quantity at every step)"
        return head + "\n" + self.plan.describe(self.net.compiled)


def planned_updates(rule, inputs, targets, noise: float, loss: list | None = None):
    """IL's compiled plan (``rule.kernel``, ``rule.plan``) on one batch from the feed-forward
    start, perturbed by ``noise``: ``(outputs, updates)``, the feed-forward predictions of the
    outputs and the updates scaled by the rule's batch scale. ``loss``: a list to which the
    feed-forward loss is appended, taken before inference (the order the eager step has
    always used)."""
    k = rule.kernel
    state = feedforward(k, inputs)
    outputs = {o: state.mu[o] for o in rule.net.compiled.graph.outputs}
    if loss is not None:
        loss.append(rule.objective.value(outputs, targets))
    if noise:
        state.perturb(noise, rule.generator)
    batch = next(iter(inputs.values())).shape[0]
    return outputs, run_plan(k, rule.plan, state, targets, scale=rule.grad_scale(batch)).updates


def planned_step(rule, inputs, targets, noise: float) -> StepInfo:
    """One batch by IL's compiled plan: the engine's configuration *plain sgd, forward start,
    one update step*, as ``il`` always ran it. The loss is the feed-forward prediction's."""
    loss: list = []
    outputs, updates = planned_updates(rule, inputs, targets, noise, loss)
    rule.write_grads(updates, next(iter(inputs.values())).shape[0], scaled=True)
    return StepInfo(float(loss[0]), outputs)


def engine_updates(rule, clamps: Clamps):
    """:meth:`LearningRule.functional_step` through ``rule.engine``'s general loop:
    ``(outputs, updates, energy)``, the outputs' predictions at the start, the updates
    scaled by the rule's batch scale, the energy (summed over the batch) at the start and at
    the end."""
    out = rule.engine.run(clamps, rule.generator)
    scale = rule.grad_scale(clamps.batch())
    grads = [g for group in out.updates.values() for g in group.values()]
    if grads:           # (write_grads's one multiply)
        torch._foreach_mul_(grads, scale)
    return dict(out.start_mu), out.updates, (out.start_energy, out.final_energy)


def engine_step(rule, clamps: Clamps, on_update=None) -> StepInfo:
    """One batch through ``rule.engine``'s general loop. The loss reported is the objective of
    the loss-clamped outputs' predictions at the start (the feed-forward loss on an ordered
    graph, as il reports it), else the energy at the end (an order-free graph has no
    feed-forward prediction); the energy per sample before and after inference rides along."""
    batch = clamps.batch()
    out = rule.engine.run(clamps, rule.generator, on_update=on_update)
    if out.targets and out.start_mu:
        loss = float(rule.objective.value(out.start_mu, out.targets))
    else:
        loss = float(out.final_energy) * rule.objective.scale(batch)
    if on_update is None:
        rule.write_grads(out.updates, batch)
    return StepInfo(loss, {v: out.values[v] for v in rule.net.compiled.graph.outputs if v in out.values},
                    out.energy_per_sample(batch))
