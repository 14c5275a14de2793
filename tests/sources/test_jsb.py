"""The JSB Chorales source on the committed slice (tests/fixtures/jsb), over loopback HTTP."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fixture_stores import repr_params, shipped
from httpserver import LocalServer
from rawfolder import read_manifest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.params import ParamsError, default_params, from_mapping
from pipeline.core.stage_utils import Interrupted
from pipeline.download import DownloadError
from pipeline.ingest import IngestParams, ingest_dir
from pipeline.midi import parse_midi
from pipeline.modeling.frames import N_KEYS, frame_nll, roll_from_steps
from pipeline.representations import prv
from pipeline.sources import MANIFEST_COLUMNS
from pipeline.sources.jsb import (
    SOURCE_FILE,
    Params,
    chorale_notes,
    fetch,
    read_chorales,
    write_midi,
)

SLICE = Path(__file__).resolve().parents[1] / "fixtures" / "jsb" / "jsb-chorales-slice.json"
# pieces of the slice per file key (tests/fixtures/jsb/SOURCES.txt)
SLICE_COUNTS = {"train": 3, "valid": 2, "test": 2}


@pytest.fixture(scope="module")
def slice_path() -> Path:
    return SLICE


@pytest.fixture(scope="module")
def data(slice_path: Path) -> dict[str, list[list[list[int]]]]:
    return json.loads(slice_path.read_text())


@pytest.fixture()
def server() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


def params_for(url: str, payload: bytes | None, **changes: object) -> Params:
    raw = {**shipped("jsb"), "url": url, **changes}
    if payload is not None:
        raw["sha256"] = hashlib.sha256(payload).hexdigest()
    return from_mapping(raw, Params, "jsb")


def test_shipped_params_name_the_official_file() -> None:
    params = default_params("jsb", Params)
    assert params.url.endswith(
        "czhuang/JSB-Chorales-dataset/9a7f733ddb4ed91f48da64ac7f0f621c34aadd4d/"
        "jsb-chorales-quarter.json"
    )
    assert params.sha256 == "2db9329f1881a1d3f49703ec556bf1d6f84b4f6c1d702c156536e93cf31e1c91"


@pytest.mark.parametrize(
    ("change", "message"),
    [({"bpm": 0}, "bpm"), ({"max_files": -1}, "max_files"), ({"sha256": "abc"}, "sha256")],
)
def test_bad_params_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        from_mapping({**shipped("jsb"), **change}, Params, "jsb")


def test_missing_key_is_an_error() -> None:
    raw = shipped("jsb")
    del raw["bpm"]
    with pytest.raises(ParamsError, match="bpm"):
        from_mapping(raw, Params, "jsb")


def test_chorale_notes_tie_runs_by_hand() -> None:
    steps = [[60, 64], [60, 64], [60], [], [60]]
    # tied: 60 sounds in steps 0-2 (one note), rests at 3, sounds again at 4; 64 in 0-1
    assert chorale_notes(steps) == [(60, 0, 3), (64, 0, 2), (60, 4, 5)]
    # re-struck: one note per sounding (step, pitch): 6 cells
    assert chorale_notes(steps, tie=False) == [
        (60, 0, 1),
        (64, 0, 1),
        (60, 1, 2),
        (64, 1, 2),
        (60, 2, 3),
        (60, 4, 5),
    ]


def test_fetch_over_http_keeps_official_splits(
    server: LocalServer, slice_path: Path, data: dict, tmp_path: Path
) -> None:
    payload = slice_path.read_bytes()
    url = server.add("/czhuang/jsb-chorales-quarter.json", payload)
    out = tmp_path / "raw"
    fetch(params_for(url, payload), out)
    columns, rows = read_manifest(out)
    assert columns == list(MANIFEST_COLUMNS)
    assert len(rows) == sum(SLICE_COUNTS.values())
    by_group = {row["group"]: row for row in rows}
    assert by_group["jsb:valid/001"]["split"] == "validation"
    assert by_group["jsb:valid/001"]["path"] == "validation/chorale_001.mid"
    assert {r["split"] for r in rows} == {"train", "validation", "test"}
    assert len(by_group) == len(rows)  # every chorale its own group
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mid")) == sorted(
        r["path"] for r in rows
    )
    assert not list(out.glob("*.json"))  # the source file is not kept
    assert [r.path for r in server.requests] == ["/czhuang/jsb-chorales-quarter.json"]


def test_local_path_is_copied_and_gives_the_same_files(
    server: LocalServer, slice_path: Path, tmp_path: Path
) -> None:
    payload = slice_path.read_bytes()
    url = server.add("/j.json", payload)
    fetch(params_for(url, payload), tmp_path / "http")
    fetch(params_for(str(slice_path), payload), tmp_path / "local")
    http_files = sorted((tmp_path / "http").rglob("*.mid"))
    assert http_files
    for path in http_files:
        twin = tmp_path / "local" / path.relative_to(tmp_path / "http")
        assert twin.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("via", ["http", "local"])
def test_wrong_checksum_fails_and_writes_nothing(
    via: str, server: LocalServer, slice_path: Path, tmp_path: Path
) -> None:
    payload = slice_path.read_bytes()
    url = server.add("/j.json", payload) if via == "http" else str(slice_path)
    params = params_for(url, None, sha256="0" * 64)
    with pytest.raises(DownloadError, match="SHA256 mismatch"):
        fetch(params, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_missing_local_file_is_a_params_error(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="jsb.url"):
        fetch(params_for(str(tmp_path / "nope.json"), None, sha256=None), tmp_path / "raw")


def test_malformed_file_is_refused_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": [[[60]]], "valid": [[[62]]], "test": [[["C4"]]]}))
    with pytest.raises(DownloadError, match=r"bad.json: test\[0\]: step 0"):
        read_chorales(bad)
    with pytest.raises(DownloadError, match=r"^the URL: test\[0\]: step 0"):
        read_chorales(bad, "the URL")  # fetch passes what the user named
    bad.write_text(json.dumps({"train": []}))
    with pytest.raises(DownloadError, match="expected keys"):
        read_chorales(bad)
    bad.write_text(json.dumps({"train": {}, "valid": [[[60]]], "test": [[[60]]]}))
    with pytest.raises(DownloadError, match="'train' must be a list of chorales, got a dict"):
        read_chorales(bad)


def _truncated(slice_path: Path, data: dict, dest: Path) -> bytes:
    """The slice cut mid-file, as a broken download or copy leaves it."""
    payload = slice_path.read_bytes()[:5000]
    dest.write_bytes(payload)
    return payload


def _bad_pitch(slice_path: Path, data: dict, dest: Path) -> bytes:
    """The slice with one pitch out of the MIDI range."""
    broken = json.loads(json.dumps(data))
    broken["valid"][1][2] = [60, 128]
    dest.write_text(json.dumps(broken))
    return dest.read_bytes()


BROKEN_FILES = {
    "truncated": (_truncated, "not a JSON file: "),
    "bad pitch": (_bad_pitch, "valid[1]: step 2 is not a list of MIDI pitches: [60, 128]"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_FILES))
def test_a_broken_local_file_is_named_not_its_temporary_copy(
    kind: str, slice_path: Path, data: dict, tmp_path: Path
) -> None:
    write, problem = BROKEN_FILES[kind]
    mine = tmp_path / "mine.json"
    write(slice_path, data, mine)
    out = tmp_path / "raw"
    with pytest.raises(DownloadError) as info:
        fetch(params_for(str(mine), None, sha256=None), out)
    message = str(info.value)
    assert message.startswith(f"{mine}: {problem}")
    assert message.endswith(f"; {out} not written")
    assert SOURCE_FILE not in message and ".tmp" not in message
    assert not out.exists() and not list(tmp_path.glob("raw*"))


@pytest.mark.parametrize("kind", sorted(BROKEN_FILES))
def test_a_broken_download_is_named_by_its_url(
    kind: str, server: LocalServer, slice_path: Path, data: dict, tmp_path: Path
) -> None:
    write, problem = BROKEN_FILES[kind]
    payload = write(slice_path, data, tmp_path / "served.json")
    url = server.add("/jsb.json", payload)
    with pytest.raises(DownloadError) as info:
        fetch(params_for(url, payload), tmp_path / "raw")  # checksum matches: the file is bad
    assert str(info.value).startswith(f"{url}: {problem}")
    assert SOURCE_FILE not in str(info.value)


def test_a_failed_or_interrupted_download_says_nothing_was_kept(
    server: LocalServer, slice_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The JSON downloads into fetch's temporary folder, which goes on failure: the
    messages never promise a partial file to resume, and the output stays as it was."""
    import pipeline.download as dl
    import pipeline.sources.jsb as jsb

    payload = slice_path.read_bytes()
    url = server.add("/down.json", payload, faults=["503"] * 10)
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)  # the retries' back-off
    out = tmp_path / "raw"
    with pytest.raises(DownloadError) as info:
        fetch(params_for(url, payload), out)
    message = str(info.value)
    assert message.startswith(f"{url}: giving up after 6 failed attempts in a row: ")
    assert "kept" not in message.split(";")[0] and "for resuming" not in message
    assert message.endswith(f"; {out} not written; a rerun fetches it again")
    assert not out.exists() and not list(tmp_path.glob("raw*"))

    def interrupted(*args: object, **kwargs: object) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(jsb, "download", interrupted)
    with pytest.raises(Interrupted) as stopped:
        fetch(params_for(url, payload), out)
    assert str(stopped.value) == (
        f"jsb: the partial download was discarded with the temporary folder and {out} "
        "not written; a rerun fetches the file again"
    )
    assert not list(tmp_path.glob("raw*"))


