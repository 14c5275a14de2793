"""decode(encode(x)) on every fixture file, for every registered representation.

Each representation is held to its stated quantisation, against an independent
reference written here with plain loops (not the vectorised encoders):

* pianoroll: cells equal a dense roll filled note by note; decoded notes equal the
  per-pitch unions of the notes' frame spans (adjacent or overlapping notes of one
  pitch merge: the documented caveat), so onsets/offsets are within one frame.
* tuples: every note back within 1e-4 s.
* events: onsets/offsets within 5 ms (10 ms grid), velocity within its bin.
* prv: cells equal a dense grid; decoded notes are the per-pitch unions cut at each
  onset (replay), so times are within one step (1 / steps_per_second).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import MIDI_FILES

from pipeline import representations
from pipeline.core.params import default_params
from pipeline.midi import parse_midi
from pipeline.representations import events, pianoroll, prv, tuples

IDS = [p.name for p in MIDI_FILES]


@pytest.fixture(scope="session")
def corpus(midi_files: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All fixture files parsed once: (notes, pedals) with piece_id = file name."""
    notes, pedals = [], []
    for path in midi_files:
        parsed = parse_midi(path)
        notes.append(parsed.notes.assign(piece_id=path.name))
        pedals.append(parsed.pedals.assign(piece_id=path.name))
    return pd.concat(notes, ignore_index=True), pd.concat(pedals, ignore_index=True)


@pytest.fixture(scope="session")
def encoded(corpus: tuple[pd.DataFrame, pd.DataFrame]) -> dict[str, dict[str, pd.DataFrame]]:
    """Every representation's rows for all pieces, encoded in ONE call, split by piece."""
    notes, pedals = corpus
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for name in representations.names():
        rep = representations.get(name)
        rows = rep.encode(notes, pedals, default_params(rep.name, rep.params_cls))
        out[name] = {str(k): g for k, g in rows.groupby("piece_id", sort=False)}
    return out


@pytest.fixture(scope="session")
def by_piece(corpus) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    notes, pedals = corpus
    pedal_groups = dict(list(pedals.groupby("piece_id")))
    return {str(k): (g, pedal_groups.get(k, pedals.iloc[:0])) for k, g in notes.groupby("piece_id")}


def piece_notes(by_piece, piece: str, sustain: bool) -> pd.DataFrame:
    """The notes a representation sees: drums out, pedal applied (shared helper)."""
    notes, pedals = by_piece[piece]
    prepared = tuples.prepare_notes(notes, pedals, sustain=sustain)
    return pd.DataFrame(
        {
            "pitch": prepared.pitch,
            "velocity": prepared.velocity,
            "start": prepared.start,
            "end": prepared.end,
        }
    )


def test_registry_has_the_four() -> None:
    assert representations.names() == ["events", "pianoroll", "prv", "tuples"]
    for name in representations.names():
        rep = representations.get(name)
        assert rep.schema.names[0] == "piece_id"
        assert rep.name == name


@pytest.mark.parametrize("name", ["events", "pianoroll", "prv", "tuples"])
def test_schema_and_piece_order(name: str, encoded, corpus) -> None:
    """Rows cast to the store schema; pieces keep input order; drum-only pieces vanish."""
    import pyarrow as pa

    rep = representations.get(name)
    rows = pd.concat(list(encoded[name].values()), ignore_index=True)
    table = pa.Table.from_pandas(rows[rep.schema.names], schema=rep.schema, preserve_index=False)
    assert table.num_rows == len(rows)
    notes = corpus[0]
    expected_order = list(pd.unique(notes.loc[~notes["is_drum"], "piece_id"]))
    assert list(encoded[name]) == expected_order


@pytest.mark.parametrize("path", MIDI_FILES, ids=IDS)
def test_tuples_roundtrip(path: Path, by_piece, encoded) -> None:
    params = default_params("tuples", tuples.Params)
    rows = encoded["tuples"][path.name]
    assert rows["index"].tolist() == list(range(len(rows)))
    decoded = tuples.decode(rows, params)
    expected = piece_notes(by_piece, path.name, params.sustain)
    expected = expected.sort_values(["start", "pitch"], kind="stable", ignore_index=True)
    assert len(decoded) == len(expected)
    np.testing.assert_array_equal(decoded["pitch"], expected["pitch"])
    np.testing.assert_array_equal(decoded["velocity"], expected["velocity"])
    assert np.abs(decoded["start"] - expected["start"]).max() <= 1e-4
    assert np.abs(decoded["end"] - expected["end"]).max() <= 1e-4


