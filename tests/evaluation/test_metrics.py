"""Musical metrics: exact values on hand-made notes tables, MusPy cross-checks, set distances."""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
import pytest
from fixture_stores import FIXTURES

from pipeline.evaluation import metrics as M


def notes(rows: list[tuple], drum: list[bool] | None = None) -> pd.DataFrame:
    """(pitch, start, end) rows -> notes table (velocity 80)."""
    df = pd.DataFrame(rows, columns=["pitch", "start", "end"])
    df["velocity"] = 80
    if drum is not None:
        df["is_drum"] = drum
    return df


C_MAJOR = notes(
    [(p, i * 0.5, (i + 1) * 0.5) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])]
)
CHROMATIC = notes([(60 + i, i * 0.25, i * 0.25 + 0.25) for i in range(12)])
# 60 sounds 0-2 and again 1.5-3 (one pitch, overlapping: counts once); 64 0-1; 67 0.5-1;
# silence 3-4; 72 4-5. Distinct pitches: 2 on [0, .5), 3 on [.5, 1), 1 on [1, 3), 1 on [4, 5).
POLY = notes([(60, 0.0, 2.0), (64, 0.0, 1.0), (67, 0.5, 1.0), (60, 1.5, 3.0), (72, 4.0, 5.0)])
EMPTY = notes([])


def test_c_major_scale_exact_values() -> None:
    values = M.compute_all(C_MAJOR)
    assert values == {
        "pitch_range": 12.0,
        "n_pitch_classes_used": 7.0,
        "pitch_class_entropy": 2.75,  # C twice (2/8), six others once (1/8)
        "pitch_entropy": 3.0,  # 8 distinct pitches, once each
        "polyphony": 1.0,
        "polyphony_rate": 0.0,
        "scale_consistency": 1.0,
        "empty_beat_rate": 0.0,
        "groove_consistency": 1.0,  # both 2-s measures: onsets at positions 0, 4, 8, 12
        "mean_note_duration": 0.5,
        "mean_ioi": 0.5,
    }


def test_twelve_pitch_classes() -> None:
    assert M.pitch_class_entropy(CHROMATIC) == pytest.approx(math.log2(12), abs=1e-12)
    assert M.pitch_entropy(CHROMATIC) == pytest.approx(math.log2(12), abs=1e-12)
    assert M.n_pitch_classes_used(CHROMATIC) == 12.0
    assert M.scale_consistency(CHROMATIC) == pytest.approx(7 / 12)
    assert M.pitch_range(CHROMATIC) == 11.0


def test_single_pitch_class_entropy_is_zero() -> None:
    octaves = notes([(48, 0, 1), (60, 1, 2), (72, 2, 3)])
    assert M.pitch_class_entropy(octaves) == 0.0
    assert M.pitch_entropy(octaves) == pytest.approx(math.log2(3))


def test_a_minor_is_scale_consistent_and_c_minor_triad_with_f_sharp_is_not() -> None:
    a_minor = notes([(p, i, i + 1) for i, p in enumerate([57, 59, 60, 62, 64, 65, 67])])
    assert M.scale_consistency(a_minor) == 1.0
    off = notes([(60, 0, 1), (63, 1, 2), (67, 2, 3), (66, 3, 4)])  # C Eb G F#
    assert M.scale_consistency(off) == 0.75


def test_polyphony_counts_distinct_sounding_pitches_over_continuous_time() -> None:
    # sum of (pitches x time) = 2*.5 + 3*.5 + 1*2 + 1*1 = 5.5 over 4 s of sound
    assert M.polyphony(POLY) == pytest.approx(5.5 / 4)
    assert M.polyphony_rate(POLY) == pytest.approx(1.0 / 5)  # >= 2 pitches on [0, 1)
    assert M.polyphony_rate(POLY, threshold=3) == pytest.approx(0.5 / 5)


def test_empty_beat_rate_half_open_beats_and_drums() -> None:
    # 10 beats of 0.5 s; sound on [0, 3) and [4, 5): beats 6 and 7 empty. The note
    # ending exactly at 3.0 does not occupy beat 6.
    assert M.empty_beat_rate(POLY) == pytest.approx(0.2)
    with_drum = pd.concat([POLY, notes([(36, 3.0, 3.25)])], ignore_index=True)
    with_drum["is_drum"] = [False] * len(POLY) + [True]
    assert M.empty_beat_rate(with_drum) == pytest.approx(0.1)  # drums fill beat 6
    assert M.pitch_range(with_drum) == 12.0  # but pitch metrics ignore the drum
    assert M.polyphony(with_drum) == pytest.approx(5.5 / 4)
    # a 1-s beat: 5 beats, beat 3 empty
    assert M.empty_beat_rate(POLY, beat_s=1.0) == pytest.approx(0.2)


