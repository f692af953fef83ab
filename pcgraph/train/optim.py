"""Torch optimizers by name: ``{name: adam, lr: 0.001, ...}`` -> ``torch.optim.Adam``.

``foreach: true`` (one multi-tensor kernel per group instead of a Python loop over the
parameters) and ``fused: true`` (one fused kernel per group; CPU and CUDA, floating point) are
torch's own implementation switches, accepted where the optimizer class has them
(:func:`implementations`); torch picks ``foreach`` by itself on CUDA and the per-parameter
loop on the CPU when neither is given. ``pcgraph bench SPEC --algorithms torch,torch@fused``
measures them side by side.

Every option is checked against what torch accepts before torch sees it
(:func:`check_optimizer_config`, at spec load time and again, with the parameters' dtype, at
build time): its key must be one of the class's, its type that of the class's default (a bool,
a number, a list of as many numbers as the default tuple), and a number finite, within the
range of the float dtype torch converts it to, and within the option's own range
(:data:`RANGES`: ``betas`` each in [0, 1), ``momentum`` in [0, 1], ``eps`` > 0, the rest >= 0).
"""

from __future__ import annotations

import inspect
import math

import torch

from ..errors import SpecError
from ..registry import Registry
from ..settings import MAX_INT     # (torch converts a Python int option to int64)

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


#: the range each numeric option's consumer accepts: ``(low, high, low_open, high_open,
#: why)``; None: unbounded there (the dtype's largest float). Torch refuses few of these
#: itself (a one-element ``betas`` is an IndexError inside torch; ``momentum: 2**64`` passes
#: its check and overflows at the second step). Numeric options not named here: >= 0.
RANGES = {
    "betas": (0.0, 1.0, False, True, "each is the decay of a running average"),
    "momentum": (0.0, 1.0, False, False, "the fraction of the last update kept; above 1 updates grow "
                                          "without bound"),
    "dampening": (0.0, 1.0, False, False, "the fraction of the gradient left out of the momentum"),
    "alpha": (0.0, 1.0, False, False, "the decay of the running average of squared gradients"),
    "rho": (0.0, 1.0, False, False, "the decay of the running averages"),
    "eps": (0.0, None, True, False, "it is added to a denominator that can be 0"),
}


def _show(value) -> str:
    """``repr(value)``, but a huge int (whose decimal digits Python may refuse to write) in brief."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {int(value.bit_length() * 0.30103) + 1} digits"
    return repr(value)


def _number(cls_name: str, key: str, value, where: str, dtype: torch.dtype | None, elem: str = ""):
    what = f"{cls_name}'s {key}{elem}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"expected a number for {what}, got {_show(value)}", where)
    try:
        f = float(value)
    except OverflowError:                # (an int beyond any float)
        f = math.inf if value > 0 else -math.inf
    if math.isnan(f) or (isinstance(value, float) and math.isinf(f)):
        raise SpecError(f"expected a finite number for {what}, got {_show(value)}", where)
    low, high, low_open, high_open, why = RANGES.get(key, (0.0, None, False, False, ""))
    why = f" ({why})" if why else ""
    if (f <= low if low_open else f < low) or (high is not None and (f >= high if high_open else f > high)):
        if high is None:
            rng = f"{'>' if low_open else '>='} {low:g}"
        else:
            rng = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise SpecError(f"{what} must be {rng}{why}, got {_show(value)}", where)
    dtype = dtype if dtype is not None and dtype.is_floating_point else torch.float64
    if abs(f) > torch.finfo(dtype).max:
        raise SpecError(f"{what} is beyond the largest {str(dtype).replace('torch.', '')} "
                        f"({torch.finfo(dtype).max:.4g}), the precision torch applies it in, got {_show(value)}",
                        where)
    if isinstance(value, int) and abs(value) > MAX_INT:
        raise SpecError(f"{what} is an integer beyond int64, as torch would convert it; write it as a float "
                        f"({f:.4g}), got {_show(value)}", where)
    return value


def check_optimizer_config(config, where: str = "train.optimizer", dtype: torch.dtype | None = None) -> dict:
    """The options of ``config`` (``{name: adam, lr: 0.001, ...}``, without its name), each checked
    against what the torch optimizer accepts (see the module docstring) with a located
    SpecError; ``dtype``: the parameters' (their largest float bounds every number)."""
    if not isinstance(config, dict):
        raise SpecError(f"expected an optimizer mapping such as {{name: adam, lr: 0.001}}, got {config!r}", where)
    cfg = dict(config)
    cls = OPTIMIZERS.get(cfg.pop("name", None), f"{where}.name")
    _check_implementation(cls, cfg, where)
    sig = {k: p for k, p in inspect.signature(cls.__init__).parameters.items()
           if k not in ("self", "params") and p.kind is not p.VAR_KEYWORD}
    out = {}
    for key, value in cfg.items():
        at = f"{where}.{key}"
        if key not in sig:
            raise SpecError(f"unknown option {key!r} for {cls.__name__} (its options: {', '.join(sig)})", at)
        default = sig[key].default
        if key in IMPLEMENTATIONS or default is None:
            if value is not None and not isinstance(value, bool):
                raise SpecError(f"expected true, false or null, got {value!r}", at)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise SpecError(f"expected true or false for {cls.__name__}'s {key}, got {value!r}", at)
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or len(value) != len(default):
                raise SpecError(f"expected a list of {len(default)} numbers for {cls.__name__}'s {key} "
                                f"(default {list(default)}), got {_show(value)}", at)
            value = tuple(_number(cls.__name__, key, v, at, dtype, f"[{i}]") for i, v in enumerate(value))
        elif isinstance(default, (int, float)):
            value = _number(cls.__name__, key, value, at, dtype)
        out[key] = value
    return out


def make_optimizer(config: dict, params, where: str = "train.optimizer") -> torch.optim.Optimizer:
    params = list(params)
    first = params[0]["params"][0] if params and isinstance(params[0], dict) and params[0]["params"] \
        else (params[0] if params and not isinstance(params[0], dict) else None)
    cfg = check_optimizer_config(config, where, None if first is None else first.dtype)
    cls = OPTIMIZERS.get(config["name"], f"{where}.name")
    try:
        optimizer = cls(params, **cfg)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SpecError(f"{cls.__name__}: {exc}", where) from None
    _dry_step(cls, cfg, params, where)
    return optimizer


def _dry_step(cls, cfg: dict, params, where: str) -> None:
    """Some options (``differentiable``, ``capturable``, ``fused`` on the wrong device) are
    only refused by torch at the first ``step()``, others break at the second: take two steps
    with the same options on a throw-away parameter now, so the spec error comes at build
    time, located."""
    first = params[0]["params"][0] if params and isinstance(params[0], dict) else (params[0] if params else None)
    if first is None:
        return
    dummy = torch.nn.Parameter(torch.zeros(2, dtype=first.dtype, device=first.device))
    dummy.grad = torch.zeros_like(dummy)
    try:
        opt = cls([dummy], **cfg)
        for _ in range(2):      # (some options only break at the second step, once state exists)
            opt.step()
    except Exception as exc:            # noqa: BLE001 - any refusal is the spec's fault
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"{cls.__name__} refuses these options at its first steps: {msg}", where) from None
