"""Torch optimizers by name: ``{name: adam, lr: 0.001, ...}`` -> ``torch.optim.Adam``."""

from __future__ import annotations

import math

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
    for key, value in cfg.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise SpecError(f"expected a finite number, got {value!r}", f"{where}.{key}")
    params = list(params)
    try:
        optimizer = cls(params, **cfg)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SpecError(f"{cls.__name__}: {exc}", where) from None
    _dry_step(cls, cfg, params, where)
    return optimizer


def _dry_step(cls, cfg: dict, params, where: str) -> None:
    """Some options (``differentiable``, ``capturable``, ``fused`` on the wrong device) are
    only refused by torch at the first ``step()``: take one step with the same options on a
    throw-away parameter now, so the spec error comes at build time, located."""
    first = params[0]["params"][0] if params and isinstance(params[0], dict) else (params[0] if params else None)
    if first is None:
        return
    dummy = torch.nn.Parameter(torch.zeros(2, dtype=first.dtype, device=first.device))
    dummy.grad = torch.zeros_like(dummy)
    try:
        cls([dummy], **cfg).step()
    except Exception as exc:            # noqa: BLE001 - any refusal is the spec's fault
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"{cls.__name__} refuses these options at its first step: {msg}", where) from None
