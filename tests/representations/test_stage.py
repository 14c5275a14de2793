"""The represent stage: chunked streaming build == one-shot encode, store layout,
load_store, and the `represent` / `decode` commands."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import typer
from fixture_stores import repr_params
from rawfolder import make_raw_source
from typer.testing import CliRunner

from pipeline import representations
from pipeline.core.params import default_params
from pipeline.core.stores import NOTES, PEDALS, PIECES, read_interim, read_store, write_store
from pipeline.ingest import IngestParams, ingest_dir
from pipeline.midi import parse_midi
from pipeline.representations import stage

DEFAULT_PARAMS = default_params("ingest", IngestParams)

SOURCES = {
    "pop": {
        "other/miditok_POP909_008.mid": "train",
        "other/miditok_POP909_010.mid": "train",
        "other/miditok_POP909_022.mid": "validation",
        "other/prettymidi_example.mid": "train",  # drums, many tracks, a pedal
        "other/miditok_POP909_191.mid": "test",
    },
    "piano": {
        "other/symusic_1.midi": "train",
        "maestro/miditok_Maestro_1.mid": "train",
        "other/giantmidi_preview_Handel__George_Frideric__Air_in_E_major__HWV_425__bNzVz5byPqk.mid": "test",  # noqa: E501
    },
}
PARAMS_YAML = """\
pianoroll: {frame_ms: 50, min_pitch: 21, max_pitch: 108, sustain: true, max_frames_per_piece: 0}
tuples: {sustain: true}
events: {sustain: true, max_tokens_per_piece: 0}
prv: {steps_per_second: 8, min_pitch: 36, n_pitches: 48, sustain: true, max_steps_per_piece: 0}
"""


@pytest.fixture(scope="module")
def interim(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> list[Path]:
    """Two ingested sources with splits fixed by a manifest."""
    root = tmp_path_factory.mktemp("interim")
    dirs = []
    for source, files in SOURCES.items():
        raw = make_raw_source(root / "raw" / source, fixtures_dir, files)
        out = root / source
        params = dataclasses.replace(DEFAULT_PARAMS, workers=1)
        summary = ingest_dir(raw, out, source=source, params=params, progress=False)
        assert summary.rejects == 0
        dirs.append(out)
    return dirs


@pytest.mark.parametrize("name", ["events", "pianoroll", "prv", "tuples"])
def test_build_store_equals_one_shot_encode(
    name: str, interim: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny chunks and Parquet batches (pieces split across batches) change nothing."""
    monkeypatch.setattr(stage, "_BATCH_ROWS", 700)
    rep = representations.get(name)
    params = default_params(rep.name, rep.params_cls)
    out = tmp_path / name
    counts = stage.build_store(name, interim, out, params, chunk_pieces=2, progress=False)

    notes = read_interim(interim, "notes")
    pedals = read_interim(interim, "pedals")
    pieces = read_interim(interim, "pieces")
    expected = rep.encode(notes, pedals, params)
    split_of = dict(zip(pieces["piece_id"], pieces["split"], strict=True))
    assert sorted(p.name for p in out.iterdir()) == [
        "params.json",
        "pieces.parquet",
        "test.parquet",
        "train.parquet",
        "validation.parquet",
    ]
    for split in ("train", "validation", "test"):
        got = read_store(out / f"{split}.parquet", name)
        want = expected[expected["piece_id"].map(split_of) == split].reset_index(drop=True)
        assert counts[split] == len(got) == len(want) > 0
        assert got["piece_id"].tolist() == want["piece_id"].tolist()
        for column in rep.schema.names[1:]:
            if column == "tokens":
                assert all(
                    np.array_equal(a, b) for a, b in zip(got[column], want[column], strict=True)
                )
            else:
                np.testing.assert_array_equal(got[column], want[column], err_msg=column)
    stored = read_store(out / "pieces.parquet", "pieces")
    assert sorted(stored["piece_id"]) == sorted(expected["piece_id"].unique())
    assert counts["pieces"] == len(stored) == 8
    assert counts["notes"] == len(notes)
    meta = json.loads((out / "params.json").read_text())
    assert meta == {"representation": name, "params": dataclasses.asdict(params)}

    data = representations.load_store(out, name)
    assert data.params == params
    assert set(data.rows) == {"train", "validation", "test"}
    assert len(data.rows["train"]) == counts["train"]
    assert data.path == out
    assert set(data.pieces["piece_id"]) == set(stored["piece_id"])


