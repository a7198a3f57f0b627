"""One registry per extension point: a name -> entry table with a clear error for a miss.

Every extension point (tower-module kinds, interaction kinds, partitioners, intra-host
shardings, baselines) is one `Registry`. Built-ins register through the same `register`
call users make, and CLI choices, help texts and benchmark variant lists are read from
`names()`, so a list of kinds is never copied.
"""

from __future__ import annotations

import contextlib
from typing import Generic, Iterator, TypeVar

from dmt_fx.ir.errors import DMTError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one extension point, in registration order."""

    def __init__(self, what: str, how_to_add: str) -> None:
        self.what = what  # e.g. "tower-module kind"
        self.how_to_add = how_to_add  # e.g. "dmt_fx.compiler.tower_modules.register_tower_module(name, factory)"
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add (or replace) `name`; returns the entry so it can decorate."""
        if not isinstance(name, str) or not name:
            raise DMTError(f"a {self.what} named {name!r}", "a non-empty string name", ["pass a name such as 'mine'"])
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    @contextlib.contextmanager
    def scoped(self) -> Iterator[Registry[T]]:
        """Registrations made inside are undone on exit (tests, a kind tried once)."""
        saved = dict(self._entries)
        try:
            yield self
        finally:
            self._entries = saved

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise DMTError(f"{self.what} {name!r}", f"one of {', '.join(self.names())}",
                           [f"pick one of: {', '.join(self.names())}", f"or register yours: {self.how_to_add}"])
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())
