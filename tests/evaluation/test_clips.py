"""The clips a model is judged by: real windows, primers from validation, the primer cut."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from fixture_stores import FIXTURES
from rawfolder import processed_stores

from pipeline.evaluation.clips import piece_notes, primers, real_clips, trim, windows, written
from pipeline.representations import decode_rows, load_store

PIECES = {
    FIXTURES / "other" / "miditoolkit_1390.mid": "validation",
    FIXTURES / "other" / "symusic_1.midi": "test",
    FIXTURES / "lakh" / "miditok_Funkytown.mid": "test",
}


def notes(*spans: tuple[int, float, float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pitch": [p for p, _, _ in spans],
            "velocity": [80] * len(spans),
            "start": [s for _, s, _ in spans],
            "end": [e for _, _, e in spans],
        }
    )


def test_trim_keeps_notes_starting_inside_shifted_and_cut() -> None:
    piece = notes((60, 0.0, 2.5), (61, 2.0, 3.0), (62, 2.5, 9.0), (63, 7.0, 8.0))
    clip = trim(piece, 2.0, 4.0)
    # the note sounding at 2.0 since 0.0 belongs to what came before: left out
    assert clip["pitch"].tolist() == [61, 62]
    assert clip["start"].tolist() == [0.0, 0.5] and clip["end"].tolist() == [1.0, 4.0]
    assert written(piece, 2.0, 4.0).equals(clip)
    assert trim(piece.iloc[:0], 0.0, 1.0).empty


def test_windows_fit_wholly_first_windows_first_and_reproducible() -> None:
    pieces = {
        "short": notes((60, 0.0, 3.0)),  # shorter than one window: never a clip
        "a": notes((60, 0.0, 25.0)),  # 2 windows of 10 s after 1 s
        "b": notes((60, 0.0, 12.0)),  # 1 window
    }
    chosen = windows(pieces, 10, 10.0, 1.0, seed=0)
    assert sorted((w.piece_id, w.start) for w in chosen) == [("a", 1.0), ("a", 11.0), ("b", 1.0)]
    assert {w.piece_id for w in chosen[:2]} == {"a", "b"}  # one clip per work first
    assert windows(pieces, 2, 10.0, 1.0, seed=0) == chosen[:2]
    assert windows(pieces, 3, 10.0, 1.0, seed=3) != [] and not windows(pieces, 3, 30.0, 0.0, 0)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return processed_stores(tmp_path_factory.mktemp("clipstores"), PIECES)


@pytest.mark.parametrize("name", ["tuples", "pianoroll"])
def test_real_clips_on_real_music_are_equal_length_windows(stores: Path, name: str) -> None:
    store = load_store(stores / name, name)
    test = piece_notes(store, "test", name)
    assert len(test) == 2
    labels, clips = real_clips(test, 4, 3.0, 1.0, seed=0)
    assert len(labels) == len(clips) == 4 and len(set(labels)) == 4
    for clip in clips:
        assert len(clip) and clip["start"].min() >= 0 and clip["end"].max() <= 3.0


@pytest.mark.parametrize("name", ["tuples", "pianoroll"])
def test_primers_are_validation_openings_in_the_store_representation(
    stores: Path, name: str
) -> None:
    store = load_store(stores / name, name)
    opened = primers(store, name, 3, 6.0, seed=0)
    validation = set(store.rows["validation"]["piece_id"].astype(str))
    assert len(opened) == 3 and {pid for pid, _ in opened} <= validation
    decoded = decode_rows(name, opened[0][1], store.params)
    assert len(decoded) and decoded["start"].max() < 6.0
    with pytest.raises(ValueError, match="primer_seconds"):
        primers(store, name, 1, 10_000.0, seed=0)
