"""YAML in and out, remembering where every value came from.

``load_yaml(text, filename)`` returns the plain data and a map from spec paths
(``model.edges[2].to``) to ``file:line:col``, so that validation errors raised far from
the parser can still point at the line a user wrote.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from ..errors import SpecError


class SpecLoader(yaml.SafeLoader):
    """YAML 1.1 safe loading, plus floats without a dot (``1e-3``), as YAML 1.2 reads them."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str):
    return yaml.load(text, Loader=SpecLoader)


def _path(parent: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def _walk(node: yaml.Node, path: str, filename: str, locs: dict[str, str]) -> None:
    locs[path] = f"{filename}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            p = _path(path, key)
            locs[p] = f"{filename}:{k.start_mark.line + 1}:{k.start_mark.column + 1}"
            _walk(v, p, filename, locs)
            locs[p] = f"{filename}:{k.start_mark.line + 1}:{k.start_mark.column + 1}"
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _walk(v, _path(path, i), filename, locs)


def load_yaml(text: str, filename: str = "<string>") -> tuple[Any, dict[str, str]]:
    try:
        data = parse_yaml(text)
        root = yaml.compose(text, Loader=SpecLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"invalid YAML: {problem}", None, loc) from None
    locs: dict[str, str] = {}
    if root is not None:
        _walk(root, "", filename, locs)
    return data, locs


def locate(where: str | None, locs: dict[str, str]) -> str | None:
    """The file position of ``where`` or of its nearest enclosing path (command-line
    options such as ``--dtype`` have none)."""
    if where and where.startswith("--"):
        return None
    p = where
    while p:
        if p in locs:
            return locs[p]
        cut = max(p.rfind("."), p.rfind("["))
        p = p[:cut] if cut > 0 else ""
    return locs.get("") if locs else None


def dump_yaml(data: Any) -> str:
    class _Dumper(yaml.SafeDumper):
        pass

    def _repr_list(dumper, seq):
        flow = all(isinstance(x, (int, float, str, bool)) or x is None for x in seq) or \
            all(isinstance(x, dict) and len(x) <= 8 and all(
                isinstance(v, (int, float, str, bool, list)) or v is None for v in x.values()) for x in seq)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", seq, flow_style=None if not flow else
                                         (True if all(not isinstance(x, dict) for x in seq) else None))

    def _repr_dict_in_list(dumper, d):
        return dumper.represent_mapping("tag:yaml.org,2002:map", d.items())

    _Dumper.add_representer(list, _repr_list)
    _Dumper.add_representer(dict, _repr_dict_in_list)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=100)
