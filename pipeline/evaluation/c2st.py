"""Find the fake: how well a plain classifier tells generated clips from real ones.

A classifier two-sample test (C2ST; Lopez-Paz & Oquab, "Revisiting Classifier
Two-Sample Tests", ICLR 2017): describe every clip by a fixed vector of musical
features (`clip_features`, names in `FEATURE_NAMES`), train an L1-regularised logistic
regression to say "generated" or "real", and score it on clips it did not see
(stratified k-fold cross-validation). Out-of-fold accuracy near 0.5 means the features
cannot tell the sets apart; near 1.0, every clip gives itself away. Unlike the per-metric
overlaps of `pipeline.evaluation.metrics.compare_sets`, the classifier weighs all
features together, so a model that matches each statistic alone but not their
combination is still caught. Each clip's out-of-fold probability of being fake is kept,
so a report can show the most and least convincing generated clips.

Clips must be independent draws: several windows of one piece on one side let the
classifier recognise the piece rather than the side (real against real, 2 windows of
each MAESTRO fixture, each piece's windows on one side: up to 0.72). The evaluate stage
cuts one clip per test piece, which is what this test assumes.

Features (`FEATURES` lists the groups; all finite, an empty clip gives zeros):

* pitch, drum notes left out (as the metrics do): the pitch-class histogram (12 shares),
  the register histogram (7 shares: below C2, one per octave C2..C6, C7 and up), pitch
  mean, standard deviation, lowest and highest (MIDI numbers);
* melody, taken as the highest pitch of each onset (the "skyline"): the histogram of
  |interval| between successive onsets (unison, step 1-2, third 3-4, fourth/fifth 5-7,
  sixth to octave 8-12, wider) plus the share of moves that go up and the mean size of
  upward minus downward moves (melodies tend to leap up and step down);
* rhythm, in beats of `beat_s` seconds: histograms of log2 note duration and of
  inter-onset interval (7 bins, edges 1/8, 1/4, 1/2, 1, 2, 4 beats), and of onset
  position within the beat (8 bins centred on the eighths of a beat, so a slightly
  early or late downbeat still counts as a downbeat); notes and onsets per second,
  notes per onset;
* timing, in seconds (a player's, whatever the tempo): the shares of the gaps between
  successive pitched note starts that are under 10 ms, 10-20, 20-60, 60-120, 120-250 ms
  and longer, and these shares minus the same for note ends; the evenness of the
  starts (the share of successive gaps between onsets within 15% of each other: runs
  of equal note values) and the same minus that of the ends. A chord's notes strike
  together but are released unevenly, and notes start on the pulse but end wherever
  their length puts them, so starts have more gaps under 10 ms, fewer of 20-60 ms and
  more even gaps than ends. Time reversal swaps starts and ends: on the MAESTRO
  fixtures, starting minus ending share under 10 ms and the evenness difference each
  tell a reversed 10-s clip from the same passage played forward with AUC 0.97;
* velocity mean and standard deviation (0 when the table has none), the share of drum
  notes;
* every scalar metric of `pipeline.evaluation.metrics.compute_all` (prefix ``yl_``),
  NaN (nothing to measure) written as 0.

Onsets (and ends) less than 30 ms apart are one onset (a chord as played), for the
melody, the inter-onset intervals, the onset positions and the evenness. Notes cut by
the end of the clip (ending at `seconds` or later) do not count among the note ends.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluation import metrics

FOLDS = 5  # cross-validation folds; each side needs at least this many clips
REGULARISATION_C = 0.1
"""Inverse strength of the logistic regression's L1 (lasso) penalty, fixed, never tuned
on the clips scored. L1, not L2: of ~80 standardised features only a few tell two given
sets apart, and L2 spreads weight over all of them. On the MAESTRO fixtures (72 real
and 72 time-reversed 10-s clips), L2 reached 0.84-0.85 for every C from 0.01 to 10, L1
at C = 0.1 0.965, real against real staying at chance. The price: with 10 clips a side
the penalty keeps every weight at zero and the score at 0.5 even for pitch-shuffled
clips (20 a side: 0.975); too few clips cannot convict a model."""
MAX_ITER = 2000  # liblinear iterations; standardised features converge in far fewer
CHORD_S = 0.03  # onsets closer than this are one onset: a chord as played, not a run
_GAP_EDGES = np.array([0.01, 0.02, 0.06, 0.12, 0.25])  # seconds between successive starts/ends
EVEN_RATIO = 1.15  # two gaps within 15% of each other are "the same note value"
_GAPS = ("lt_10ms", "10_20ms", "20_60ms", "60_120ms", "120_250ms", "ge_250ms")
_Z95 = 1.959963984540054  # standard normal quantile for a two-sided 95% interval
_PITCH_CLASSES = ("C", "Cs", "D", "Ds", "E", "F", "Fs", "G", "Gs", "A", "As", "B")
_REGISTER_EDGES = np.array([36, 48, 60, 72, 84, 96])  # C2 .. C7 (MIDI 60 = C4)
_REGISTERS = ("lt_c2", "c2", "c3", "c4", "c5", "c6", "ge_c7")
_INTERVAL_EDGES = np.array([1, 3, 5, 8, 13])  # |semitones|: 0 | 1-2 | 3-4 | 5-7 | 8-12 | 13+
_INTERVALS = ("unison", "step", "third", "fifth", "octave", "wide")
_BEAT_EDGES = np.log2([1 / 8, 1 / 4, 1 / 2, 1, 2, 4])  # log2 beats
_BEAT_BINS = ("lt_1_8", "1_8", "1_4", "1_2", "1", "2", "ge_4")
_PHASES = 8  # onset positions per beat

FEATURES: dict[str, tuple[str, ...]] = {
    "pitch_class": tuple(f"pc_{name}" for name in _PITCH_CLASSES),
    "register": tuple(f"register_{name}" for name in _REGISTERS),
    "pitch_stats": ("pitch_mean", "pitch_std", "pitch_min", "pitch_max"),
    "melodic_interval": tuple(f"interval_{name}" for name in _INTERVALS),
    "melodic_direction": ("melody_up_share", "melody_up_minus_down"),
    "duration": tuple(f"duration_{name}" for name in _BEAT_BINS),
    "ioi": tuple(f"ioi_{name}" for name in _BEAT_BINS),
    "onset_phase": tuple(f"phase_{k}_{_PHASES}" for k in range(_PHASES)),
    "density": ("notes_per_s", "onsets_per_s", "notes_per_onset"),
    "start_gap": tuple(f"start_gap_{name}" for name in _GAPS),
    "start_minus_end_gap": tuple(f"start_minus_end_gap_{name}" for name in _GAPS),
    "evenness": ("start_evenness", "start_minus_end_evenness"),
    "dynamics": ("velocity_mean", "velocity_std", "drum_share"),
    "yang_lerch": tuple(f"yl_{name}" for name in metrics.METRICS),
}
"""Feature groups in vector order (see the module docstring for what each measures)."""

FEATURE_NAMES: tuple[str, ...] = tuple(name for group in FEATURES.values() for name in group)
"""The name of every entry of `clip_features`' vector, in order."""


