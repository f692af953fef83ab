"""Torch optimizers by name: ``{name: adam, lr: 0.001, ...}`` -> ``torch.optim.Adam``.

``foreach: true`` (one multi-tensor kernel per group instead of a Python loop over the
parameters) and ``fused: true`` (one fused kernel per group; CPU and CUDA, floating point) are
torch's own implementation switches, accepted where the optimizer class has them
(:func:`implementations`); torch picks ``foreach`` by itself on CUDA and the per-parameter
loop on the CPU when neither is given. ``pcgraph bench SPEC --algorithms torch,torch@fused``
measures them side by side.
"""

from __future__ import annotations

import inspect
import math

import torch

from ..errors import SpecError
from ..registry import Registry

OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer")
for _name, _cls in {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop",
                    "adagrad": "Adagrad", "adadelta": "Adadelta", "adamax": "Adamax",
                    "nadam": "NAdam", "radam": "RAdam"}.items():
    OPTIMIZERS.add(_name, getattr(torch.optim, _cls))


#: torch's implementation switches (booleans, or null: torch's default)
IMPLEMENTATIONS = ("foreach", "fused")


def implementations(name: str) -> tuple[str, ...]:
    """Which of ``foreach`` / ``fused`` torch's optimizer ``name`` takes."""
    sig = inspect.signature(OPTIMIZERS.get(name).__init__).parameters
    return tuple(k for k in IMPLEMENTATIONS if k in sig)


def _check_implementation(cls, cfg: dict, where: str) -> None:
    sig = inspect.signature(cls.__init__).parameters
    for key in IMPLEMENTATIONS:
        if key not in cfg:
            continue
        if key not in sig:
            have = [k for k in IMPLEMENTATIONS if k in sig]
            has = ", ".join(n for n in OPTIMIZERS.names() if key in implementations(n))
            raise SpecError(f"{cls.__name__} has no {key} implementation in torch {torch.__version__} "
                            f"(it takes: {', '.join(have) or 'neither foreach nor fused'}; {key} exists for: "
                            f"{has})", f"{where}.{key}")
        if cfg[key] is not None and not isinstance(cfg[key], bool):
            raise SpecError(f"expected true, false or null (torch's default), got {cfg[key]!r}", f"{where}.{key}")
    if cfg.get("foreach") is True and cfg.get("fused") is True:
        raise SpecError("foreach and fused are two implementations: choose one (torch refuses both true)",
                        f"{where}.fused")


def make_optimizer(config: dict, params, where: str = "train.optimizer") -> torch.optim.Optimizer:
    cfg = dict(config)
    cls = OPTIMIZERS.get(cfg.pop("name", None), f"{where}.name")
    _check_implementation(cls, cfg, where)
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
