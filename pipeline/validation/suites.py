"""Great Expectations suites, one per store kind, and `validate_store` that runs them.

A store is a folder of Parquet files: the interim `notes` store of one source
(notes, pieces, rejects[, pedals]) or a processed representation store (train,
validation, test, pieces[, params.json]). Each suite is declared as data: a list of
tables (a store file, or a frame derived from the store in pandas, such as the
piece -> split assignment or notes per second of each piece), each with the
expectations it must meet. `validate_store` runs them with Great Expectations on
pandas frames and returns a plain, JSON-ready result whose failed checks carry a
few offending values, so that a broken store is explained, not just refused.

Great Expectations is imported lazily (it takes seconds), with analytics and
progress bars off.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.core.config import SPLITS
from pipeline.core.params import require
from pipeline.core.stores import NOTES, PEDALS, PIECES, REJECTS, StoreError, read_table
from pipeline.expect import (
    Spec,
    Table,
    between,
    columns_are,
    equal,
    greater,
    in_set,
    is_null,
    not_null,
    rate,
    row_count,
    unique,
)

log = logging.getLogger(__name__)

MIDI_MAX = 127


@dataclass(frozen=True)
class ValidateParams:
    """The `validate` section of params.yaml.

    Attributes:
        max_notes_per_second: sanity bound on notes per second of any one piece;
            denser pieces are almost always broken tempo maps or generated junk.
        max_examples: offending values kept per failed expectation.
    """

    max_notes_per_second: float
    max_examples: int

    def validate(self) -> None:
        require(self.max_notes_per_second > 0, "max_notes_per_second must be > 0")
        require(self.max_examples >= 1, "max_examples must be >= 1")


class ValidationError(ValueError):
    """The store cannot be validated at all (unknown kind, folder not found)."""


@dataclass
class _Store:
    """What a suite reads from a store folder, plus the file-level check results."""

    path: Path
    checks: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def read(self, name: str, kind: str) -> pa.Table | None:
        """Read `<name>.parquet` of store kind `kind`; None (and a failed check) if not possible."""
        file = self.path / f"{name}.parquet"
        if not file.exists():
            self.checks.append(_custom("expect_store_file_to_exist", name, False, [str(file)]))
            return None
        try:
            table = read_table(file, kind)
        except StoreError as exc:
            self.checks.append(_custom("expect_store_schema_version", name, False, [str(exc)]))
            return None
        self.checks.append(_custom("expect_store_schema_version", name, True, []))
        return table


# --- expectation helpers ------------------------------------------------------------


UNKNOWN_PIECE = "piece_id_not_in_pieces"
"""Derived column: the piece_id where pieces.parquet lacks it, else null.

