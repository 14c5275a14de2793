"""The pianoroll family: what the autoencoder and the VAE share.

Windows of the pianoroll store and their baseline, the config checks and ``prepare``
both configs use, and the convolutional backbone (`ConvEncoder`, `ConvDecoder`) with
its loss helpers. The models are `pipeline.modeling.pianoroll.autoencoder` and
`pipeline.modeling.pianoroll.vae`; their samplers are in
`pipeline.modeling.pianoroll.sampling`.

The pianoroll store is sparse: one row (piece_id, frame, pitch, velocity) per active
cell. Pieces stay sparse in memory (frame-sorted cell arrays, so memory follows the
store, not frames x pitches), and each window is made dense only when fetched: a
``(window_frames, n_pitches)`` 0/1 float array over pitches ``min_pitch ..
min_pitch + n_pitches - 1``, plus a per-frame mask that is 0 past the piece's end
(the last active frame), so padding never counts in a loss.

Training windows can be augmented (`train.augment`, `PianorollWindows.set_augment`):
each is transposed along the pitch axis and stretched along the frame axis by a
draw that is a pure function of (seed, epoch, index), as its random offset is; see
`augmented_window` for exactly what a transposition and a stretch do to the cells.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pipeline.core.params import require
from pipeline.modeling.base import Augment, StoreData, WindowIndex

log = logging.getLogger(__name__)

# Per-pitch activation rates of the baseline are clipped into [EPS, 1 - EPS].
BASELINE_EPS = 1e-4
# Typical share of active cells: the decoder's initial output bias, and the
# autoencoder's initial running density.
INITIAL_DENSITY = 0.05


@dataclass
class SparsePieces:
    """Active cells of several pieces, grouped by piece and sorted by frame.

    Attributes:
        piece_ids: one id per piece.
        frames: per piece, int64 frame index of each active cell (sorted).
        pitches: per piece, int64 pitch index (0 = min_pitch) of each cell.
        n_frames: per piece, number of frames (last active frame + 1).
    """

    piece_ids: list[str]
    frames: list[np.ndarray]
    pitches: list[np.ndarray]
    n_frames: np.ndarray


def sparse_pieces(rows: pd.DataFrame, min_pitch: int, n_pitches: int) -> SparsePieces:
    """Group store rows by piece; cells outside the pitch range are dropped."""
    for column in ("piece_id", "frame", "pitch"):
        if column not in rows:
            raise ValueError(
                f"pianoroll rows: no '{column}' column (columns: {list(rows.columns)})"
            )
    pitch = rows["pitch"].to_numpy(np.int64) - min_pitch
    frame = rows["frame"].to_numpy(np.int64)
    keep = (pitch >= 0) & (pitch < n_pitches) & (frame >= 0)
    dropped = int((~keep).sum())
    if dropped:
        log.debug(
            "pianoroll: %d cells outside pitches %d..%d dropped",
            dropped,
            min_pitch,
            min_pitch + n_pitches - 1,
        )
    ids = rows["piece_id"].to_numpy()[keep]
    pitch, frame = pitch[keep], frame[keep]
    if len(ids) == 0:
        return SparsePieces([], [], [], np.zeros(0, np.int64))
    codes, uniques = pd.factorize(ids, sort=True)
    order = np.lexsort((pitch, frame, codes))
    codes, frame, pitch = codes[order], frame[order], pitch[order]
    bounds = np.flatnonzero(np.diff(codes)) + 1
    frames = np.split(frame, bounds)
    pitches = np.split(pitch, bounds)
    n_frames = np.array([int(f[-1]) + 1 for f in frames], dtype=np.int64)
    return SparsePieces([str(u) for u in uniques], frames, pitches, n_frames)


def dense_window(
    frames: np.ndarray, pitches: np.ndarray, n_frames: int, start: int, length: int, n_pitches: int
) -> tuple[np.ndarray, np.ndarray]:
    """Dense 0/1 window of one piece and its frame mask.

    Returns:
        roll (length, n_pitches) float32 and mask (length,) float32.
    """
    roll = np.zeros((length, n_pitches), dtype=np.float32)
    lo, hi = np.searchsorted(frames, [start, start + length])
    roll[frames[lo:hi] - start, pitches[lo:hi]] = 1.0
    mask = np.zeros(length, dtype=np.float32)
    mask[: max(0, min(length, n_frames - start))] = 1.0
    return roll, mask


def _stretched(frames: np.ndarray, factor: float) -> np.ndarray:
    """Where relative frame boundaries land after a stretch: floor(f * factor + 0.5).

    Monotone in f (half-up rounding, not numpy's half-to-even), so consecutive
    source frames map to adjacent or overlapping spans and runs stay contiguous.
    """
    return np.floor(frames * factor + 0.5).astype(np.int64)


def augmented_window(
    frames: np.ndarray,
    pitches: np.ndarray,
    n_frames: int,
    start: int,
    length: int,
    n_pitches: int,
    semitones: int,
    factor: float,
) -> tuple[np.ndarray, np.ndarray]:
    """`dense_window`, transposed by `semitones` and stretched in time by `factor`.

    Transposition shifts every cell's pitch index by `semitones`; cells that land
    outside the store's pitch window (0 .. n_pitches - 1) are dropped, the way
    `sparse_pieces` drops cells outside it when reading the store.

    Stretch (factor > 1: slower): the window still has `length` frames and starts at
    source frame `start`; it shows the source span of about ``length / factor``
    frames that follows. A run of active frames of one pitch, source frames
    ``[a, e)`` relative to `start`, becomes output frames ``[b(a), max(b(e), b(a) + 1))``
    with ``b(f) = floor(f * factor + 0.5)``: it keeps at least one frame, and for the
    allowed factors (0.5..2) two runs of one pitch stay apart, except that a 1-frame
    gap between them can close when compressing. The mask covers the stretched piece
    (up to the stretched end of its last frame), so padding stays out of the loss.
    Cells stay 0/1 (this dataset reads no velocities).

    Returns:
        roll (length, n_pitches) float32 and mask (length,) float32.
    """
    span = math.ceil(length / factor) + 1  # b(span) >= length: every source frame shown
    lo, hi = np.searchsorted(frames, [start, start + span])
    rel = frames[lo:hi] - start
    pitch = pitches[lo:hi] + semitones
    keep = (pitch >= 0) & (pitch < n_pitches)
    rel, pitch = rel[keep], pitch[keep]
    roll = np.zeros((length, n_pitches), dtype=np.float32)
    if len(rel):
        order = np.lexsort((rel, pitch))  # by pitch, then frame
        rel, pitch = rel[order], pitch[order]
        new_run = np.ones(len(rel), dtype=bool)
        new_run[1:] = (pitch[1:] != pitch[:-1]) | (rel[1:] != rel[:-1] + 1)
        firsts = np.flatnonzero(new_run)
        lasts = np.append(firsts[1:], len(rel)) - 1
        begin = _stretched(rel[firsts], factor)
        end = np.minimum(np.maximum(_stretched(rel[lasts] + 1, factor), begin + 1), length)
        run_pitch = pitch[firsts]
        inside = begin < length
        begin, end, run_pitch = begin[inside], end[inside], run_pitch[inside]
        # per pitch, +1 where a run starts and -1 where it ends: active where > 0
        edges = np.zeros((length + 1, n_pitches), dtype=np.int32)
        np.add.at(edges, (begin, run_pitch), 1)
        np.add.at(edges, (end, run_pitch), -1)
        roll[np.cumsum(edges[:length], axis=0) > 0] = 1.0
    mask = np.zeros(length, dtype=np.float32)
    n_source = n_frames - start
    if n_source > 0:
        last = _stretched(np.array([n_source - 1, n_source]), factor)
        mask[: min(length, max(int(last[1]), int(last[0]) + 1))] = 1.0
    return roll, mask


def roll_to_rows(
    roll: np.ndarray, piece_id: str, min_pitch: int, velocity: int, frame_offset: int = 0
) -> pd.DataFrame:
    """Active cells of a dense (frames, pitches) 0/1 array as pianoroll store rows."""
    frame, pitch = np.nonzero(roll > 0.5)
    return pd.DataFrame(
        {
            "piece_id": pd.Series([piece_id] * len(frame), dtype="str"),
            "frame": (frame + frame_offset).astype(np.int32),
            "pitch": (pitch + min_pitch).astype(np.int16),
            "velocity": np.full(len(frame), velocity, dtype=np.int16),
        }
    )


def rows_to_roll(rows: pd.DataFrame, min_pitch: int, n_pitches: int) -> np.ndarray:
    """Dense (frames, pitches) 0/1 float32 array of one piece's store rows (frame 0 first)."""
    pieces = sparse_pieces(rows, min_pitch, n_pitches)
    if not pieces.piece_ids:
        return np.zeros((0, n_pitches), dtype=np.float32)
    frames = np.concatenate(pieces.frames)
    pitches = np.concatenate(pieces.pitches)
    n = int(frames.max()) + 1
    roll = np.zeros((n, n_pitches), dtype=np.float32)
    roll[frames, pitches] = 1.0
    return roll


class PianorollWindows(Dataset):
    """Windows of ``window_frames`` frames: items {"roll": (T, P), "mask": (T,)}.

    Training (``random_offsets=True``): an epoch has ``ceil(n_frames / T)`` items per
    piece (longer pieces count more); item i of epoch e starts at an offset drawn from
    a generator seeded by (seed, e, i), so an epoch's windows are a pure function of
    the seed, the epoch and the index (what resuming from a checkpoint relies on).
    Evaluation: consecutive windows every T frames, covering each piece once.

    ``set_augment`` (training only; fit calls it when ``train.augment`` is active):
    item i of epoch e is then transposed and stretched by ``aug.draw(seed, e, i)``
    (`augmented_window`), at the same offset it has unaugmented. A draw of (0, 1.0)
    gives exactly the unaugmented window.
    """

    def __init__(
        self,
        pieces: SparsePieces,
        window_frames: int,
        n_pitches: int,
        random_offsets: bool,
        seed: int = 0,
    ):
        self.pieces = pieces
        self.window_frames = window_frames
        self.n_pitches = n_pitches
        self.index = WindowIndex(pieces.n_frames, window_frames, random_offsets, seed)
        self.augment: Augment | None = None

    def set_augment(self, aug: Augment | None) -> None:
        """Transpose and stretch each window by ``aug.draw(seed, epoch, index)``."""
        self.augment = aug if aug is not None and aug.active else None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random offsets (fit calls this at each epoch)."""
        self.index.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        piece, start = self.index.locate(index)
        n_frames = self.index.lengths[piece]
        cells = (self.pieces.frames[piece], self.pieces.pitches[piece], n_frames, start)
        semitones, factor = 0, 1.0
        if self.augment is not None:
            semitones, factor = self.augment.draw(self.index.seed, self.index.epoch, index)
        if semitones == 0 and factor == 1.0:
            roll, mask = dense_window(*cells, self.window_frames, self.n_pitches)
        else:
            roll, mask = augmented_window(
                *cells, self.window_frames, self.n_pitches, semitones, factor
            )
        return {"roll": torch.from_numpy(roll), "mask": torch.from_numpy(mask)}


def split_pieces(store: StoreData, split: str, min_pitch: int, n_pitches: int) -> SparsePieces:
    """The sparse pieces of one split of a pianoroll store."""
    if split not in store.rows:
        raise KeyError(f"pianoroll store {store.path or ''}: no '{split}' split")
    return sparse_pieces(store.rows[split], min_pitch, n_pitches)


def make_windows(
    store: StoreData, window_frames: int, min_pitch: int, n_pitches: int, split: str
) -> PianorollWindows:
    """Random-offset windows for train, covering windows otherwise.

    The training offsets are seeded from ``torch.initial_seed()`` at construction, so
    the loop's seed (``train.seed``) fixes them.
    """
    pieces = split_pieces(store, split, min_pitch, n_pitches)
    if split == "train":
        seed = int(torch.initial_seed() % (2**63))
        return PianorollWindows(pieces, window_frames, n_pitches, random_offsets=True, seed=seed)
    return PianorollWindows(pieces, window_frames, n_pitches, random_offsets=False)


def active_per_pitch(pieces: SparsePieces, n_pitches: int) -> np.ndarray:
    """Number of active cells of each pitch, over all pieces."""
    counts = np.zeros(n_pitches, dtype=np.float64)
    for pitches in pieces.pitches:
        counts += np.bincount(pitches, minlength=n_pitches)
    return counts


def pitch_rates(pieces: SparsePieces, n_pitches: int) -> np.ndarray:
    """Fraction of frames in which each pitch is active, over all pieces."""
    total = float(pieces.n_frames.sum())
    counts = active_per_pitch(pieces, n_pitches)
    return counts / total if total else np.full(n_pitches, np.nan)


@dataclass(frozen=True)
class CellCounts:
    """What a per-pitch baseline needs: train rates and the test cells it is scored on.

    The test cells are the frames up to each piece's last active frame, as the
    evaluation windows' masks count them.
    """

    rates: np.ndarray  # P(active) of each pitch in a train frame, in [EPS, 1 - EPS]
    active: np.ndarray  # active test cells of each pitch
    inactive: np.ndarray  # silent test cells of each pitch
    n_cells: float  # all test cells


def cell_counts(store: StoreData, min_pitch: int, n_pitches: int) -> CellCounts | None:
    """Train rates and test counts of the store; None when train or test is empty."""
    train = split_pieces(store, "train", min_pitch, n_pitches)
    test = split_pieces(store, "test", min_pitch, n_pitches)
    n_cells = float(test.n_frames.sum()) * n_pitches
    if not train.piece_ids or n_cells == 0:
        log.warning("pianoroll baseline: empty train or test split; returning NaN")
        return None
    rates = np.clip(pitch_rates(train, n_pitches), BASELINE_EPS, 1 - BASELINE_EPS)
    active = active_per_pitch(test, n_pitches)
    return CellCounts(rates, active, test.n_frames.sum() - active, n_cells)


def bernoulli_numbers(counts: CellCounts | None) -> dict[str, float]:
    """``baseline_nll`` and ``baseline_density`` of `bernoulli_baseline` from `counts`."""
    if counts is None:
        return {"baseline_nll": float("nan"), "baseline_density": float("nan")}
    p, active = counts.rates, counts.active
    bce = -(active * np.log(p) + counts.inactive * np.log1p(-p)).sum() / counts.n_cells
    return {"baseline_nll": float(bce), "baseline_density": float(active.sum() / counts.n_cells)}


def bernoulli_baseline(store: StoreData, min_pitch: int, n_pitches: int) -> dict[str, float]:
    """Per-pitch Bernoulli baseline: BCE (nats per cell) of train activation rates on test.

    Each pitch is predicted active in every test frame with the probability it is
    active in a train frame (clipped into [BASELINE_EPS, 1 - BASELINE_EPS]); the mean
    BCE over all test cells (`CellCounts`) is ``baseline_nll``.
    """
    return bernoulli_numbers(cell_counts(store, min_pitch, n_pitches))


def store_pitch_range(store: StoreData) -> tuple[int, int, float]:
    """(min_pitch, n_pitches, frame_ms) from the pianoroll store's params."""
    params = store.params
    try:
        min_pitch, max_pitch = int(params.min_pitch), int(params.max_pitch)
        frame_ms = float(params.frame_ms)
    except AttributeError as exc:
        raise ValueError(
            f"pianoroll store {store.path or ''}: params lack {exc.name!r} "
            "(need min_pitch, max_pitch, frame_ms)"
        ) from exc
    return min_pitch, max_pitch - min_pitch + 1, frame_ms


# --------------------------------------------------------------------------------------
# Config checks shared by the autoencoder and VAE configs


def validate_backbone(config: Any) -> None:
    """Checks shared by the autoencoder and VAE configs."""
    levels = len(config.filters)
    require(levels >= 1, "filters must list at least one level")
    require(all(f > 0 for f in config.filters), "filters must be > 0")
    require(
        config.window_frames > 0 and config.window_frames % (2**levels) == 0,
        f"window_frames must be a positive multiple of {2**levels} (2 ** levels)",
    )
    require(config.n_pitches >= 0 and config.min_pitch >= 0, "pitch range must be >= 0")
    require(config.frame_ms >= 0, "frame_ms must be >= 0")


def prepare(store: StoreData, config: Any) -> Any:
    """Fill the pitch range and frame length in from the pianoroll store's params."""
    min_pitch, n_pitches, frame_ms = store_pitch_range(store)
    return dataclasses.replace(config, min_pitch=min_pitch, n_pitches=n_pitches, frame_ms=frame_ms)


def padded_pitches(config: Any) -> int:
    """Pitch axis rounded up to a multiple of 2 ** levels (the pooling needs it)."""
    unit = 2 ** len(config.filters)
    return int(math.ceil(config.n_pitches / unit) * unit)


def check_prepared(config: Any) -> None:
    if config.n_pitches <= 0 or config.frame_ms <= 0:
        raise ValueError(
            "config has no pitch range/frame length: build it with the spec's prepare(store, "
            "config) (fit does) or load it from a checkpoint"
        )


# --------------------------------------------------------------------------------------
# The shared convolutional backbone


class ConvEncoder(nn.Module):
    """Per level conv3x3 + ReLU then 2x2 max pooling; then a conv3x3 bottleneck."""

    def __init__(self, filters: tuple[int, ...]):
        super().__init__()
        channels = [1, *filters]
        self.levels = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i + 1], 3, padding=1) for i in range(len(filters))
        )
        self.bottleneck = nn.Conv2d(filters[-1], filters[-1], 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, 1, T, P) -> bottleneck (B, F_last, T / 2^L, P / 2^L) and per-level maps."""
        skips = []
        for conv in self.levels:
            x = F.relu(conv(x))  # (B, F_i, T_i, P_i)
            skips.append(x)
            x = F.max_pool2d(x, 2)  # (B, F_i, T_i / 2, P_i / 2)
        return F.relu(self.bottleneck(x)), skips


class ConvDecoder(nn.Module):
    """Per level a 2x2 transposed conv (x2 upsampling) [+ skip] then conv3x3 + ReLU."""

    def __init__(self, filters: tuple[int, ...]):
        super().__init__()
        reversed_filters = list(reversed(filters))
        inputs = [filters[-1], *reversed_filters[:-1]]
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
            for c_in, c_out in zip(inputs, reversed_filters, strict=True)
        )
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for c in reversed_filters)
        self.out = nn.Conv2d(filters[0], 1, 1)
        # start at the log-odds of a typical cell density rather than at p = 0.5: the
        # first steps then learn music, not that most cells are silent
        nn.init.constant_(self.out.bias, math.log(INITIAL_DENSITY / (1 - INITIAL_DENSITY)))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Bottleneck (B, F_last, T / 2^L, P / 2^L) -> logits (B, 1, T, P)."""
        for level, (up, conv) in enumerate(zip(self.ups, self.convs, strict=True)):
            x = up(x)  # (B, F_i, T_i, P_i)
            if skips is not None:
                x = x + skips[-1 - level]  # U-Net style skip connection
            x = F.relu(conv(x))
        return self.out(x)


