"""A tiny decorator registry, one per family (encoders, methods, index backends, datasets).

Hand-written because it is ten lines and every library that has one (timm, mmengine) brings a framework.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories. ``create`` drops ``None`` kwargs so unset CLI flags keep the defaults."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or getattr(fn, "__name__", None)
            if not key:
                raise ValueError(f"{self.family}: cannot register an entry without a name")
            if key in self._entries and self._entries[key] is not fn:
                raise ValueError(f"{self.family} {key!r} is already registered")
            self._entries[key] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.family} {name!r}; valid names: {', '.join(sorted(self._entries)) or '(none)'}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
