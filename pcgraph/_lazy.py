"""Lazy public names of a package (PEP 562): ``import pcgraph`` and ``pcgraph --help`` import
neither torch nor torch-geometric nor matplotlib; a name is imported on first access."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, names: dict[str, str], namespace: dict):
    """``(__getattr__, __dir__)`` for ``package`` whose public ``names`` map to the submodule
    (relative, e.g. ``".compile"``) that defines each; ``namespace`` is the package's globals()."""

    def __getattr__(name: str):
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value          # later lookups are plain attribute reads
        return value

    def __dir__():
        return sorted({*namespace, *names})

    return __getattr__, __dir__
