"""Equivalence check: a rule against BP from the same parameters and mini-batches.

Both copies start from the same initial parameters ``theta_0``, see the same ``K``
mini-batches and use the same optimizer settings. For each parameter the report gives
the largest absolute difference of the final values and the *relative* difference of
the total updates, ``max|D_rule - D_bp| / max|D_bp|`` with ``D = theta_K - theta_0``: the
quantity that is 0 exactly when the rule reproduces BP's learning.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..errors import SpecError
from ..spec import AlgorithmSpec, Spec
from .trainer import Experiment


@dataclass
class ParamDiff:
    name: str
    max_abs: float
    max_rel: float
    bp_update: float


@dataclass
class CheckReport:
    algorithm: str
    steps: int
    dtype: str
    params: list[ParamDiff]

    @property
    def nothing_compared(self) -> str | None:
        """Why this report proves nothing (no steps, no parameters, every BP update exactly
        zero), or None."""
        if self.steps < 1:
            return "no mini-batch was compared (--steps must be at least 1)"
        if not self.params:
            return "the graph has no parameters to compare"
        if all(p.bp_update == 0 for p in self.params):
            return ("every BP update is exactly zero (a zero learning rate? a constant loss?): "
                    "there is nothing to compare against")
        return None

    @property
    def max_divergence(self) -> float:
        return max((p.max_rel for p in self.params), default=0.0)

    def format(self) -> str:
        w = max([len(p.name) for p in self.params] + [9])
        lines = [f"{self.algorithm} vs bp: {self.steps} steps, {self.dtype}",
                 f"{'parameter':<{w}}  {'max |abs diff|':>15}  {'max rel diff':>13}  {'max |bp update|':>15}"]
        for p in self.params:
            lines.append(f"{p.name:<{w}}  {p.max_abs:15.3e}  {p.max_rel:13.3e}  {p.bp_update:15.3e}")
        lines.append(f"max divergence: {self.max_divergence:.3e}")
        return "\n".join(lines)


def check_against_bp(spec: Spec, steps: int = 10, device="cpu", dtype="float64") -> CheckReport:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise SpecError(f"expected at least 1 mini-batch to compare, got {steps!r}", "--steps")
    # backprop, the reference, needs a feed-forward order: a graph without one is refused
    # before any data is read (an energy-based spec has no twin to compare with)
    from ..compile import compile_graph
    compile_graph(spec.model, spec.loss, clamped=spec.clamped_nodes()).require_order("bp")
    rule_exp = Experiment.build(spec, device, dtype)
    bp_spec = copy.deepcopy(spec)
    bp_spec.train.algorithm = AlgorithmSpec("bp")
    bp_net = copy.deepcopy(rule_exp.net)
    bp_exp = Experiment.build(bp_spec, device, dtype, with_data=False, net=bp_net,
                              steps_per_epoch=rule_exp.steps_per_epoch)
    start = {k: v.detach().clone() for k, v in rule_exp.net.state_dict().items()}
    done = 0
    while done < steps:
        before = done
        for inputs, targets, _ in rule_exp.batches.train():
            if done == steps:
                break
            bp_exp.step(inputs, targets)
            rule_exp.step(inputs, targets)
            done += 1
        if done == before:
            raise SpecError("the training set yields no mini-batch to compare", "data")
    diffs = []
    bp_state, rule_state = bp_exp.net.state_dict(), rule_exp.net.state_dict()
    for name, p0 in start.items():
        d_bp = bp_state[name] - p0
        d_rule = rule_state[name] - p0
        scale = float(d_bp.abs().max())
        err = float((d_rule - d_bp).abs().max())
        rel = err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))
        diffs.append(ParamDiff(name, float((rule_state[name] - bp_state[name]).abs().max()), rel, scale))
    return CheckReport(spec.train.algorithm.name, steps, str(torch.empty(0, dtype=rule_exp.net.dtype).dtype)
                       .replace("torch.", ""), diffs)