Checked with ExpectColumnValuesToBeNull so the offending ids come back as examples
without putting every known id (178k for Lakh) into the expectation's config.
"""


def _unknown(piece_ids: pd.Series, known: pd.Index) -> pd.Series:
    return piece_ids.where(~piece_ids.isin(known), None).astype(object)


def _guarded(frame: pd.DataFrame, specs: list[Spec]) -> list[Spec]:
    """Drop specs on absent columns (the columns check already reports them)."""
    have = set(frame.columns)
    kept = []
    for spec in specs:
        used = [spec.kwargs[k] for k in ("column", "column_A", "column_B") if k in spec.kwargs]
        used += spec.kwargs.get("column_list", [])
        if set(used) <= have:
            kept.append(spec)
    return kept


# --- suites ---------------------------------------------------------------------------


def _pieces_specs() -> list[Spec]:
    return [
        columns_are(PIECES.names),
        *not_null("piece_id", "source", "split", "path", "n_notes", "duration"),
        unique("piece_id"),  # also: a piece has exactly one split
        in_set("split", list(SPLITS)),
        between("n_notes", 1),
        between("duration", 0, strict_min=True),
    ]


def _per_piece_table(rates: pd.DataFrame, params: ValidateParams) -> Table:
    """Notes per second of each piece against the sanity bound."""
    return Table(
        "per_piece",
        rates,
        [between("notes_per_second", 0, params.max_notes_per_second)],
    )


def notes_suite(store: _Store, params: ValidateParams) -> tuple[list[Table], dict[str, int], int]:
    """Interim store of one source: notes + pieces + rejects (+ pedals)."""
    tables: list[Table] = []
    notes_t = store.read("notes", "notes")
    pieces_t = store.read("pieces", "pieces")
    rejects_t = store.read("rejects", "rejects")
    pedals_t = store.read("pedals", "pedals") if (store.path / "pedals.parquet").exists() else None

    notes = notes_t.to_pandas() if notes_t is not None else None
    pieces = pieces_t.to_pandas() if pieces_t is not None else None
    if notes is not None:
        tables.append(
            Table(
                "notes",
                notes,
                [
                    columns_are(NOTES.names),
                    *not_null(*NOTES.names),
                    between("pitch", 0, MIDI_MAX),
                    between("velocity", 1, MIDI_MAX),
                    between("program", 0, MIDI_MAX),
                    between("track", 0),
                    between("start", 0),
                    greater("end", "start"),
                    row_count(1),
                ],
            )
        )
    if pieces is not None:
        tables.append(Table("pieces", pieces, [*_pieces_specs(), row_count(1)]))
    if rejects_t is not None:
        rejects = rejects_t.to_pandas()
        tables.append(
            Table("rejects", rejects, [columns_are(REJECTS.names), *not_null("path", "reason")])
        )
    if pedals_t is not None:
        pedals = pedals_t.to_pandas()
        tables.append(
            Table(
                "pedals",
                pedals,
                [
                    columns_are(PEDALS.names),
                    *not_null(*PEDALS.names),
                    between("start", 0),
                    greater("end", "start"),
                ],
            )
        )

    rows = dict.fromkeys(SPLITS, 0)
    if notes is not None and {"piece_id", "end"} <= set(notes.columns):
        per_piece = notes.groupby("piece_id", sort=True).agg(
            notes_rows=("piece_id", "size"), last_end=("end", "max")
        )
        per_piece["notes_per_second"] = rate(per_piece["notes_rows"], per_piece["last_end"])
        per_piece = per_piece.reset_index()
        specs = [between("notes_per_second", 0, params.max_notes_per_second)]
        if pieces is not None and {"piece_id", "split", "n_notes"} <= set(pieces.columns):
            known = pieces.drop_duplicates("piece_id").set_index("piece_id")
            per_piece["n_notes"] = per_piece["piece_id"].map(known["n_notes"]).astype("float64")
            per_piece[UNKNOWN_PIECE] = _unknown(per_piece["piece_id"], known.index)
            specs += [
                is_null(UNKNOWN_PIECE),
                equal("notes_rows", "n_notes"),  # pieces.n_notes agrees with the notes
            ]
            split_of = notes["piece_id"].map(known["split"])
            rows.update({s: int((split_of == s).sum()) for s in SPLITS})
            for split in _required_splits(pieces):  # notes rows of each split in use
                part = notes.loc[split_of == split, ["piece_id"]].reset_index(drop=True)
                tables.append(Table(split, part, [row_count(1)]))
        tables.append(Table("per_piece", per_piece, specs))
    if pieces is not None and {"split", "path", "group", "fingerprint"} <= set(pieces.columns):
        tables.append(_split_leaks(pieces))
    n_pieces = len(pieces) if pieces is not None else 0
    return tables, rows, n_pieces


GROUP_LEAK = "group_in_two_splits"
FINGERPRINT_LEAK = "fingerprint_in_two_splits"
LEAK_PATHS = 3  # paths named per leaking group in an example


def _split_leaks(pieces: pd.DataFrame) -> Table:
    """One row per piece: its group (fingerprint) described where it spans two splits.

    Versions of one work on both sides of the train/test line make test scores
    measure memory, so a group or a content fingerprint in two splits fails. Like
    UNKNOWN_PIECE the derived columns are null where all is well and name the
    offence otherwise ("bwv281 in test, train: bach/bwv281_krn.mid (train), ...").
    """
    frame = pd.DataFrame({"piece_id": pieces["piece_id"]})
    for column, key in ((GROUP_LEAK, "group"), (FINGERPRINT_LEAK, "fingerprint")):
        keyed = pieces[[key, "split", "path"]].dropna(subset=[key])
        keyed = keyed[keyed[key] != ""]
        n_splits = keyed.groupby(key)["split"].nunique()
        described: dict[str, str] = {}
        for value, part in keyed[keyed[key].isin(n_splits.index[n_splits > 1])].groupby(key):
            part = part.sort_values("path")
            shown = part.head(LEAK_PATHS)
            head = ", ".join(f"{p} ({s})" for p, s in shown[["path", "split"]].itertuples(False))
            more = f", ... ({len(part)} pieces)" if len(part) > LEAK_PATHS else ""
            splits = ", ".join(sorted(set(part["split"])))
            described[value] = f"{value} in {splits}: {head}{more}"
        leak = pieces[key].map(described)
        frame[column] = leak.astype(object).where(leak.notna(), None)
    return Table("split_leaks", frame, [is_null(GROUP_LEAK), is_null(FINGERPRINT_LEAK)])


def _required_splits(pieces: pd.DataFrame) -> list[str]:
    """train always, and every split the pieces table assigns a piece to."""
    present = set(pieces["split"].dropna()) if "split" in pieces.columns else set()
    return [s for s in SPLITS if s == "train" or s in present]


def _load_meta(store: _Store, kind: str) -> None:
    """Read the representation params the stage wrote beside the store (params.json)."""
    file = store.path / "params.json"
    if not file.exists():
        log.warning("%s: no params.json; pitch and length bounds use MIDI's full range", store.path)
        return
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
    except (OSError, ValueError) as exc:
        store.checks.append(
            _custom("expect_store_params_readable", "params.json", False, [f"{file}: {exc}"])
        )
        return
    # Accept the params flat, or nested under "params" or the representation's name.
    meta: dict[str, Any] = {}
    for key in ("params", kind):
        if isinstance(data.get(key), dict):
            meta.update(data[key])
    meta.update({k: v for k, v in data.items() if not isinstance(v, dict)})
    store.meta = meta


def processed_suite(
    kind: str,
) -> Callable[[_Store, ValidateParams], tuple[list[Table], dict[str, int], int]]:
    """Suite of processed store `kind`: split files, pieces, split disjointness, density.

    What the rows must hold comes from the representation itself (its registry entry's
    `expectations`, `checks` and `density`), so a new representation brings its own
    expectations and this module does not change.
    """
    from pipeline import representations

    rep = representations.get(kind)
    columns = tuple(rep.schema.names)

    def suite(store: _Store, params: ValidateParams) -> tuple[list[Table], dict[str, int], int]:
        _load_meta(store, kind)
        tables: list[Table] = []
        pieces_t = store.read("pieces", "pieces")
        pieces = pieces_t.to_pandas() if pieces_t is not None else None
        if pieces is not None:
            tables.append(Table("pieces", pieces, _pieces_specs()))
        required = _required_splits(pieces) if pieces is not None else ["train"]

        arrow: dict[str, pa.Table] = {}
        frames: dict[str, pd.DataFrame] = {}
        rows = dict.fromkeys(SPLITS, 0)
        for split in SPLITS:
            table = store.read(split, kind)
            if table is None:
                continue
            arrow[split] = table
            frame = table.to_pandas()
            frames[split] = frame
            rows[split] = len(frame)
            specs = [
                columns_are(columns),
                *not_null(*columns),
                *(rep.expectations(store.meta) if rep.expectations else []),
            ]
            if split in required:
                specs.append(row_count(1))
            tables.append(Table(split, frame, specs))

        assigned = [
            pd.DataFrame({"piece_id": f["piece_id"].drop_duplicates().to_numpy(), "split": split})
            for split, f in frames.items()
            if "piece_id" in f.columns
        ]
        if assigned:
            piece_splits = pd.concat(assigned, ignore_index=True)
            specs = [unique("piece_id")]  # splits are disjoint by piece
            if pieces is not None and {"piece_id", "split"} <= set(pieces.columns):
                known = pieces.drop_duplicates("piece_id").set_index("piece_id")["split"]
                piece_splits["pieces_split"] = piece_splits["piece_id"].map(known)
                piece_splits[UNKNOWN_PIECE] = _unknown(piece_splits["piece_id"], known.index)
                specs += [
                    is_null(UNKNOWN_PIECE),
                    equal("split", "pieces_split"),  # the file agrees with pieces.parquet
                ]
            tables.append(Table("piece_splits", piece_splits, specs))

        complete = {s: t for s, t in arrow.items() if set(columns) <= set(t.column_names)}
        if rep.checks is not None and complete:
            tables += rep.checks(complete, store.meta)
        density = rep.density(complete, store.meta) if rep.density and complete else None
        if density is not None:
            density = density[density["notes"] > 0].reset_index(drop=True)  # empty: no rate
            density["notes_per_second"] = rate(density["notes"], density["seconds"])
            tables.append(_per_piece_table(density, params))
        n_pieces = len(pieces) if pieces is not None else 0
        return tables, rows, n_pieces

    return suite


SuiteFn = Callable[[_Store, ValidateParams], tuple[list[Table], dict[str, int], int]]


def store_kinds() -> list[str]:
    """Every kind `validate_store` knows: the interim notes store and each representation."""
    from pipeline import representations

    return ["notes", *representations.names()]


def suite_for(kind: str) -> SuiteFn:
    """The suite of store `kind`; imports only that representation's module."""
    if kind == "notes":
        return notes_suite
    if kind not in store_kinds():
        raise ValidationError(f"unknown store kind {kind!r}; allowed: {store_kinds()}")
    return processed_suite(kind)


