"""One registry for sources, representations and models: a name -> module table.

Each entry lives in a module of its own that calls `Registry.register` when it is
imported. `get(name)` imports that one module and nothing else, so a stage loads only
the code of the entry it runs, and dvc.yaml can list exactly that file as a dependency.
`names()` reads the table without importing anything. A module that fails to import
raises its own error: a broken entry is never reported as an unknown one.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Generic, Protocol, TypeVar


class Named(Protocol):
    name: str


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """Entries of one kind (e.g. "model"), each registered by its own module.

    Args:
        kind: what an entry is, for messages ("source", "representation", "model").
        modules: entry name -> dotted module path that registers it.
    """

    def __init__(self, kind: str, modules: Mapping[str, str]):
        self.kind = kind
        self.modules = dict(modules)
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        """Called by an entry's module at import time; returns the entry unchanged."""
        if entry.name not in self.modules:
            raise KeyError(
                f"{self.kind} {entry.name!r} is not in the {self.kind} table; add "
                f"{entry.name!r}: <module> to its registry"
            )
        self._entries[entry.name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry `name`, importing its module on first use.

        Raises:
            KeyError: `name` is not in the table (the message lists the known names).
            ImportError and anything else the module raises while importing.
        """
        if name not in self._entries:
            if name not in self.modules:
                raise KeyError(f"unknown {self.kind} {name!r}; known: {self.names()}")
            importlib.import_module(self.modules[name])
            if name not in self._entries:
                raise LookupError(
                    f"{self.modules[name]} was imported but did not register {self.kind} {name!r}"
                )
        return self._entries[name]

    def names(self) -> list[str]:
        """All entry names, sorted; imports nothing."""
        return sorted(self.modules)

    def __contains__(self, name: object) -> bool:
        return name in self.modules
