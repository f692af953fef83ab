"""Learning rules, one per file, resolved by name through :data:`RULES`."""

from . import ao_sdtp, bp, dfa, dtp, fa, fazil, il, pc, sdtp, tp, zil  # noqa: F401  (registration)
from .base import RULES, LearningRule, StepInfo


def make_rule(name: str, net, settings: dict | None = None, seed: int = 0, reduction: str = "mean",
              where: str = "train.algorithm") -> LearningRule:
    cls = RULES.get(name, f"{where}.name" if settings else where)
    return cls(net, cls.parse_settings(settings or {}, where), seed, reduction)


__all__ = ["RULES", "LearningRule", "StepInfo", "make_rule"]