# --- running --------------------------------------------------------------------------


def validate_store(kind: str, path: str | Path, params: ValidateParams) -> dict[str, Any]:
    """Validate the store folder `path` of kind `kind` against its suite.

    Returns:
        {"success", "store", "path", "checks": [{"expectation", "table", "column",
        "success", "unexpected_count", "examples", "details"}], "rows": {split: n},
        "pieces": n, "size_bytes": n}. A wrong schema version or a missing file is a
        failed check, not an exception.

    Raises:
        ValidationError: unknown `kind`, or `path` is not a folder.
    """
    suite = suite_for(kind)
    path = Path(path)
    if not path.is_dir():
        raise ValidationError(f"{path}: store folder not found")
    store = _Store(path)
    tables, rows, n_pieces = suite(store, params)
    checks = store.checks + run_tables(kind, tables, params.max_examples)
    return {
        "success": all(c["success"] for c in checks),
        "store": kind,
        "path": str(path),
        "checks": checks,
        "rows": rows,
        "pieces": n_pieces,
        "size_bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
    }


def _import_gx() -> tuple[Any, Any]:
    """Import Great Expectations quietly: no analytics, no INFO chatter on stderr."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # It logs hundreds of INFO lines while importing, and its context module pins its
    # own logger to INFO; the stage's stderr is for failures.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    import great_expectations.expectations as gxe

    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)

    return gx, gxe


def run_tables(kind: str, tables: list[Table], max_examples: int = 5) -> list[dict[str, Any]]:
    """Run each table's expectations with Great Expectations; one check dict per expectation."""
    tables = [t for t in tables if t.specs]
    if not tables:
        return []
    gx, gxe = _import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    # One asset and batch definition for all tables: each addition re-saves the
    # context's config, and the frame itself is a runtime batch parameter anyway.
    batch_definition = (
        context.data_sources.add_pandas(f"etude_{kind}")
        .add_dataframe_asset(kind)
        .add_batch_definition_whole_dataframe("whole")
    )
    # Ask for more than we keep: the partial list repeats values, and we keep distinct ones.
    result_format = {
        "result_format": "SUMMARY",
        "partial_unexpected_count": max(20, 4 * max_examples),
    }
    checks: list[dict[str, Any]] = []
    for table in tables:
        specs = _guarded(table.frame, table.specs)
        suite = gx.ExpectationSuite(name=f"{kind}.{table.name}")
        for order, spec in enumerate(specs):
            suite.add_expectation(getattr(gxe, spec.cls)(**spec.kwargs, meta={"order": order}))
        batch = batch_definition.get_batch(batch_parameters={"dataframe": _widened(table.frame)})
        outcome = batch.validate(suite, result_format=result_format)
        ordered = sorted(
            outcome.results, key=lambda r: (r.expectation_config.meta or {}).get("order", 0)
        )
        checks += [_check(table.name, r, max_examples) for r in ordered]
    return checks


