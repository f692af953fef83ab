"""``pc`` and ``ipc``: predictive coding as an energy model, on the energy engine.

The rule clamps what the batch clamps (by role, or by the spec's ``clamp:`` section), infers
the free values with the engine (:mod:`pcgraph.compile.energy`): a forward start where one
exists, ``T`` steps of an activity optimizer, and takes each edge's local update
``-dF/dtheta_e = sum_b (d op_e/d theta)^T e_c`` from the errors at the end (``update_at:
end``, PC-SE / PC-CE by the output's loss) or at every step (``ipc``: incremental PC, the
weights stepped by the trainer's optimizer beside the values, Salvatori et al. 2024).

**Nudging** (as PCX benchmarks it): each clamped output's target ``y`` is replaced by
``mu_L + beta (y - mu_L)`` (cross-entropy: ``softmax(mu_L) + beta (onehot(y) - softmax(mu_L))``,
a soft target), ``mu_L`` the prediction at the start, and the update is scaled by ``1/beta``:
``positive`` (``beta > 0``), ``negative`` (``-|beta|``) or ``centered`` (``(Delta(+|beta|) -
Delta(-|beta|)) / (2 |beta|)``). With ``beta = 1`` positive nudging is plain PC.

Settings:
    T (int, 20): inference steps.
    optimizer ({name: sgd, lr: 0.1}): the activity optimizer: any torch.optim name with its
        options, or ``euler`` / ``heun`` (``lr`` is the step ``dt``).
    init ("forward"): ``forward`` (the feed-forward value where the clamps allow, else
        zeros), ``zeros``, ``noise`` (``N(0, init_std^2)``).
    init_std (0): noise on a forward start (IL's ``init_noise``), or the noise init's std.
    tol (None): stop inference once the energy falls by less than this in one step.
    update_at ("end"): ``end`` (after the last step), an int step, or ``every`` (iPC).
    nudge (None): ``positive``, ``negative`` or ``centered``; ``beta`` (1.0) its strength, growing
        by ``beta_step`` every epoch (capped at 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..compile import PCKernel, build_plan
from ..compile.energy import INITS, Clamps, EnergyEngine, EngineConfig, check_activity_optimizer
from ..errors import SpecError
from ..settings import check_steps
from .base import RULES, GeneratorState, LearningRule, StepInfo
from .il import engine_step, engine_updates, planned_step, planned_updates

NUDGES = ("positive", "negative", "centered")


@dataclass
class PCSettings:
    T: int = 20
    optimizer: dict | str = field(default_factory=lambda: {"name": "sgd", "lr": 0.1})
    init: str = "forward"
    init_std: float = 0.0
    tol: float | None = None
    update_at: int | str = "end"
    nudge: str | None = None
    beta: float = 1.0
    #: beta grows by this every epoch (PCX's schedule: beta_e = beta + beta_step (e - 1), |beta_e| <= 1)
    beta_step: float = 0.0

    def check(self, where: str = "train.algorithm") -> None:
        if self.T < 0:
            raise SpecError(f"T must be >= 0, got {self.T}", f"{where}.T")
        check_steps(self.T, f"{where}.T")
        self.optimizer = check_activity_optimizer(self.optimizer, f"{where}.optimizer")
        if self.init not in INITS:
            raise SpecError(f"unknown init {self.init!r} (known: {', '.join(INITS)})", f"{where}.init")
        if self.init_std < 0:
            raise SpecError(f"init_std must be >= 0, got {self.init_std}", f"{where}.init_std")
        if self.tol is not None and self.tol < 0:
            raise SpecError(f"tol must be >= 0, got {self.tol}", f"{where}.tol")
        if isinstance(self.update_at, str) and self.update_at not in ("end", "every"):
            raise SpecError(f"update_at must be 'end', 'every' or an integer step, got {self.update_at!r}",
                            f"{where}.update_at")
        if isinstance(self.update_at, int) and not 0 <= self.update_at <= self.T:
            raise SpecError(f"update_at must be a step in [0, T = {self.T}], got {self.update_at}",
                            f"{where}.update_at")
        if self.nudge is not None and self.nudge not in NUDGES:
            raise SpecError(f"unknown nudge {self.nudge!r} (known: {', '.join(NUDGES)})", f"{where}.nudge")
        if self.beta == 0:
            raise SpecError("beta must not be 0 (the update is scaled by 1/beta)", f"{where}.beta")
        if self.nudge is not None and self.update_at == "every":
            raise SpecError("nudging takes its update after inference, not at every step (update_at: every)",
                            f"{where}.nudge")


@RULES.register("pc")
class EnergyPC(GeneratorState, LearningRule):
    name = "pc"
    Settings = PCSettings
    needs_order = False

    def __init__(self, net, settings=None, seed: int = 0, reduction: str = "mean"):
        super().__init__(net, settings, seed, reduction)
        s = self.settings
        cg = net.compiled
        config = EngineConfig(T=s.T, optimizer=dict(s.optimizer), init=s.init, init_std=s.init_std, tol=s.tol,
                              update_at=s.update_at)
        self.kernel = PCKernel(net, self.objective, config.lr if config.plain else 1.0)
        self.engine = EnergyEngine(self.kernel, config, cg.priors())
        self.generator = torch.Generator(device=net.device).manual_seed(seed + 7919)
        self.plan = None
        if self.engine.planned_config():
            t_c = s.T if s.update_at == "end" else s.update_at
            self.update_times = [t_c if cg.has_params(i) else None for i in range(len(cg.edges))]
            # plain sgd from the forward start is IL: its compiled plan (known zeros, liveness)
            self.plan = build_plan(cg, self.update_times, c1=(s.init_std == 0))

    @property
    def steps_optimizer(self) -> bool:
        return self.settings.update_at == "every"

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def current_beta(self) -> float:
        """``|beta + beta_step (epoch - 1)|``, at most 1 (the sign comes from ``nudge``)."""
        s = self.settings
        return min(abs(s.beta + s.beta_step * (getattr(self, "epoch", 1) - 1)), 1.0) if s.beta_step else abs(s.beta)

    def compute_grads(self, inputs, targets):
        clamps = Clamps.by_role(inputs, targets)
        if self.settings.nudge is not None:
            return self._nudged(clamps)
        if self.plan is not None and self.engine.plannable(clamps):
            return self.programmed_step(inputs, targets) or planned_step(self, inputs, targets, self.settings.init_std)
        if not self.steps_optimizer:
            info = self.programmed_step(inputs, targets)
            if info is not None:
                return info
        return engine_step(self, clamps, self._ipc_callback(clamps) if self.steps_optimizer else None)

    def functional_step(self, inputs, targets):
        clamps = Clamps.by_role(inputs, targets)
        if self.plan is not None and self.engine.plannable(clamps):
            return (*planned_updates(self, inputs, targets, self.settings.init_std), None)
        return engine_updates(self, clamps)

    def program_refusal(self) -> str | None:
        s = self.settings
        if s.nudge is not None:
            return "nudging runs two phases with data-dependent targets: not yet a program"
        if s.update_at == "every":
            return "ipc steps the optimizers at every inference step (outside the program)"
        if s.tol is not None:
            return "tol stops inference when the energy settles: a data-dependent loop length"
        if s.init_std or s.init == "noise":
            return "the start draws noise every step (its randomness would be baked into the program)"
        return super().program_refusal()

    def _ipc_callback(self, clamps: Clamps):
        """``on_update(updates, t)``: write this step's updates and step the weights (iPC)."""
        if self._step_optimizers is None:
            raise RuntimeError("ipc steps the weights itself at every inference step: bind the trainer's "
                               "optimizers first (rule.bind_optimizers)")
        targets = self.engine.targets_of(clamps)
        if targets:        # the reduction counts the labelled samples from the first step on
            self.objective.labelled = self.objective.count_labelled(targets, targets)
        batch = clamps.batch()

        def on_update(updates, t):
            self.write_grads(updates, batch)
            self._step_optimizers()
        return on_update

    # ---- nudging ---------------------------------------------------------------------------
    @torch.no_grad()
    def _nudged(self, clamps: Clamps) -> StepInfo:
        s, eng = self.settings, self.engine
        batch = clamps.batch()
        x0 = eng.start(clamps, self.generator)
        targets = eng.targets_of(clamps)
        mu0, _ = eng.errors(x0, targets)
        loss = float(self.objective.value({o: mu0[o] for o in targets}, targets)) if targets else 0.0

        def phase(beta: float) -> dict:
            values = dict(clamps.values)
            for o, y in targets.items():
                values[o] = self.nudged_target(o, mu0[o], y, beta)
            return eng.run(Clamps(values, clamps.masks, clamps.starts), self.generator, x=dict(x0)).updates

        b = self.current_beta()
        if s.nudge == "centered":
            plus, minus = phase(b), phase(-b)
            updates = {key: {n: (g - minus[key][n]) / (2 * b) for n, g in group.items()}
                       for key, group in plus.items()}
        else:
            beta = b if s.nudge == "positive" else -b
            updates = {key: {n: g / beta for n, g in group.items()} for key, group in phase(beta).items()}
        self.write_grads(updates, batch)
        return StepInfo(loss, {o: mu0[o] for o in targets})

    def nudged_target(self, o: str, mu: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
        """``mu + beta (y - mu)`` (MSE) or ``p + beta (onehot(y) - p)``, ``p = softmax(mu)`` (CE)."""
        loss = self.net.compiled.losses[o]
        if loss.name == "cross_entropy":
            flat = mu.reshape(mu.shape[0], -1)
            p = torch.softmax(flat, 1)
            if y.is_floating_point():
                onehot = y.reshape(p.shape)
            else:               # an unlabelled sample (-100) gets a NaN row: no error, no update
                onehot = torch.nn.functional.one_hot(y.clamp(min=0), flat.shape[1]).to(p.dtype)
                onehot = onehot.masked_fill((y < 0).unsqueeze(1), float("nan"))
            return p + beta * (onehot - p)
        return mu + beta * (y - mu)

    def describe(self) -> str:
        s = self.settings
        opt = ", ".join(f"{k}={v}" for k, v in s.optimizer.items())
        head = (f"rule {self.name}: T={s.T} activity optimizer ({opt}) init={s.init} init_std={s.init_std} "
                f"tol={s.tol} update_at={s.update_at}"
                + (f" nudge={s.nudge} beta={s.beta}" if s.nudge else ""))
        if self.plan is not None:
            head += "\n(plain sgd from the forward start on an ordered graph: IL's compiled plan)\n" + \
                self.plan.describe(self.net.compiled)
        else:
            head += "\n(the energy engine's general loop: every quantity at every step)"
        return head


@dataclass
class IPCSettings(PCSettings):
    update_at: int | str = "every"


@RULES.register("ipc")
class IncrementalPC(EnergyPC):
    """``ipc``: ``pc`` with ``update_at: every`` (the weights step at every inference step)."""

    name = "ipc"
    Settings = IPCSettings
