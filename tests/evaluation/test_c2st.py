"""Find the fake (`pipeline.evaluation.c2st`): the feature vector on hand-made clips, and
the classifier on real music, the MAESTRO fixtures cut into 10-s clips: real against
real is chance, real against pitch-shuffled or time-reversed real is caught."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixture_stores import FIXTURES

from pipeline.evaluation import c2st as C

SECONDS = 10.0  # clip length
STARTS = (5.0, 15.0)  # two clips a piece, after the first 5 s


def notes(rows: list[tuple], velocity: int = 80) -> pd.DataFrame:
    """(pitch, start, end) rows -> notes table."""
    df = pd.DataFrame(rows, columns=["pitch", "start", "end"], dtype=float)
    df["pitch"] = df["pitch"].astype(int)
    df["velocity"] = velocity
    return df


EMPTY = notes([])


def named(clip: pd.DataFrame) -> dict[str, float]:
    """`clip_features` of a SECONDS-long clip, by feature name."""
    return dict(zip(C.FEATURE_NAMES, C.clip_features(clip, SECONDS), strict=True))


def window(piece: pd.DataFrame, t0: float) -> pd.DataFrame:
    """Notes starting in [t0, t0 + SECONDS), shifted to 0, ends cut there (evaluate's cut)."""
    kept = piece[(piece["start"] >= t0) & (piece["start"] < t0 + SECONDS)].copy()
    kept["start"] -= t0
    kept["end"] = (kept["end"] - t0).clip(upper=SECONDS)
    return kept.reset_index(drop=True)


def reversed_piece(piece: pd.DataFrame) -> pd.DataFrame:
    """The whole piece played backwards: a note [s, e) becomes [D - e, D - s)."""
    length = float(piece["end"].max())
    out = piece.copy()
    out["start"], out["end"] = length - piece["end"], length - piece["start"]
    return out.sort_values("start", kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def pieces() -> list[pd.DataFrame]:
    from pipeline.midi import parse_midi

    paths = sorted(p for p in (FIXTURES / "maestro").iterdir() if p.suffix == ".mid")
    assert len(paths) == 36
    return [parse_midi(p).notes for p in paths]


@pytest.fixture(scope="module")
def forward(pieces: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """72 real clips: each MAESTRO fixture at 5-15 s and 15-25 s."""
    return [window(piece, t0) for piece in pieces for t0 in STARTS]


@pytest.fixture(scope="module")
def backward(pieces: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """The same 72 passages played backwards (cut from the reversed piece)."""
    clips = []
    for piece in pieces:
        length, flipped = float(piece["end"].max()), reversed_piece(piece)
        clips += [window(flipped, length - t0 - SECONDS) for t0 in STARTS]
    return clips


@pytest.fixture(scope="module")
def forward_x(forward: list[pd.DataFrame]) -> np.ndarray:
    return C.feature_matrix(forward, SECONDS)


@pytest.fixture(scope="module")
def backward_x(backward: list[pd.DataFrame]) -> np.ndarray:
    return C.feature_matrix(backward, SECONDS)


# --- the feature vector ---------------------------------------------------------------


def test_feature_names_match_the_vector() -> None:
    assert len(set(C.FEATURE_NAMES)) == len(C.FEATURE_NAMES)
    assert C.FEATURE_NAMES == tuple(n for group in C.FEATURES.values() for n in group)
    for clip in (EMPTY, notes([(60, 0.0, 0.5)])):
        assert C.clip_features(clip, SECONDS).shape == (len(C.FEATURE_NAMES),)


def test_empty_and_one_note_clips_are_finite() -> None:
    empty = C.clip_features(EMPTY, SECONDS)
    assert np.isfinite(empty).all() and not empty.any()
    drums_only = notes([(36, 0.0, 0.1), (38, 0.5, 0.6)]).assign(is_drum=True)
    for clip in (notes([(60, 0.25, 0.75)]), drums_only):
        assert np.isfinite(C.clip_features(clip, SECONDS)).all()
    one = named(notes([(60, 0.25, 0.75)]))
    assert one["pc_C"] == 1.0 and one["register_c4"] == 1.0 and one["pitch_mean"] == 60.0
    assert one["duration_1"] == 1.0  # 0.5 s = one beat at 120 bpm
    assert one["phase_4_8"] == 1.0  # half a beat in
    assert one["notes_per_s"] == pytest.approx(0.1)
    assert one["yl_pitch_class_entropy"] == 0.0 and one["yl_polyphony"] == 1.0


def test_features_measure_what_they_name() -> None:
    # C major scale up in eighth notes (0.25 s), then, a dotted quarter later, a C major
    # chord struck within 5 ms and released one note at a time, 40 ms apart
    scale = [(p, i * 0.25, (i + 1) * 0.25) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])]
    chord = [(48, 2.5, 3.5), (52, 2.502, 3.54), (55, 2.504, 3.58)]
    f = named(notes(scale + chord))
    assert sum(f[n] for n in C.FEATURES["pitch_class"]) == pytest.approx(1.0)
    assert f["pc_C"] == pytest.approx(3 / 11) and f["pc_Cs"] == 0.0
    # skyline: the seven scale steps (all up, 1-2 semitones), then down to the chord's G
    assert f["interval_step"] == pytest.approx(7 / 8) and f["interval_fifth"] == 0.0
    assert f["interval_wide"] == pytest.approx(1 / 8)  # 72 -> 55: 17 semitones
    assert f["melody_up_share"] == pytest.approx(7 / 8)
    assert f["ioi_1_2"] == pytest.approx(7 / 8)  # eighths: half a beat apart
    assert f["ioi_1"] == pytest.approx(1 / 8)  # 0.75 s: 1.5 beats
    assert f["phase_0_8"] == pytest.approx(5 / 9) and f["phase_4_8"] == pytest.approx(4 / 9)
    assert f["notes_per_onset"] == pytest.approx(11 / 9)  # the chord is one onset
    # chord notes start < 10 ms apart but end 40 ms apart: starting beats ending
    assert f["start_gap_lt_10ms"] == pytest.approx(2 / 10)
    assert f["start_minus_end_gap_lt_10ms"] > 0.1
    assert f["start_minus_end_gap_20_60ms"] < -0.1
    assert f["start_evenness"] == pytest.approx(6 / 7)  # equal eighths, then the long gap


def test_reversal_swaps_starts_and_ends(forward: list[pd.DataFrame]) -> None:
    """A clip reversed within itself has its start-minus-end timing features negated."""
    clip = forward[0]
    clip = clip[clip["end"] < SECONDS - 1e-6]  # no cut ends: the swap is exact
    flipped = clip.assign(start=SECONDS - clip["end"], end=SECONDS - clip["start"])
    a = named(clip)
    b = named(flipped)
    for name in (*C.FEATURES["start_minus_end_gap"], "start_minus_end_evenness"):
        assert b[name] == pytest.approx(-a[name], abs=1e-12), name
    assert a["start_minus_end_gap_lt_10ms"] > 0.05  # a performer's chords, forwards


# --- find the fake on real music ------------------------------------------------------


def test_real_against_real_is_chance(forward_x: np.ndarray) -> None:
    """Two random halves of the 72 MAESTRO clips: 0.5 +- 0.1 (measured 0.528).

    Split by clip, not by piece: with a piece's two clips on one side, the folds train on
    one and test on the other, and the classifier learns the pieces (0.55 on average
    over 20 splits, up to 0.72). The evaluate stage takes one clip per piece."""
    order = np.random.default_rng(0).permutation(len(forward_x))
    half = len(order) // 2
    result = C.c2st_features(forward_x[order[:half]], forward_x[order[half:]])
    assert 0.40 <= result.accuracy <= 0.60, result.accuracy
    assert result.low < 0.5 < result.high


def test_real_pieces_against_other_real_pieces_is_chance(
    midi_files: list[Path], forward_x: np.ndarray
) -> None:
    """All 60 fixtures (piano, pop, multi-track), one clip each, split by piece 30/30
    (measured 0.500: nothing to find, the lasso keeps every weight at zero)."""
    from pipeline.midi import parse_midi

    others = [
        window(parse_midi(p).notes, STARTS[0]) for p in midi_files if p.parent.name != "maestro"
    ]
    x = np.vstack([forward_x[:: len(STARTS)], C.feature_matrix(others, SECONDS)])
    assert len(x) == 60
    order = np.random.default_rng(0).permutation(len(x))
    result = C.c2st_features(x[order[:30]], x[order[30:]])
    assert 0.40 <= result.accuracy <= 0.60, result.accuracy


def test_pitch_shuffled_real_is_found(forward: list[pd.DataFrame], forward_x: np.ndarray) -> None:
    """Every note's pitch redrawn uniformly within its clip's range (measured 0.951)."""
    rng = np.random.default_rng(0)
    shuffled = []
    for clip in forward:
        low, high = int(clip["pitch"].min()), int(clip["pitch"].max())
        shuffled.append(clip.assign(pitch=rng.integers(low, high + 1, len(clip))))
    result = C.c2st_features(forward_x, C.feature_matrix(shuffled, SECONDS))
    assert result.accuracy > 0.9, result.accuracy
    assert result.low > 0.8
    assert (
        np.mean(result.fake_probability_fake) > 0.75 > 0.25 > np.mean(result.fake_probability_real)
    )


def test_time_reversed_real_is_found(forward_x: np.ndarray, backward_x: np.ndarray) -> None:
    """The same passages played backwards (measured 0.965): only the direction differs."""
    result = C.c2st_features(forward_x, backward_x)
    assert result.accuracy > 0.9, result.accuracy
    assert (result.n_real, result.n_fake, result.folds, result.seed) == (72, 72, 5, 0)
    assert len(result.fake_probability_real) == len(result.fake_probability_fake) == 72


def test_deterministic_for_a_seed(forward_x: np.ndarray, backward_x: np.ndarray) -> None:
    first = C.c2st_features(forward_x, backward_x, seed=3)
    assert C.c2st_features(forward_x, backward_x, seed=3) == first
    assert C.c2st_features(forward_x, backward_x, seed=4) != first  # other folds
    fewer = C.c2st_features(forward_x, backward_x[:40], seed=3)
    assert fewer.fake_probability_real != first.fake_probability_real


def test_clips_and_features_give_the_same_result(
    forward: list[pd.DataFrame], backward: list[pd.DataFrame], backward_x: np.ndarray
) -> None:
    from_clips = C.c2st(forward[:10], backward[:10], SECONDS, seed=1)
    x = C.feature_matrix(forward[:10], SECONDS)
    assert from_clips == C.c2st_features(x, backward_x[:10], seed=1)


def test_a_constant_feature_changes_nothing(forward_x: np.ndarray, backward_x: np.ndarray) -> None:
    def widen(x: np.ndarray, value: float) -> np.ndarray:
        return np.hstack([x, np.full((len(x), 1), value)])

    plain = C.c2st_features(forward_x, backward_x)
    for value in (0.0, 7.0):  # standardised to 0; the solver's path moves by < 0.01
        widened = C.c2st_features(widen(forward_x, value), widen(backward_x, value))
        assert abs(widened.accuracy - plain.accuracy) <= 1 / 144
        np.testing.assert_allclose(
            widened.fake_probability_fake, plain.fake_probability_fake, atol=0.01
        )


def test_identical_sets_are_a_coin_toss() -> None:
    """Nothing to go on: every weight zero, every clip a coin toss, counted half right."""
    x = np.tile(np.arange(5.0), (8, 1))
    result = C.c2st_features(x, x.copy())
    assert result.accuracy == 0.5
    assert all(p == pytest.approx(0.5) for p in result.fake_probability_real)


def test_too_few_clips_is_one_clear_line() -> None:
    with pytest.raises(C.C2stError) as raised:
        C.c2st([EMPTY] * 40, [EMPTY] * 3, SECONDS)
    message = str(raised.value)
    assert message == (
        "find the fake needs at least 5 clips on each side (5-fold cross-validation); "
        "got 3 generated and 40 real: raise evaluate.n_samples"
    )
    assert "\n" not in message
    with pytest.raises(
        C.C2stError, match=r"got 0 generated and 2 real: raise evaluate\.n_samples "
    ):
        C.c2st_features(np.zeros((2, 4)), np.zeros((0, 4)))
    with pytest.raises(C.C2stError, match=r"at least 3 clips .* raise evaluate\.n_real$"):
        C.c2st_features(np.zeros((2, 4)), np.zeros((9, 4)), folds=3)
    assert issubclass(C.C2stError, ValueError)


def test_bad_feature_matrices_are_refused() -> None:
    with pytest.raises(ValueError, match="5 real features but 4 generated"):
        C.c2st_features(np.zeros((6, 5)), np.zeros((6, 4)))
    with pytest.raises(ValueError, match="NaN"):
        C.c2st_features(np.full((6, 2), np.nan), np.zeros((6, 2)))
    with pytest.raises(ValueError, match="must be > 0"):
        C.clip_features(EMPTY, 0.0)


def test_as_dict_is_json(forward_x: np.ndarray, backward_x: np.ndarray) -> None:
    result = C.c2st_features(forward_x[:20], backward_x[:20])
    data = json.loads(json.dumps(result.as_dict()))
    assert set(data) == {
        "accuracy",
        "low",
        "high",
        "n_real",
        "n_fake",
        "folds",
        "seed",
        "fake_probability_real",
        "fake_probability_fake",
    }
    assert data["accuracy"] == round(result.accuracy, 4)
    assert len(data["fake_probability_fake"]) == 20
    assert all(0.0 <= p <= 1.0 for p in data["fake_probability_real"])


def test_wilson_interval() -> None:
    low, high = C.wilson_interval(8, 10)  # the textbook example: 0.490 to 0.943
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    low, high = C.wilson_interval(10, 10)  # never past 1, unlike the normal approximation
    assert high == pytest.approx(1.0) and low == pytest.approx(0.7225, abs=1e-4)
    assert C.wilson_interval(0, 0) == (0.0, 1.0)
    assert C.wilson_interval(36, 72)[0] < 0.5 < C.wilson_interval(36, 72)[1]
    assert math.isclose(sum(C.wilson_interval(36, 72)) / 2, 0.5)