def test_groove_consistency_hamming_between_neighbouring_measures() -> None:
    # 2-s measures, 4 positions of 0.5 s. Patterns: [1,0,1,0], [1,0,0,1], [1,0,0,0]
    # -> distances 2 and 1 over 2 pairs x 4 positions: 1 - 3/8.
    groove = notes([(60, 0.0, 0.5), (62, 1.0, 1.5), (64, 2.0, 2.5), (65, 3.5, 4.0), (67, 4.0, 5.5)])
    assert M.groove_consistency(groove, resolution=4) == 0.625
    # 1-s beats, 8 positions of 0.5 s: measure 0 has onsets at 0, 2, 4, 7, measure 1
    # at 0 only -> 3 differences over 8 positions.
    assert M.groove_consistency(groove, beat_s=1.0, resolution=8) == 1 - 3 / 8
    assert math.isnan(M.groove_consistency(notes([(60, 0.0, 1.0)])))  # one measure


def test_ioi_merges_chords_and_duration_ignores_drums() -> None:
    chordy = notes([(60, 0.0, 1.0), (64, 0.0, 1.0), (67, 0.5, 1.0), (36, 2.0, 2.1)])
    chordy["is_drum"] = [False, False, False, True]
    assert M.mean_ioi(chordy) == pytest.approx(1.0)  # onsets 0, .5, 2
    assert M.mean_note_duration(chordy) == pytest.approx((1 + 1 + 0.5) / 3)


def test_empty_input_gives_nan_everywhere() -> None:
    assert all(math.isnan(v) for v in M.compute_all(EMPTY).values())
    drums_only = notes([(36, 0, 1)], drum=[True])
    values = M.compute_all(drums_only)
    assert math.isnan(values["pitch_range"]) and math.isnan(values["polyphony"])
    assert values["empty_beat_rate"] == 0.0  # rhythm metrics still see the drum
    assert values["polyphony_rate"] == 0.0


def test_missing_column_is_named() -> None:
    with pytest.raises(KeyError, match="'end'"):
        M.pitch_range(pd.DataFrame({"pitch": [60], "start": [0.0]}))


# --- MusPy cross-check ----------------------------------------------------------

MUSPY_FILES = [
    "maestro/giantmidi_eval_MIDI-Unprocessed_02_R1_2009_03-06_ORIG_MID--AUDIO_02_R1_2009_02_R1_2009_04_WAV.mid",
    "lakh/miditok_d8faddb8596fff7abb24d78666f73e4e.mid",  # drums, 136 bpm, tpq 960
    "lakh/miditok_Funkytown.mid",  # drums, 125 bpm, tpq 192
]


@pytest.mark.parametrize("name", MUSPY_FILES)
def test_metrics_agree_with_muspy(name: str) -> None:
    """Same notes given to both; the three fixtures have a constant tempo so ticks ~ seconds.

    Track end times count notes only (MusPy's also count lyrics/annotations); MusPy's
    polyphony_rate(t) counts > t pitches, ours >= t; empty_beat_rate differs by the
    beat MusPy marks at a note's exact end and its extra trailing beat.
    """
    muspy = pytest.importorskip("muspy")
    music = muspy.read_midi(FIXTURES / name)
    for track in music.tracks:
        track.annotations, track.lyrics, track.chords = [], [], []
    assert len(music.tempos) == 1
    qpm, tpq = music.tempos[0].qpm, music.resolution
    sec = 60.0 / (qpm * tpq)
    df = pd.DataFrame(
        [
            (n.pitch, n.velocity, n.time * sec, n.end * sec, t.is_drum)
            for t in music.tracks
            for n in t.notes
        ],
        columns=["pitch", "velocity", "start", "end", "is_drum"],
    )
    beat_s = 60.0 / qpm
    assert M.pitch_range(df) == muspy.pitch_range(music)
    assert M.n_pitch_classes_used(df) == muspy.n_pitch_classes_used(music)
    for ours, theirs in [
        (M.pitch_class_entropy(df), muspy.pitch_class_entropy(music)),
        (M.pitch_entropy(df), muspy.pitch_entropy(music)),
        (M.scale_consistency(df), muspy.scale_consistency(music)),
        (M.polyphony(df), muspy.polyphony(music)),
        (M.polyphony_rate(df, threshold=3), muspy.polyphony_rate(music, threshold=2)),
        (
            M.groove_consistency(df, beat_s, resolution=4 * tpq),
            muspy.groove_consistency(music, 4 * tpq),
        ),
    ]:
        assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)
    n_beats = music.get_end_time() // tpq + 1
    assert abs(M.empty_beat_rate(df, beat_s) - muspy.empty_beat_rate(music)) <= 2 / n_beats


