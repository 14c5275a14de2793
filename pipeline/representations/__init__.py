"""Registry of representations: each module registers one `Representation`.

A representation turns the merged notes store into rows of its own Parquet schema
(`encode`) and turns one piece's rows back into notes (`decode`). Its params live
in the params.yaml section of the same name and are parsed into `params_cls`.
Adding a representation = one module + one `register()` line here + one section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # keep `etude --help` from importing pandas/pyarrow
    import pandas as pd
    import pyarrow as pa


class EncodeFn(Protocol):
    def __call__(self, notes: pd.DataFrame, pedals: pd.DataFrame, params: Any) -> pd.DataFrame: ...


@dataclass(frozen=True)
class Representation:
    """A registered representation.

    Attributes:
        name: stage/section/folder name, e.g. "pianoroll".
        params_cls: frozen dataclass of its params.yaml section.
        schema: pyarrow schema of its store rows (first column piece_id).
        encode: notes (+ pedals) of any number of pieces -> store rows.
        decode: one piece's store rows -> notes (pitch, velocity, start, end, ...).
    """

    name: str
    params_cls: type
    schema: pa.Schema
    encode: EncodeFn
    decode: Any


REGISTRY: dict[str, Representation] = {}


def register(rep: Representation) -> Representation:
    REGISTRY[rep.name] = rep
    return rep


def get(name: str) -> Representation:
    """Return the registered representation `name` (imports the modules on first use)."""
    _load_all()
    if name not in REGISTRY:
        raise KeyError(f"unknown representation {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name]


def names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)


def _load_all() -> None:
    import importlib

    for module in ("pianoroll", "tuples", "events", "prv"):
        try:
            importlib.import_module(f"pipeline.representations.{module}")
        except ModuleNotFoundError as exc:  # only tolerated while a module is not written yet
            if exc.name != f"pipeline.representations.{module}":
                raise
