"""Train-time augmentation of prv windows: transposition and time stretch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_stores import FIXTURES, encoded_store

from pipeline.modeling.base import Augment, StoreData
from pipeline.modeling.prv import (
    PLAY,
    REPLAY,
    VOLUME,
    PrvPieces,
    PrvWindows,
    augment_window,
    dense_steps,
    make_windows,
    stretch_spans,
)

MAESTRO = FIXTURES / "maestro" / "giantmidi_eval_MIDI-Unprocessed_"
SPLITS = {
    "train": [
        (Path(f"{MAESTRO}11_R1_2011_MID--AUDIO_R1-D4_07_Track07_wav.mid"), "Chopin"),
        (FIXTURES / "other" / "miditok_POP909_008.mid", "pop909"),
    ],
}


@pytest.fixture(scope="module")
def store() -> StoreData:
    return encoded_store("prv", SPLITS, max_steps_per_piece=120)


def windows(store: StoreData, seed: int = 3) -> PrvWindows:
    torch.manual_seed(seed)
    return make_windows(store, 16, 48, ["<unk>", "Chopin", "Bach"], "train")


def one_note_piece(steps: list[int], replay: list[int], volume: float = 0.5) -> PrvPieces:
    """A piece with one pitch (index 10) sounding at `steps`, replaying at `replay`."""
    s = np.array(steps, dtype=np.int64)
    return PrvPieces(
        ["p"],
        [s],
        [np.full(len(s), 10, dtype=np.int64)],
        [np.isin(s, replay).astype(np.float32)],
        [np.full(len(s), volume, dtype=np.float32)],
        np.array([int(s[-1]) + 1]),
    )


def check_cells(x: np.ndarray) -> None:
    play, replay, volume = x[..., PLAY], x[..., REPLAY], x[..., VOLUME]
    assert set(np.unique(play)) <= {0.0, 1.0} and set(np.unique(replay)) <= {0.0, 1.0}
    assert np.all(replay <= play)  # replay implies play
    assert np.all((volume >= 0) & (volume <= 1)) and np.all(volume[play == 0] == 0)
    # every onset (played after a silent step) is a replay, as the store encodes it
    onset = (play[1:] == 1) & (play[:-1] == 0)
    assert np.all(replay[1:][onset] == 1)


def test_off_is_bit_identical(store: StoreData) -> None:
    plain, augmented = windows(store), windows(store)
    augmented.set_augment(Augment(transpositions=(0,), stretches=(1.0,)))  # inactive
    for epoch in (0, 1):
        plain.set_epoch(epoch), augmented.set_epoch(epoch)
        for i in range(len(plain)):
            a, b = plain[i], augmented[i]
            for key in a:
                assert torch.equal(a[key], b[key])


def test_exact_transposition(store: StoreData) -> None:
    plain, up = windows(store), windows(store)
    up.set_augment(Augment(transpositions=(5,), stretches=(1.0,)))
    down = windows(store)
    down.set_augment(Augment(transpositions=(-7,), stretches=(1.0,)))
    for i in range(len(plain)):
        x = plain[i]["x"].numpy()
        np.testing.assert_array_equal(up[i]["x"].numpy()[:, 5:], x[:, :-5])
        assert up[i]["x"][:, :5].abs().sum() == 0  # nothing shifted in from below
        np.testing.assert_array_equal(down[i]["x"].numpy()[:, :-7], x[:, 7:])
        assert torch.equal(up[i]["mask"], plain[i]["mask"])


@pytest.mark.parametrize("factor", [0.5, 0.95, 1.05, 1.5, 2.0])
def test_stretch_keeps_onsets_and_window_length(factor: float) -> None:
    # notes: steps 0-3 (one note), 4-5 re-struck at 4, a one-step note at 9, 12-19
    piece = one_note_piece([0, 1, 2, 3, 4, 5, 9, 12, 13, 14, 15, 16, 17, 18, 19], [0, 4, 9, 12])
    src = dense_steps(piece, 0, 0, 40, 48)
    x, valid = augment_window(piece, 0, 1, 39, 48, 0, factor)
    assert x.shape == (40, 48, 3)
    check_cells(x)
    shown, (lo, hi) = stretch_spans(40, factor)
    assert np.all(lo[1:] == hi[:-1]) and np.all(lo <= hi)  # each source step once
    covered = int(hi[-1])
    onsets_in = int(src[:covered, 10, REPLAY].sum())
    assert int(x[:, 10, REPLAY].sum()) == onsets_in  # every onset kept, none repeated
    assert np.allclose(x[x[..., PLAY] == 1, VOLUME], 0.5)  # volume preserved
    assert valid == int(np.sum(shown[1:] < 20))
    if factor == 2.0:  # exact: each source step shown twice, replay only on the first
        np.testing.assert_array_equal(x[::2, 10, PLAY], src[:20, 10, PLAY])
        np.testing.assert_array_equal(x[1::2, 10, PLAY], src[:20, 10, PLAY])
        np.testing.assert_array_equal(x[::2, 10, REPLAY], src[:20, 10, REPLAY])
        assert x[1::2, 10, REPLAY].sum() == 0
    if factor == 0.5:  # exact: output j covers source steps 2j and 2j + 1
        np.testing.assert_array_equal(x[:20, 10, PLAY], src[:40, 10, PLAY].reshape(20, 2).max(1))


def test_valid_cells_and_determinism_on_real_windows(store: StoreData) -> None:
    augment = Augment(transpositions=(-3, 0, 2, 4), stretches=(0.95, 1.0, 1.05, 1.5))
    a, b = windows(store), windows(store)
    a.set_augment(augment), b.set_augment(augment)
    seen = set()
    for epoch in (0, 1):
        a.set_epoch(epoch), b.set_epoch(epoch)
        for i in range(len(a)):
            item = a[i]
            x = item["x"].numpy()
            assert x.shape == (17, 48, 3) and item["mask"].shape == (16,)
            check_cells(x)
            seen.add(augment.draw(a.index.seed, epoch, i))
            for key, value in b[i].items():  # a pure function of (seed, epoch, index)
                assert torch.equal(item[key], value)
    assert len(seen) > 3  # the draws vary
    other = windows(store, seed=4)
    other.set_augment(augment)
    assert any(not torch.equal(other[i]["x"], a[i]["x"]) for i in range(len(a)))
