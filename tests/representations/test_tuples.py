"""Tuples on hand-made notes (literal expected rows), and the shared note preparation
(drums out, sustain pedal) that every representation uses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fixture_stores import repr_params

from pipeline.core.params import ParamsError, default_params, from_mapping
from pipeline.representations import tuples

PARAMS = default_params("tuples", tuples.Params)  # as params.yaml ships them


def notes_table(rows: list[tuple], piece: str = "a") -> pd.DataFrame:
    """(pitch, velocity, start, end[, track[, is_drum]]) -> a notes-store frame."""
    full = [tuple(r) + (0, False)[len(r) - 4 :] for r in rows]  # default track 0, not drum
    df = pd.DataFrame(full, columns=["pitch", "velocity", "start", "end", "track", "is_drum"])
    return df.assign(piece_id=piece, program=0)


def pedal_table(rows: list[tuple], piece: str = "a") -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["track", "start", "end"]).assign(piece_id=piece)


TINY = notes_table(
    [
        (60, 100, 0.0, 0.5),
        (64, 80, 0.25, 0.5),
        (60, 90, 0.5, 1.0),
        (36, 110, 0.0, 0.1, 9, True),  # drum: left out
        (20, 70, 0.0, 0.125),
    ]
)


def test_encode_literal() -> None:
    rows = tuples.encode(TINY, None, repr_params("tuples", sustain=False))
    assert rows.columns.tolist() == tuples.SCHEMA.names
    assert rows["piece_id"].tolist() == ["a"] * 4
    assert rows["index"].tolist() == [0, 1, 2, 3]
    assert rows["pitch"].tolist() == [20, 60, 64, 60]  # by start, then pitch
    np.testing.assert_array_equal(rows["step"], np.array([0.0, 0.0, 0.25, 0.25], np.float32))
    np.testing.assert_array_equal(rows["duration"], np.array([0.125, 0.5, 0.25, 0.5], np.float32))
    assert rows["velocity"].tolist() == [70, 100, 80, 90]
    assert rows["step"].dtype == np.float32 and rows["index"].dtype == np.int32


def test_decode_literal() -> None:
    rows = tuples.encode(TINY, None, repr_params("tuples", sustain=False))
    notes = tuples.decode(rows, PARAMS)
    assert notes["pitch"].tolist() == [20, 60, 64, 60]
    assert notes["start"].tolist() == [0.0, 0.0, 0.25, 0.5]
    assert notes["end"].tolist() == [0.125, 0.5, 0.5, 1.0]


def test_pieces_keep_input_order_and_restart_steps() -> None:
    both = pd.concat([notes_table([(62, 50, 3.0, 3.5)], "z"), TINY], ignore_index=True)
    rows = tuples.encode(both, None, repr_params("tuples", sustain=False))
    assert rows["piece_id"].tolist() == ["z", "a", "a", "a", "a"]
    assert rows["index"].tolist() == [0, 0, 1, 2, 3]
    assert rows["step"].tolist()[:2] == [3.0, 0.0]  # each piece's first step is its onset


def test_unsorted_input_is_sorted() -> None:
    shuffled = TINY.iloc[[2, 4, 0, 1, 3]]
    a = tuples.encode(shuffled, None, repr_params("tuples", sustain=False))
    b = tuples.encode(TINY, None, repr_params("tuples", sustain=False))
    pd.testing.assert_frame_equal(a, b)


def test_no_drift_over_a_long_piece() -> None:
    """100k triplet onsets (1/3 s apart): naive float32 steps drift by ~1e-3 s; these
    steps stay within 2**-19 s."""
    start = np.arange(100_000) / 3.0
    notes = pd.DataFrame(
        {"piece_id": "a", "pitch": 60, "velocity": 80, "start": start, "end": start + 0.2}
    )
    decoded = tuples.decode(tuples.encode(notes, None, PARAMS), PARAMS)
    assert np.abs(decoded["start"] - start).max() <= 2.0**-19
    naive = np.cumsum(np.diff(start, prepend=0.0).astype(np.float32).astype(np.float64))
    assert np.abs(naive - start).max() > 1e-4  # the failure this guards against


def test_decode_refuses_two_pieces() -> None:
    both = pd.concat([notes_table([(62, 50, 3.0, 3.5)], "z"), TINY], ignore_index=True)
    rows = tuples.encode(both, None, PARAMS)
    with pytest.raises(ValueError, match="2 pieces"):
        tuples.decode(rows, PARAMS)


def test_missing_column_is_named() -> None:
    with pytest.raises(ValueError, match=r"notes: missing column\(s\) \['velocity'\]"):
        tuples.encode(TINY.drop(columns=["velocity"]), None, PARAMS)


def test_params_section() -> None:
    assert from_mapping({"sustain": False}, tuples.Params, "tuples") == repr_params(
        "tuples", sustain=False
    )
    with pytest.raises(ParamsError, match="tuples.bogus"):
        from_mapping({"sustain": True, "bogus": 1}, tuples.Params, "tuples")


# --- sustain pedal -------------------------------------------------------------


def test_sustain_literal() -> None:
    notes = notes_table(
        [
            (60, 100, 0.0, 0.5, 0),  # held by the pedal, damped by the re-strike at 1.0
            (62, 100, 0.2, 0.4, 0),  # held until the release at 1.5
            (60, 100, 1.0, 1.2, 0),  # held until 1.5
            (67, 100, 0.0, 0.3, 0),  # ends exactly at the pedal press: held (start <= end)
            (69, 100, 0.0, 0.2, 0),  # released before the pedal: unchanged
            (71, 100, 1.4, 1.5, 0),  # released exactly at the release: unchanged
            (64, 100, 2.5, 2.6, 0),  # the pedal of track 1 does not hold track 0
            (65, 100, 2.1, 2.2, 1),  # track 1 pedal [2, 3) holds it
            (72, 100, 0.0, 2.0, 0),  # ends after the pedal: unchanged (never shortened)
        ]
    )
    pedals = pedal_table([(0, 0.3, 1.0), (0, 0.9, 1.5), (1, 2.0, 3.0)])  # track 0: overlap merged
    got = tuples.prepare_notes(notes, pedals, sustain=True)
    np.testing.assert_allclose(got.end, [1.0, 1.5, 1.5, 1.5, 0.2, 1.5, 2.6, 3.0, 2.0])
    plain = tuples.prepare_notes(notes, pedals, sustain=False)
    np.testing.assert_array_equal(plain.end, notes["end"])


def test_sustain_only_within_its_piece() -> None:
    notes = pd.concat(
        [notes_table([(60, 100, 0.0, 0.5)], "a"), notes_table([(60, 100, 0.0, 0.5)], "b")],
        ignore_index=True,
    )
    pedals = pedal_table([(0, 0.1, 2.0)], "b")
    got = tuples.prepare_notes(notes, pedals, sustain=True)
    np.testing.assert_allclose(got.end, [0.5, 2.0])
    assert got.piece_ids.tolist() == ["a", "b"]


def test_drums_dropped_and_velocity_clipped() -> None:
    notes = notes_table([(60, 0, 0.0, 0.5), (61, 200, 0.0, 0.5), (36, 100, 0.0, 0.1, 9, True)])
    got = tuples.prepare_notes(notes, None, sustain=True)
    assert got.pitch.tolist() == [60, 61]
    assert got.velocity.tolist() == [1, 127]


def test_negative_times_are_clipped_to_zero() -> None:
    notes = notes_table([(60, 100, -0.5, 0.25), (62, 100, -0.5, -0.1)])
    got = tuples.prepare_notes(notes, None, sustain=False)
    assert got.start.tolist() == [0.0, 0.0]
    assert got.end.tolist() == [0.25, 0.0]
