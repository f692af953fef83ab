"""Torch optimizers by name: ``{name: adam, lr: 0.001, ...}`` -> ``torch.optim.Adam``."""

from __future__ import annotations

import torch

from ..errors import SpecError
from ..registry import Registry

OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer")
for _name, _cls in {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop",
                    "adagrad": "Adagrad", "adadelta": "Adadelta", "adamax": "Adamax",
                    "nadam": "NAdam", "radam": "RAdam"}.items():
    OPTIMIZERS.add(_name, getattr(torch.optim, _cls))


def make_optimizer(config: dict, params, where: str = "train.optimizer") -> torch.optim.Optimizer:
    cfg = dict(config)
    cls = OPTIMIZERS.get(cfg.pop("name", None), f"{where}.name")
    try:
        return cls(list(params), **cfg)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{cls.__name__}: {exc}", where) from None