@pytest.mark.parametrize("path", MIDI_FILES, ids=IDS)
def test_events_roundtrip(path: Path, by_piece, encoded) -> None:
    params = default_params("events", events.Params)
    rows = encoded["events"][path.name]
    assert len(rows) == 1
    tokens = rows["tokens"].iloc[0]
    assert tokens[0] == events.BOS and tokens[-1] == events.EOS
    assert tokens.max() < events.VOCAB_SIZE
    decoded = events.decode(rows, params)
    orig = piece_notes(by_piece, path.name, params.sustain)
    assert len(decoded) == len(orig)
    on = np.rint(orig["start"] / 0.01).astype(int)
    off = np.maximum(np.rint(orig["end"] / 0.01).astype(int), on + 1)
    got_on = np.rint(decoded["start"] / 0.01).astype(int)
    got_off = np.rint(decoded["end"] / 0.01).astype(int)
    # onsets with their velocity bin: the same multiset
    want = sorted(zip(orig["pitch"], on, (orig["velocity"] - 1) // 4, strict=True))
    got = sorted(zip(decoded["pitch"], got_on, (decoded["velocity"] - 3) // 4, strict=True))
    assert got == want
    assert ((decoded["velocity"] - 3) % 4 == 0).all()  # bin centres
    # offsets: NOTE_OFF pairs first-in-first-out, so compare per pitch, sorted
    want_off = sorted(zip(orig["pitch"], off, strict=True))
    assert sorted(zip(decoded["pitch"], got_off, strict=True)) == want_off
    # stated bound: times within 5 ms of the original ones (sorted per pitch); a note
    # shorter than the 10 ms grid keeps one step, so its end is compared to that
    a = orig.sort_values(["pitch", "start"], kind="stable")
    b = decoded.sort_values(["pitch", "start"], kind="stable")
    assert np.abs(a["start"].to_numpy() - b["start"].to_numpy()).max() <= 0.005 + 1e-9
    kept_end = orig.assign(end=np.maximum(orig["end"], (on + 1) * 0.01))
    a = kept_end.sort_values(["pitch", "end"], kind="stable")
    b = decoded.sort_values(["pitch", "end"], kind="stable")
    assert np.abs(a["end"].to_numpy() - b["end"].to_numpy()).max() <= 0.005 + 1e-9


def nearest_gap(notes: pd.DataFrame, others: pd.DataFrame) -> np.ndarray:
    """For each note, the distance to the nearest onset of the same pitch in `others`
    (inf if none): one searchsorted on (pitch, start) order, gaps from exact times."""
    o_pitch, o_start = others["pitch"].to_numpy(), others["start"].to_numpy()
    order = np.lexsort((o_start, o_pitch))
    o_pitch, o_start = o_pitch[order], o_start[order]
    pitch, start = notes["pitch"].to_numpy(), notes["start"].to_numpy()
    pos = np.searchsorted(o_pitch * 1e6 + o_start, pitch * 1e6 + start)
    gap = np.full(len(notes), np.inf)
    for neighbour in (np.clip(pos - 1, 0, None), np.clip(pos, None, len(o_pitch) - 1)):
        same = o_pitch[neighbour] == pitch
        gap = np.where(same, np.minimum(gap, np.abs(start - o_start[neighbour])), gap)
    return gap


def dense_reference(first, stop, row, velocity, n_frames, n_rows):
    """Dense (frames, rows) max-velocity grid and onset grid, filled note by note."""
    grid = np.zeros((n_rows, n_frames), np.int64)  # row-major: a note is one slice
    onset = np.zeros((n_rows, n_frames), bool)
    for f0, f1, r, v in zip(
        first.tolist(), stop.tolist(), row.tolist(), velocity.tolist(), strict=True
    ):
        cells = grid[r, f0:f1]
        np.maximum(cells, v, out=cells)
        onset[r, f0] = True
    return grid.T, onset.T


def union_runs(first, stop, row, cut_at_onsets: bool):
    """Per row, the union of [first, stop) spans as (start, row, stop) runs, each run
    optionally cut at every onset inside it."""
    runs = []
    for f0, f1, r in sorted(zip(first.tolist(), stop.tolist(), row.tolist(), strict=True),
                            key=lambda x: (x[2], x[0])):  # fmt: skip
        if runs and runs[-1][1] == r and f0 <= runs[-1][2]:  # touches the open run
            last = runs[-1]
            if cut_at_onsets and f0 > last[0]:
                runs[-1] = (last[0], r, f0)
                runs.append((f0, r, max(last[2], f1)))
            else:
                runs[-1] = (last[0], r, max(last[2], f1))
        else:
            runs.append((f0, r, f1))
    return sorted(runs)


@pytest.mark.parametrize("path", MIDI_FILES, ids=IDS)
def test_pianoroll_roundtrip(path: Path, by_piece, encoded) -> None:
    params = default_params("pianoroll", pianoroll.Params)
    frame_s = params.frame_s
    rows = encoded["pianoroll"][path.name]
    orig = piece_notes(by_piece, path.name, params.sustain)
    orig = orig[(orig["pitch"] >= params.min_pitch) & (orig["pitch"] <= params.max_pitch)]
    first = np.rint(orig["start"].to_numpy() / frame_s).astype(int)
    stop = np.maximum(np.rint(orig["end"].to_numpy() / frame_s).astype(int), first + 1)
    pitch = orig["pitch"].to_numpy()
    grid, _ = dense_reference(first, stop, pitch, orig["velocity"].to_numpy(), stop.max(), 128)
    frames, pitches = np.nonzero(grid)
    np.testing.assert_array_equal(rows["frame"], frames)
    np.testing.assert_array_equal(rows["pitch"], pitches)
    np.testing.assert_array_equal(rows["velocity"], grid[frames, pitches])

    decoded = pianoroll.decode(rows, params)
    got = sorted(
        zip(
            np.rint(decoded["start"] / frame_s).astype(int),
            decoded["pitch"],
            np.rint(decoded["end"] / frame_s).astype(int),
            strict=True,
        )
    )
    assert got == union_runs(first, stop, pitch, cut_at_onsets=False)
    # every decoded onset is within half a frame of an original onset of its pitch
    assert nearest_gap(decoded, orig).max() <= frame_s / 2 + 1e-9
    start_frames = np.rint(decoded["start"] / frame_s).astype(int)
    np.testing.assert_array_equal(decoded["velocity"], grid[start_frames, decoded["pitch"]])


@pytest.mark.parametrize("path", MIDI_FILES, ids=IDS)
def test_prv_roundtrip(path: Path, by_piece, encoded) -> None:
    params = default_params("prv", prv.Params)
    step_s = params.step_s
    rows = encoded["prv"][path.name]
    orig = piece_notes(by_piece, path.name, params.sustain)
    first = np.rint(orig["start"].to_numpy() / step_s).astype(int)
    stop = np.maximum(np.rint(orig["end"].to_numpy() / step_s).astype(int), first + 1)
    row = orig["pitch"].to_numpy() - params.min_pitch
    while (row < 0).any() or (row >= params.n_pitches).any():
        row = np.where(row < 0, row + 12, np.where(row >= params.n_pitches, row - 12, row))
    grid, onset = dense_reference(
        first, stop, row, orig["velocity"].to_numpy(), stop.max(), params.n_pitches
    )
    steps, pitches = np.nonzero(grid)
    np.testing.assert_array_equal(rows["step"], steps)
    np.testing.assert_array_equal(rows["pitch"], pitches)
    np.testing.assert_array_equal(rows["replay"], onset[steps, pitches])
    np.testing.assert_allclose(rows["volume"], grid[steps, pitches] / 127, rtol=1e-6)
    assert rows["volume"].between(0, 1).all()

    decoded = prv.decode(rows, params)
    got = sorted(
        zip(
            np.rint(decoded["start"] / step_s).astype(int),
            decoded["pitch"] - params.min_pitch,
            np.rint(decoded["end"] / step_s).astype(int),
            strict=True,
        )
    )
    assert got == union_runs(first, stop, row, cut_at_onsets=True)
    start_steps = np.rint(decoded["start"] / step_s).astype(int)
    np.testing.assert_array_equal(
        decoded["velocity"], grid[start_steps, decoded["pitch"] - params.min_pitch]
    )
    # stated bound: each original note inside the window has a decoded onset within
    # half a step of its own onset, on its pitch
    inside = (orig["pitch"] >= params.min_pitch) & (
        orig["pitch"] < params.min_pitch + params.n_pitches
    )
    assert nearest_gap(orig[inside], decoded).max() <= step_s / 2 + 1e-9