# --- set comparison ---------------------------------------------------------------


def test_kde_overlap_of_two_normals_matches_theory() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 1500), rng.normal(1, 1, 1500)
    oa, kl = M.overlap_and_kl(a, b)
    assert oa == pytest.approx(2 * 0.3085375, abs=0.04)  # 2 * Phi(-1/2)
    assert kl == pytest.approx(0.5, abs=0.1)  # KL(N(0,1) || N(1,1)) = 1/2 nat
    same_oa, same_kl = M.overlap_and_kl(a, a)
    assert same_oa == pytest.approx(1.0, abs=1e-3) and same_kl == 0.0
    far_oa, far_kl = M.overlap_and_kl([0.0, 0.1, 0.2], [10.0, 10.1, 10.2])
    assert far_oa < 1e-6 and far_kl > 5


def test_equal_distances_give_finite_densities() -> None:
    oa, kl = M.overlap_and_kl(np.zeros(6), np.zeros(9))
    assert oa == pytest.approx(1.0, abs=1e-3) and kl == pytest.approx(0.0, abs=1e-9)
    oa, kl = M.overlap_and_kl(np.zeros(6), np.full(9, 3.0))
    assert oa < 1e-3 and math.isfinite(kl) and kl > 5


def test_numpy_kde_equals_scipy_and_is_used_without_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, 1.0, 40)
    grid = np.linspace(-1, 12, 200)
    bandwidth = x.std(ddof=1) * len(x) ** -0.2
    ours = M._numpy_kde(x, grid, bandwidth)
    with_scipy = M.gaussian_kde_pdf(x, grid)
    np.testing.assert_allclose(ours, with_scipy, rtol=1e-9, atol=1e-12)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # import now raises ImportError
    np.testing.assert_allclose(M.gaussian_kde_pdf(x, grid), with_scipy, rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def real_clips() -> list[pd.DataFrame]:
    """16 real 20-s windows from four MAESTRO fixtures."""
    from pipeline.midi import parse_midi

    clips = []
    for path in sorted((FIXTURES / "maestro").glob("miditok_Maestro_*.mid"))[:4]:
        df = parse_midi(path).notes
        for k in range(4):
            t0 = 20.0 * k + 5.0
            win = df[(df["start"] >= t0) & (df["start"] < t0 + 20.0)].copy()
            win["start"] -= t0
            win["end"] = (win["end"] - t0).clip(upper=20.0)
            clips.append(win.reset_index(drop=True))
    return clips


def test_compare_identical_sets_overlap(real_clips: list[pd.DataFrame]) -> None:
    result = M.compare_sets(real_clips, real_clips)
    assert result["n_generated"] == result["n_real"] == 16
    assert set(result["metrics"]) == set(M.METRICS)
    for name, m in result["metrics"].items():
        assert m["generated_mean"] == m["real_mean"], name
        assert m["oa"] > 0.8, (name, m["oa"])
        assert m["kl"] < 0.1, (name, m["kl"])
    assert result["oa_mean"] > 0.85


def test_compare_different_sets_lower_overlap(real_clips: list[pd.DataFrame]) -> None:
    rng = np.random.default_rng(3)
    noise = []
    for clip in real_clips:  # same onsets, uniformly random pitches, 3x slower
        fake = clip.copy()
        fake["pitch"] = rng.integers(21, 109, len(fake))
        fake[["start", "end"]] *= 3.0
        noise.append(fake)
    same = M.compare_sets(real_clips, real_clips)
    diff = M.compare_sets(noise, real_clips)
    for name in ("scale_consistency", "pitch_entropy", "mean_ioi", "mean_note_duration"):
        assert diff["metrics"][name]["oa"] < 0.7 * same["metrics"][name]["oa"], name
        assert diff["metrics"][name]["kl"] > same["metrics"][name]["kl"], name
    assert diff["oa_mean"] < same["oa_mean"] - 0.2


def test_compare_sets_nan_safe(real_clips: list[pd.DataFrame]) -> None:
    one_real = M.compare_sets(real_clips[:3], real_clips[:1])
    assert all(math.isnan(m["oa"]) for m in one_real["metrics"].values())
    assert math.isnan(one_real["oa_mean"])
    assert one_real["metrics"]["pitch_range"]["real_mean"] == M.pitch_range(real_clips[0])
    nothing = M.compare_sets([], real_clips[:4])
    assert math.isnan(nothing["metrics"]["polyphony"]["generated_mean"])
    assert math.isnan(nothing["kl_mean"])
    # an empty generated clip: NaN metrics are dropped, the rest still compare
    mixed = M.compare_sets([EMPTY, *real_clips[:3]], real_clips[:4])
    assert math.isfinite(mixed["metrics"]["pitch_range"]["oa"])


def test_pitch_class_profile_pools_notes_over_pieces() -> None:
    a = pd.DataFrame(
        {"pitch": [60, 62, 72], "velocity": 80, "start": [0.0, 1.0, 2.0], "end": [1.0, 2.0, 3.0]}
    )
    b = pd.DataFrame({"pitch": [61], "velocity": 80, "start": [0.0], "end": [1.0]})
    profile = M.pitch_class_profile([a, b])
    assert profile == [0.5, 0.25, 0.25] + [0.0] * 9
    assert all(math.isnan(v) for v in M.pitch_class_profile([a.iloc[:0]]))


# --- bootstrap intervals of the overlapping area ------------------------------------


def test_oa_intervals_bracket_compare_sets(real_clips: list[pd.DataFrame]) -> None:
    """Two pieces' clips against the other two's: the estimates are `compare_sets`' OAs
    (binned densities, within 1e-3 of the exact KDE) and every interval holds its own."""
    gen, real = real_clips[:8], real_clips[8:]
    point = M.compare_sets(gen, real)
    result = M.oa_intervals(gen, real, n_boot=200, seed=0)
    assert (result["n_boot"], result["level"], result["seed"]) == (200, 0.95, 0)
    mean = result["oa_mean"]
    assert mean["estimate"] == pytest.approx(point["oa_mean"], abs=1e-3)
    assert 0.0 <= mean["low"] < point["oa_mean"] < mean["high"] <= 1.0
    assert mean["high"] - mean["low"] > 0.02  # 8 clips a side: OA is uncertain
    assert set(result["metrics"]) == set(M.METRICS)
    for name, m in result["metrics"].items():
        assert m["estimate"] == pytest.approx(point["metrics"][name]["oa"], abs=1e-3), name
        assert m["low"] <= m["estimate"] <= m["high"], name


def test_oa_intervals_tell_a_different_set_apart(real_clips: list[pd.DataFrame]) -> None:
    rng = np.random.default_rng(3)
    noise = []
    for clip in real_clips:  # same onsets, uniformly random pitches, 3x slower
        fake = clip.copy()
        fake["pitch"] = rng.integers(21, 109, len(fake))
        fake[["start", "end"]] *= 3.0
        noise.append(fake)
    same = M.oa_intervals(real_clips, real_clips)["oa_mean"]
    diff = M.oa_intervals(noise, real_clips)["oa_mean"]
    assert diff["high"] < same["low"], (diff, same)


def test_oa_intervals_deterministic_for_a_seed(real_clips: list[pd.DataFrame]) -> None:
    first = M.oa_intervals(real_clips[:6], real_clips[6:12], n_boot=50, seed=7)
    assert M.oa_intervals(real_clips[:6], real_clips[6:12], n_boot=50, seed=7) == first
    other = M.oa_intervals(real_clips[:6], real_clips[6:12], n_boot=50, seed=8)
    assert other["oa_mean"]["estimate"] == first["oa_mean"]["estimate"]
    assert other["oa_mean"]["low"] != first["oa_mean"]["low"]
    wider = M.oa_intervals(real_clips[:6], real_clips[6:12], n_boot=50, seed=7, level=0.99)
    assert wider["oa_mean"]["low"] <= first["oa_mean"]["low"] <= first["oa_mean"]["high"]
    assert first["oa_mean"]["high"] <= wider["oa_mean"]["high"]


def test_oa_intervals_nan_safe(real_clips: list[pd.DataFrame]) -> None:
    one_real = M.oa_intervals(real_clips[:3], real_clips[:1], n_boot=20)
    assert all(math.isnan(v) for v in one_real["oa_mean"].values())
    nothing = M.oa_intervals([], real_clips[:4], n_boot=20)
    assert math.isnan(nothing["metrics"]["polyphony"]["low"])
    # an empty generated clip: its NaN metrics drop out, the rest still compare
    mixed = M.oa_intervals([EMPTY, *real_clips[:3]], real_clips[4:8], n_boot=50)
    point = M.compare_sets([EMPTY, *real_clips[:3]], real_clips[4:8])
    assert mixed["oa_mean"]["estimate"] == pytest.approx(point["oa_mean"], abs=1e-3)
    with pytest.raises(ValueError, match="n_boot >= 1"):
        M.oa_intervals(real_clips[:2], real_clips[:2], n_boot=0)
