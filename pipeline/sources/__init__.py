"""Registry of data sources; each module fetches one data set into data/raw/<source>/.

A fetched source folder holds MIDI files (any sub-folders) and `manifest.csv`
with columns ``path, split, composer, title`` (path relative to the folder; empty
strings where unknown). Ingest takes splits and metadata from the manifest.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("path", "split", "composer", "title")


class FetchFn(Protocol):
    def __call__(self, params: Any, out_dir: Path) -> None: ...


@dataclass(frozen=True)
class Source:
    """A registered source: its params section (same name) and its fetch function."""

    name: str
    params_cls: type
    fetch: FetchFn


_REGISTRY: dict[str, Source] = {}
_MODULES = ("corpus", "maestro", "lakh")


def register(source: Source) -> Source:
    _REGISTRY[source.name] = source
    return source


def get(name: str) -> Source:
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown source {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def _load_all() -> None:
    for module in _MODULES:
        try:
            importlib.import_module(f"pipeline.sources.{module}")
        except ModuleNotFoundError as exc:  # tolerated only while a module is unwritten
            if exc.name != f"pipeline.sources.{module}":
                raise
