"""The frame-level NLL of the polyphonic-music benchmarks (Boulanger-Lewandowski et al., 2012).

The metric of the paper's Table 1: each frame (one quarter-note step for JSB Chorales)
is a set of sounding keys on the 88-key piano (MIDI 21-108), a model gives each key
an independent Bernoulli probability of sounding, and the score is the negative
log-likelihood in nats per frame, summed over the 88 keys and averaged over all frames
of all test pieces pooled (a long piece counts more; not a mean of per-piece means).

Keys outside a model's pitch window count as probability 0 of sounding: free (log 1 =
0) while silent, and an error (`FrameError`) when one sounds, since the window then
cannot score the data (an infinite NLL would hide a misconfigured window). Inside the
window a probability of exactly 0 for a sounding key (or 1 for a silent one) gives an
infinite NLL, as it should; clip the probabilities first if a model saturates.

A data set's own rolls (the reference, `pipeline.sources.poly2012`) are what the
frames are scored against when a benchmark has them: `refuse_outside_window` refuses a
model whose pitch window cannot hold one of their frames (a prv store would have
folded that pitch into the window by octaves, and the model would be scored on other
targets without a word), and `check_rolls` compares a store's rolls with them cell
for cell. Both raise one-line `FrameError`s naming the data set, piece, frame and pitch.

The metric is pure numpy (`frame_nll`, `note_unigram_baseline`, `random_baseline`;
``random_baseline``, p = 1/2 everywhere, is 88 ln 2 = 60.9970 nats). This module also
holds what the `frames` stage (`pipeline.evaluation.frames`) shares with each model
family's ``pipeline.modeling.<store>.frames`` module: the stage's params
(`FramesParams`), its error (`FrameError`), its unit and `eval_mode`. It imports
nothing from the stage, so model code imports it from below (``pipeline``'s docstring
has the layers).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import xlogy

from pipeline.core.params import require

KEY_LOW = 21  # A0
KEY_HIGH = 108  # C8
N_KEYS = KEY_HIGH - KEY_LOW + 1  # 88
# The Note 1-Gram's probabilities are clipped to [EPS, 1 - EPS], as the other
# baselines of Etude (pipeline.modeling.prv / pianoroll BASELINE_EPS).
UNIGRAM_EPS = 1e-4


class FrameError(ValueError):
    """Rolls and probabilities that cannot be scored; the message says which piece and why."""


def roll_from_steps(steps: Sequence[Sequence[int]]) -> np.ndarray:
    """Boolean ``(frames, 88)`` roll of one piece given as lists of sounding MIDI pitches."""
    roll = np.zeros((len(steps), N_KEYS), dtype=bool)
    for t, step in enumerate(steps):
        for pitch in step:
            if not KEY_LOW <= pitch <= KEY_HIGH:
                raise FrameError(f"step {t}: pitch {pitch} is outside the 88 keys 21-108")
            roll[t, pitch - KEY_LOW] = True
    return roll


def _check_roll(roll: np.ndarray, i: int | str) -> np.ndarray:
    roll = np.asarray(roll)
    if roll.ndim != 2 or roll.shape[1] != N_KEYS:
        raise FrameError(f"piece {i}: roll must be (frames, {N_KEYS}), got {roll.shape}")
    return roll.astype(bool)


def frame_nll(
    probs: Sequence[np.ndarray],
    rolls: Sequence[np.ndarray],
    *,
    min_pitch: int = KEY_LOW,
    logits: bool = False,
) -> float:
    """Pooled NLL in nats per frame (summed over the 88 keys) of `rolls` under `probs`.

    Args:
        probs: per piece, ``(frames, K)`` probabilities in [0, 1] that each key of the
            model's window, MIDI ``min_pitch .. min_pitch + K - 1``, sounds in that frame;
            with ``logits=True``, their logits (any real number) instead.
        rolls: per piece, the ``(frames, 88)`` boolean roll over MIDI 21-108.
        min_pitch: the lowest MIDI pitch of the window (21 = all 88 keys when K = 88).
        logits: score logits directly (``log sigmoid`` without forming a probability,
            so a confident model is not rounded to probability 1 and an infinite NLL).

    Raises:
        FrameError: mismatched shapes or counts, a window reaching past the 88 keys,
            probabilities outside [0, 1], no frames, or a key outside the window that
            sounds (naming the piece, frame and pitch).
    """
    if len(probs) != len(rolls):
        raise FrameError(f"{len(probs)} probability arrays for {len(rolls)} rolls")
    total, frames = 0.0, 0
    for i, (p, roll) in enumerate(zip(probs, rolls, strict=True)):
        roll = _check_roll(roll, i)
        p = np.asarray(p, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] != roll.shape[0]:
            raise FrameError(f"piece {i}: probs {p.shape} do not match roll {roll.shape}")
        lo = min_pitch - KEY_LOW
        hi = lo + p.shape[1]
        if lo < 0 or hi > N_KEYS:
            raise FrameError(
                f"window MIDI {min_pitch}-{min_pitch + p.shape[1] - 1} reaches past the 88 keys"
            )
        if logits:
            if not np.all(np.isfinite(p)):
                raise FrameError(f"piece {i}: logits must be finite")
        elif not np.all((p >= 0) & (p <= 1)):  # also catches NaN
            raise FrameError(f"piece {i}: probabilities outside [0, 1] (or NaN)")
        outside = roll.copy()
        outside[:, lo:hi] = False
        if outside.any():
            t, k = np.argwhere(outside)[0]
            raise FrameError(
                f"piece {i}: frame {t} sounds MIDI {k + KEY_LOW}, outside the model's window "
                f"{min_pitch}-{min_pitch + p.shape[1] - 1} (probability 0)"
            )
        y = roll[:, lo:hi]
        if logits:  # -log sigmoid(z) = log(1 + e^-z) where sounding, log(1 + e^z) where not
            total += float(np.logaddexp(0.0, np.where(y, -p, p)).sum())
            frames += roll.shape[0]
            continue
        with np.errstate(divide="ignore"):
            total -= float((xlogy(y, p) + xlogy(~y, 1.0 - p)).sum())
        frames += roll.shape[0]
    if frames == 0:
        raise FrameError("no frames to score")
    return total / frames


def refuse_outside_window(
    rolls: Mapping[str, np.ndarray],
    min_pitch: int,
    n_pitches: int,
    *,
    dataset: str,
    split: str,
    name: Callable[[str], str] = str,
) -> None:
    """Raise a one-line `FrameError` when a frame of `rolls` sounds outside the model's window.

    `rolls` are a data set's own ``(frames, 88)`` rolls of one split (the reference rolls,
    `pipeline.sources.poly2012`), keyed by piece; `name` says how a key is named in the
    message. A prv store folds such a pitch into its window by octaves, so without
    this check the model would be scored on targets that are not the data set's.
    """
    lo = max(min_pitch - KEY_LOW, 0)  # the window's columns of the 88 keys: [lo, hi)
    hi = min(max(min_pitch - KEY_LOW + n_pitches, 0), N_KEYS)
    sounding = np.zeros(N_KEYS, dtype=bool)
    for key, roll in rolls.items():
        sounding |= _check_roll(roll, name(key)).any(axis=0)
    if not sounding[:lo].any() and not sounding[hi:].any():
        return
    for key, roll in rolls.items():
        outside = _check_roll(roll, name(key)).copy()
        outside[:, lo:hi] = False
        if outside.any():
            t, k = (int(v) for v in np.argwhere(outside)[0])
            pitch = k + KEY_LOW
            where = "below" if pitch < min_pitch else "above"
            keys = np.flatnonzero(sounding) + KEY_LOW
            raise FrameError(
                f"{dataset}: {name(key)} frame {t} sounds MIDI {pitch}, {where} the model's "
                f"window {min_pitch}-{min_pitch + n_pitches - 1}; widen prv.min_pitch/n_pitches "
                f"(the {split} split sounds MIDI {keys.min()}-{keys.max()})"
            )


def check_rolls(
    got: Mapping[str, np.ndarray],
    want: Mapping[str, np.ndarray],
    *,
    dataset: str,
    split: str,
    name: Callable[[str], str] = str,
) -> int:
    """Check a store's rolls against the data set's own, cell for cell; return the frames.

    Both map a piece key to its ``(frames, 88)`` roll. A store ends a piece at its last
    sounding frame (a prv store has no rows for silence), so silent frames after it in
    `want` are the same piece; any other difference, a missing or an extra piece raises
    a one-line `FrameError` naming the data set, split, piece, frame and pitch. Returns
    the number of frames of `want` checked.
    """
    missing = [k for k in want if k not in got]
    if missing:
        raise FrameError(
            f"{dataset}: the store's {split} split lacks {name(missing[0])} ({missing[0]}), "
            f"{len(missing)} of the data set's {len(want)} {split} pieces missing"
        )
    extra = [k for k in got if k not in want]
    if extra:
        raise FrameError(f"{dataset}: the store's {split} piece {extra[0]} is not in the data set")
    frames = 0
    for key, ref in want.items():
        ref, mine = _check_roll(ref, name(key)), _check_roll(got[key], name(key))
        n = max(len(ref), len(mine))
        a = np.zeros((n, N_KEYS), dtype=bool)
        b = np.zeros((n, N_KEYS), dtype=bool)
        a[: len(mine)], b[: len(ref)] = mine, ref
        if (a != b).any():
            t, k = (int(v) for v in np.argwhere(a != b)[0])
            store = "sounds" if a[t, k] else "does not sound"
            if t >= len(ref):
                data = f"ends at frame {len(ref) - 1}"
            else:
                data = "sounds it" if b[t, k] else "does not"
            raise FrameError(
                f"{dataset}: {name(key)} frame {t}: the store {store} MIDI {k + KEY_LOW}, the "
                f"data set's roll {data}; the store is not the data set's frames"
            )
        frames += len(ref)
    return frames


def note_unigram_baseline(
    train_rolls: Sequence[np.ndarray], test_rolls: Sequence[np.ndarray]
) -> float:
    """The paper's "Note 1-Gram": each key sounds with its frequency over all train frames.

    The frequencies are clipped to [UNIGRAM_EPS, 1 - UNIGRAM_EPS]: without it a key
    never heard in train but sounding in test costs infinity (JSB's test has one such
    frame: MIDI 45, never in train), and a key never silent costs the same.
    """
    if not train_rolls:
        raise FrameError("no train pieces for the Note 1-Gram")
    train = np.concatenate([_check_roll(r, i) for i, r in enumerate(train_rolls)])
    if len(train) == 0:
        raise FrameError("no train frames for the Note 1-Gram")
    p = np.clip(train.mean(axis=0), UNIGRAM_EPS, 1.0 - UNIGRAM_EPS)
    return frame_nll([np.broadcast_to(p, (len(r), N_KEYS)) for r in test_rolls], test_rolls)


def random_baseline() -> float:
    """Every key sounds with probability 1/2: 88 ln 2 nats per frame, whatever the data."""
    return N_KEYS * math.log(2.0)


UNIT = "nats per frame (88 keys)"


@dataclass(frozen=True)
class FramesParams:
    """The `frames` section of params.yaml.

    The frame grid is not here: it is the store's (its params.json), so a prv store
    and the frames it is scored on cannot disagree.
    """

    split: str  # the split scored (the benchmarks' tables are on test)
    token_stride: int  # events models: tokens each sliding window moves (<= seq_len)
    device: str  # auto, cpu or cuda
    num_threads: int  # torch CPU threads; 0 = torch's default
    # prv models: model name -> steps per sliding window (`pipeline.modeling.prv.frames`:
    # each step sees at least half a window); a model not named is scored on whole pieces
    window: dict[str, int] = field(default_factory=dict)

    def validate(self) -> None:
        require(self.split in ("train", "validation", "test"), "split must be a split name")
        for name, steps in self.window.items():
            require(
                isinstance(steps, int) and not isinstance(steps, bool) and steps >= 2,
                f"window.{name} must be a whole number of steps >= 2 (leave a model out to "
                "score whole pieces)",
            )
        require(self.token_stride >= 1, "token_stride must be >= 1")
        require(self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda")
        require(self.num_threads >= 0, "num_threads must be >= 0")


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Score without dropout (a model in training mode would give a random number)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
