"""The learning-rule interface.

A rule turns one mini-batch into parameter gradients (``p.grad``, accumulated), which
torch optimizers then apply; so every rule works with every optimizer (Z-IL + Adam
equals BP + Adam). Each rule lives in its own file, keeps its settings in one dataclass
(``Settings``, parsed by :func:`pcgraph.settings.parse_dataclass`) and registers itself
by name.

A rule is an ``nn.Module``: it may own parameters and buffers (feedback matrices,
learned inverses, counters) as modules do. Its ``state_dict`` holds exactly those (the
network is not a submodule) plus ``get_extra_state`` (RNG state, statistics), and the
trainer saves and restores it with every checkpoint. A rule's trainable parameters are
trained by the spec's optimizer as a second parameter group, or by an optimizer of its
own when :meth:`LearningRule.optimizer_config` returns one.

The batch reduction lives in the rule's :class:`~pcgraph.ops.Objective`: a rule sums
its local updates over the batch and :meth:`LearningRule.write_grads` scales them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..compile import PCNetwork
from ..registry import Registry
from ..settings import parse_dataclass


@dataclass
class StepInfo:
    loss: float                          # the reduced objective of the feed-forward prediction
    outputs: dict[str, torch.Tensor]
    #: energy-based rules: the energy per sample at the start and at the end of inference
    energy: tuple[float, float] | None = None


@dataclass
class NoSettings:
    pass


class LearningRule(nn.Module):
    name: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings
    #: the rule needs a feed-forward order (an acyclic graph clamped by its roles); the
    #: energy-based rules (il, pc, ipc) run on any graph
    needs_order: ClassVar[bool] = True

    def __init__(self, net: PCNetwork, settings=None, seed: int = 0, reduction: str = "mean"):
        super().__init__()
        object.__setattr__(self, "net", net)      # not a submodule: the rule's state is its own
        self.settings = settings if settings is not None else self.Settings()
        self.seed = seed
        self.objective = net.compiled.objective(reduction)
        if self.needs_order:
            net.compiled.require_order(self.name)
        #: set by the trainer: steps every optimizer and zeroes the gradients (rules that update
        #: the weights several times per batch, such as iPC, call it themselves)
        self._step_optimizers = None

    #: the rule steps the optimizers itself inside :meth:`compute_grads` (iPC)
    @property
    def steps_optimizer(self) -> bool:
        return False

    def bind_optimizers(self, step) -> None:
        """``step()``: apply the gradients written so far and zero them (the trainer's optimizers)."""
        object.__setattr__(self, "_step_optimizers", step)

    @classmethod
    def parse_settings(cls, raw: dict, where: str = "train.algorithm"):
        """Build ``Settings`` from a spec mapping: unknown keys and wrong types are errors."""
        return parse_dataclass(cls.Settings, raw, where, f"rule {cls.name!r}")

    # ---- what a rule does ------------------------------------------------------------
    def compute_grads(self, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> StepInfo:
        raise NotImplementedError

    def describe(self) -> str:
        return f"rule {self.name}: {self.settings}"

    def start_epoch(self, epoch: int) -> None:
        """Called by the trainer before epoch ``epoch`` (1-based), e.g. for schedules that
        alternate between losses by epoch."""

    # ---- parameters the rule owns ------------------------------------------------------
    def optimizer_config(self) -> dict | None:
        """None: the rule's trainable parameters join the spec's optimizer (as a second
        parameter group); a mapping such as ``{name: adam, lr: 1e-3}``: their own."""
        return None

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ---- the step as a program (pcgraph.compile.program) ----------------------------------
    #: how the step runs: "eager" (the executor), or a program: "fx", "inductor", "cudagraph"
    #: (``train.program``; see :mod:`pcgraph.compile.program`)
    program_mode: str = "eager"

    def functional_step(self, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]):
        """The step as a pure function of the parameters and the batch: ``(outputs, updates,
        energy)``: the output nodes' feed-forward predictions (the reported loss is theirs),
        ``key -> name -> update`` already scaled by :meth:`grad_scale`, and for energy-based
        steps the energy summed over the batch at the start and at the end of inference (else
        None); no ``p.grad`` written, no host sync. A rule that has one can be traced into a
        :class:`~pcgraph.compile.program.StepProgram`."""
        raise NotImplementedError

    def program_refusal(self) -> str | None:
        """Why this rule's step cannot be a program with its settings (None: it can)."""
        if type(self).functional_step is LearningRule.functional_step:
            return f"rule {self.name!r} has no functional step"
        return None

    def program(self, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], mode: str | None = None):
        """The traced program of this step for batches like these (cached per batch
        signature), or None when the step cannot be one (``program_refusal_reason`` says why)."""
        from ..compile.program import step_program
        return step_program(self, inputs, targets, mode or (self.program_mode if self.program_mode != "eager" else "fx"))

    def programmed_step(self, inputs, targets) -> StepInfo | None:
        """:meth:`compute_grads` through the step's program when ``program_mode`` asks for one
        and the step can be one; None: run eagerly."""
        if self.program_mode == "eager":
            return None
        prog = self.program(inputs, targets)
        if prog is None:
            return None
        outputs, updates, energy = prog(inputs, targets)
        batch = next(iter(inputs.values())).shape[0]
        self.write_grads(updates, batch, scaled=True)
        if energy is not None:
            energy = (float(energy[0]) / batch, float(energy[1]) / batch)
        return StepInfo(float(self.objective.value(outputs, targets)), outputs, energy)

    # ---- the one place where the batch is reduced -----------------------------------------
    def grad_scale(self, batch: int) -> float:
        """``-r``: the factor between summed local updates and the gradient written."""
        return -self.objective.scale(batch)

    def write_grads(self, updates: dict, batch: int, scaled: bool = False) -> None:
        """``p.grad += -r * sum_b(local updates)`` for the network's parameter groups
        (``r`` from the objective's reduction): descent on the reduced objective.
        ``scaled``: the updates already carry the factor :meth:`grad_scale` (the executor
        folds it into the VJPs: ``run_plan(..., scale=)``)."""
        params = self.__dict__.get("_flat_params")
        if params is None:      # (key, name) -> parameter, without ModuleDict lookups per step
            params = {(k, n): p for k, group in self.net.params.items() for n, p in group.items()}
            self.__dict__["_flat_params"] = params
        if not scaled:          # one multiply for all of them
            grads = [g for group in updates.values() for g in group.values()]
            if grads:
                torch._foreach_mul_(grads, self.grad_scale(batch))
        for key, group in updates.items():
            for name, g in group.items():
                p = params[key, name]
                p.grad = g if p.grad is None else p.grad.add_(g)

    def per_sample_loss(self, info: StepInfo, batch: int) -> float:
        return self.objective.per_sample(info.loss, batch)


RULES: Registry[type[LearningRule]] = Registry("learning rule")


class GeneratorState:
    """A rule whose ``self.generator`` (noise, initial values) is saved and resumed with the
    checkpoint (``nn.Module``'s extra state)."""

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state):
        if state and state.get("generator") is not None:
            self.generator.set_state(state["generator"])