class C2stError(ValueError):
    """The sets cannot be scored (too few clips); the message is one line for the user."""


def _shares(bins: np.ndarray, n_bins: int) -> np.ndarray:
    """Histogram of bin indices as shares (zeros when there is nothing to count)."""
    counts = np.bincount(bins, minlength=n_bins)[:n_bins].astype(np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


def _log_beat_shares(values_s: np.ndarray, beat_s: float) -> np.ndarray:
    """Shares of positive durations (seconds) in the log2-beat bins of `_BEAT_BINS`."""
    values_s = values_s[values_s > 0]
    bins = np.searchsorted(_BEAT_EDGES, np.log2(values_s / beat_s), side="right")
    return _shares(bins, len(_BEAT_BINS))


def _groups(times: np.ndarray) -> np.ndarray:
    """Group index of each sorted time: a new group starts after a gap over `CHORD_S`."""
    if len(times) == 0:
        return np.zeros(0, np.int64)
    new = np.ones(len(times), bool)
    new[1:] = np.diff(times) > CHORD_S
    return np.cumsum(new) - 1


def _gap_shares(times: np.ndarray) -> np.ndarray:
    """Shares of the gaps between successive `times` (sorted) in the `_GAPS` bins."""
    gaps = np.diff(np.sort(times))
    return _shares(np.searchsorted(_GAP_EDGES, gaps, side="right"), len(_GAPS))


def _evenness(times: np.ndarray) -> float:
    """Share of successive gaps between grouped `times` within `EVEN_RATIO` of each other.

    A group stands at its mean time, so that reversing time reverses the gaps exactly.
    """
    times = np.sort(times)
    if len(times) == 0:
        return 0.0
    groups = _groups(times)
    gaps = np.diff(np.bincount(groups, times) / np.bincount(groups))
    if len(gaps) < 2:
        return 0.0
    return float((np.abs(np.log(gaps[1:] / gaps[:-1])) < math.log(EVEN_RATIO)).mean())


def _pitch_features(pitched: pd.DataFrame) -> list[float]:
    pitch = pitched["pitch"].to_numpy(np.int64)
    pcs = _shares(pitch % 12, 12)
    register = _shares(np.searchsorted(_REGISTER_EDGES, pitch, side="right"), len(_REGISTERS))
    if len(pitch) == 0:
        return [*pcs, *register, 0.0, 0.0, 0.0, 0.0]
    stats = [pitch.mean(), pitch.std(), pitch.min(), pitch.max()]
    return [*pcs, *register, *(float(v) for v in stats)]


def _melody_features(pitched: pd.DataFrame) -> list[float]:
    """|interval| shares, up share and up-minus-down size of the skyline melody."""
    start = pitched["start"].to_numpy(np.float64)
    order = np.argsort(start, kind="stable")
    groups = _groups(start[order])
    top = np.full(len(np.unique(groups)), -1, np.int64)
    np.maximum.at(top, groups, pitched["pitch"].to_numpy(np.int64)[order])
    moves = np.diff(top)
    sizes = np.searchsorted(_INTERVAL_EDGES, np.abs(moves), side="right")
    up, down = moves[moves > 0], -moves[moves < 0]
    up_share = len(up) / (len(up) + len(down)) if len(up) + len(down) else 0.0
    asymmetry = float(up.mean() - down.mean()) if len(up) and len(down) else 0.0
    return [*_shares(sizes, len(_INTERVALS)), up_share, asymmetry]


def _rhythm_features(notes: pd.DataFrame, seconds: float, beat_s: float) -> list[float]:
    """IOI and onset-phase shares and densities, over every note (drums included)."""
    start = np.sort(notes["start"].to_numpy(np.float64))
    groups = _groups(start)
    onsets = start[np.append(True, np.diff(groups) > 0)] if len(start) else start
    phase = np.floor((onsets / beat_s % 1.0) * _PHASES + 0.5).astype(np.int64) % _PHASES
    n_onsets = len(onsets)
    density = [
        len(start) / seconds,
        n_onsets / seconds,
        len(start) / n_onsets if n_onsets else 0.0,
    ]
    return [*_log_beat_shares(np.diff(onsets), beat_s), *_shares(phase, _PHASES), *density]


def _texture_features(notes: pd.DataFrame, pitched: pd.DataFrame, seconds: float) -> list[float]:
    """Start/end gap shares and evenness, velocity, drum share."""
    start = pitched["start"].to_numpy(np.float64)
    end = pitched["end"].to_numpy(np.float64)
    end = end[end < seconds - 1e-9]  # an end the clip cut is no release
    starts, ends = _gap_shares(start), _gap_shares(end)
    even = _evenness(start)
    timing = [*starts, *(starts - ends), even, even - _evenness(end)]
    dynamics = [0.0, 0.0]
    if "velocity" in pitched.columns and len(pitched):
        velocity = pitched["velocity"].to_numpy(np.float64)
        dynamics = [float(velocity.mean()), float(velocity.std())]
    drum_share = 1.0 - len(pitched) / len(notes) if len(notes) else 0.0
    return [*timing, *dynamics, drum_share]


def clip_features(
    notes: pd.DataFrame, seconds: float, beat_s: float = metrics.DEFAULT_BEAT_S
) -> np.ndarray:
    """The musical feature vector of one clip `seconds` long (`FEATURE_NAMES` order).

    `notes` is a notes table (``pitch``, ``start``, ``end`` in seconds; ``velocity``,
    ``is_drum`` optional); beats are `beat_s` seconds (0.5: the assumed 120 bpm of the
    metrics). Always finite: what cannot be measured (no notes, one onset) is 0.
    """
    if not (seconds > 0 and beat_s > 0):
        raise ValueError(f"clip_features: seconds and beat_s must be > 0, got {seconds}, {beat_s}")
    pitched = metrics._pitched(notes)
    durations = (pitched["end"] - pitched["start"]).to_numpy(np.float64)
    yang_lerch = metrics.compute_all(notes, beat_s=beat_s)
    vector = np.array(
        [
            *_pitch_features(pitched),
            *_melody_features(pitched),
            *_log_beat_shares(durations, beat_s),
            *_rhythm_features(notes, seconds, beat_s),
            *_texture_features(notes, pitched, seconds),
            *(yang_lerch[name] for name in metrics.METRICS),
        ],
        np.float64,
    )
    return np.nan_to_num(vector, nan=0.0, posinf=0.0, neginf=0.0)


@dataclass(frozen=True)
class C2stResult:
    """Out-of-fold result of find the fake.

    `accuracy` is the share of all clips (real and generated) the classifier labels
    right on folds it was not trained on (a coin toss counting half); 0.5 is chance.
    `low`/`high` bound it with the Wilson score interval at 95% on correct/total clips
    (better than the normal approximation near 0 or 1 and for few clips; it treats
    clips as independent trials).
    `fake_probability_real`/`_fake` are each clip's out-of-fold probability of being
    generated, in input order: a generated clip with a low one fooled the classifier.
    """

    accuracy: float
    low: float
    high: float
    n_real: int
    n_fake: int
    folds: int
    seed: int
    fake_probability_real: list[float]
    fake_probability_fake: list[float]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: numbers rounded to 4 decimals."""
        out = asdict(self)
        for key in ("accuracy", "low", "high"):
            out[key] = round(out[key], 4)
        for key in ("fake_probability_real", "fake_probability_fake"):
            out[key] = [round(p, 4) for p in out[key]]
        return out


def wilson_interval(correct: float, total: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion correct/total (Wilson 1927); (0, 1) if total 0."""
    if total <= 0:
        return 0.0, 1.0
    p = correct / total
    denom = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def _check_counts(n_real: int, n_fake: int, folds: int) -> None:
    if folds < 2:
        raise C2stError(f"find the fake needs at least 2 cross-validation folds, got {folds}")
    if n_real >= folds and n_fake >= folds:
        return
    raise_ = [
        name
        for name, n in (("evaluate.n_samples", n_fake), ("evaluate.n_real", n_real))
        if n < folds
    ]
    raise C2stError(
        f"find the fake needs at least {folds} clips on each side ({folds}-fold "
        f"cross-validation); got {n_fake} generated and {n_real} real: raise "
        + " and ".join(raise_)
    )


def _matrix(x: np.ndarray, side: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"find the fake: {side} features must be 2-D, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"find the fake: {side} features contain NaN or infinity")
    return x


def _classifier(seed: int) -> Any:
    """Standardise, then L1 logistic regression (liblinear; classes weighted to balance)."""
    import sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    version = tuple(int(part) for part in sklearn.__version__.split(".")[:2])
    # scikit-learn 1.8 names the penalty by l1_ratio and deprecates `penalty`
    lasso: dict[str, Any] = {"l1_ratio": 1.0} if version >= (1, 8) else {"penalty": "l1"}
    model = LogisticRegression(
        C=REGULARISATION_C,
        solver="liblinear",
        max_iter=MAX_ITER,
        class_weight="balanced",
        random_state=seed,
        **lasso,
    )
    return make_pipeline(StandardScaler(), model)


def c2st_features(
    real_x: np.ndarray, fake_x: np.ndarray, *, folds: int = FOLDS, seed: int = 0
) -> C2stResult:
    """Find the fake on precomputed features (one row per clip, same columns both sides).

    Standardise, then L1 logistic regression (C = `REGULARISATION_C`, liblinear, classes
    weighted to balance, so chance stays 0.5 when the sides differ in size), scored by
    stratified `folds`-fold cross-validation shuffled with `seed`. A clip is called fake
    when its out-of-fold probability is over 0.5, real under; exactly 0.5 (every weight
    zero: nothing to go on) counts as half right, a coin toss. Deterministic: the same
    inputs and seed give the same result. Raises `C2stError` when either side has fewer
    than `folds` clips.
    """
    _check_counts(len(real_x), len(fake_x), folds)
    real_x, fake_x = _matrix(real_x, "real"), _matrix(fake_x, "generated")
    if real_x.shape[1] != fake_x.shape[1]:
        raise ValueError(
            f"find the fake: {real_x.shape[1]} real features but {fake_x.shape[1]} generated"
        )
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.vstack([real_x, fake_x])
    y = np.concatenate([np.zeros(len(real_x), np.int64), np.ones(len(fake_x), np.int64)])
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    fake_p = cross_val_predict(_classifier(seed), x, y, cv=cv, method="predict_proba")[:, 1]
    guess = np.sign(np.round(fake_p - 0.5, 12))  # +1 says fake, -1 real, 0 a coin toss
    correct = float(np.where(guess == 0, 0.5, guess == 2 * y - 1).sum())
    low, high = wilson_interval(correct, len(y))
    return C2stResult(
        accuracy=correct / len(y),
        low=low,
        high=high,
        n_real=len(real_x),
        n_fake=len(fake_x),
        folds=folds,
        seed=seed,
        fake_probability_real=[float(p) for p in fake_p[: len(real_x)]],
        fake_probability_fake=[float(p) for p in fake_p[len(real_x) :]],
    )


def feature_matrix(
    clips: list[pd.DataFrame], seconds: float, beat_s: float = metrics.DEFAULT_BEAT_S
) -> np.ndarray:
    """`clip_features` of every clip, one row each (shape (len(clips), len(FEATURE_NAMES)))."""
    rows = [clip_features(notes, seconds, beat_s) for notes in clips]
    return np.array(rows, np.float64).reshape(len(clips), len(FEATURE_NAMES))


def c2st(
    real: list[pd.DataFrame],
    fake: list[pd.DataFrame],
    seconds: float,
    *,
    folds: int = FOLDS,
    seed: int = 0,
    beat_s: float = metrics.DEFAULT_BEAT_S,
) -> C2stResult:
    """Find the fake between real and generated clips `seconds` long (see `c2st_features`).

    The clip counts are checked before any feature is computed, so too few clips fail
    at once with `C2stError`.
    """
    _check_counts(len(real), len(fake), folds)
    return c2st_features(
        feature_matrix(real, seconds, beat_s),
        feature_matrix(fake, seconds, beat_s),
        folds=folds,
        seed=seed,
    )