def masked_bce(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of per-cell BCE over valid frames, and the number of valid cells.

    Args:
        logits, target: (B, T, P); mask: (B, T) with 1 for frames inside the piece.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, T, P)
    cells = mask.sum() * target.size(-1)
    return (bce * mask[..., None]).sum(), cells.clamp(min=1.0)


def pad_pitches(roll: torch.Tensor, width: int) -> torch.Tensor:
    """(B, T, P) -> (B, T, width), zero cells above the pitch range."""
    return F.pad(roll, (0, width - roll.size(-1)))


# --------------------------------------------------------------------------------------
# Dataset and baseline of both models


def make_dataset(store: StoreData, config: Any, split: str) -> PianorollWindows:
    """Windows of one split (random offsets for train); see `PianorollWindows`.

    Any prepared config with window_frames/min_pitch/n_pitches (autoencoder and VAE).
    """
    check_prepared(config)
    return make_windows(store, config.window_frames, config.min_pitch, config.n_pitches, split)


def baseline(store: StoreData, config: Any) -> dict[str, float]:
    """Per-pitch Bernoulli baseline (train activation rates), BCE per test cell (both models)."""
    min_pitch, n_pitches, _ = store_pitch_range(store)
    return bernoulli_baseline(store, min_pitch, n_pitches)
