"""Validation suites and the `validate` command, on stores built from the real fixtures.

The interim store comes from `pipeline.ingest.ingest_dir` over a few fixture MIDI
files (plus one broken file, so rejects is not empty). The processed stores are
encoded here by small reference encoders that follow the store contract (the
representation stage is tested on its own); each test corrupts a copy in one way
and checks that the right expectation fails with the offending value as an example.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from rawfolder import make_raw_source
from typer.testing import CliRunner

from pipeline import representations
from pipeline.core.config import DEFAULT_PARAMS_FILE
from pipeline.core.params import ParamsError, default_params, from_mapping
from pipeline.core.stores import NOTES, PIECES, read_store, write_store
from pipeline.ingest import IngestParams, ingest_dir
from pipeline.validation import ValidateParams, ValidationError, stage, store_kinds, validate_store
from pipeline.validation.suites import FINGERPRINT_LEAK, GROUP_LEAK, UNKNOWN_PIECE

VALIDATE = default_params("validate", ValidateParams)

DEFAULT_PARAMS = default_params("ingest", IngestParams)

SAMPLE = {  # fixture file -> split assigned by the manifest
    "other/miditok_POP909_008.mid": "train",
    "other/miditok_POP909_010.mid": "train",
    "other/symusic_1.midi": "train",
    "lakh/miditok_Mr._Blue_Sky.mid": "train",
    "other/miditok_POP909_022.mid": "validation",
    "other/miditok_POP909_191.mid": "test",
}
SPLIT_NAMES = ("train", "validation", "test")

PROCESSED_SCHEMAS = {
    "pianoroll": pa.schema(
        [
            ("piece_id", pa.string()),
            ("frame", pa.int32()),
            ("pitch", pa.int16()),
            ("velocity", pa.int16()),
        ]
    ),
    "tuples": pa.schema(
        [
            ("piece_id", pa.string()),
            ("index", pa.int32()),
            ("pitch", pa.int16()),
            ("step", pa.float32()),
            ("duration", pa.float32()),
            ("velocity", pa.int16()),
        ]
    ),
    "events": pa.schema([("piece_id", pa.string()), ("tokens", pa.list_(pa.uint16()))]),
    "prv": pa.schema(
        [
            ("piece_id", pa.string()),
            ("step", pa.int32()),
            ("pitch", pa.int16()),
            ("replay", pa.bool_()),
            ("volume", pa.float32()),
        ]
    ),
}
REPR_PARAMS = {
    "pianoroll": {
        "frame_ms": 50,
        "min_pitch": 21,
        "max_pitch": 108,
        "sustain": False,
        "max_frames_per_piece": 0,
    },
    "tuples": {},
    "events": {},
    "prv": {"steps_per_second": 8, "min_pitch": 36, "n_pitches": 48, "max_steps_per_piece": 0},
}


# --- reference encoders (the store contract, written plainly) -------------------------


def _cells(notes: pd.DataFrame, per_second: float) -> pd.DataFrame:
    """One row per (note, grid step) the note covers; `first` marks its onset step."""
    first = np.floor(notes["start"].to_numpy() * per_second).astype(np.int64)
    last = np.maximum(first + 1, np.ceil(notes["end"].to_numpy() * per_second).astype(np.int64))
    counts = last - first
    idx = np.repeat(np.arange(len(notes)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    out = notes.iloc[idx].reset_index(drop=True)
    out["step"] = first[idx] + offset
    out["first"] = offset == 0
    return out


def encode_pianoroll(notes: pd.DataFrame, p: dict) -> pd.DataFrame:
    n = notes[(notes.pitch >= p["min_pitch"]) & (notes.pitch <= p["max_pitch"])]
    cells = _cells(n, 1000 / p["frame_ms"]).rename(columns={"step": "frame"})
    cells = cells.sort_values("velocity", ascending=False).drop_duplicates(
        ["piece_id", "frame", "pitch"]
    )
    columns = representations.get("pianoroll").schema.names
    return cells.sort_values(["piece_id", "frame", "pitch"])[columns]


def encode_tuples(notes: pd.DataFrame, p: dict) -> pd.DataFrame:
    n = notes.sort_values(["piece_id", "start", "pitch"], kind="stable").reset_index(drop=True)
    g = n.groupby("piece_id", sort=False)
    return pd.DataFrame(
        {
            "piece_id": n.piece_id,
            "index": g.cumcount(),
            "pitch": n.pitch,
            "step": (n.start - g.start.shift(1)).fillna(n.start),
            "duration": n.end - n.start,
            "velocity": n.velocity,
        }
    )


def _piece_tokens(n: pd.DataFrame) -> list[int]:
    # (time, is_on, pitch, velocity): note-offs sort before note-ons at equal times
    events = [(t, 0, p, 0) for t, p in zip(n.end, n.pitch, strict=True)]
    events += [(t, 1, p, v) for t, p, v in zip(n.start, n.pitch, n.velocity, strict=True)]
    tokens, now, velocity_bin = [1], 0, -1
    for time, is_on, pitch, velocity in sorted(events):
        ticks = int(round(time * 100)) - now
        now += max(ticks, 0)
        while ticks > 0:
            k = min(ticks, 100)
            tokens.append(258 + k)
            ticks -= k
        if is_on:
            b = int(velocity) * 32 // 128
            if b != velocity_bin:
                tokens.append(359 + b)
                velocity_bin = b
            tokens.append(3 + int(pitch))
        else:
            tokens.append(131 + int(pitch))
    return tokens + [2]


def encode_events(notes: pd.DataFrame, p: dict) -> pd.DataFrame:
    rows = [{"piece_id": pid, "tokens": _piece_tokens(n)} for pid, n in notes.groupby("piece_id")]
    return pd.DataFrame(rows, columns=["piece_id", "tokens"])


def encode_prv(notes: pd.DataFrame, p: dict) -> pd.DataFrame:
    low = p["min_pitch"]
    n = notes[(notes.pitch >= low) & (notes.pitch < low + p["n_pitches"])]
    cells = _cells(n, p["steps_per_second"])
    cells["pitch"] = cells["pitch"] - low
    cells["replay"] = cells["first"]
    cells["volume"] = cells["velocity"] / 127
    cells = cells.sort_values("replay", ascending=False).drop_duplicates(
        ["piece_id", "step", "pitch"]
    )
    return cells.sort_values(["piece_id", "step", "pitch"])[representations.get("prv").schema.names]


ENCODERS = {
    "pianoroll": encode_pianoroll,
    "tuples": encode_tuples,
    "events": encode_events,
    "prv": encode_prv,
}


def write_processed(kind: str, notes: pd.DataFrame, pieces: pd.DataFrame, out: Path) -> None:
    out.mkdir(parents=True)
    rows = ENCODERS[kind](notes, REPR_PARAMS[kind])
    split_of = pieces.set_index("piece_id")["split"]
    for split in SPLIT_NAMES:
        part = rows[rows["piece_id"].map(split_of) == split]
        write_store(part, out / f"{split}.parquet", kind, PROCESSED_SCHEMAS[kind])
    write_store(pieces, out / "pieces.parquet", "pieces", PIECES)
    (out / "params.json").write_text(json.dumps(REPR_PARAMS[kind]))


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    raw = root / "raw"
    broken = {"broken.mid": (b"MThd this is not a MIDI file", "train")}
    make_raw_source(raw, fixtures_dir, SAMPLE, extra=broken)
    params = replace(DEFAULT_PARAMS, workers=1, max_reject_rate=0.5)
    ingest_dir(raw, root / "interim", source="fx", params=params, progress=False)
    stores = {"notes": root / "interim"}
    notes = read_store(root / "interim" / "notes.parquet", "notes")
    pieces = read_store(root / "interim" / "pieces.parquet", "pieces")
    for kind in representations.names():
        write_processed(kind, notes, pieces, root / "processed" / kind)
        stores[kind] = root / "processed" / kind
    return stores


@pytest.fixture(scope="module")
def clean(built: dict[str, Path]):
    """Return a function giving the (cached) validation result of a clean store."""
    cache: dict[str, dict] = {}

    def result(kind: str) -> dict:
        if kind not in cache:
            cache[kind] = validate_store(kind, built[kind], VALIDATE)
        return cache[kind]

    return result


@pytest.fixture
def store(built: dict[str, Path], tmp_path: Path):
    """Return a function giving a private copy of the clean store of a kind."""

    def copy(kind: str) -> Path:
        target = tmp_path / kind
        shutil.copytree(built[kind], target)
        return target

    return copy


def edit(path: Path, kind: str, schema: pa.Schema, change) -> None:
    """Rewrite one store file through `change(df) -> df`, keeping its schema and metadata."""
    df = read_store(path, kind)
    write_store(change(df), path, kind, schema)


def failed(result: dict, expectation: str, table: str, column: str | None = None) -> dict:
    matches = [
        c
        for c in result["checks"]
        if c["expectation"] == expectation
        and c["table"] == table
        and (column is None or c["column"] == column)
        and not c["success"]
    ]
    assert matches, f"no failed {expectation} on {table}.{column}: " + json.dumps(
        [c for c in result["checks"] if not c["success"]], indent=1
    )
    return matches[0]


def failures(result: dict) -> list[tuple[str, str, str | None]]:
    return [
        (c["table"], c["expectation"], c["column"]) for c in result["checks"] if not c["success"]
    ]


# --- clean stores -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", store_kinds())
def test_clean_store_passes(built: dict[str, Path], clean, kind: str) -> None:
    result = clean(kind)
    assert failures(result) == []
    assert result["success"] is True
    assert result["store"] == kind
    assert (
        result["rows"]["train"] > 0
        and result["rows"]["validation"] > 0
        and result["rows"]["test"] > 0
    )
    assert result["pieces"] == len(SAMPLE)
    assert result["size_bytes"] == sum(
        f.stat().st_size for f in built[kind].rglob("*") if f.is_file()
    )
    names = {c["expectation"] for c in result["checks"]}
    assert {"expect_store_schema_version", "expect_column_values_to_not_be_null"} <= names
    if kind != "pianoroll":  # notes per second is checked wherever notes can be counted
        assert any(
            c["table"] == "per_piece" and c["column"] == "notes_per_second"
            for c in result["checks"]
        )
    json.dumps(result)  # JSON-ready as returned


def test_notes_store_counts_rows_by_split(built: dict[str, Path], clean) -> None:
    result = clean("notes")
    notes = read_store(built["notes"] / "notes.parquet", "notes")
    pieces = read_store(built["notes"] / "pieces.parquet", "pieces")
    by_split = notes["piece_id"].map(pieces.set_index("piece_id")["split"]).value_counts()
    assert result["rows"] == {s: int(by_split.get(s, 0)) for s in SPLIT_NAMES}
    assert sum(result["rows"].values()) == len(notes)


# --- corruptions ------------------------------------------------------------------------


def test_pitch_out_of_range_fails(store) -> None:
    path = store("notes")

    def change(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[3, "pitch"] = 200
        return df

    edit(path / "notes.parquet", "notes", NOTES, change)
    result = validate_store("notes", path, VALIDATE)
    assert result["success"] is False
    check = failed(result, "expect_column_values_to_be_between", "notes", "pitch")
    assert check["unexpected_count"] == 1
    assert 200 in check["examples"]
    assert failures(result) == [("notes", "expect_column_values_to_be_between", "pitch")]


def test_null_piece_id_fails(store) -> None:
    path = store("notes")

    def change(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[0, "piece_id"] = None
        return df

    edit(path / "notes.parquet", "notes", NOTES, change)
    check = failed(
        validate_store("notes", path, VALIDATE),
        "expect_column_values_to_not_be_null",
        "notes",
        "piece_id",
    )
    assert check["unexpected_count"] == 1
    assert None in check["examples"]


def test_end_before_start_fails(store) -> None:
    path = store("notes")

    def change(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[5, "end"] = df.loc[5, "start"] - 0.25
        return df

    edit(path / "notes.parquet", "notes", NOTES, change)
    notes = read_store(path / "notes.parquet", "notes")
    result = validate_store("notes", path, VALIDATE)
    check = failed(
        result, "expect_column_pair_values_a_to_be_greater_than_b", "notes", "end, start"
    )
    assert check["unexpected_count"] == 1
    assert [notes.loc[5, "end"], notes.loc[5, "start"]] in check["examples"]


def test_token_outside_vocabulary_fails(store) -> None:
    path = store("events")

    def change(df: pd.DataFrame) -> pd.DataFrame:
        tokens = list(df.at[0, "tokens"])
        tokens[3] = 500
        df.at[0, "tokens"] = tokens
        return df

    def drop_bos(df: pd.DataFrame) -> pd.DataFrame:
        df.at[0, "tokens"] = list(df.at[0, "tokens"])[1:]
        return df

    edit(path / "train.parquet", "events", PROCESSED_SCHEMAS["events"], change)
    edit(path / "validation.parquet", "events", PROCESSED_SCHEMAS["events"], drop_bos)
    result = validate_store("events", path, VALIDATE)
    check = failed(result, "expect_column_values_to_be_between", "tokens", "token")
    assert check["examples"] == [500]
    assert check["unexpected_count"] == 1
    check = failed(result, "expect_column_values_to_be_in_set", "sequences", "first_token")
    assert check["unexpected_count"] == 1
    assert sorted(failures(result)) == [
        ("sequences", "expect_column_values_to_be_in_set", "first_token"),
        ("tokens", "expect_column_values_to_be_between", "token"),
    ]


def test_piece_in_two_splits_fails(store) -> None:
    kind = "tuples"
    path = store(kind)
    schema = PROCESSED_SCHEMAS[kind]
    leaked = read_store(path / "validation.parquet", kind)
    leaked_id = leaked["piece_id"].iloc[0]
    edit(
        path / "train.parquet", kind, schema, lambda df: pd.concat([df, leaked], ignore_index=True)
    )
    result = validate_store(kind, path, VALIDATE)
    check = failed(result, "expect_column_values_to_be_unique", "piece_splits", "piece_id")
    assert leaked_id in check["examples"]
    split_check = failed(
        result, "expect_column_pair_values_to_be_equal", "piece_splits", "split, pieces_split"
    )
    assert ["train", "validation"] in split_check["examples"]


def test_empty_train_split_fails(store) -> None:
    path = store("prv")
    edit(path / "train.parquet", "prv", PROCESSED_SCHEMAS["prv"], lambda df: df.iloc[:0])
    result = validate_store("prv", path, VALIDATE)
    check = failed(result, "expect_table_row_count_to_be_between", "train")
    assert check["examples"] == [0]
    assert result["rows"]["train"] == 0


def test_empty_split_that_pieces_list_fails_but_unlisted_one_passes(store) -> None:
    path = store("tuples")
    schema = PROCESSED_SCHEMAS["tuples"]
    edit(path / "test.parquet", "tuples", schema, lambda df: df.iloc[:0])
    failed(validate_store("tuples", path, VALIDATE), "expect_table_row_count_to_be_between", "test")
    # Once no piece is assigned to test any more, an empty test split is legitimate.
    edit(path / "pieces.parquet", "pieces", PIECES, lambda df: df[df["split"] != "test"])
    assert validate_store("tuples", path, VALIDATE)["success"] is True


def test_wrong_schema_version_is_a_failed_check(store) -> None:
    path = store("notes")
    file = path / "notes.parquet"
    table = pq.read_table(file)
    meta = dict(table.schema.metadata)
    meta[b"etude_version"] = b"0"
    pq.write_table(table.replace_schema_metadata(meta), file)
    result = validate_store("notes", path, VALIDATE)
    check = failed(result, "expect_store_schema_version", "notes")
    assert "version 0" in check["examples"][0]
    assert str(file) in check["examples"][0]


def test_missing_split_file_is_a_failed_check(store) -> None:
    path = store("pianoroll")
    (path / "test.parquet").unlink()
    check = failed(
        validate_store("pianoroll", path, VALIDATE), "expect_store_file_to_exist", "test"
    )
    assert check["examples"] == [str(path / "test.parquet")]


def test_notes_of_an_unknown_piece_fail(store) -> None:
    path = store("notes")
    pieces = read_store(path / "pieces.parquet", "pieces")
    dropped = pieces["piece_id"].iloc[-1]
    edit(path / "pieces.parquet", "pieces", PIECES, lambda df: df.iloc[:-1])
    check = failed(
        validate_store("notes", path, VALIDATE),
        "expect_column_values_to_be_null",
        "per_piece",
        UNKNOWN_PIECE,
    )
    assert check["examples"] == [dropped]


def test_group_or_fingerprint_in_two_splits_fails_naming_the_pieces(store) -> None:
    path = store("notes")
    pieces = read_store(path / "pieces.parquet", "pieces").sort_values("path")
    assert pieces["group"].is_unique and (pieces["group"] == pieces["fingerprint"]).all()
    train = pieces[pieces["split"] == "train"]["path"].tolist()
    a, b = train[0], train[1]

    def same_work(df: pd.DataFrame) -> pd.DataFrame:  # b: a version of a's work, in test
        df = df.copy()
        df.loc[df["path"].isin([a, b]), "group"] = "work-1"
        df.loc[df["path"] == b, "split"] = "test"
        return df

    edit(path / "pieces.parquet", "pieces", PIECES, same_work)
    result = validate_store("notes", path, VALIDATE)
    check = failed(result, "expect_column_values_to_be_null", "split_leaks", GROUP_LEAK)
    assert check["examples"] == [f"work-1 in test, train: {a} (train), {b} (test)"]
    assert check["unexpected_count"] == 2
    assert failures(result) == [("split_leaks", "expect_column_values_to_be_null", GROUP_LEAK)]

    def same_content(df: pd.DataFrame) -> pd.DataFrame:  # one work again, but b's notes = a's
        df = df.copy()
        df.loc[df["path"] == b, ["group", "fingerprint"]] = ["work-2", "f" * 32]
        df.loc[df["path"] == a, "fingerprint"] = "f" * 32
        return df

    edit(path / "pieces.parquet", "pieces", PIECES, same_content)
    result = validate_store("notes", path, VALIDATE)
    check = failed(result, "expect_column_values_to_be_null", "split_leaks", FINGERPRINT_LEAK)
    assert check["examples"] == [f"{'f' * 32} in test, train: {a} (train), {b} (test)"]
    assert failures(result) == [
        ("split_leaks", "expect_column_values_to_be_null", FINGERPRINT_LEAK)
    ]


def test_prv_pitch_beyond_n_pitches_fails(store) -> None:
    path = store("prv")

    def change(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[0, "pitch"] = 48  # n_pitches = 48 in params.json: indices 0..47
        return df

    edit(path / "train.parquet", "prv", PROCESSED_SCHEMAS["prv"], change)
    check = failed(
        validate_store("prv", path, VALIDATE),
        "expect_column_values_to_be_between",
        "train",
        "pitch",
    )
    assert check["examples"] == [48]


def test_missing_column_is_reported_not_raised(store) -> None:
    path = store("tuples")
    table = pq.read_table(path / "validation.parquet").drop_columns(["duration"])
    pq.write_table(table, path / "validation.parquet")
    check = failed(
        validate_store("tuples", path, VALIDATE), "expect_table_columns_to_match_set", "validation"
    )
    assert check["examples"] == [{"missing": ["duration"]}]


def test_unknown_kind_and_missing_folder_raise(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unknown store kind 'midi'"):
        validate_store("midi", tmp_path, VALIDATE)
    with pytest.raises(ValidationError, match="store folder not found"):
        validate_store("notes", tmp_path / "nope", VALIDATE)


def test_params_section() -> None:
    assert VALIDATE == ValidateParams(200.0, 5)  # as params.yaml ships it
    with pytest.raises(ParamsError, match="missing key 'validate.max_examples'"):
        from_mapping({"max_notes_per_second": 50}, ValidateParams, "validate")
    parsed = from_mapping(
        {"max_notes_per_second": 50, "max_examples": 3}, ValidateParams, "validate"
    )
    assert parsed == ValidateParams(50.0, 3)
    with pytest.raises(ParamsError, match="max_examples"):
        from_mapping({"max_notes_per_second": 50, "max_examples": 0}, ValidateParams, "validate")


# --- speed -------------------------------------------------------------------------------


def test_large_store_validates_with_the_same_outcome(
    tmp_path: Path, built: dict[str, Path]
) -> None:
    """100k rows: the vectorised path must agree with the small-store result."""
    rng = np.random.default_rng(0)
    pieces = read_store(built["tuples"] / "pieces.parquet", "pieces")
    n = 100_000
    out = tmp_path / "tuples"
    out.mkdir()
    for split in SPLIT_NAMES:
        ids = pieces.loc[pieces["split"] == split, "piece_id"].to_numpy()
        rows = pd.DataFrame(
            {
                "piece_id": np.repeat(ids, n // len(ids)),
                "index": np.tile(np.arange(n // len(ids)), len(ids)),
                "pitch": rng.integers(0, 128, n // len(ids) * len(ids)),
                "step": rng.uniform(0.05, 0.2, n // len(ids) * len(ids)),
                "duration": rng.uniform(0.05, 1, n // len(ids) * len(ids)),
                "velocity": rng.integers(1, 128, n // len(ids) * len(ids)),
            }
        )
        if split == "train":
            rows.loc[12_345, "pitch"] = 300
        write_store(rows, out / f"{split}.parquet", "tuples", PROCESSED_SCHEMAS["tuples"])
    write_store(pieces, out / "pieces.parquet", "pieces", PIECES)
    result = validate_store("tuples", out, VALIDATE)
    assert failures(result) == [("train", "expect_column_values_to_be_between", "pitch")]
    assert failed(result, "expect_column_values_to_be_between", "train", "pitch")["examples"] == [
        300
    ]
    assert result["rows"]["train"] >= n - 4


# --- the command ---------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(stage.validate_command)
    return app


def _run(tmp_path: Path, kind: str, path: Path, *extra: str):
    reports = tmp_path / "reports"
    args = [
        kind,
        str(path),
        "--report",
        str(reports / "validation" / f"{kind}.json"),
        "--data-report",
        str(reports / "data" / f"{kind}.json"),
        "--params",
        str(DEFAULT_PARAMS_FILE),
        *extra,
    ]
    return CliRunner().invoke(_app(), args), reports


def test_command_on_clean_store_writes_reports(tmp_path: Path, built: dict[str, Path]) -> None:
    result, reports = _run(tmp_path, "events", built["events"])
    assert result.exit_code == 0, result.output
    report = json.loads((reports / "validation" / "events.json").read_text())
    assert report["success"] is True and report["store"] == "events"
    page = (reports / "validation" / "events.html").read_text()  # default: beside the JSON
    assert (
        page.startswith("<!DOCTYPE html>")
        and "PASSED" in page
        and "expect_column_values_to_be_between" in page
    )
    data = json.loads((reports / "data" / "events.json").read_text())
    assert data == {
        "rows": report["rows"],
        "size_bytes": report["size_bytes"],
        "pieces": len(SAMPLE),
    }
    assert not [p for p in reports.rglob("*") if ".tmp" in p.name]


def test_command_on_broken_store_exits_1_with_one_line_per_failure(tmp_path: Path, store) -> None:
    path = store("notes")

    def change(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[[3, 7], "pitch"] = 200
        df.loc[9, "velocity"] = 0
        return df

    edit(path / "notes.parquet", "notes", NOTES, change)
    result, reports = _run(tmp_path, "notes", path)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    pitch = next(line for line in lines if "notes.pitch" in line)
    assert "notes" in pitch and str(path) in pitch and "200" in pitch and "2 unexpected" in pitch
    assert any("notes.velocity" in line and " 0" in line for line in lines)
    report = json.loads((reports / "validation" / "notes.json").read_text())
    assert report["success"] is False  # reports are still written on failure
    assert "FAILED" in (reports / "validation" / "notes.html").read_text()
    assert (reports / "data" / "notes.json").exists()


def test_etude_cli_stderr_holds_only_failure_lines(tmp_path: Path, store) -> None:
    """Through the real `etude` app, whose logging is at INFO: no library chatter."""
    path = store("notes")

    def change(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[2, "pitch"] = 200
        return df

    edit(path / "notes.parquet", "notes", NOTES, change)
    report = tmp_path / "out" / "notes.json"
    args = [
        sys.executable,
        "-m",
        "pipeline",
        "validate",
        "notes",
        str(path),
        "--report",
        str(report),
    ]
    args += ["--data-report", str(tmp_path / "d.json"), "--params", str(DEFAULT_PARAMS_FILE)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"validate notes {path}: notes.pitch: expect_column_values_to_be_between failed "
        "(1 unexpected); e.g. 200"
    ]
    assert json.loads(report.read_text())["success"] is False


def test_command_reports_wrong_version_without_traceback(tmp_path: Path, store) -> None:
    path = store("tuples")
    table = pq.read_table(path / "train.parquet")
    meta = dict(table.schema.metadata)
    meta[b"etude_version"] = b"99"
    pq.write_table(table.replace_schema_metadata(meta), path / "train.parquet")
    result, _ = _run(tmp_path, "tuples", path)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert any(
        "expect_store_schema_version" in line and "version 99" in line
        for line in result.stderr.splitlines()
    )


def test_command_user_errors(tmp_path: Path, built: dict[str, Path]) -> None:
    result, _ = _run(tmp_path, "midi", built["notes"])
    assert result.exit_code == 1 and "unknown store kind 'midi'" in result.stderr
    params = tmp_path / "params.yaml"
    params.write_text("validate:\n  max_notes_per_second: 200.0\n  max_examples: 0\n")
    result, _ = _run(tmp_path, "notes", built["notes"], "--params", str(params))
    assert result.exit_code == 1 and "max_examples" in result.stderr
    assert "Traceback" not in result.output


def test_command_reads_validate_params(tmp_path: Path, built: dict[str, Path]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("validate:\n  max_notes_per_second: 1.0\n  max_examples: 2\n")
    result, reports = _run(tmp_path, "notes", built["notes"], "--params", str(params))
    assert result.exit_code == 1
    assert "per_piece.notes_per_second" in result.stderr
    report = json.loads((reports / "validation" / "notes.json").read_text())
    check = failed(report, "expect_column_values_to_be_between", "per_piece", "notes_per_second")
    assert check["unexpected_count"] == len(SAMPLE)  # every piece is denser than 1 note/s
    assert len(check["examples"]) == 2 and all(x > 1.0 for x in check["examples"])
    assert failures(report) == [
        ("per_piece", "expect_column_values_to_be_between", "notes_per_second")
    ]


def test_reports_are_replaced_atomically(tmp_path: Path, clean, monkeypatch) -> None:
    result = clean("notes")
    report, page, data = tmp_path / "r.json", tmp_path / "r.html", tmp_path / "d.json"
    for path in (report, page, data):
        path.write_text("old")

    def broken(result: dict) -> str:
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(stage, "render_html", broken)
    with pytest.raises(RuntimeError):
        stage.write_reports(result, report, page, data)
    assert page.read_text() == "old"  # never half-written
    assert data.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "r.html", "r.json"]
    monkeypatch.undo()
    stage.write_reports(result, report, page, data)
    assert json.loads(report.read_text())["success"] is True
    assert json.loads(data.read_text())["pieces"] == len(SAMPLE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "r.html", "r.json"]


def test_failure_line_is_one_line() -> None:
    result = {"store": "notes", "path": "data/interim/x"}
    check = {
        "expectation": "expect_store_schema_version",
        "table": "notes",
        "column": None,
        "unexpected_count": 1,
        "examples": ["line one\nline two"],
    }
    line = stage.failure_line(result, check)
    assert (
        "\n" not in line
        and "data/interim/x" in line
        and "notes: expect_store_schema_version" in line
    )


def test_rate_of_an_instant_piece_is_infinite() -> None:
    from pipeline.expect import rate as _rate

    rate = _rate(pd.Series([3, 4]), pd.Series([0.0, 2.0]))
    assert math.isinf(rate.iloc[0]) and rate.iloc[1] == 2.0