def test_params_json_is_used_and_checked(interim: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "pr"
    params = repr_params("pianoroll", frame_ms=100)
    stage.build_store("pianoroll", interim, out, params, progress=False)
    assert representations.load_store(out, "pianoroll").params.frame_ms == 100
    with pytest.raises(representations.RepresentError, match="not 'prv'"):
        representations.read_store_params(out, "prv")
    (out / "params.json").unlink()
    with pytest.raises(representations.RepresentError, match="params.json: missing"):
        representations.load_store(out, "pianoroll")


def hand_made_interim(folder: Path, piece_order: list[str]) -> Path:
    """An interim store whose notes come in `piece_order` runs (one note per run)."""
    rows = [
        {"piece_id": p, "track": 0, "program": 0, "is_drum": False, "pitch": 60 + i,
         "velocity": 80, "start": float(i), "end": i + 0.5}
        for i, p in enumerate(piece_order)
    ]  # fmt: skip
    write_store(pd.DataFrame(rows), folder / "notes.parquet", "notes", NOTES)
    write_store(pd.DataFrame(columns=PEDALS.names), folder / "pedals.parquet", "pedals", PEDALS)
    pieces = [
        {"piece_id": p, "source": "x", "split": "train", "path": p, "md5": "", "group": p,
         "fingerprint": "", "composer": "",
         "title": p, "style": "x", "duration": 1.0, "n_notes": 1, "n_tracks": 1,
         "ticks_per_quarter": 480}
        for p in dict.fromkeys(piece_order)
    ]  # fmt: skip
    write_store(pd.DataFrame(pieces), folder / "pieces.parquet", "pieces", PIECES)
    return folder


def test_scattered_piece_is_refused_and_old_output_kept(tmp_path: Path) -> None:
    src = hand_made_interim(tmp_path / "x", ["a", "b", "a"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous build")
    params = default_params("tuples", representations.get("tuples").params_cls)
    with pytest.raises(representations.RepresentError, match="'a' are not contiguous"):
        stage.build_store("tuples", [src], out, params, chunk_pieces=1, progress=False)
    assert (out / "old.txt").read_text() == "previous build"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "x"]  # no temp left


def test_empty_split_is_a_valid_empty_file(tmp_path: Path) -> None:
    src = hand_made_interim(tmp_path / "x", ["a", "b"])
    out = tmp_path / "out"
    events_params = default_params("events", representations.get("events").params_cls)
    counts = stage.build_store("events", [src], out, events_params, progress=False)
    assert counts["train"] == 2 and counts["test"] == 0
    assert read_store(out / "test.parquet", "events").empty


# --- commands -------------------------------------------------------------------


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("represent")(stage.represent_command)
    app.command("decode")(stage.decode_command)
    return app


def test_represent_and_decode_commands(
    app: typer.Typer, interim: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS_YAML)
    out = tmp_path / "processed" / "events"
    args = ["represent", "events", "--in", str(interim[0]), "--in", str(interim[1])]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "events: 8 pieces" in result.output

    midi = tmp_path / "piece.mid"
    piece = "piano:miditok_Maestro_1.mid"
    result = CliRunner().invoke(
        app, ["decode", "events", str(out / "train.parquet"), "--piece", piece, "--out", str(midi)]
    )
    assert result.exit_code == 0, result.output
    rows = read_store(out / "train.parquet", "events")
    decoded = representations.get("events").decode(
        rows[rows["piece_id"] == piece], representations.read_store_params(out, "events")
    )
    assert f"{piece}: {len(decoded)} notes" in result.output
    assert len(parse_midi(midi).notes) == len(decoded) > 2000

    # --interim: the sources named in params.yaml, under one parent folder
    params.write_text(PARAMS_YAML + "sources: [pop, piano]\n")
    monkeypatch.setattr("pipeline.sources.names", lambda: ["pop", "piano", "corpus"])
    again = tmp_path / "processed" / "events2"
    result = CliRunner().invoke(app, ["represent", "events", "--interim", str(interim[0].parent),
                                      "--out", str(again), "--params", str(params)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "events: 8 pieces" in result.output
    assert (again / "train.parquet").read_bytes() == (out / "train.parquet").read_bytes()

    result = CliRunner().invoke(app, ["decode", "events", str(out / "test.parquet"), "--out",
                                      str(tmp_path / "first.mid")])  # fmt: skip
    assert result.exit_code == 0 and (tmp_path / "first.mid").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["represent", "drums", "--in", "{src}", "--out", "{out}"], "unknown representation"),
        (["represent", "tuples", "--in", "{missing}", "--out", "{out}"], "store not found"),
        (["represent", "pianoroll", "--in", "{src}", "--out", "{out}"], "frame_ms"),
        (["decode", "tuples", "{missing}/train.parquet"], "store not found"),
        (["decode", "tuples", "{out}/train.parquet", "--piece", "nope"], "no piece 'nope'"),
        (["represent", "tuples", "--out", "{out}"], "--in DIR"),
    ],
)
def test_command_errors_are_one_line(
    app: typer.Typer, interim: list[Path], tmp_path: Path, argv: list[str], message: str
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS_YAML.replace("frame_ms: 50", "frame_ms: 0"))
    out = tmp_path / "tuples"
    tuples_params = default_params("tuples", representations.get("tuples").params_cls)
    stage.build_store("tuples", interim, out, tuples_params,
                      progress=False)  # fmt: skip
    fill = {"src": str(interim[0]), "out": str(out), "missing": str(tmp_path / "missing")}
    argv = [a.format(**fill) for a in argv]
    if argv[0] == "represent":
        argv += ["--params", str(params)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_rows_table_matches_from_pandas() -> None:
    """The fast Categorical path writes exactly what pyarrow's generic path writes."""
    from pipeline.core.stores import with_meta
    from pipeline.representations import pianoroll

    notes = pd.DataFrame(
        {"piece_id": ["b", "b", "a"], "pitch": [60, 62, 64], "velocity": [90, 80, 70],
         "start": [0.0, 0.1, 0.0], "end": [0.2, 0.3, 0.1]}
    )  # fmt: skip
    rows = pianoroll.encode(notes, None, default_params("pianoroll", pianoroll.Params))
    assert isinstance(rows["piece_id"].dtype, pd.CategoricalDtype)
    schema = with_meta(pianoroll.SCHEMA, "pianoroll")
    fast = stage.rows_table(rows, schema)
    slow = pa.Table.from_pandas(rows.astype({"piece_id": str}), schema=schema, preserve_index=False)
    assert fast.schema == schema
    assert fast.equals(slow)
    assert fast.column("piece_id").to_pylist() == ["b"] * 8 + ["a"] * 2
