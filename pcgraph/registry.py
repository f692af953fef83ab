"""One place where names from specs resolve to classes.

Every YAML string that names an implementation (an op, an activation, a loss, a
dataset, a learning rule, an optimizer) resolves through a :class:`Registry`, so an
unknown name always produces the same kind of message, listing the known ones.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import SpecError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._items:
                    raise RuntimeError(f"{self.kind} '{key}' registered twice")
                self._items[key] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str, where: str | None = None) -> T:
        if not isinstance(name, str) or name not in self._items:
            raise SpecError(
                f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})", where
            )
        return self._items[name]
