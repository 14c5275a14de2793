"""The frame-level NLL of the 2012 polyphonic benchmarks (`pipeline.modeling.frames`):
hand-worked cases, the JSB slice, and the frames params."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from pipeline.core.params import ParamsError, from_mapping
from pipeline.modeling.frames import (
    N_KEYS,
    UNIGRAM_EPS,
    FrameError,
    FramesParams,
    frame_nll,
    note_unigram_baseline,
    random_baseline,
    roll_from_steps,
)

SLICE = Path(__file__).resolve().parents[1] / "fixtures" / "jsb" / "jsb-chorales-slice.json"


def roll(n_frames: int, sounding: dict[int, list[int]]) -> np.ndarray:
    """(n_frames, 88) roll; `sounding` maps a frame to its MIDI pitches."""
    return roll_from_steps([sounding.get(t, []) for t in range(n_frames)])


def test_one_key_window_by_hand() -> None:
    # window = MIDI 60 only; frame 0: 60 sounds at p=0.5 -> ln 2 = 0.693147;
    # frame 1: silent at p=0.25 -> -ln 0.75 = 0.287682; the other 87 keys are silent
    # and outside the window (p=0, free). Mean over 2 frames: 0.490415
    value = frame_nll([np.array([[0.5], [0.25]])], [roll(2, {0: [60]})], min_pitch=60)
    assert value == pytest.approx(0.4904146265058631, abs=1e-12)


def test_pooled_over_frames_not_a_mean_of_piece_means() -> None:
    # piece A: 1 frame, 60 sounds at p=0.5 -> ln 2 = 0.693147
    # piece B: 3 frames, 60 silent at p=0.75 -> 3 x ln 4 = 4.158883
    # pooled: (0.693147 + 4.158883) / 4 = 1.213008 (a mean of piece means would be 1.039721)
    probs = [np.array([[0.5]]), np.full((3, 1), 0.75)]
    rolls = [roll(1, {0: [60]}), roll(3, {})]
    assert frame_nll(probs, rolls, min_pitch=60) == pytest.approx(1.2130075659799042, abs=1e-12)


def test_keys_outside_the_window_are_free_when_silent() -> None:
    rolls = [roll(4, {0: [60, 64], 2: [62], 3: [60]})]
    window = np.random.default_rng(1).uniform(0.05, 0.95, size=(4, 12))  # MIDI 55-66
    full = np.zeros((4, N_KEYS))
    full[:, 55 - 21 : 67 - 21] = window
    assert frame_nll([window], rolls, min_pitch=55) == pytest.approx(frame_nll([full], rolls))


def test_a_sounding_key_outside_the_window_is_an_error() -> None:
    with pytest.raises(FrameError, match="piece 0: frame 1 sounds MIDI 70, outside .* 55-66"):
        frame_nll([np.full((2, 12), 0.5)], [roll(2, {1: [60, 70]})], min_pitch=55)


def test_probability_zero_for_a_sounding_key_inside_the_window_is_infinite() -> None:
    probs = np.full((1, N_KEYS), 0.5)
    probs[0, 60 - 21] = 0.0
    assert frame_nll([probs], [roll(1, {0: [60]})]) == math.inf
    probs[0, 60 - 21] = 1.0  # certain and right: costs nothing on that key
    assert frame_nll([probs], [roll(1, {0: [60]})]) == pytest.approx(87 * math.log(2))


@pytest.mark.parametrize(
    ("probs", "rolls", "min_pitch", "message"),
    [
        ([np.full((2, 88), 0.5)], [roll(3, {})], 21, "do not match"),
        ([np.full((1, 88), 1.5)], [roll(1, {})], 21, "outside \\[0, 1\\]"),
        ([np.full((1, 88), np.nan)], [roll(1, {})], 21, "NaN"),
        ([np.full((1, 10), 0.5)], [roll(1, {})], 100, "reaches past the 88 keys"),
        ([np.full((1, 88), 0.5)], [np.zeros((1, 128), bool)], 21, "roll must be"),
        ([], [roll(1, {})], 21, "0 probability arrays for 1 rolls"),
        ([np.zeros((0, 88))], [roll(0, {})], 21, "no frames"),
    ],
)
def test_unscorable_input_is_refused(
    probs: list[np.ndarray], rolls: list[np.ndarray], min_pitch: int, message: str
) -> None:
    with pytest.raises(FrameError, match=message):
        frame_nll(probs, rolls, min_pitch=min_pitch)


def test_note_unigram_by_hand() -> None:
    # train (4 frames): 60 sounds in 1 -> p=0.25; 62 in all 4 -> p=1 clipped to 0.9999;
    # the other 86 keys never -> p=0 clipped to 1e-4 (cost -ln 0.9999 each while silent)
    train = [roll(4, {0: [60, 62], 1: [62], 2: [62], 3: [62]})]
    # test frame 0 = {60}: -ln 0.25 (60) - ln 1e-4 (62 silent) + 86 x -ln 0.9999
    # test frame 1 = {62}: -ln 0.75 (60 silent) - ln 0.9999 (62) + 86 x -ln 0.9999
    # sum = ln 4 + ln 4/3 + ln 1e4 + 173 x -ln 0.9999 = 10.901618; per frame 5.450809
    test = [roll(2, {0: [60], 1: [62]})]
    assert UNIGRAM_EPS == 1e-4  # the comment above assumes it
    assert note_unigram_baseline(train, test) == pytest.approx(5.4508088353027615, abs=1e-9)


def test_random_baseline_is_88_ln2_on_any_data() -> None:
    assert random_baseline() == pytest.approx(60.99695188927519, abs=1e-12)
    rolls = [roll(3, {0: [21, 108], 1: [60]}), roll(2, {})]
    half = [np.full((len(r), N_KEYS), 0.5) for r in rolls]
    assert frame_nll(half, rolls) == pytest.approx(random_baseline(), abs=1e-12)


def _unigram_by_counting(train: list[list[list[int]]], test: list[list[list[int]]]) -> float:
    """The Note 1-Gram written independently: counts per pitch, plain loops."""
    counts = [0] * 128
    n_train = 0
    for piece in train:
        for step in piece:
            n_train += 1
            for pitch in step:
                counts[pitch] += 1
    total, n_test = 0.0, 0
    for piece in test:
        for step in piece:
            n_test += 1
            for pitch in range(21, 109):
                p = min(max(counts[pitch] / n_train, UNIGRAM_EPS), 1 - UNIGRAM_EPS)
                total -= math.log(p) if pitch in step else math.log(1 - p)
    return total / n_test


def test_committed_slice_baselines() -> None:
    data = json.loads(SLICE.read_text())
    rolls = {key: [roll_from_steps(piece) for piece in pieces] for key, pieces in data.items()}
    for split in ("valid", "test"):
        expected = _unigram_by_counting(data["train"], data[split])
        assert note_unigram_baseline(rolls["train"], rolls[split]) == pytest.approx(
            expected, rel=1e-12
        )
    # pinned: 145 test frames of 2 chorales under the Note 1-Gram of 3 train chorales
    assert note_unigram_baseline(rolls["train"], rolls["test"]) == pytest.approx(
        PINNED_SLICE_TEST, abs=1e-9
    )
    half = [np.full((len(r), N_KEYS), 0.5) for r in rolls["test"]]
    assert frame_nll(half, rolls["test"]) == pytest.approx(88 * math.log(2), abs=1e-12)


PINNED_SLICE_TEST = 10.611693786235627  # measured once; _unigram_by_counting agrees


# --------------------------------------------------------------------------------------
# logits: what the frames stage scores


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def test_logits_agree_with_probabilities() -> None:
    rng = np.random.default_rng(5)
    rolls = [roll(7, {0: [60, 64], 2: [62], 3: [55, 66], 6: [60]}), roll(3, {1: [57]})]
    probs = [rng.uniform(0.01, 0.99, size=(len(r), 12)) for r in rolls]  # MIDI 55-66
    by_probs = frame_nll(probs, rolls, min_pitch=55)
    by_logits = frame_nll([_logit(p) for p in probs], rolls, min_pitch=55, logits=True)
    assert by_logits == pytest.approx(by_probs, abs=1e-9)
    # the hand-worked case above, as logits: ln 2 (logit 0) and -ln 0.75 (logit -ln 3)
    z = np.array([[0.0], [-math.log(3.0)]])
    assert frame_nll([z], [roll(2, {0: [60]})], min_pitch=60, logits=True) == pytest.approx(
        0.4904146265058631, abs=1e-12
    )


def test_saturated_logits_stay_finite() -> None:
    # frame 0: 60 sounds at logit 40 (p rounds to 1: right and certain, ~0 nats) and 61 is
    # silent at logit 40 (p rounds to 1: the probability path says infinity; the true
    # cost is log(1 + e^40) = 40 nats); frame 1: 60 sounds at logit -800 (p = 0 in
    # float64; cost 800 nats), 61 silent at logit -800 (free)
    z = np.array([[40.0, 40.0], [-800.0, -800.0]])
    rolls = [roll(2, {0: [60], 1: [60]})]
    probs = expit(z)
    assert probs[0, 0] == 1.0 and probs[1, 0] == 0.0  # what the probabilities round to
    assert frame_nll([probs], rolls, min_pitch=60) == math.inf
    value = frame_nll([z], rolls, min_pitch=60, logits=True)
    assert value == pytest.approx((40.0 + 800.0) / 2, rel=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_are_refused(bad: float) -> None:
    z = np.zeros((2, 88))
    z[1, 5] = bad
    with pytest.raises(FrameError, match="piece 1: logits must be finite"):
        frame_nll([np.zeros((1, 88)), z], [roll(1, {}), roll(2, {})], logits=True)


# --------------------------------------------------------------------------------------
# the frames params

FRAMES = {"split": "test", "token_stride": 128, "device": "auto", "num_threads": 0}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("split", "valid", "split must be a split name"),
        ("token_stride", 0, "token_stride must be >= 1"),
        ("device", "gpu", "device must be auto, cpu or cuda"),
        ("num_threads", -1, "num_threads must be >= 0"),
        ("token_stride", 1.5, "'frames.token_stride'"),
    ],
)
def test_frames_params_name_the_bad_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        from_mapping({**FRAMES, key: value}, FramesParams, "frames")
    with pytest.raises(ParamsError, match=f"missing key 'frames.{key}'"):
        from_mapping({k: v for k, v in FRAMES.items() if k != key}, FramesParams, "frames")


def test_the_grid_is_not_a_frames_param() -> None:
    """The frame grid is the store's (params.json); params.yaml cannot set a second one."""
    with pytest.raises(ParamsError, match="steps_per_second"):
        from_mapping({**FRAMES, "steps_per_second": 2}, FramesParams, "frames")
