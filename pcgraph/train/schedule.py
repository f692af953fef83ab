"""Learning-rate schedules: ``train.scheduler`` -> a ``torch.optim.lr_scheduler`` scheduler.

.. code-block:: yaml

    train:
      optimizer: {name: adamw, lr: 1e-3, weight_decay: 1e-4}
      scheduler: {name: cosine, T_max: total_steps, eta_min: 0, warmup: 100, interval: step}

Keys read by pcgraph (every other key goes to the scheduler's constructor):

- ``name``: a torch scheduler class by its name (``CosineAnnealingLR``), in snake_case
  (``cosine_annealing_lr``) or by a short alias (:data:`ALIASES`: ``cosine``, ``step``,
  ``exponential``, ``onecycle``, ``constant``, ``linear``). It may be left out when only a
  warm-up is wanted (the learning rate then stays at the optimizer's after the warm-up).
- ``interval``: ``step`` (default; the scheduler steps after every training step, i.e. every
  mini-batch, once even for a rule such as iPC that steps the optimizer several times per
  batch) or ``epoch`` (after every epoch). Counts below (``warmup``, ``total_steps``) are in
  intervals.
- ``warmup: N`` (integer >= 0; or a fraction in ``(0, 1)`` of the run's intervals, e.g. ``0.1``):
  a linear warm-up over the first ``N`` intervals, torch's
  ``LinearLR(start_factor=s, end_factor=1, total_iters=N)`` followed by the named scheduler
  through ``SequentialLR(milestones=[N])``. Interval ``k < N`` runs at
  ``lr * (s + (1 - s) k / N)``; the named scheduler starts from ``lr`` at interval ``N``.
- ``warmup_start_factor: s`` (in ``(0, 1]``; default ``1 / (N + 1)``): with the default the
  warm-up learning rates are ``lr * (k + 1) / (N + 1)``, evenly spaced, none of them 0 (a
  zero learning rate would waste an update).

An option given as the string ``total_steps`` (``T_max: total_steps``) is replaced by the
run's number of intervals after the warm-up: ``epochs * steps_per_epoch - N`` for
``interval: step`` (``steps_per_epoch`` capped by ``train.max_steps_per_epoch``) or
``epochs - N`` for ``interval: epoch`` (``epochs``: ``train.epochs``). So "warm up, then a
cosine that reaches ``eta_min`` as the run ends" is ``{name: cosine, T_max: total_steps,
warmup: N}`` (torch's convention: the lr at interval ``T_max`` after the warm-up, the one
after the last update, is ``eta_min``).

``check_scheduler_config`` validates what it can without an optimizer (spec load time);
``make_scheduler`` builds it for the optimizer (``Experiment.build``), where torch's own
``TypeError`` / ``ValueError`` become located :class:`~pcgraph.errors.SpecError`\\ s.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass

import torch
from torch.optim import lr_scheduler as _lrs

from ..errors import SpecError

#: keys pcgraph reads itself (not passed to the scheduler)
OWN_KEYS = ("name", "warmup", "warmup_start_factor", "interval")
INTERVALS = ("step", "epoch")
#: the option value replaced by the run's number of intervals (after the warm-up)
TOTAL_STEPS = "total_steps"
ALIASES = {"cosine": "CosineAnnealingLR", "step": "StepLR", "exponential": "ExponentialLR",
           "onecycle": "OneCycleLR", "constant": "ConstantLR", "linear": "LinearLR"}
#: torch schedulers a spec cannot describe, with the reason
UNSUPPORTED = {
    "LambdaLR": "it takes a Python function (lr_lambda)",
    "MultiplicativeLR": "it takes a Python function (lr_lambda)",
    "SequentialLR": "it combines scheduler objects (pcgraph builds one for `warmup`)",
    "ChainedScheduler": "it combines scheduler objects",
    "ReduceLROnPlateau": "it steps on a metric, not on a count",
    "LRScheduler": "it is the base class",
}
#: constructor arguments pcgraph supplies or manages itself
RESERVED_ARGS = ("self", "optimizer", "last_epoch", "verbose")


def _snake(name: str) -> str:
    """``CosineAnnealingLR`` -> ``cosine_annealing_lr``, ``OneCycleLR`` -> ``one_cycle_lr``."""
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _torch_schedulers() -> dict[str, type]:
    out = {}
    for name in getattr(_lrs, "__all__", dir(_lrs)):
        cls = getattr(_lrs, name, None)
        if (inspect.isclass(cls) and issubclass(cls, _lrs.LRScheduler) and not name.startswith("_")
                and name not in UNSUPPORTED):
            out[name] = cls
    return out


#: usable scheduler classes by torch's class name
SCHEDULERS = _torch_schedulers()


def _lookup() -> dict[str, str]:
    """Every accepted spelling -> torch's class name."""
    names = {}
    for cls in SCHEDULERS:
        names[cls] = cls
        names[_snake(cls)] = cls
    for alias, cls in ALIASES.items():
        if cls in SCHEDULERS:
            names[alias] = cls
    return names


