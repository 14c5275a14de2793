"""The prv family: what the biaxial LSTM and PopH share.

Windows of the prv (play/replay/volume) store, styles and their baseline, and the
biaxial LSTM network itself (`Config`, `BiaxialLSTM`, `prv_losses`, `prepare`): the
``biaxial`` model registers it as is (`pipeline.modeling.prv.biaxial`) and ``poph``
subclasses it (`pipeline.modeling.prv.poph`). Sampling for both is
`pipeline.modeling.prv.sampling`.

The prv store is sparse: one row (piece_id, step, pitch, replay, volume) per played
cell, pitch an index ``0 .. n_pitches - 1`` above the store's ``min_pitch``. Pieces
stay sparse in memory (step-sorted cell arrays, so memory follows the store, not
steps x pitches: a dense MAESTRO would need gigabytes) and a window is made dense only
when fetched: a ``(steps, n_pitches, 3)`` float array whose channels are

* ``PLAY`` (0): 1 where the pitch sounds at that step;
* ``REPLAY`` (1): 1 where it is (re)struck at that step (DeepJ's "replay");
* ``VOLUME`` (2): velocity / 127 of the sounding note, 0 where silent.

A piece lasts ``n_steps`` = its last played step + 1. Dataset items hold
``seq_len + 1`` steps: ``x[0]`` is the step *before* the window (zeros before a
piece's first step), the model's input for predicting ``x[1]``; ``x[1:]`` are the
``seq_len`` predicted steps, and ``mask`` (seq_len,) is 0 for those past the piece's
end, so padding never counts in a loss.

Styles (DeepJ's composer conditioning) come from the ``style`` column of the store's
``pieces.parquet`` (the composer for MAESTRO and the corpus, the source name
otherwise). The vocabulary is ``["<unk>", *sorted styles of the train pieces]``;
any other style (a composer seen only in test) maps to index 0.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pipeline.core.params import require
from pipeline.modeling.base import StoreData, WindowIndex

log = logging.getLogger(__name__)

PLAY, REPLAY, VOLUME = 0, 1, 2
UNKNOWN_STYLE = "<unk>"
# Baseline probabilities are clipped into [BASELINE_EPS, 1 - BASELINE_EPS].
BASELINE_EPS = 1e-4
PRV_COLUMNS = ("piece_id", "step", "pitch", "replay", "volume")
# Initial bias of the play logit: sigmoid(-2) ~= 0.12, about the share of played cells
# in piano music on 48 pitches, so training does not spend its first steps on it.
INITIAL_PLAY_LOGIT = -2.0


@dataclass
class PrvPieces:
    """Played cells of several pieces, grouped by piece and sorted by (step, pitch).

    Attributes:
        piece_ids: one id per piece.
        steps, pitches: per piece, int64 step and pitch index of each played cell.
        replay, volume: per piece, float32 replay flag (0/1) and volume of each cell.
        n_steps: per piece, last played step + 1.
    """

    piece_ids: list[str]
    steps: list[np.ndarray]
    pitches: list[np.ndarray]
    replay: list[np.ndarray]
    volume: list[np.ndarray]
    n_steps: np.ndarray


def check_columns(rows: pd.DataFrame, where: str = "prv rows") -> None:
    """Raise ValueError naming the first missing prv column."""
    for column in PRV_COLUMNS:
        if column not in rows:
            raise ValueError(f"{where}: no '{column}' column (columns: {list(rows.columns)})")


def sparse_pieces(rows: pd.DataFrame, n_pitches: int) -> PrvPieces:
    """Group prv rows by piece (sorted ids); cells outside ``0..n_pitches-1`` are dropped."""
    check_columns(rows)
    pitch = rows["pitch"].to_numpy(np.int64)
    step = rows["step"].to_numpy(np.int64)
    keep = (pitch >= 0) & (pitch < n_pitches) & (step >= 0)
    dropped = int((~keep).sum())
    if dropped:
        log.debug(
            "prv: %d cells outside pitches 0..%d or before step 0 dropped", dropped, n_pitches - 1
        )
    ids = rows["piece_id"].to_numpy()[keep]
    if len(ids) == 0:
        return PrvPieces([], [], [], [], [], np.zeros(0, np.int64))
    pitch, step = pitch[keep], step[keep]
    replay = rows["replay"].to_numpy(bool)[keep].astype(np.float32)
    volume = np.clip(rows["volume"].to_numpy(np.float32)[keep], 0.0, 1.0)
    codes, uniques = pd.factorize(ids, sort=True)
    order = np.lexsort((pitch, step, codes))
    codes, step, pitch = codes[order], step[order], pitch[order]
    replay, volume = replay[order], volume[order]
    bounds = np.flatnonzero(np.diff(codes)) + 1
    steps = np.split(step, bounds)
    n_steps = np.array([int(s[-1]) + 1 for s in steps], dtype=np.int64)
    return PrvPieces(
        [str(u) for u in uniques],
        steps,
        np.split(pitch, bounds),
        np.split(replay, bounds),
        np.split(volume, bounds),
        n_steps,
    )


def dense_steps(
    pieces: PrvPieces, piece: int, start: int, length: int, n_pitches: int
) -> np.ndarray:
    """Dense ``(length, n_pitches, 3)`` play/replay/volume of steps ``start..start+length-1``.

    ``start`` may be negative (steps before the piece are silent).
    """
    out = np.zeros((length, n_pitches, 3), dtype=np.float32)
    steps = pieces.steps[piece]
    lo, hi = np.searchsorted(steps, [start, start + length])
    t = steps[lo:hi] - start
    p = pieces.pitches[piece][lo:hi]
    out[t, p, PLAY] = 1.0
    out[t, p, REPLAY] = pieces.replay[piece][lo:hi]
    out[t, p, VOLUME] = pieces.volume[piece][lo:hi]
    return out


def rows_to_dense(rows: pd.DataFrame, n_pitches: int) -> np.ndarray:
    """Dense ``(n_steps, n_pitches, 3)`` array of one piece's prv rows, from step 0."""
    pieces = sparse_pieces(rows, n_pitches)
    if not pieces.piece_ids:
        return np.zeros((0, n_pitches, 3), dtype=np.float32)
    if len(pieces.piece_ids) > 1:
        raise ValueError(f"prv rows: expected one piece, got {len(pieces.piece_ids)}")
    return dense_steps(pieces, 0, 0, int(pieces.n_steps[0]), n_pitches)


