"""A tiny name -> object registry, filled by a decorator where the object is defined."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from disvae.errors import UserError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named objects; an unknown name raises a `UserError` naming the nearest one
    (``did you mean``) and listing the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items))
            raise UserError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)}; "
                f"choose one of: {valid}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
