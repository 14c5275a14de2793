"""Registry of representations, and the processed stores they write.

A representation turns the merged notes store into rows of its own Parquet schema
(`encode`) and turns one piece's rows back into notes (`decode`). Its params live
in the params.yaml section of the same name and are parsed into `params_cls`; the
expectations its store must meet travel with it (`expectations`, `checks`), so the
validate stage needs no per-representation code of its own.
Adding a representation = one module + one line in `REGISTRY` + one params section.

A processed store folder (``data/processed/<name>/``) holds ``train.parquet``,
``validation.parquet``, ``test.parquet``, ``pieces.parquet`` and ``params.json``;
`load_store` reads it as a `StoreData` for the models.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.core.config import SPLITS
from pipeline.registry import Registry

if TYPE_CHECKING:  # keep `etude --help` from importing pandas/pyarrow
    import pandas as pd
    import pyarrow as pa

PARAMS_JSON = "params.json"
PIECES_FILE = "pieces.parquet"


class EncodeFn(Protocol):
    def __call__(self, notes: pd.DataFrame, pedals: pd.DataFrame, params: Any) -> pd.DataFrame: ...


class RepresentError(RuntimeError):
    """The processed store cannot be built or read (message names the input)."""


@dataclass(frozen=True)
class Representation:
    """A registered representation.

    Attributes:
        name: stage/section/folder name, e.g. "pianoroll".
        params_cls: frozen dataclass of its params.yaml section.
        schema: pyarrow schema of its store rows (first column piece_id).
        encode: notes (+ pedals) of any number of pieces -> store rows.
        decode: one piece's store rows -> notes (pitch, velocity, start, end, ...).
        expectations: store params (from params.json, a dict) -> the value expectations
            (`pipeline.expect.Spec`) every row of a split file must meet.
        checks: (split name -> Arrow table, store params) -> extra tables to validate
            (`pipeline.expect.Table`), e.g. every token of the events store.
        density: (split name -> Arrow table, store params) -> a frame (piece_id,
            notes, seconds) per piece, checked against `validate.max_notes_per_second`;
            None where the representation cannot count notes (piano-roll cells).
    """

    name: str
    params_cls: type
    schema: pa.Schema
    encode: EncodeFn
    decode: Any
    expectations: Callable[[dict[str, Any]], list[Any]] | None = None
    checks: Callable[[dict[str, Any], dict[str, Any]], list[Any]] | None = None
    density: Callable[[dict[str, Any], dict[str, Any]], Any] | None = None


REGISTRY: Registry[Representation] = Registry(
    "representation",
    {
        "pianoroll": "pipeline.representations.pianoroll",
        "tuples": "pipeline.representations.tuples",
        "events": "pipeline.representations.events",
        "prv": "pipeline.representations.prv",
    },
)
register = REGISTRY.register
get = REGISTRY.get
names = REGISTRY.names


def decode_rows(name: str, rows: pd.DataFrame, params: Any) -> pd.DataFrame:
    """One piece's store rows -> notes; no rows (a silent sample) -> no notes."""
    import pandas as pd

    if len(rows) == 0:
        return pd.DataFrame(
            {
                "pitch": pd.Series(dtype="int16"),
                "velocity": pd.Series(dtype="int16"),
                "start": pd.Series(dtype="float64"),
                "end": pd.Series(dtype="float64"),
            }
        )
    return get(name).decode(rows, params)


@dataclass
class StoreData:
    """One representation store loaded for a model: rows per split, pieces and params.

    Attributes:
        rows: split name -> DataFrame of store rows (the representation's schema).
        pieces: piece metadata (piece_id, split, style, composer, title, source, ...).
        params: the representation's params dataclass (e.g. frame_ms).
        path: the store folder.
    """

    rows: dict[str, pd.DataFrame]
    pieces: pd.DataFrame
    params: Any
    path: Path | None = None


def load_store(out_dir: Path, name: str) -> StoreData:
    """Load a processed store folder.

    Params come from the store's params.json, so a model reads the store it was
    given, not whatever params.yaml says now.

    Raises:
        StoreError: a file is missing or of another kind/version.
        RepresentError: params.json is missing or is for another representation.
    """
    from pipeline.core.stores import read_store

    out_dir = Path(out_dir)
    params = read_store_params(out_dir, name)
    rows = {split: read_store(out_dir / f"{split}.parquet", name) for split in SPLITS}
    pieces = read_store(out_dir / PIECES_FILE, "pieces")
    return StoreData(rows=rows, pieces=pieces, params=params, path=out_dir)


def read_store_params(out_dir: Path, name: str) -> Any:
    """The params dataclass recorded in `out_dir/params.json`."""
    from pipeline.core.params import ParamsError, from_mapping, message_body

    rep = get_or_params_error(name)
    path = Path(out_dir) / PARAMS_JSON
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RepresentError(f"{path}: missing (rebuild with `etude represent`)") from None
    except json.JSONDecodeError as exc:
        raise RepresentError(f"{path}: not valid JSON ({exc})") from exc
    if meta.get("representation") != name:
        raise RepresentError(f"{path}: store is for {meta.get('representation')!r}, not {name!r}")
    try:
        return from_mapping(meta.get("params", {}), rep.params_cls, name)
    except ParamsError as exc:  # the store's params.json speaks, not params.yaml
        raise RepresentError(f"{path}: {message_body(exc)}") from exc


def get_or_params_error(name: str) -> Representation:
    """`get(name)`, with an unknown name reported as a params problem."""
    from pipeline.core.params import ParamsError

    if name not in REGISTRY:
        raise ParamsError(f"unknown representation {name!r}; allowed: {names()}")
    return get(name)