def dense_to_rows(x: np.ndarray, piece_id: str, step_offset: int = 0) -> pd.DataFrame:
    """Played cells of a dense ``(steps, pitches, 3)`` array as prv store rows."""
    step, pitch = np.nonzero(x[..., PLAY] > 0.5)
    return pd.DataFrame(
        {
            "piece_id": pd.Series([piece_id] * len(step), dtype=object),
            "step": (step + step_offset).astype(np.int32),
            "pitch": pitch.astype(np.int16),
            "replay": x[step, pitch, REPLAY] > 0.5,
            "volume": np.clip(x[step, pitch, VOLUME], 0.0, 1.0).astype(np.float32),
        }
    )


# --------------------------------------------------------------------------------------
# Styles


def piece_styles(store: StoreData) -> dict[str, str | None]:
    """piece_id -> style from the store's pieces table (None where missing)."""
    pieces = store.pieces
    if "style" not in pieces:
        raise ValueError(
            f"prv store {store.path or ''}: pieces.parquet has no 'style' column "
            f"(columns: {list(pieces.columns)})"
        )
    styles: dict[str, str | None] = {}
    for pid, style in zip(pieces["piece_id"].astype(str), pieces["style"], strict=True):
        styles[pid] = str(style) if isinstance(style, str) and style else None
    return styles


def style_vocabulary(store: StoreData) -> list[str]:
    """``["<unk>", *sorted distinct styles of the train pieces]``.

    The train pieces are those with rows in the train split (falling back to the
    pieces table's ``split`` column when the rows lack a train split).
    """
    by_piece = piece_styles(store)
    if "train" in store.rows:
        ids = set(store.rows["train"]["piece_id"].astype(str).unique())
    elif "split" in store.pieces:
        ids = set(store.pieces.loc[store.pieces["split"] == "train", "piece_id"].astype(str))
    else:
        raise ValueError(f"prv store {store.path or ''}: no train split to take styles from")
    found = {by_piece.get(pid) for pid in ids} - {None, UNKNOWN_STYLE}
    return [UNKNOWN_STYLE, *sorted(str(s) for s in found)]


def style_index(styles: Sequence[str], style: str | None) -> int:
    """Index of `style` in the vocabulary; 0 (``<unk>``) for None or an unknown style."""
    if style is None:
        return 0
    try:
        return list(styles).index(style)
    except ValueError:
        return 0


