"""The tuples family: (pitch, step, duration) note windows and the baseline of `rnn`.

The model is `pipeline.modeling.tuples.rnn`; its sampler is
`pipeline.modeling.tuples.sampling`.

Training windows can be augmented (`train.augment`, `TupleWindows.set_augment`): each
is transposed and stretched in time by a draw that is a pure function of (seed,
epoch, index); see `TupleWindows`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from pipeline.modeling.base import Augment, StoreData

log = logging.getLogger(__name__)

N_PITCHES = 128


def features(pitch: np.ndarray, step: np.ndarray, duration: np.ndarray) -> np.ndarray:
    """(n, 3) float32 model inputs: pitch / 128, step (s), duration (s)."""
    return np.stack([pitch / N_PITCHES, step, duration], axis=-1).astype(np.float32)


def piece_arrays(store: StoreData, split: str) -> list[dict[str, np.ndarray]]:
    """Per piece of one split: pitch (int64), step and duration (float32), in index order."""
    if split not in store.rows:
        raise KeyError(f"tuples store {store.path or ''}: no '{split}' split")
    rows = store.rows[split]
    missing = {"piece_id", "index", "pitch", "step", "duration"} - set(rows.columns)
    if missing:
        raise ValueError(f"tuples store {store.path or ''}: {split} rows lack {sorted(missing)}")
    if rows.empty:
        return []
    rows = rows.sort_values(["piece_id", "index"], kind="stable")
    pitch = rows["pitch"].to_numpy(np.int64)
    if pitch.min() < 0 or pitch.max() >= N_PITCHES:
        raise ValueError(f"tuples store {store.path or ''}: {split} has pitches outside 0..127")
    codes, _ = pd.factorize(rows["piece_id"].to_numpy())
    bounds = np.flatnonzero(np.diff(codes)) + 1
    step = rows["step"].to_numpy(np.float32)
    duration = rows["duration"].to_numpy(np.float32)
    return [
        {"pitch": p, "step": s, "duration": d}
        for p, s, d in zip(
            np.split(pitch, bounds),
            np.split(step, bounds),
            np.split(duration, bounds),
            strict=True,
        )
    ]


class TupleWindows(Dataset):
    """Windows of ``seq_len`` inputs and their next-note targets.

    Each piece is the start tuple followed by its notes (n + 1 items, n targets).
    Item: inputs (L, 3), targets pitch (L,) int64, step (L,), duration (L,) and a
    mask (L,) that is 0 past the piece's last note. ``stride=1`` gives the training
    windows (one starting at every note); ``stride=seq_len`` tiles each piece so
    every note is a target exactly once (evaluation).

    ``set_augment`` (training only; fit calls it when ``train.augment`` is active):
    item i of epoch e, with ``(semitones, factor) = aug.draw(seed, e, i)``, has every
    pitch (inputs and targets) moved by the semitones and every step and duration
    multiplied by the factor. A shift that would push a note of the window outside
    0..127 is reduced to the largest one in the same direction that keeps the whole
    window inside (possibly 0), so intervals are never distorted and no note is
    dropped. A draw of (0, 1.0) gives exactly the unaugmented window.
    """

    def __init__(
        self, pieces: list[dict[str, np.ndarray]], seq_len: int, stride: int, seed: int = 0
    ):
        self.seq_len = seq_len
        self.seed = seed
        self.epoch = 0
        self.augment: Augment | None = None
        self.sequences = []
        self.windows: list[tuple[int, int]] = []
        for piece in pieces:
            n = len(piece["pitch"])
            if n == 0:
                continue
            inputs = np.concatenate(
                [
                    np.zeros((1, 3), np.float32),
                    features(piece["pitch"], piece["step"], piece["duration"]),
                ]
            )
            self.sequences.append((inputs, piece))
            last = max(0, n - seq_len) if stride == 1 else n - 1
            self.windows.extend((len(self.sequences) - 1, o) for o in range(0, last + 1, stride))

    def set_augment(self, aug: Augment | None) -> None:
        """Transpose and stretch each window by ``aug.draw(seed, epoch, index)``."""
        self.augment = aug if aug is not None and aug.active else None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's augmentation draws (fit calls this at each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        seq_index, offset = self.windows[index]
        inputs_all, piece = self.sequences[seq_index]
        length = self.seq_len
        if self.augment is not None:
            semitones, factor = self.augment.draw(self.seed, self.epoch, index)
            if semitones != 0 or factor != 1.0:
                inputs_all, piece, offset = augmented_notes(
                    piece, offset, length, semitones, factor
                )
        inputs = np.zeros((length, 3), np.float32)
        chunk = inputs_all[offset : offset + length]
        inputs[: len(chunk)] = chunk
        # targets of inputs offset..offset+L-1 are notes offset..offset+L-1 (0-based)
        valid = max(0, min(length, len(piece["pitch"]) - offset))
        pitch = np.zeros(length, np.int64)
        step = np.zeros(length, np.float32)
        duration = np.zeros(length, np.float32)
        mask = np.zeros(length, np.float32)
        pitch[:valid] = piece["pitch"][offset : offset + valid]
        step[:valid] = piece["step"][offset : offset + valid]
        duration[:valid] = piece["duration"][offset : offset + valid]
        mask[:valid] = 1.0
        return {
            "inputs": torch.from_numpy(inputs),
            "pitch": torch.from_numpy(pitch),
            "step": torch.from_numpy(step),
            "duration": torch.from_numpy(duration),
            "mask": torch.from_numpy(mask),
        }


def augmented_notes(
    piece: dict[str, np.ndarray], offset: int, length: int, semitones: int, factor: float
) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """The notes one window reads, transposed and stretched: (inputs, piece, offset).

    Only the span of notes the window at `offset` shows (inputs and targets) is
    copied; the returned offset locates the window in it. See `TupleWindows` for the
    rule that keeps pitches inside 0..127.
    """
    lo, hi = max(0, offset - 1), min(len(piece["pitch"]), offset + length)
    pitch = piece["pitch"][lo:hi]
    shift = int(np.clip(semitones, -int(pitch.min()), N_PITCHES - 1 - int(pitch.max())))
    span = {
        "pitch": pitch + shift,
        "step": (piece["step"][lo:hi] * factor).astype(np.float32),
        "duration": (piece["duration"][lo:hi] * factor).astype(np.float32),
    }
    # laid out as TupleWindows.sequences: row k is note lo + k - 1, row 0 the start
    # tuple (read only when lo == 0: otherwise the window starts at row offset - lo >= 1)
    inputs = np.concatenate(
        [np.zeros((1, 3), np.float32), features(span["pitch"], span["step"], span["duration"])]
    )
    return inputs, span, offset - lo


def make_dataset(store: StoreData, config: Any, split: str) -> TupleWindows:
    """Stride-1 windows for train (as the tutorial), tiling windows otherwise.

    The train windows' augmentation draws are seeded from ``torch.initial_seed()`` at
    construction, so the loop's seed (``train.seed``) fixes them.
    """
    pieces = piece_arrays(store, split)
    if split == "train":
        return TupleWindows(pieces, config.seq_len, 1, seed=int(torch.initial_seed() % (2**63)))
    return TupleWindows(pieces, config.seq_len, config.seq_len)


def baseline(store: StoreData, config: Any) -> dict[str, float]:
    """Unigram pitch distribution (add-one smoothed) and mean step/duration from train.

    ``baseline_nll`` is the unigram's cross-entropy on every test note (nats per
    note, the units of the model's ``nll``); ``baseline_step_mse`` and
    ``baseline_duration_mse`` are the squared errors of predicting the train means.
    """
    train = piece_arrays(store, "train")
    test = piece_arrays(store, "test")
    if not train or not test:
        log.warning("rnn baseline: empty train or test split; returning NaN")
        nan = float("nan")
        return {"baseline_nll": nan, "baseline_step_mse": nan, "baseline_duration_mse": nan}
    cat = {k: np.concatenate([p[k] for p in train]) for k in ("pitch", "step", "duration")}
    test_cat = {k: np.concatenate([p[k] for p in test]) for k in ("pitch", "step", "duration")}
    counts = np.bincount(cat["pitch"], minlength=N_PITCHES).astype(np.float64) + 1.0
    probs = counts / counts.sum()
    return {
        "baseline_nll": float(-np.log(probs[test_cat["pitch"]]).mean()),
        "baseline_step_mse": float(
            ((test_cat["step"].astype(np.float64) - cat["step"].mean()) ** 2).mean()
        ),
        "baseline_duration_mse": float(
            ((test_cat["duration"].astype(np.float64) - cat["duration"].mean()) ** 2).mean()
        ),
    }
