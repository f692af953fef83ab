"""The learning-rule interface.

A rule turns one mini-batch into parameter gradients on a :class:`PCNetwork`
(``p.grad``, accumulated), which a torch optimizer then applies; so every rule works
with every optimizer (Z-IL + Adam equals BP + Adam). Each rule lives in its own file,
keeps its settings in one dataclass (``Settings``) and registers itself by name.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..compile import PCNetwork
from ..errors import SpecError
from ..registry import Registry


@dataclass
class StepInfo:
    loss: float
    outputs: dict[str, torch.Tensor]


class LearningRule:
    name: ClassVar[str] = ""
    Settings: ClassVar[type] = dataclass(type("NoSettings", (), {}))

    def __init__(self, net: PCNetwork, settings=None, seed: int = 0):
        self.net = net
        self.settings = settings if settings is not None else self.Settings()
        self.seed = seed

    @classmethod
    def parse_settings(cls, raw: dict, where: str = "train.algorithm"):
        """Build ``Settings`` from a spec mapping: unknown keys and wrong types are errors."""
        fields = {f.name: f for f in dataclasses.fields(cls.Settings)}
        hints = typing.get_type_hints(cls.Settings)
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in fields:
                known = ", ".join(fields) or "none"
                raise SpecError(f"unknown setting {key!r} for rule {cls.name!r} (its settings: {known})",
                                f"{where}.{key}")
            values[key] = _coerce(value, hints[key], f"{where}.{key}")
        settings = cls.Settings(**values)
        check = getattr(settings, "check", None)
        if check:
            check(where)
        return settings

    def compute_grads(self, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> StepInfo:
        raise NotImplementedError

    def describe(self) -> str:
        return f"rule {self.name}: {self.settings}"


def _coerce(value, hint, where):
    """Accept ``value`` for type ``hint`` (int | str | None, float, bool, ...)."""
    options = typing.get_args(hint) or (hint,)
    if value is None and type(None) in options:
        return None
    for typ in options:
        if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if typ is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if typ is bool and isinstance(value, bool):
            return value
        if typ is str and isinstance(value, str):
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in options)
    raise SpecError(f"expected {names}, got {value!r}", where)


RULES: Registry[type[LearningRule]] = Registry("learning rule")
