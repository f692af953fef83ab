"""``--set KEY=VALUE``: override any dotted spec path before validation.

Paths use dots for mapping keys and ``[i]`` for list items (``model.edges[1].activation``).
VALUE is parsed as YAML (``0.5`` is a float, ``depth`` a string, ``[1, 2]`` a list). A
string met where a mapping is needed becomes ``{name: string}``, so
``--set train.algorithm.gamma=0.5`` works on ``algorithm: zil``.

Errors name the override as typed (``--set train.algoritm.T=5: unknown key 'algoritm':
did you mean 'algorithm'? (known: ...)``), not the spec's line: a key the spec's schema does
not have (where its keys are fixed: the top level, ``data``, ``train``, ``model``, a node,
a preset, an unrolled cell, a query) is refused while the override is applied, and given the
spec's ``locations`` (path -> ``file:line:col``, see :func:`~pcgraph.spec.yamlio.load_yaml`),
:func:`apply_overrides` points every path an override set at the override, so errors that
validation raises later at such a path name it too.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Union

import yaml

from ..errors import SpecError
from .yamlio import parse_yaml

_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")

#: an override: ``"KEY=VALUE"`` (``--set KEY=VALUE``), or ``(label, "KEY=VALUE")`` for one
#: that another option made (``("--epochs 3", "train.epochs=3")``): errors then name ``label``
Override = Union[str, tuple[str, str]]


def parse_path(path: str, label: str | None = None) -> list[str | int]:
    where = label or f"--set {path}"
    parts: list[str | int] = []
    pos = 0
    for m in _TOKEN.finditer(path):
        if m.start() != pos and path[pos:m.start()] != ".":
            raise SpecError(f"cannot parse the path {path!r} (use a.b[2].c)", where)
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if not parts or pos != len(path):
        raise SpecError(f"cannot parse the path {path!r} (use a.b[2].c)", where)
    return parts


def format_path(parts: list[str | int]) -> str:
    """``["model", "edges", 1, "op"]`` -> ``model.edges[1].op`` (the form of error ``where``\\ s)."""
    out = ""
    for p in parts:
        out = f"{out}[{p}]" if isinstance(p, int) else (f"{out}.{p}" if out else str(p))
    return out


def _fixed_keys(parts: list[str | int]) -> tuple[str, ...] | None:
    """The keys the schema allows in the mapping at ``parts`` (None: any key, e.g. an op's
    options, a rule's settings, checked later by their owner)."""
    from dataclasses import fields

    from .queries import QUERY_KEYS
    from .schema import NODE_KEYS, TOP_KEYS, DataSpec, TrainSpec
    from .unroll import Readout, Unroll

    table: list[tuple[tuple, tuple[str, ...]]] = [
        ((), TOP_KEYS),
        (("data",), DataSpec.KEYS),
        (("train",), TrainSpec.KEYS),
        (("train", "presets", str), ("algorithm", "optimizer", "loss", "scheduler")),
        (("model",), ("nodes", "edges", "unroll")),
        (("model", "nodes", int), NODE_KEYS),
        (("model", "unroll", int), tuple(f.name for f in fields(Unroll))),
        (("model", "unroll", int, "readout"), tuple(f.name for f in fields(Readout))),
        (("queries", str), QUERY_KEYS),
    ]
    for pattern, keys in table:
        if len(pattern) == len(parts) and all(
                (isinstance(p, q) and not isinstance(p, bool)) if isinstance(q, type) else p == q
                for p, q in zip(parts, pattern)):
            return tuple(keys)
    return None


def _check_key(parts: list[str | int], key: str, where: str) -> None:
    from ..registry import did_you_mean

    known = _fixed_keys(parts)
    if known is not None and key not in known:
        raise SpecError(f"unknown key {key!r}{did_you_mean(key, known)} (known: {', '.join(known)})", where)


def _relocate(locations: dict | None, path: str, label: str) -> None:
    """``path`` (and nothing below it: its old value is gone) now comes from ``label``."""
    if locations is None:
        return
    for k in [k for k in locations if k.startswith(path + ".") or k.startswith(path + "[")]:
        del locations[k]
    locations[path] = label


def set_path(data: dict, path: str, value: Any, label: str | None = None,
             locations: dict | None = None) -> None:
    """Set ``path`` of ``data`` to ``value``; errors are located at ``label`` (default
    ``--set PATH``), and so, in ``locations``, are the paths it sets or creates."""
    where = label or f"--set {path}"
    parts = parse_path(path, where)
    cur: Any = data
    for i, key in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(key, int):
            if not isinstance(cur, list):
                raise SpecError(f"[{key}] indexes something that is not a list", where)
            if key >= len(cur):
                raise SpecError(f"index {key} is out of range (the list has {len(cur)} items)", where)
            if last:
                cur[key] = value
                _relocate(locations, format_path(parts), where)
            else:
                cur = cur[key]
            continue
        if not isinstance(cur, dict):
            raise SpecError(f"{key!r} is not inside a mapping", where)
        _check_key(parts[:i], key, where)
        if last:
            cur[key] = value
            _relocate(locations, format_path(parts), where)
            return
        nxt = cur.get(key)
        if nxt is None:
            nxt = cur[key] = {}
            _relocate(locations, format_path(parts[:i + 1]), where)
        elif isinstance(nxt, str):
            nxt = cur[key] = {"name": nxt}
        cur = nxt


def apply_overrides(data: dict, sets: list[Override] | None, locations: dict | None = None) -> dict:
    """A copy of ``data`` with the overrides applied in order. ``locations`` (the spec's
    path -> file position map, updated in place): the paths the overrides set now point at
    them (``--set KEY=VALUE``), so later validation errors name the override."""
    data = copy.deepcopy(data) if data is not None else {}
    for item in sets or []:
        label, item = item if isinstance(item, tuple) else (f"--set {item}", item)
        if "=" not in item:
            raise SpecError(f"expected KEY=VALUE, got {item!r}", label)
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        except SpecError as err:        # (a YAML alias, a NUL, a duplicate key in VALUE)
            raise SpecError(err.message, label) from None
        set_path(data, key.strip(), value, label, locations)
    return data
