"""One place where names from specs resolve to classes.

Every YAML string that names an implementation (an op, an activation, a loss, a
dataset, a learning rule, an optimizer) resolves through a :class:`Registry`, so an
unknown name always produces the same kind of message: one line, with the closest known
names (``did you mean 'zil'?``) and the known ones, each listed once under its canonical
name (aliases resolve, but are not listed).
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from .errors import SpecError

T = TypeVar("T")


def close_matches(name: object, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates closest to ``name`` (``difflib.get_close_matches``), best first, and
    only those about as close as the best; none when ``name`` is not a string."""
    if not isinstance(name, str) or not name:
        return []
    cands = list(dict.fromkeys(str(c) for c in candidates))
    hits = difflib.get_close_matches(name, cands, n=n, cutoff=0.6)
    if hits:            # only those about as close as the closest ('zill': 'zil', not also 'il', 'fazil')
        score = {h: difflib.SequenceMatcher(None, name, h).ratio() for h in hits}
        best = max(score.values())
        hits = [h for h in hits if score[h] >= best - 0.1]
    else:               # case slips ('ReLU', 'Adam') are close whatever their length
        low = name.lower()
        hits = [c for c in cands if c.lower() == low][:n]
    return hits


def did_you_mean(name: object, candidates: Iterable[str], hits: list[str] | None = None) -> str:
    """``": did you mean 'a'?"`` / ``": did you mean 'a' or 'b'?"``, or ``""`` when nothing is
    close (``hits``: the suggestions, when already chosen)."""
    hits = close_matches(name, candidates) if hits is None else hits
    if not hits:
        return ""
    quoted = [repr(h) for h in hits]
    return ": did you mean " + (quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]) + "?"


def unknown_name(kind: str, name: object, known: Iterable[str], hits: list[str] | None = None) -> str:
    """``unknown KIND 'name': did you mean 'x'? (known: a, b, c)``, on one line; ``hits``: the
    suggestions (default: the known names closest to ``name``)."""
    known = list(known)
    hint = did_you_mean(name, known, hits)
    return f"unknown {kind} {name!r}{hint} (known: {', '.join(map(str, known))})"


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        #: alias -> canonical name (the first name a ``register`` call gives)
        self._alias_of: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._items:
                    raise RuntimeError(f"{self.kind} '{key}' registered twice")
                self._items[key] = obj
            for alias in aliases:
                self._alias_of[alias] = name
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def names(self) -> list[str]:
        """The canonical names, sorted (each implementation once: no aliases)."""
        return sorted(k for k in self._items if k not in self._alias_of)

    def all_names(self) -> list[str]:
        """Every name that resolves: the canonical names and their aliases, sorted."""
        return sorted(self._items)

    def aliases(self, name: str) -> list[str]:
        """The aliases of the canonical name ``name``."""
        return [a for a, c in self._alias_of.items() if c == name]

    def canonical(self, name: str) -> str:
        """The canonical name of ``name`` (itself when it is not an alias)."""
        return self._alias_of.get(name, name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def suggest(self, name: object, extra: Iterable[str] = (), n: int = 3) -> list[str]:
        """The names closest to ``name``: canonical names and aliases (one per implementation),
        and ``extra`` names (e.g. a spec's presets)."""
        hits: list[str] = []
        for hit in close_matches(name, [*self.all_names(), *extra], n=2 * n):
            if hit not in self or all(h not in self or self.canonical(h) != self.canonical(hit) for h in hits):
                hits.append(hit)
        return hits[:n]

    def unknown(self, name: object) -> str:
        """The one-line message for an unknown ``name`` (closest names, then the known ones)."""
        return unknown_name(self.kind, name, self.names(), self.suggest(name))

    def get(self, name: str, where: str | None = None) -> T:
        if not isinstance(name, str) or name not in self._items:
            raise SpecError(self.unknown(name), where)
        return self._items[name]
