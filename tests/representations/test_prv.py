"""Play/replay/volume on a hand-made notes table: literal cells and decoded notes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fixture_stores import repr_params, shipped

from pipeline.core.params import ParamsError, from_mapping
from pipeline.representations import prv


def notes_table(rows: list[tuple], piece: str = "a") -> pd.DataFrame:
    """(pitch, velocity, start, end[, track[, is_drum]]) -> a notes-store frame."""
    full = [tuple(r) + (0, False)[len(r) - 4 :] for r in rows]  # default track 0, not drum
    df = pd.DataFrame(full, columns=["pitch", "velocity", "start", "end", "track", "is_drum"])
    return df.assign(piece_id=piece, program=0)


# 4 steps a second, one octave C4..B4
PARAMS = repr_params("prv", steps_per_second=4, min_pitch=60, n_pitches=12, sustain=False)
TINY = notes_table(
    [
        (60, 127, 0.0, 0.5),  # steps 0, 1
        (72, 64, 0.5, 1.0),  # an octave up: folds onto C4, re-struck at step 2
        (59, 100, 0.0, 0.25),  # B3 folds up to B4 (index 11)
        (36, 110, 0.0, 0.1, 9, True),  # drum: left out
    ]
)


def test_fold_pitch() -> None:
    got = prv.fold_pitch(np.array([60, 71, 72, 59, 20, 127, 0]), 60, 12)
    assert got.tolist() == [0, 11, 0, 11, 8, 7, 0]
    assert prv.fold_pitch(np.array([35, 36, 83, 84]), 36, 48).tolist() == [11, 0, 47, 36]


def test_encode_literal() -> None:
    rows = prv.encode(TINY, None, PARAMS)
    assert rows.columns.tolist() == ["piece_id", "step", "pitch", "replay", "volume"]
    got = list(rows[["step", "pitch", "replay"]].itertuples(index=False, name=None))
    assert got == [(0, 0, True), (0, 11, True), (1, 0, False), (2, 0, True), (3, 0, False)]
    np.testing.assert_allclose(rows["volume"], [1.0, 100 / 127, 1.0, 64 / 127, 64 / 127], rtol=1e-6)
    assert rows["volume"].dtype == np.float32 and rows["replay"].dtype == bool


def test_decode_literal_splits_at_replay() -> None:
    notes = prv.decode(prv.encode(TINY, None, PARAMS), PARAMS)
    got = list(notes[["pitch", "velocity", "start", "end"]].itertuples(index=False, name=None))
    assert got == [(60, 127, 0.0, 0.5), (71, 100, 0.0, 0.25), (60, 64, 0.5, 1.0)]


def test_restrike_of_a_held_note_is_a_replay() -> None:
    notes = notes_table([(60, 100, 0.0, 1.0), (60, 50, 0.5, 0.75, 1)])
    rows = prv.encode(notes, None, PARAMS)
    assert rows["replay"].tolist() == [True, False, True, False]
    decoded = prv.decode(rows, PARAMS)
    assert decoded[["start", "end"]].values.tolist() == [[0.0, 0.5], [0.5, 1.0]]


def test_crop() -> None:
    params = repr_params(
        "prv", steps_per_second=4, min_pitch=60, n_pitches=12, max_steps_per_piece=2
    )
    assert prv.encode(TINY, None, params)["step"].max() == 1


@pytest.mark.parametrize(
    ("raw", "key"),
    [({"n_pitches": 6}, "n_pitches"), ({"min_pitch": 100, "n_pitches": 48}, "min_pitch")],
)
def test_params_rejected(raw: dict, key: str) -> None:
    with pytest.raises(ParamsError, match=key):
        from_mapping({**shipped("prv"), **raw}, prv.Params, "prv")