# --------------------------------------------------------------------------------------
# Dataset


class PrvWindows(Dataset):
    """Items ``{"x": (seq_len + 1, P, 3), "mask": (seq_len,), "style": int64 scalar}``.

    Training (``random_offsets=True``): an epoch has ``ceil(n_steps / seq_len)`` items
    per piece (longer pieces count more); item i of epoch e starts at an offset drawn
    from a generator seeded by (seed, e, i), so an epoch's windows are a pure function
    of the seed, the epoch and the index. Evaluation: consecutive windows every
    ``seq_len`` steps, so each step of each piece is predicted exactly once.
    """

    def __init__(
        self,
        pieces: PrvPieces,
        style_ids: np.ndarray,
        seq_len: int,
        n_pitches: int,
        random_offsets: bool,
        seed: int = 0,
    ):
        self.pieces = pieces
        self.style_ids = style_ids
        self.seq_len = seq_len
        self.n_pitches = n_pitches
        self.index = WindowIndex(pieces.n_steps, seq_len, random_offsets, seed)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random offsets (fit calls this at each epoch)."""
        self.index.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        piece, start = self.index.locate(index)
        n_steps = self.index.lengths[piece]
        x = dense_steps(self.pieces, piece, start - 1, self.seq_len + 1, self.n_pitches)
        mask = np.zeros(self.seq_len, dtype=np.float32)
        mask[: max(0, min(self.seq_len, n_steps - start))] = 1.0
        return {
            "x": torch.from_numpy(x),
            "mask": torch.from_numpy(mask),
            "style": torch.tensor(int(self.style_ids[piece]), dtype=torch.long),
        }


def split_pieces(store: StoreData, split: str, n_pitches: int) -> PrvPieces:
    """The sparse pieces of one split of a prv store."""
    if split not in store.rows:
        raise KeyError(f"prv store {store.path or ''}: no '{split}' split")
    return sparse_pieces(store.rows[split], n_pitches)


def make_windows(
    store: StoreData, seq_len: int, n_pitches: int, styles: Sequence[str], split: str
) -> PrvWindows:
    """Random-offset windows for train, covering windows otherwise.

    The training offsets are seeded from ``torch.initial_seed()`` at construction, so
    the loop's seed (``train.seed``) fixes them.
    """
    pieces = split_pieces(store, split, n_pitches)
    by_piece = piece_styles(store)
    style_ids = np.array(
        [style_index(styles, by_piece.get(pid)) for pid in pieces.piece_ids], dtype=np.int64
    )
    if split == "train":
        seed = int(torch.initial_seed() % (2**63))
        return PrvWindows(pieces, style_ids, seq_len, n_pitches, random_offsets=True, seed=seed)
    return PrvWindows(pieces, style_ids, seq_len, n_pitches, random_offsets=False)


# --------------------------------------------------------------------------------------
# Baseline


def prv_baseline(store: StoreData, n_pitches: int) -> dict[str, float]:
    """Trivial baseline in the units of the biaxial/poph loss terms, on the test split.

    * ``baseline_nll``: each pitch is played at every test step with the probability
      it is played at a train step (clipped into [BASELINE_EPS, 1 - BASELINE_EPS]);
      mean BCE (nats) over all test pitch-steps up to each piece's last played step
      (the cells the models' ``nll`` averages over).
    * ``baseline_replay``: BCE of the train replay rate among played cells, on the
      test played cells (the models' replay term is masked by play the same way).
    * ``baseline_dynamics``: MSE of the train mean volume on the test played cells.
    """
    nan = float("nan")
    train = split_pieces(store, "train", n_pitches)
    test = split_pieces(store, "test", n_pitches)
    n_cells = float(test.n_steps.sum()) * n_pitches
    if not train.piece_ids or n_cells == 0:
        log.warning("prv baseline: empty train or test split; returning NaN")
        return {"baseline_nll": nan, "baseline_replay": nan, "baseline_dynamics": nan}
    played = np.zeros(n_pitches, dtype=np.float64)
    for pitches in train.pitches:
        played += np.bincount(pitches, minlength=n_pitches)
    p = np.clip(played / float(train.n_steps.sum()), BASELINE_EPS, 1 - BASELINE_EPS)
    test_played = np.zeros(n_pitches, dtype=np.float64)
    for pitches in test.pitches:
        test_played += np.bincount(pitches, minlength=n_pitches)
    silent = test.n_steps.sum() - test_played
    nll = -(test_played * np.log(p) + silent * np.log1p(-p)).sum() / n_cells

    train_replay = np.concatenate(train.replay).astype(np.float64)
    train_volume = np.concatenate(train.volume).astype(np.float64)
    test_replay = np.concatenate(test.replay).astype(np.float64)
    test_volume = np.concatenate(test.volume).astype(np.float64)
    r = float(np.clip(train_replay.mean(), BASELINE_EPS, 1 - BASELINE_EPS))
    replay_bce = -(test_replay * math.log(r) + (1 - test_replay) * math.log1p(-r)).mean()
    dynamics_mse = ((test_volume - train_volume.mean()) ** 2).mean()
    return {
        "baseline_nll": float(nll),
        "baseline_replay": float(replay_bce),
        "baseline_dynamics": float(dynamics_mse),
    }


def store_prv_params(store: StoreData) -> tuple[int, int, float]:
    """(min_pitch, n_pitches, steps_per_second) from the prv store's params."""
    params = store.params
    try:
        min_pitch, n_pitches = int(params.min_pitch), int(params.n_pitches)
        steps_per_second = float(params.steps_per_second)
    except AttributeError as exc:
        raise ValueError(
            f"prv store {store.path or ''}: params lack {exc.name!r} "
            "(need min_pitch, n_pitches, steps_per_second)"
        ) from exc
    return min_pitch, n_pitches, steps_per_second


# --------------------------------------------------------------------------------------
# The biaxial LSTM (DeepJ), shared by biaxial and poph; described in
# `pipeline.modeling.prv.biaxial`


@dataclass(frozen=True, kw_only=True)
class Config:
    """The `models.biaxial` params section.

    Defaults beat the baseline after about a minute on two CPU cores (learning rate
    1e-2). Scale toward DeepJ: ``time_hidden: 256``, ``note_hidden: 128``,
    ``n_layers: 2``, ``style_dim: 64``, ``seq_len: 128``, ``dropout: 0.5``.
    ``styles``, ``min_pitch``, ``n_pitches`` and ``steps_per_second`` are filled in
    from the prv store by the spec's ``prepare`` (leave them empty/0); checkpoints
    keep the filled-in values, so ``--style NAME`` works from the checkpoint alone.
    """

    time_hidden: int  # time-axis LSTM units
    note_hidden: int  # note-axis LSTM units
    n_layers: int  # layers of each LSTM
    style_dim: int  # style embedding size (0: no style conditioning)
    neighbour_window: int  # semitones each side whose previous play/replay is input
    seq_len: int  # steps per training window (32 x 1/8 s = 4 s)
    dropout: float  # on the time- and note-axis outputs (and between layers)
    style_dropout: float  # P(a training window's style is replaced by <unk>)
    styles: tuple[str, ...]  # style vocabulary, "<unk>" first (prepare)
    min_pitch: int = 0  # MIDI pitch of index 0 (prepare)
    n_pitches: int = 0  # pitch axis size (prepare)
    steps_per_second: float = 0.0  # prv grid (prepare)

    def validate(self) -> None:
        require(self.time_hidden > 0 and self.note_hidden > 0, "hidden sizes must be > 0")
        require(self.n_layers >= 1, "n_layers must be >= 1")
        require(self.style_dim >= 0, "style_dim must be >= 0")
        require(self.neighbour_window >= 0, "neighbour_window must be >= 0")
        require(self.seq_len >= 1, "seq_len must be >= 1")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        require(0.0 <= self.style_dropout <= 1.0, "style_dropout must be in [0, 1]")
        require(
            not self.styles or self.styles[0] == UNKNOWN_STYLE,
            f"styles must start with {UNKNOWN_STYLE!r}",
        )
        require(len(set(self.styles)) == len(self.styles), "styles must be distinct")
        require(self.min_pitch >= 0 and self.n_pitches >= 0, "pitch range must be >= 0")
        require(self.min_pitch + self.n_pitches <= 128, "pitch range must end at <= 127")
        require(self.steps_per_second >= 0, "steps_per_second must be >= 0")


def prepare(store: StoreData, config: Any) -> Any:
    """Fill the style vocabulary and the grid (pitch range, steps/s) in from the store.

    A non-empty ``styles`` in params.yaml is kept (a fixed vocabulary); otherwise it
    is ``["<unk>", *sorted styles of the train pieces]``.
    """
    min_pitch, n_pitches, steps_per_second = store_prv_params(store)
    styles = tuple(config.styles) or tuple(style_vocabulary(store))
    return dataclasses.replace(
        config,
        styles=styles,
        min_pitch=min_pitch,
        n_pitches=n_pitches,
        steps_per_second=steps_per_second,
    )


def check_prepared(config: Any) -> None:
    if config.n_pitches <= 0 or config.steps_per_second <= 0 or not config.styles:
        raise ValueError(
            "config has no pitch range/grid/styles: build it with the spec's prepare(store, "
            "config) (fit does) or load it from a checkpoint"
        )


# --------------------------------------------------------------------------------------
# Losses


def prv_losses(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """DeepJ's three terms, each a mean over the cells it is defined on.

    Args:
        logits: (B, T, P, 3) play logit, replay logit, dynamics logit.
        target: (B, T, P, 3) true play, replay, volume.
        mask: (B, T), 1 for steps inside the piece.

    Returns:
        play (BCE per pitch-step), replay (BCE per played cell), dynamics (MSE per
        played cell), cells (number of pitch-steps), played (number of played cells).
    """
    cell_mask = mask[..., None].expand_as(target[..., PLAY])  # (B, T, P)
    played = target[..., PLAY] * cell_mask  # (B, T, P)
    cells = cell_mask.sum().clamp(min=1.0)
    n_played = played.sum()
    play = F.binary_cross_entropy_with_logits(
        logits[..., PLAY], target[..., PLAY], reduction="none"
    )
    replay = F.binary_cross_entropy_with_logits(
        logits[..., REPLAY], target[..., REPLAY], reduction="none"
    )
    volume_error = (torch.sigmoid(logits[..., VOLUME]) - target[..., VOLUME]) ** 2
    return {
        "play": (play * cell_mask).sum() / cells,
        "replay": (replay * played).sum() / n_played.clamp(min=1.0),
        "dynamics": (volume_error * played).sum() / n_played.clamp(min=1.0),
        "cells": cells,
        "played": n_played,
    }


# --------------------------------------------------------------------------------------
# The model


class BiaxialLSTM(nn.Module):
    """Time-axis then note-axis LSTM over prv steps; see `pipeline.modeling.prv.biaxial`.

    Subclasses change the architecture through two hooks: ``mix`` (time-axis
    features -> features for the note axis) with ``mix_out``/``context_steps``, and
    ``extra_losses`` (terms added to the loss).
    """

    def __init__(self, config: Config):
        super().__init__()
        check_prepared(config)
        self.config = config
        n_pitches, window = config.n_pitches, config.neighbour_window
        pitch = torch.arange(n_pitches)
        pitch_class = F.one_hot((pitch + config.min_pitch) % 12, 12).float()  # (P, 12)
        position = (pitch.float() / max(1, n_pitches - 1))[:, None]  # (P, 1)
        self.register_buffer("pitch_features", torch.cat([position, pitch_class], dim=1))
        self.style_embedding = (
            nn.Embedding(len(config.styles), config.style_dim) if config.style_dim else None
        )
        time_in = 2 * (2 * window + 1) + 1 + 13 + config.style_dim
        between = config.dropout if config.n_layers > 1 else 0.0
        self.time_lstm = nn.LSTM(
            time_in, config.time_hidden, config.n_layers, batch_first=True, dropout=between
        )
        note_in = self.mix_out + 2 + config.style_dim
        self.note_lstm = nn.LSTM(
            note_in, config.note_hidden, config.n_layers, batch_first=True, dropout=between
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.note_hidden, 3)
        with torch.no_grad():  # start near the data's sparsity, not at P(play) = 0.5
            self.head.bias[PLAY] = INITIAL_PLAY_LOGIT

    # -- hooks --------------------------------------------------------------------------

    @property
    def mix_out(self) -> int:
        """Feature size ``mix`` returns (the note axis's input size)."""
        return self.config.time_hidden

    @property
    def context_steps(self) -> int:
        """Time-axis steps ``mix`` needs to see when generating (1: only the current)."""
        return 1

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        """(B, P, T, time_hidden) time-axis outputs -> (B, P, T, mix_out); causal in T."""
        return h

    def extra_losses(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor], mask: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Extra loss terms: name -> (weighted term added to the loss, value to log)."""
        return {}

    # -- pieces -------------------------------------------------------------------------

    def style_vectors(self, style: torch.Tensor) -> torch.Tensor:
        """(B,) style indices -> (B, style_dim) embeddings ((B, 0) without styles)."""
        if self.style_embedding is None:
            return torch.zeros(style.size(0), 0, device=style.device)
        return self.style_embedding(style)

    def time_inputs(self, prev: torch.Tensor, style_vec: torch.Tensor) -> torch.Tensor:
        """(B, T, P, 3) previous steps + (B, S) style -> (B, T, P, F) time-axis inputs."""
        b, t, p, _ = prev.shape
        w = self.config.neighbour_window
        padded = F.pad(prev[..., :VOLUME], (0, 0, w, w))  # (B, T, P + 2w, 2)
        neighbours = padded.unfold(2, 2 * w + 1, 1)  # (B, T, P, 2, 2w + 1)
        neighbours = neighbours.reshape(b, t, p, 2 * (2 * w + 1))
        return torch.cat(
            [
                neighbours,
                prev[..., VOLUME:],  # (B, T, P, 1) own volume
                self.pitch_features.expand(b, t, p, 13),
                style_vec[:, None, None, :].expand(b, t, p, style_vec.size(-1)),
            ],
            dim=-1,
        )

    def note_inputs(
        self, h: torch.Tensor, current: torch.Tensor, style_vec: torch.Tensor
    ) -> torch.Tensor:
        """(B, T, P, H) features + (B, T, P, 3) this step's truth -> (B, T, P, H + 2 + S).

        Pitch p gets pitch p - 1's play and replay (zeros for the lowest pitch).
        """
        b, t, p, _ = h.shape
        lower = F.pad(current[..., :VOLUME], (0, 0, 1, 0))[:, :, :p]  # (B, T, P, 2)
        style = style_vec[:, None, None, :].expand(b, t, p, style_vec.size(-1))
        return torch.cat([h, lower, style], dim=-1)

    def logits(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """(B, T + 1, P, 3) steps, (B,) styles -> (B, T, P, 3) logits for steps 1..T."""
        prev, current = x[:, :-1], x[:, 1:]  # (B, T, P, 3) each
        b, t, p, _ = prev.shape
        style_vec = self.style_vectors(style)  # (B, S)
        inputs = self.time_inputs(prev, style_vec)  # (B, T, P, F)
        inputs = inputs.permute(0, 2, 1, 3).reshape(b * p, t, -1)  # (B*P, T, F)
        h, _ = self.time_lstm(inputs)  # (B*P, T, Ht)
        h = self.mix(self.drop(h).reshape(b, p, t, -1))  # (B, P, T, H)
        h = h.permute(0, 2, 1, 3)  # (B, T, P, H)
        note_in = self.note_inputs(h, current, style_vec).reshape(b * t, p, -1)
        out, _ = self.note_lstm(note_in)  # (B*T, P, Hn)
        return self.head(self.drop(out)).reshape(b, t, p, 3)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x, mask, style = batch["x"], batch["mask"], batch["style"]  # (B,T+1,P,3) (B,T) (B,)
        if self.training and self.config.style_dropout > 0:
            drop = torch.rand(style.shape, device=style.device) < self.config.style_dropout
            style = torch.where(drop, torch.zeros_like(style), style)
        logits = self.logits(x, style)
        terms = prv_losses(logits, x[:, 1:], mask)
        loss = terms["play"] + terms["replay"] + terms["dynamics"]
        out = {
            "nll": terms["play"].detach(),
            "play": terms["play"].detach(),
            "replay": terms["replay"].detach(),
            "dynamics": terms["dynamics"].detach(),
            "n_units": terms["cells"].detach(),
        }
        for name, (weighted, value) in self.extra_losses(logits, batch, mask).items():
            loss = loss + weighted
            out[name] = value.detach()
        out["loss"] = loss
        return out


def make_dataset(store: StoreData, config: Any, split: str) -> PrvWindows:
    """Windows of one split (random offsets for train); see `PrvWindows`."""
    check_prepared(config)
    return make_windows(store, config.seq_len, config.n_pitches, config.styles, split)


def baseline(store: StoreData, config: Any) -> dict[str, float]:
    """Per-pitch play rates, replay rate and mean volume of train, scored on test."""
    _, n_pitches, _ = store_prv_params(store)
    return prv_baseline(store, n_pitches)