@pytest.mark.parametrize("official", ["train", "valid", "test"])
def test_an_empty_split_is_refused_and_the_output_kept(
    official: str, slice_path: Path, data: dict, tmp_path: Path
) -> None:
    out = tmp_path / "raw"
    fetch(params_for(str(slice_path), slice_path.read_bytes()), out)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    mine = tmp_path / "empty-split.json"
    mine.write_text(json.dumps({**data, official: []}))
    with pytest.raises(DownloadError) as info:
        fetch(params_for(str(mine), mine.read_bytes()), out)
    assert str(info.value) == (
        f"{mine}: the '{official}' split is empty; the benchmark needs chorales in each of "
        f"['train', 'valid', 'test']; {out} left as it was"
    )
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


def test_cli_fetch_of_an_empty_test_split_exits_1_with_one_line(data: dict, tmp_path: Path) -> None:
    mine = tmp_path / "jsb.json"
    mine.write_text(json.dumps({**data, "test": []}))
    params = tmp_path / "other.yaml"
    params.write_text(yaml.safe_dump({"jsb": {**shipped("jsb"), "url": str(mine), "sha256": None}}))
    out = tmp_path / "raw"
    result = CliRunner().invoke(app, ["fetch", "jsb", "--out", str(out), "--params", str(params)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: {mine}: the 'test' split is empty; the benchmark needs chorales in each of "
        f"['train', 'valid', 'test']; {out} not written"
    )
    assert not out.exists()


def test_max_files_is_a_nested_subset_with_official_splits(
    slice_path: Path, tmp_path: Path
) -> None:
    payload = slice_path.read_bytes()
    kept = {}
    for n in (3, 5):
        out = tmp_path / f"raw{n}"
        fetch(params_for(str(slice_path), payload, max_files=n), out)
        kept[n] = {r["group"]: r["split"] for r in read_manifest(out)[1]}
        assert len(kept[n]) == n
    assert kept[3].items() <= kept[5].items()
    official = {"train": "train", "valid": "validation", "test": "test"}
    for group, split in kept[5].items():
        assert split == official[group.split(":")[1].split("/")[0]]


def _rolls_from_notes(notes: pd.DataFrame, n_steps: int, step_s: float) -> np.ndarray:
    roll = np.zeros((n_steps, N_KEYS), dtype=bool)
    first = np.rint(notes["start"].to_numpy() / step_s).astype(int)
    stop = np.rint(notes["end"].to_numpy() / step_s).astype(int)
    for a, b, pitch in zip(first, stop, notes["pitch"].to_numpy(), strict=True):
        roll[a:b, pitch - 21] = True
    return roll


@pytest.mark.parametrize("bpm", [120, 90])
def test_ingest_round_trip_gives_back_every_step(
    bpm: int, slice_path: Path, data: dict, tmp_path: Path
) -> None:
    """fetch -> the regular ingest: official splits kept, the notes on the bpm grid
    sound exactly the pitches of every step of the file."""
    fetch(params_for(str(slice_path), slice_path.read_bytes(), bpm=bpm), tmp_path / "raw")
    ingest_params = dataclasses.replace(default_params("ingest", IngestParams), workers=1)
    ingest_dir(tmp_path / "raw", tmp_path / "interim", source="jsb", params=ingest_params)
    pieces = pd.read_parquet(tmp_path / "interim" / "pieces.parquet")
    notes = pd.read_parquet(tmp_path / "interim" / "notes.parquet")
    assert len(pieces) == sum(SLICE_COUNTS.values())
    step_s = 60.0 / bpm
    for piece in pieces.itertuples():
        official, index = piece.group.removeprefix("jsb:").split("/")
        steps = data[official][int(index)]
        assert piece.split == {"valid": "validation"}.get(official, official)
        assert piece.duration == pytest.approx(len(steps) * step_s)
        got = _rolls_from_notes(notes[notes.piece_id == piece.piece_id], len(steps), step_s)
        np.testing.assert_array_equal(got, roll_from_steps(steps))


def test_tie_choice_changes_onsets_not_the_play_channel_or_frame_nll(
    data: dict, tmp_path: Path
) -> None:
    """Tied and re-struck MIDI of one chorale: same prv play cells (hence the same frame
    NLL under any model of the play channel), different replay cells."""
    steps = data["train"][0]
    bpm = 120
    params = repr_params("prv", steps_per_second=bpm // 60, min_pitch=43, n_pitches=54)
    encoded = {}
    for tie in (True, False):
        path = tmp_path / f"tie{tie}.mid"
        write_midi(steps, path, bpm, tie=tie)
        notes = parse_midi(path).notes.assign(piece_id="x")
        encoded[tie] = prv.encode(notes, None, params)
    tied, struck = encoded[True], encoded[False]
    cells = ["step", "pitch"]
    pd.testing.assert_frame_equal(tied[cells], struck[cells])
    assert struck["replay"].all() and not tied["replay"].all()  # the choice shows in onsets
    assert tied["replay"].sum() == len(chorale_notes(steps))
    # the play channel as a (steps, 88) roll, scored by one fixed model of the play channel
    rolls = {}
    for tie, cells_df in encoded.items():
        roll = np.zeros((len(steps), N_KEYS), dtype=bool)
        roll[cells_df["step"], cells_df["pitch"] + 43 - 21] = True
        rolls[tie] = roll
    np.testing.assert_array_equal(rolls[True], roll_from_steps(steps))
    probs = np.random.default_rng(0).uniform(0.01, 0.99, size=(len(steps), N_KEYS))
    assert frame_nll([probs], [rolls[True]]) == frame_nll([probs], [rolls[False]])