def _widened(frame: pd.DataFrame) -> pd.DataFrame:
    """Cast narrow numeric columns to int64/float64.

    Great Expectations vectorises range checks only for the default numpy dtypes; on
    int16 or float32 it calls a Python function per value (measured 30x slower).
    """
    casts = {}
    for name, dtype in frame.dtypes.items():
        if dtype.kind in "iu" and dtype != np.int64:
            casts[name] = np.int64
        elif dtype.kind == "f" and dtype != np.float64:
            casts[name] = np.float64
    return frame.astype(casts) if casts else frame


def _check(table: str, result: Any, max_examples: int) -> dict[str, Any]:
    config = result.expectation_config
    kwargs = dict(config.kwargs)
    details = result.result or {}
    error = _exception_message(result.exception_info)
    if error:
        examples: list[Any] = [error]
    elif "partial_unexpected_counts" in details or "partial_unexpected_list" in details:
        raw = [c["value"] for c in details.get("partial_unexpected_counts") or []]
        raw = raw or list(details.get("partial_unexpected_list") or [])
        examples = _distinct([_plain(v) for v in raw])[:max_examples]
    elif (
        not result.success
        and isinstance(details.get("details"), dict)
        and "mismatched" in details["details"]
    ):
        examples = [_plain(details["details"]["mismatched"])]
    elif not result.success and "observed_value" in details:
        examples = [_plain(details["observed_value"])]
    else:
        examples = []
    return {
        "expectation": config.type,
        "table": table,
        "column": _column(kwargs),
        "success": bool(result.success) and not error,
        "unexpected_count": _plain(details.get("unexpected_count")),
        "examples": examples,
        "details": _describe(kwargs),
    }


