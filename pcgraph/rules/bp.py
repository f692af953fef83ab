"""``bp``: backpropagation by torch autograd on the feed-forward graph — the reference."""

from __future__ import annotations

from .base import RULES, LearningRule, StepInfo


@RULES.register("bp", "backprop")
class Backprop(LearningRule):
    name = "bp"

    def compute_grads(self, inputs, targets):
        outputs = self.net(inputs)
        loss = self.objective.value(outputs, targets)
        loss.backward()
        return StepInfo(float(loss.detach()), {k: v.detach() for k, v in outputs.items()})

    def describe(self) -> str:
        return "rule bp: torch autograd through the feed-forward graph (the reference every rule is checked against)"
