"""Expectations declared as data, without importing Great Expectations.

A store's checks are written once, beside the code that writes the store (each
representation declares its own through the registry), in this small vocabulary;
`pipeline.validation` runs them with Great Expectations. It sits in the bottom layer
(see `pipeline`'s docstring) so that both `pipeline.representations`, which declares
the checks, and `pipeline.validation`, which runs them, import it from below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Spec:
    """One expectation, declared without importing Great Expectations.

    Attributes:
        cls: class name in `great_expectations.expectations`.
        kwargs: its arguments (column names, bounds, ...).
    """

    cls: str
    kwargs: dict[str, Any]


@dataclass
class Table:
    """A frame to validate and the expectations it must meet."""

    name: str
    frame: pd.DataFrame
    specs: list[Spec] = field(default_factory=list)


def not_null(*columns: str) -> list[Spec]:
    return [Spec("ExpectColumnValuesToNotBeNull", {"column": c}) for c in columns]


def is_null(column: str) -> Spec:
    return Spec("ExpectColumnValuesToBeNull", {"column": column})


def between(
    column: str,
    min_value: float | None = None,
    max_value: float | None = None,
    *,
    strict_min: bool = False,
    strict_max: bool = False,
) -> Spec:
    kwargs: dict[str, Any] = {"column": column, "min_value": min_value, "max_value": max_value}
    if strict_min:
        kwargs["strict_min"] = True
    if strict_max:
        kwargs["strict_max"] = True
    return Spec("ExpectColumnValuesToBeBetween", kwargs)


def greater(column_a: str, column_b: str) -> Spec:
    return Spec(
        "ExpectColumnPairValuesAToBeGreaterThanB", {"column_A": column_a, "column_B": column_b}
    )


def equal(column_a: str, column_b: str) -> Spec:
    return Spec("ExpectColumnPairValuesToBeEqual", {"column_A": column_a, "column_B": column_b})


def unique(*columns: str) -> Spec:
    if len(columns) == 1:
        return Spec("ExpectColumnValuesToBeUnique", {"column": columns[0]})
    return Spec("ExpectCompoundColumnsToBeUnique", {"column_list": list(columns)})


def in_set(column: str, values: list[Any]) -> Spec:
    return Spec("ExpectColumnValuesToBeInSet", {"column": column, "value_set": values})


def row_count(min_value: int = 1) -> Spec:
    return Spec("ExpectTableRowCountToBeBetween", {"min_value": min_value})


def columns_are(names: tuple[str, ...] | list[str]) -> Spec:
    return Spec("ExpectTableColumnsToMatchSet", {"column_set": list(names), "exact_match": True})


def rate(n_notes: pd.Series, seconds: pd.Series) -> pd.Series:
    """n / seconds, +inf where the piece lasts no time (so the bound fails)."""
    seconds = seconds.astype("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(
            seconds > 0, n_notes.to_numpy(dtype="float64") / seconds.to_numpy(), math.inf
        )
    return pd.Series(rate, index=n_notes.index)


MIDI_MAX = 127


def meta_int(meta: dict[str, Any], key: str, default: int) -> int:
    """An integer store param from params.json, or `default` when absent or not a number."""
    value = meta.get(key)
    return (
        int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default
    )


def concat_frames(splits: dict[str, Any], columns: list[str]) -> pd.DataFrame:
    """The `columns` of every split's Arrow table as one pandas frame."""
    import pyarrow as pa

    return pa.concat_tables([t.select(columns) for t in splits.values()]).to_pandas()
