"""``--set KEY=VALUE``: override any dotted spec path before validation.

Paths use dots for mapping keys and ``[i]`` for list items (``model.edges[1].activation``).
VALUE is parsed as YAML (``0.5`` is a float, ``depth`` a string, ``[1, 2]`` a list). A
string met where a mapping is needed becomes ``{name: string}``, so
``--set train.algorithm.gamma=0.5`` works on ``algorithm: zil``.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from ..errors import SpecError
from .yamlio import parse_yaml

_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    pos = 0
    for m in _TOKEN.finditer(path):
        if m.start() != pos and path[pos:m.start()] != ".":
            raise SpecError(f"cannot parse the path {path!r} (use a.b[2].c)", f"--set {path}")
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if not parts or pos != len(path):
        raise SpecError(f"cannot parse the path {path!r} (use a.b[2].c)", f"--set {path}")
    return parts


def set_path(data: dict, path: str, value: Any) -> None:
    parts = parse_path(path)
    cur: Any = data
    for i, key in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(key, int):
            if not isinstance(cur, list):
                raise SpecError(f"[{key}] indexes something that is not a list", f"--set {path}")
            if key >= len(cur):
                raise SpecError(f"index {key} is out of range (the list has {len(cur)} items)", f"--set {path}")
            if last:
                cur[key] = value
            else:
                cur = cur[key]
            continue
        if not isinstance(cur, dict):
            raise SpecError(f"{key!r} is not inside a mapping", f"--set {path}")
        if last:
            cur[key] = value
            return
        nxt = cur.get(key)
        if nxt is None:
            nxt = cur[key] = {}
        elif isinstance(nxt, str):
            nxt = cur[key] = {"name": nxt}
        cur = nxt


def apply_overrides(data: dict, sets: list[str] | None) -> dict:
    data = copy.deepcopy(data) if data is not None else {}
    for item in sets or []:
        if "=" not in item:
            raise SpecError(f"expected KEY=VALUE, got {item!r}", "--set")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        set_path(data, key.strip(), value)
    return data
