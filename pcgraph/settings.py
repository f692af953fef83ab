"""Typed settings from spec mappings: one parser for rule settings and op options.

A rule's ``Settings`` and an op's ``Options`` are dataclasses. :func:`parse_dataclass`
builds one from a spec mapping, so every key is checked (an unknown key lists the known
ones) and every value is checked against its annotation (``kernel_size: "3"`` is a
located :class:`SpecError`, never a traceback). Supported annotations: ``int``,
``float`` (ints accepted), ``bool``, ``str``, ``None``, ``Literal[...]``, unions of
these, and ``tuple[int, ...]`` / ``tuple[int, int]`` (given as a YAML list).
"""

from __future__ import annotations

import dataclasses
import types
import math
import typing
from typing import Any, Literal

from .errors import SpecError

#: the largest magnitude of a ``float`` setting: float32's largest value. Settings become
#: scalars of torch ops on the parameters' dtype (``x.add_(drive, alpha=gamma)``), and torch
#: refuses a scalar its dtype cannot hold (``gamma: 1e300`` failed in the first step), so a
#: spec must hold in float32, the default ``--dtype``.
MAX_FLOAT = 3.4028234663852886e38
#: ``int`` settings must fit in int64, as torch converts them
MAX_INT = 2 ** 63 - 1


def fits_float(value) -> bool:
    """Whether the number ``value`` is finite and within ``MAX_FLOAT`` (an int too large for a
    float is not)."""
    try:
        return math.isfinite(value) and abs(value) <= MAX_FLOAT
    except OverflowError:
        return False


def parse_dataclass(cls: type, raw: dict | None, where: str, owner: str) -> Any:
    """``cls(**raw)`` with every key and value checked; ``owner`` names what the keys
    belong to in messages (``rule 'il'``, ``op 'concat'``). Calls ``check(where)`` on the
    result when the dataclass defines it."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise SpecError(f"expected a mapping, got {raw!r}", where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise SpecError(f"unknown key {key!r} for {owner} (its keys: {known})", f"{where}.{key}")
        values[key] = coerce(value, hints[key], f"{where}.{key}")
    out = cls(**values)
    check = getattr(out, "check", None)
    if check:
        check(where)
    return out


def to_mapping(obj: Any, skip_defaults: bool = True) -> dict:
    """The inverse of :func:`parse_dataclass`: fields (tuples as lists), defaults left out."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if skip_defaults and v == default:
            continue
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _name(t) -> str:
    if typing.get_origin(t) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(t))
    if typing.get_origin(t) is tuple:
        args = typing.get_args(t)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_name(args[0])}"
        return f"a list of {len(args)} {_name(args[0])}"
    return {int: "int", float: "float", bool: "bool", str: "str", type(None): "null"}.get(t, str(t))


def _one(value, typ):
    """Return ``(ok, converted)`` for one non-union annotation."""
    origin = typing.get_origin(typ)
    if origin is Literal:
        args = typing.get_args(typ)
        return any(value == a and type(value) is type(a) for a in args), value
    if origin is tuple:
        args = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            return False, None
        items = list(value)
        elem = [args[0]] * len(items) if (len(args) == 2 and args[1] is Ellipsis) else list(args)
        if len(elem) != len(items):
            return False, None
        out = []
        for v, t in zip(items, elem):
            ok, conv = _one(v, t)
            if not ok:
                return False, None
            out.append(conv)
        return True, tuple(out)
    if typ is type(None):
        return value is None, None
    if typ is bool:
        return isinstance(value, bool), value
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_INT, value
    if typ is float:
        # NaN and infinities are never meaningful settings (a step size, a noise scale, ...)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and fits_float(value)
        return ok, float(value) if ok else None
    if typ is str:
        return isinstance(value, str), value
    if typ is Any:
        return True, value
    return isinstance(value, typ), value


def coerce(value, hint, where: str):
    """Accept ``value`` for the annotation ``hint`` (converted: ints to floats, lists to
    tuples), or raise a located SpecError naming what was expected."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for typ in options:
        ok, conv = _one(value, typ)
        if ok:
            return conv
    names = " or ".join(_name(t) for t in options)
    if isinstance(value, float) and not math.isfinite(value):
        names = "a finite " + names
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and (int in options or float in options):
        if float in options and not fits_float(value):
            raise SpecError(f"{_brief(value)} is beyond the largest value a setting may have ({MAX_FLOAT:.4g}, "
                            f"float32's: torch applies it to float32 tensors)", where)
        if int in options and isinstance(value, int) and abs(value) > MAX_INT:
            raise SpecError(f"{_brief(value)} is beyond the largest integer a setting may have (2**63 - 1, "
                            f"int64's, as torch converts it)", where)
    raise SpecError(f"expected {names}, got {_brief(value)}", where)


def _brief(value) -> str:
    """``repr(value)``, but a huge int (whose decimal digits Python may refuse to write) in brief."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {int(value.bit_length() * 0.30103) + 1} digits"
    return repr(value)


#: the most steps any step-count setting (``T``, ``t_d``, ``predict_steps``, ``update_at``,
#: ``epochs``, ``max_steps_per_epoch``) may ask for: larger values are almost always a typo,
#: and would run for days (or overflow) before failing.
MAX_STEPS = 100_000


def check_steps(value, where: str) -> None:
    """Raise a located SpecError when a step count exceeds ``MAX_STEPS``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_STEPS:
        raise SpecError(f"{value} is more than the {MAX_STEPS} steps allowed (a typo? step counts "
                        f"this large would run for days before anything could be checked)", where)