def known_names() -> list[str]:
    return sorted(_lookup())


def scheduler_class(name, where: str = "train.scheduler.name") -> type:
    """The torch class ``name`` spells (class name, snake_case or alias); else a located error."""
    lookup = _lookup()
    if isinstance(name, str) and name in lookup:
        return SCHEDULERS[lookup[name]]
    if isinstance(name, str):
        for bad, why in UNSUPPORTED.items():
            if name in (bad, _snake(bad)):
                raise SpecError(f"torch's {bad} cannot be used from a spec: {why} (known: "
                                f"{', '.join(known_names())})", where)
    raise SpecError(f"unknown scheduler {name!r} (known: {', '.join(known_names())})", where)


def _arguments(cls: type) -> list[str]:
    sig = inspect.signature(cls.__init__).parameters
    return [k for k, p in sig.items() if k not in RESERVED_ARGS
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_scheduler_config(config, where: str = "train.scheduler") -> dict | None:
    """Validate ``train.scheduler`` without an optimizer: the keys, the name, pcgraph's own
    options and every other key being an argument of the class; returns it as a new dict
    (a bare string is ``{name: ..}``), or None for no scheduler."""
    if config is None:
        return None
    if isinstance(config, str):
        config = {"name": config}
    if not isinstance(config, dict):
        raise SpecError(f"expected a scheduler name or a mapping such as {{name: cosine, T_max: total_steps, "
                        f"warmup: 100}}, got {config!r}", where)
    cfg = dict(config)
    warmup = cfg.get("warmup", 0)
    if isinstance(warmup, float) and 0 < warmup < 1:
        warmup = 1              # a fraction of the run (resolved by make_scheduler); checked as a count here
    elif not _is_int(warmup) or warmup < 0:
        raise SpecError(f"expected a number of intervals >= 0, or a fraction of the run in (0, 1), got "
                        f"{warmup!r}", f"{where}.warmup")
    from ..settings import check_steps
    check_steps(warmup, f"{where}.warmup")
    if "warmup_start_factor" in cfg:
        s = cfg["warmup_start_factor"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (0 < s <= 1):
            raise SpecError(f"expected a number in (0, 1], got {s!r}", f"{where}.warmup_start_factor")
        if not warmup:
            raise SpecError("is only used with warmup: N (N > 0)", f"{where}.warmup_start_factor")
    interval = cfg.get("interval", "step")
    if interval not in INTERVALS:
        raise SpecError(f"expected one of {', '.join(INTERVALS)}, got {interval!r}", f"{where}.interval")
    options = {k: v for k, v in cfg.items() if k not in OWN_KEYS}
    if "name" not in cfg or cfg["name"] is None:
        if not warmup:
            raise SpecError("needs a name (e.g. {name: cosine, T_max: total_steps}) or warmup: N", where)
        if options:
            k = next(iter(options))
            raise SpecError(f"unknown key {k!r} (without a name only {', '.join(OWN_KEYS[1:])} are read)",
                            f"{where}.{k}")
        return cfg
    cls = scheduler_class(cfg["name"], f"{where}.name")
    allowed = _arguments(cls)
    for k, v in options.items():
        if k in RESERVED_ARGS:
            raise SpecError(f"{k} is set by pcgraph (a resumed run restores the scheduler from the checkpoint)",
                            f"{where}.{k}")
        if k not in allowed:
            raise SpecError(f"unknown key {k!r}: {cls.__name__} takes {', '.join(allowed)} (and pcgraph's "
                            f"{', '.join(OWN_KEYS)})", f"{where}.{k}")
        if isinstance(v, str) and v == TOTAL_STEPS:
            continue
        values = v if isinstance(v, (list, tuple)) else [v]
        if any(isinstance(x, float) and not math.isfinite(x) for x in values):
            raise SpecError(f"expected a finite number, got {v!r}", f"{where}.{k}")
    return cfg


@dataclass
class Scheduler:
    """A torch scheduler and when to step it (``interval``). ``config``: the options it was
    built with, ``total_steps`` resolved (checked again on resume)."""

    scheduler: _lrs.LRScheduler
    interval: str
    config: dict

    def step_update(self) -> None:
        """After every training step (``Experiment.step``: one mini-batch)."""
        if self.interval == "step":
            self.scheduler.step()

    def step_epoch(self) -> None:
        """After every epoch."""
        if self.interval == "epoch":
            self.scheduler.step()

    def last_lr(self) -> list[float]:
        return [float(x) for x in self.scheduler.get_last_lr()]

    def state_dict(self) -> dict:
        return {"interval": self.interval, "config": dict(self.config), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position in the schedule; a schedule built with other options (e.g.
        ``total_steps`` after ``train.epochs`` changed) is refused: ``ValueError``."""
        if state.get("interval") != self.interval or state.get("config") != self.config:
            raise ValueError(f"the checkpoint's learning-rate schedule was built as {state.get('config')!r} "
                             f"(interval {state.get('interval')}), this run's is {self.config!r} (interval "
                             f"{self.interval}); `total_steps` follows train.epochs, so keep the checkpoint's")
        self.scheduler.load_state_dict(state["scheduler"])


def total_intervals(interval: str, steps_per_epoch: int, epochs: int) -> int:
    return epochs * steps_per_epoch if interval == "step" else epochs


def make_scheduler(config: dict | None, optimizer: torch.optim.Optimizer, steps_per_epoch: int | None,
                   epochs: int, where: str = "train.scheduler") -> Scheduler | None:
    """Build ``config`` (``train.scheduler``) for ``optimizer``; None when there is none.

    ``steps_per_epoch``: optimizer updates per epoch; None when unknown (an experiment built
    without data, to check the spec): counted as 1, and with ``interval: step`` a
    ``total_steps`` is then at least 1 rather than an error. Building steps the optimizer's
    learning rates to the schedule's first value, as torch's schedulers do on construction."""
    cfg = check_scheduler_config(config, where)
    if cfg is None:
        return None
    warmup = cfg.get("warmup", 0)
    interval = cfg.get("interval", "step")
    known = steps_per_epoch is not None or interval == "epoch"      # the number of intervals
    total = total_intervals(interval, 1 if steps_per_epoch is None else steps_per_epoch, epochs)
    if isinstance(warmup, float):       # a fraction of the run's intervals (PCX warms up over 10%)
        warmup = max(1, round(warmup * total))
        cfg = {**cfg, "warmup": warmup}
    options = {k: v for k, v in cfg.items() if k not in OWN_KEYS}
    remaining = total - warmup if known else max(total - warmup, 1)
    for k, v in options.items():
        if isinstance(v, str) and v == TOTAL_STEPS:
            if remaining < 1:
                raise SpecError(f"{k}: total_steps would be {remaining}: the run has {total} interval(s) "
                                f"({interval}s), and warmup takes {warmup}", f"{where}.{k}")
            options[k] = remaining
    name = cfg.get("name")
    resolved = {**({"name": SCHEDULERS[_lookup()[name]].__name__} if name is not None else {}), **options}
    if warmup:
        resolved.update(warmup=warmup, warmup_start_factor=float(cfg.get("warmup_start_factor", 1 / (warmup + 1))))
    try:
        warm = main = None
        if warmup:
            warm = _lrs.LinearLR(optimizer, start_factor=resolved["warmup_start_factor"], end_factor=1.0,
                                 total_iters=warmup)
        if name is not None:
            main = scheduler_class(name, f"{where}.name")(optimizer, **options)
        sched = _lrs.SequentialLR(optimizer, [warm, main], milestones=[warmup]) if warm and main else warm or main
    except (TypeError, ValueError) as exc:
        label = SCHEDULERS[_lookup()[name]].__name__ if name is not None else "LinearLR"
        raise SpecError(f"{label}: {exc}", where) from None
    if name is not None:
        _dry_run(scheduler_class(name), options, optimizer, where)
    if isinstance(main, _lrs.OneCycleLR) and known and main.total_steps < total - warmup:
        raise SpecError(f"OneCycleLR's cycle has {main.total_steps} steps but the run steps it {total - warmup} "
                        f"times (torch refuses to step past the cycle; use total_steps: total_steps)", where)
    return Scheduler(sched, interval, resolved)


def _dry_run(cls: type, options: dict, optimizer: torch.optim.Optimizer, where: str, steps: int = 1) -> None:
    """Some options (``step_size: "2"``) are only refused by torch when the scheduler steps:
    step the same scheduler on a throw-away optimizer (one group per group of ``optimizer``,
    at its learning rates, with momentum for the cyclic schedules) now, so the spec error comes
    at build time, located, and not in the middle of training."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": float(g["lr"])} for g in optimizer.param_groups]
    try:
        dummy = torch.optim.SGD(groups, momentum=0.9)
        sched = cls(dummy, **options)
        for _ in range(steps):
            dummy.step()
            sched.step()
    except Exception as exc:            # noqa: BLE001 - any refusal is the spec's fault
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"{cls.__name__} refuses these options when it steps: {msg}", where) from None
