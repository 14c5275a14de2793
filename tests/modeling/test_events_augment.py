"""Events training windows: BOS anchoring and train-time augmentation (transpose, stretch)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from fixture_stores import SMALL, SMALL_2, SMALL_3, encoded_store, model_config

from pipeline.modeling.base import Augment
from pipeline.modeling.events import EventWindows, augment_tokens, make_dataset
from pipeline.representations.events import (
    BOS,
    EOS,
    MAX_SHIFT_STEPS,
    NOTE_OFF,
    NOTE_ON,
    PAD,
    SET_VELOCITY,
    STEP_S,
    TIME_SHIFT,
    VOCAB_SIZE,
    decode_tokens,
    encode_piece,
)

SEQ_LEN = 64
RECIPE = Augment(transpositions=(-3, -2, -1, 0, 1, 2, 3), stretches=(0.95, 0.975, 1.0, 1.025, 1.05))


@pytest.fixture(scope="module")
def pieces() -> list[np.ndarray]:
    """Three real performances as event tokens (about 2,500 tokens each)."""
    store = encoded_store("events", {"train": [SMALL, SMALL_2, SMALL_3]})
    return [np.asarray(t, dtype=np.int64) for t in store.rows["train"]["tokens"]]


def _windows(data: EventWindows) -> np.ndarray:
    return np.stack([data[i]["tokens"].numpy() for i in range(len(data))])


def _steps(seconds: pd.Series) -> np.ndarray:
    return np.rint(seconds.to_numpy() / STEP_S).astype(np.int64)


# ---------------------------------------------------------------- augment_tokens


@pytest.mark.parametrize("factor", [0.5, 0.95, 1.0, 1.05, 2.0])
@pytest.mark.parametrize("semitones", [-12, -3, 0, 5])
def test_augmented_pieces_are_what_the_encoder_writes(
    pieces: list[np.ndarray], semitones: int, factor: float
) -> None:
    """Decoding an augmented piece and encoding it again gives the same tokens."""
    for tokens in pieces:
        out = augment_tokens(tokens, semitones, factor)
        assert out.dtype == np.int64 and out.min() >= 0 and out.max() < VOCAB_SIZE
        assert out[0] == BOS and out[-1] == EOS
        np.testing.assert_array_equal(np.asarray(encode_piece(decode_tokens(out))), out)


@pytest.mark.parametrize("semitones", [-7, -1, 1, 12])
def test_transposition_shifts_every_pitch_exactly(pieces: list[np.ndarray], semitones: int) -> None:
    for tokens in pieces:
        out = augment_tokens(tokens, semitones, 1.0)
        note = (tokens >= NOTE_ON) & (tokens < TIME_SHIFT + 1)
        np.testing.assert_array_equal(out[note], tokens[note] + semitones)
        np.testing.assert_array_equal(out[~note], tokens[~note])  # times, velocities as were
        before, after = decode_tokens(tokens), decode_tokens(out)
        np.testing.assert_array_equal(after["pitch"], before["pitch"] + semitones)
        pd.testing.assert_frame_equal(after.drop(columns="pitch"), before.drop(columns="pitch"))


def test_pitches_pushed_off_the_keyboard_drop_their_notes() -> None:
    tokens = np.array(
        [BOS, SET_VELOCITY + 20, NOTE_ON + 60, NOTE_ON + 125, TIME_SHIFT + 30]
        + [NOTE_OFF + 125, TIME_SHIFT + 80, NOTE_OFF + 60, EOS]
    )
    out = augment_tokens(tokens, 5, 1.0)
    # 125 + 5 is outside 0..127: its NOTE_ON and NOTE_OFF go, and the two TIME_SHIFT
    # runs they separated merge into one 1.1 s gap (a full second, then 10 steps)
    expected = [BOS, SET_VELOCITY + 20, NOTE_ON + 65]
    expected += [TIME_SHIFT + MAX_SHIFT_STEPS, TIME_SHIFT + 10, NOTE_OFF + 65, EOS]
    np.testing.assert_array_equal(out, expected)
    notes = decode_tokens(out)
    assert notes["pitch"].tolist() == [65] and notes["end"].tolist() == pytest.approx([1.1])
    assert len(augment_tokens(tokens, -61, 1.0)) == len(tokens) - 2  # 60 - 61 < 0 drops too


@pytest.mark.parametrize("factor", [0.95, 0.975, 1.025, 1.05, 1.5])
def test_stretch_scales_times_within_the_10ms_grid(pieces: list[np.ndarray], factor: float) -> None:
    for tokens in pieces:
        before, after = decode_tokens(tokens), decode_tokens(augment_tokens(tokens, 0, factor))
        assert len(after) == len(before)
        pd.testing.assert_series_equal(after["pitch"], before["pitch"])
        for column in ("start", "end"):
            exact = _steps(before[column]) * factor  # stretched time, in 10 ms steps
            got = _steps(after[column])
            if factor >= 1.0:  # no gap can close: every time is the nearest grid step
                assert np.abs(got - exact).max() <= 0.5 + 1e-9
            else:  # at most half a step early; a floored 1-step gap may delay a little
                assert (got - exact).min() >= -0.5 - 1e-9
                assert (got - exact).max() <= 1.0  # 0.65 on these pieces at 0.95
        # notes that started at different times still do, in the same order
        moved = np.diff(_steps(before["start"])) > 0
        assert (np.diff(_steps(after["start"]))[moved] > 0).all()


def test_stretch_rewrites_long_gaps_as_the_encoder_does() -> None:
    tokens = np.array([BOS, NOTE_ON + 60, TIME_SHIFT + 100, TIME_SHIFT + 90, NOTE_OFF + 60, EOS])
    # 190 steps * 1.05 = 199.5 -> 200: two full seconds, no remainder token
    np.testing.assert_array_equal(
        augment_tokens(tokens, 0, 1.05),
        [BOS, NOTE_ON + 60, TIME_SHIFT + 100, TIME_SHIFT + 100, NOTE_OFF + 60, EOS],
    )
    # 190 * 0.5 = 95: one token fewer
    np.testing.assert_array_equal(
        augment_tokens(tokens, 0, 0.5), [BOS, NOTE_ON + 60, TIME_SHIFT + 95, NOTE_OFF + 60, EOS]
    )
    # gaps never close: the note at step 1 -> 0.5 rounds to 1; the note at step 2 -> 1
    # would meet it, so it stays a step later, at 2
    close = np.array(
        [BOS, NOTE_ON + 60, TIME_SHIFT + 1, NOTE_ON + 62, TIME_SHIFT + 1, NOTE_ON + 64]
    )
    out = augment_tokens(close, 0, 0.5)
    np.testing.assert_array_equal(
        out, [BOS, NOTE_ON + 60, TIME_SHIFT + 1, NOTE_ON + 62, TIME_SHIFT + 1, NOTE_ON + 64]
    )


def test_identity_and_empty() -> None:
    tokens = np.array([BOS, NOTE_ON + 60, TIME_SHIFT + 7, NOTE_OFF + 60, EOS], dtype=np.uint16)
    np.testing.assert_array_equal(augment_tokens(tokens, 0, 1.0), tokens)
    assert augment_tokens(np.zeros(0, np.int64), 3, 1.05).size == 0
    only_time = np.array([TIME_SHIFT + 40, TIME_SHIFT + 40])  # a window inside a long rest
    np.testing.assert_array_equal(
        augment_tokens(only_time, 0, 2.0), [TIME_SHIFT + 100, TIME_SHIFT + 60]
    )


# ---------------------------------------------------------------- the training dataset


def _config(share: float = 0.0):  # noqa: ANN202
    return model_config("transformer", seq_len=SEQ_LEN, bos_window_share=share)


def _train_data(pieces: list[np.ndarray], share: float = 0.0, seed: int = 11) -> EventWindows:
    return EventWindows(pieces, SEQ_LEN, random_offsets=True, seed=seed, bos_share=share)


def _reference_window(tokens: np.ndarray, seed: int, epoch: int, index: int) -> np.ndarray:
    """The window rule of the dataset before augmentation and BOS anchoring existed."""
    rng = np.random.default_rng([seed, epoch, index])
    start = int(rng.integers(0, max(0, len(tokens) - SEQ_LEN - 1) + 1))
    window = np.full(SEQ_LEN + 1, PAD, np.int64)
    chunk = tokens[start : start + SEQ_LEN + 1]
    window[: len(chunk)] = chunk
    return window


def test_augmentation_off_gives_the_windows_of_before(pieces: list[np.ndarray]) -> None:
    data = _train_data(pieces)
    off = _train_data(pieces)
    off.set_augment(Augment(transpositions=(0,), stretches=(1.0,)))  # inactive: ignored
    piece_of = np.searchsorted(
        np.cumsum([-(-(len(p) - 1) // SEQ_LEN) for p in pieces]), np.arange(len(data)), side="right"
    )
    for epoch in (0, 3):
        data.set_epoch(epoch)
        off.set_epoch(epoch)
        windows = _windows(data)
        np.testing.assert_array_equal(_windows(off), windows)
        expected = np.stack(
            [_reference_window(pieces[p], 11, epoch, i) for i, p in enumerate(piece_of)]
        )
        np.testing.assert_array_equal(windows, expected)


def test_augmented_windows_are_valid_and_follow_the_draw(pieces: list[np.ndarray]) -> None:
    wide = Augment(transpositions=(-12, -3, 0, 4), stretches=(0.5, 0.95, 1.0, 1.05, 2.0))
    plain, data = _train_data(pieces, share=0.2), _train_data(pieces, share=0.2)
    data.set_augment(wide)
    draws = set()
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        data.set_epoch(epoch)
        for i in range(len(data)):
            window = data[i]["tokens"].numpy()
            assert window.shape == (SEQ_LEN + 1,) and window.dtype == np.int64
            assert window.min() >= 0 and window.max() < VOCAB_SIZE
            pad = np.flatnonzero(window == PAD)
            assert (pad == np.arange(SEQ_LEN + 1 - len(pad), SEQ_LEN + 1)).all()  # a suffix
            assert not np.isin(window[1:], [BOS]).any()
            decode_tokens(window)  # decodes
            semitones, factor = wide.draw(data.seed, epoch, i)
            draws.add((semitones, factor))
            piece, start = data.locate(i)
            assert (piece, start) == plain.locate(i)  # same offset as unaugmented
            expected = augment_tokens(pieces[piece][start:], semitones, factor)[: SEQ_LEN + 1]
            if len(expected) == SEQ_LEN + 1:  # the window is the whole piece's augmentation
                np.testing.assert_array_equal(window, expected)  # cut, not re-timed at its end
            else:
                np.testing.assert_array_equal(window[: len(expected)], expected)
            if (semitones, factor) == (0, 1.0):
                np.testing.assert_array_equal(window, plain[i]["tokens"].numpy())
    assert len(draws) > 10  # many (semitones, factor) pairs were exercised


def test_augmentation_is_a_pure_function_of_seed_epoch_index(pieces: list[np.ndarray]) -> None:
    a, b, other = _train_data(pieces), _train_data(pieces), _train_data(pieces, seed=12)
    for data in (a, b, other):
        data.set_augment(RECIPE)
        data.set_epoch(2)
    forward = _windows(a)
    backward = np.stack([b[i]["tokens"].numpy() for i in reversed(range(len(b)))])[::-1]
    np.testing.assert_array_equal(forward, backward)  # fetch order does not matter
    assert not np.array_equal(forward, _windows(other))  # another seed, other windows
    a.set_epoch(3)
    assert not np.array_equal(forward, _windows(a))  # another epoch too


def test_compressed_windows_still_fill_the_window(pieces: list[np.ndarray]) -> None:
    data = _train_data(pieces)
    data.set_augment(Augment(transpositions=(0,), stretches=(0.5,)))
    for i in range(len(data)):
        piece, start = data.locate(i)
        if len(pieces[piece]) - start > 4 * SEQ_LEN:  # far from the end: no PAD
            assert (data[i]["tokens"].numpy() != PAD).all()


def test_evaluation_windows_refuse_augmentation(pieces: list[np.ndarray]) -> None:
    data = EventWindows(pieces, SEQ_LEN, random_offsets=False)
    with pytest.raises(ValueError, match="training windows only"):
        data.set_augment(RECIPE)


# ---------------------------------------------------------------- BOS anchoring


def test_bos_share_anchors_that_share_of_windows(pieces: list[np.ndarray]) -> None:
    many = pieces * 20  # 60 long pieces, ~2,400 windows
    none, quarter, every = (_train_data(many, share) for share in (0.0, 0.25, 1.0))
    starts = {
        name: np.array([d.locate(i)[1] for i in range(len(d))])
        for name, d in (("none", none), ("quarter", quarter), ("every", every))
    }
    assert (starts["every"] == 0).all()
    assert (_windows(every)[:, 0] == BOS).all()
    share = (starts["quarter"] == 0).mean()
    assert 0.22 < share < 0.28  # binomial, n ~ 2,400: sd ~0.009
    # a window that is not anchored keeps the offset it has without anchoring
    moved = starts["quarter"] != 0
    np.testing.assert_array_equal(starts["quarter"][moved], starts["none"][moved])
    assert (starts["none"] == 0).mean() < 0.01


def test_make_dataset_reads_the_share_for_train_only(pieces: list[np.ndarray]) -> None:
    store = encoded_store("events", {"train": [SMALL], "test": [SMALL_2]})
    torch.manual_seed(0)
    train = make_dataset(store, _config(1.0), "train")
    assert train.bos_share == 1.0 and (_windows(train)[:, 0] == BOS).all()
    test = make_dataset(store, _config(1.0), "test")
    assert (_windows(test)[:, 0] == BOS).sum() == 1  # evaluation windows as they were


def test_training_runs_with_augmentation_and_anchoring(tmp_path) -> None:  # noqa: ANN001
    """fit hands train.augment to the events windows; a short run trains on them."""
    import dataclasses

    from pipeline.core.config import DEFAULT_PARAMS_FILE
    from pipeline.modeling.base import get
    from pipeline.modeling.fit import fit
    from pipeline.modeling.train import load_train_params

    _, shipped_train = load_train_params("transformer", DEFAULT_PARAMS_FILE)
    params = dataclasses.replace(
        shipped_train,
        device="cpu",
        batch_size=4,
        max_steps=3,
        eval_every=3,
        eval_batches=1,
        checkpoint_every=3,
        num_threads=1,
        augment=RECIPE,
    )
    config = model_config(
        "transformer", d_model=32, n_layers=1, n_heads=2, d_ff=64, seq_len=SEQ_LEN,
        max_relative_position=SEQ_LEN, bos_window_share=0.5,
    )  # fmt: skip
    store = encoded_store("events", {"train": [SMALL, SMALL_3], "validation": [SMALL_2]})
    summary = fit(get("transformer"), config, params, store, tmp_path / "m", tmp_path / "live")
    assert summary["steps"] == 3
    assert (tmp_path / "m" / "model.pt").exists()


def test_bos_window_share_must_be_a_share() -> None:
    from fixture_stores import shipped

    from pipeline.core.params import ParamsError, from_mapping
    from pipeline.modeling.events.transformer import TransformerConfig

    section = shipped("models.transformer")
    section.pop("representation"), section.pop("network"), section.pop("train")
    with pytest.raises(ParamsError, match="bos_window_share"):
        from_mapping({**section, "bos_window_share": 1.5}, TransformerConfig, "models.transformer")
    section.pop("bos_window_share")
    with pytest.raises(ParamsError, match="bos_window_share"):
        from_mapping(section, TransformerConfig, "models.transformer")