def _custom(expectation: str, table: str, success: bool, examples: list[Any]) -> dict[str, Any]:
    """A check computed outside Great Expectations, in the same shape."""
    return {
        "expectation": expectation,
        "table": table,
        "column": None,
        "success": success,
        "unexpected_count": None if success else 1,
        "examples": examples,
        "details": "",
    }


def _exception_message(info: Any) -> str | None:
    if not isinstance(info, dict):
        return None
    entries = (
        [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    )
    for entry in entries:
        if entry.get("raised_exception"):
            return f"error: {entry.get('exception_message')}"
    return None


def _column(kwargs: dict[str, Any]) -> str | None:
    if "column" in kwargs:
        return str(kwargs["column"])
    if "column_A" in kwargs:
        return f"{kwargs['column_A']}, {kwargs['column_B']}"
    if "column_list" in kwargs:
        return ", ".join(map(str, kwargs["column_list"]))
    return None


def _describe(kwargs: dict[str, Any]) -> str:
    """Short human text of an expectation's arguments (large value sets elided)."""
    parts = []
    for key, value in kwargs.items():
        if key in ("batch_id", "column", "column_A", "column_B", "column_list") or value is None:
            continue
        if isinstance(value, (list, tuple, set)) and len(value) > 10:
            value = f"[{len(value)} values]"
        parts.append(f"{key}={_plain(value)}")
    return ", ".join(parts)


def _distinct(values: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _plain(value: Any) -> Any:
    """JSON-ready copy of a value from a Great Expectations result (numpy, NaN, tuples)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
