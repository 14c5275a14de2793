"""Piano-roll on a hand-made notes table: literal cells and decoded notes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fixture_stores import repr_params, shipped

from pipeline.core.params import ParamsError, default_params, from_mapping
from pipeline.representations import notes as notes_module
from pipeline.representations import pianoroll


def notes_table(rows: list[tuple], piece: str = "a") -> pd.DataFrame:
    """(pitch, velocity, start, end[, track[, is_drum]]) -> a notes-store frame."""
    full = [tuple(r) + (0, False)[len(r) - 4 :] for r in rows]  # default track 0, not drum
    df = pd.DataFrame(full, columns=["pitch", "velocity", "start", "end", "track", "is_drum"])
    return df.assign(piece_id=piece, program=0)


# 250 ms frames keep the literal small
PARAMS = repr_params("pianoroll", frame_ms=250, sustain=False)
TINY = notes_table(
    [
        (60, 100, 0.0, 0.5),  # frames 0, 1
        (64, 80, 0.25, 0.5),  # frame 1
        (60, 90, 0.5, 1.0),  # frames 2, 3: re-struck right after the first C
        (67, 70, 0.3, 0.35),  # shorter than a frame: keeps frame 1
        (36, 110, 0.0, 0.1, 9, True),  # drum: left out
        (20, 70, 0.0, 0.5),  # below A0: dropped
        (62, 50, 0.0, 0.75),  # overlaps a louder D from another track
        (62, 120, 0.25, 0.5, 1),
    ]
)


def test_encode_literal() -> None:
    rows = pianoroll.encode(TINY, None, PARAMS)
    assert rows.columns.tolist() == ["piece_id", "frame", "pitch", "velocity"]
    got = list(rows[["frame", "pitch", "velocity"]].itertuples(index=False, name=None))
    assert got == [
        (0, 60, 100),
        (0, 62, 50),
        (1, 60, 100),
        (1, 62, 120),  # the loudest note on a cell wins
        (1, 64, 80),
        (1, 67, 70),
        (2, 60, 90),
        (2, 62, 50),
        (3, 60, 90),
    ]
    assert rows["frame"].dtype == np.int32 and rows["pitch"].dtype == np.int16


def test_decode_literal_merges_adjacent_restrikes() -> None:
    notes = pianoroll.decode(pianoroll.encode(TINY, None, PARAMS), PARAMS)
    got = list(notes[["pitch", "velocity", "start", "end"]].itertuples(index=False, name=None))
    assert got == [
        (60, 100, 0.0, 1.0),  # the two Cs touch, so they come back as one note
        (62, 50, 0.0, 0.75),  # velocity of the first frame
        (64, 80, 0.25, 0.5),
        (67, 70, 0.25, 0.5),
    ]


def test_pitch_range_and_crop() -> None:
    params = pianoroll.Params(
        frame_ms=250, min_pitch=60, max_pitch=64, sustain=False, max_frames_per_piece=2
    )
    rows = pianoroll.encode(TINY, None, params)
    assert set(rows["pitch"]) == {60, 62, 64}
    assert rows["frame"].max() == 1


def test_sustain_extends_cells() -> None:
    pedals = pd.DataFrame({"piece_id": ["a"], "track": [0], "start": [0.4], "end": [1.5]})
    notes = notes_table([(64, 80, 0.25, 0.5)])
    held = pianoroll.encode(notes, pedals, repr_params("pianoroll", frame_ms=250, sustain=True))
    assert held["frame"].tolist() == [1, 2, 3, 4, 5]
    dry = pianoroll.encode(notes, pedals, repr_params("pianoroll", frame_ms=250, sustain=False))
    assert dry["frame"].tolist() == [1]


def test_many_pieces_in_small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces rasterised in several grid batches give the same cells as one batch."""
    rng = np.random.default_rng(0)
    parts = []
    for i in range(30):
        start = np.sort(rng.uniform(0, 20, 200))
        parts.append(
            pd.DataFrame(
                {
                    "piece_id": f"p{i:02d}",
                    "pitch": rng.integers(21, 109, 200),
                    "velocity": rng.integers(1, 128, 200),
                    "start": start,
                    "end": start + rng.uniform(0.01, 3, 200),
                }
            )
        )
    notes = pd.concat(parts, ignore_index=True)
    params = default_params("pianoroll", pianoroll.Params)
    whole = pianoroll.encode(notes, None, params)
    monkeypatch.setattr(notes_module, "GRID_CELLS", 5_000)
    batched = pianoroll.encode(notes, None, params)
    pd.testing.assert_frame_equal(whole, batched)
    assert whole["piece_id"].unique().tolist() == [f"p{i:02d}" for i in range(30)]


def test_empty_input() -> None:
    rows = pianoroll.encode(TINY.iloc[:0], None, PARAMS)
    assert rows.empty and rows.columns.tolist() == ["piece_id", "frame", "pitch", "velocity"]
    assert pianoroll.decode(rows, PARAMS).empty


@pytest.mark.parametrize(
    ("raw", "key"),
    [({"frame_ms": 0}, "frame_ms"), ({"min_pitch": 90, "max_pitch": 80}, "min_pitch")],
)
def test_params_rejected(raw: dict, key: str) -> None:
    with pytest.raises(ParamsError, match=key):
        from_mapping({**shipped("pianoroll"), **raw}, pianoroll.Params, "pianoroll")
