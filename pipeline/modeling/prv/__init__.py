"""The prv family: the data the biaxial LSTM, PopH and the frame transformer train on.

Windows of the prv (play/replay/volume) store, styles, the trivial baseline and
`prepare` (the store's grid and style vocabulary filled into a model config), and the
networks' shared inputs and losses (`StepFeatures`, `prv_losses`): every spec names
them. The networks are the models' own (`pipeline.modeling.prv.biaxial`, PopH
extending it in ``poph``, ``frame_transformer``); sampling is ``prv/sampling.py``.

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

from pipeline.modeling.base import Augment, StoreData, WindowIndex

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
    """Items ``{"x": (seq_len + 1, P, 3), "mask": (seq_len,), "style", "start"}``.

    ``style`` is the int64 style index, ``start`` the int64 step of ``x[1]`` in its
    piece (the models' beat feature counts steps from it).

    Training (``random_offsets=True``): ``ceil(n_steps / seq_len)`` items per piece an
    epoch, item i of epoch e at an offset seeded by (seed, e, i) (`WindowIndex`).
    Evaluation: consecutive windows, each step of each piece predicted exactly once.

    ``set_augment`` (train only; fit calls it when ``train.augment`` is active)
    transposes and time-stretches each window by ``Augment.draw(seed, epoch, index)``:
    see `augment_window`. Without it (or with it inactive) items are exactly the
    recorded windows.
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
        self.augment: Augment | None = None

    def set_augment(self, augment: Augment) -> None:
        """Transpose/stretch every window from now on (an inactive `Augment` is a no-op)."""
        self.augment = augment if augment.active else None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random offsets (fit calls this at each epoch)."""
        self.index.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        piece, start = self.index.locate(index)
        n_steps = self.index.lengths[piece]
        if self.augment is None:
            x = dense_steps(self.pieces, piece, start - 1, self.seq_len + 1, self.n_pitches)
            valid = n_steps - start  # predicted steps inside the piece
            first = start
        else:
            semitones, factor = self.augment.draw(self.index.seed, self.index.epoch, index)
            x, valid = augment_window(
                self.pieces, piece, start, self.seq_len, self.n_pitches, semitones, factor
            )
            first = int(round(start * factor))
        mask = np.zeros(self.seq_len, dtype=np.float32)
        mask[: max(0, min(self.seq_len, valid))] = 1.0
        return {
            "x": torch.from_numpy(x),
            "mask": torch.from_numpy(mask),
            "style": torch.tensor(int(self.style_ids[piece]), dtype=torch.long),
            "start": torch.tensor(first, dtype=torch.long),
        }


def stretch_spans(length: int, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Which source steps each of `length` output steps of a time stretch covers.

    Output step j shows source step ``shown[j] = floor(j / factor)`` and spans source
    steps ``shown[j] .. hi[j] - 1``: when the stretch compresses (factor < 1) it also
    absorbs the steps skipped before the next output step. Its onsets are those of
    ``lo[j] .. hi[j] - 1``, the steps no earlier output step covered, so each source
    onset lands on exactly one output step (``lo[j] == hi[j]``: a held repeat).

    Returns:
        ``shown`` (length,) and ``[lo, hi]`` (2, length), int64.
    """
    j = np.arange(length + 1)
    shown = np.floor(j / factor + 1e-9).astype(np.int64)
    hi = np.maximum(shown[:-1] + 1, shown[1:])
    lo = np.concatenate([[0], hi[:-1]])
    return shown[:-1], np.stack([lo, hi])


def augment_window(
    pieces: PrvPieces,
    piece: int,
    start: int,
    seq_len: int,
    n_pitches: int,
    semitones: int,
    factor: float,
) -> tuple[np.ndarray, int]:
    """The ``(seq_len + 1, P, 3)`` window at `start`, transposed and time-stretched.

    Time stretch (``factor`` > 1: slower): the window keeps its ``seq_len + 1`` steps
    and reads about ``(seq_len + 1) / factor`` source steps from ``start - 1`` on.
    Output step j sounds (play, and volume = the loudest) wherever any source step
    of its span (`stretch_spans`) sounds, and replays wherever an onset of a source
    step it is the first to cover replays; so a held note stays one note, an onset
    stays exactly one onset (it is never repeated, and a skipped step's onset moves
    to the next output step), and replay implies play. Transposition shifts the pitch
    axis by ``semitones``; cells pushed past either end of ``0 .. n_pitches - 1`` are
    dropped (not octave-folded back: folding would invent doublings the piece lacks).

    Returns:
        the window and how many of its predicted steps (``x[1:]``) lie inside the piece.
    """
    length = seq_len + 1
    shown, (lo, hi) = stretch_spans(length, factor)
    n_src = int(hi[-1])
    src = dense_steps(pieces, piece, start - 1, n_src, n_pitches)
    out = np.zeros((length, n_pitches, 3), dtype=np.float32)
    for j in range(length):
        span = src[shown[j] : hi[j]]
        out[j, :, PLAY] = span[..., PLAY].max(axis=0)
        out[j, :, VOLUME] = span[..., VOLUME].max(axis=0)
        if lo[j] < hi[j]:
            out[j, :, REPLAY] = src[lo[j] : hi[j], :, REPLAY].max(axis=0)
    if semitones:
        shifted = np.zeros_like(out)
        if semitones > 0:
            shifted[:, semitones:] = out[:, : n_pitches - semitones]
        else:
            shifted[:, :semitones] = out[:, -semitones:]
        out = shifted
    # predicted step j >= 1 lies inside the piece when its shown source step does
    n_steps = int(pieces.n_steps[piece])
    valid = int(np.sum(start - 1 + shown[1:] < n_steps))
    return out, valid


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
# A model config from the store


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


def make_dataset(store: StoreData, config: Any, split: str) -> PrvWindows:
    """Windows of one split (random offsets for train); see `PrvWindows`."""
    check_prepared(config)
    return make_windows(store, config.seq_len, config.n_pitches, config.styles, split)


def baseline(store: StoreData, config: Any) -> dict[str, float]:
    """Per-pitch play rates, replay rate and mean volume of train, scored on test."""
    _, n_pitches, _ = store_prv_params(store)
    return prv_baseline(store, n_pitches)


# --------------------------------------------------------------------------------------
# The networks' shared inputs and losses


class StepFeatures(nn.Module):
    """The inputs per (step, pitch) of the biaxial LSTM, PopH and the frame transformer:
    each time axis runs over `time_inputs` for every pitch, each note axis over
    `note_inputs`; `init_features` builds their layers from a config with the biaxial
    LSTM's input keys (`pipeline.modeling.prv.biaxial.BiaxialConfig`).
    """

    config: Any

    def init_features(self, config: Any) -> None:
        """The pitch position/class buffers, the style embedding, DeepJ's vicinity conv."""
        n_pitches = config.n_pitches
        pitch = torch.arange(n_pitches)
        pitch_class = F.one_hot((pitch + config.min_pitch) % 12, 12).float()  # (P, 12)
        position = (pitch.float() / max(1, n_pitches - 1))[:, None]  # (P, 1)
        self.register_buffer("pitch_features", torch.cat([position, pitch_class], dim=1))
        self.register_buffer("pitch_class_onehot", pitch_class, persistent=False)
        self.style_embedding = (
            nn.Embedding(len(config.styles), config.style_dim) if config.style_dim else None
        )
        self.vicinity = (
            nn.Conv1d(3, config.vicinity_filters, config.vicinity_kernel)
            if config.vicinity_filters
            else None
        )

    @property
    def n_features(self) -> int:
        """Size of `time_inputs`' per-pitch feature vector."""
        cfg = self.config
        neighbours = 2 * (2 * cfg.neighbour_window + 1)  # play and replay of each
        extra = cfg.vicinity_filters + int(cfg.pitch_class_context) + cfg.beat_period
        return neighbours + 1 + 13 + extra + cfg.style_dim  # 1: own volume; 13: pitch

    def style_vectors(self, style: torch.Tensor) -> torch.Tensor:
        """(B,) style indices -> (B, style_dim) embeddings ((B, 0) without styles)."""
        if self.style_embedding is None:
            return torch.zeros(style.size(0), 0, device=style.device)
        return self.style_embedding(style)

    def time_inputs(
        self, prev: torch.Tensor, style_vec: torch.Tensor, step: torch.Tensor
    ) -> torch.Tensor:
        """(B, T, P, 3) previous steps -> (B, T, P, n_features) time-axis inputs.

        Per pitch: neighbours' previous play/replay (``neighbour_window``), own
        previous volume, position and pitch class, DeepJ's vicinity convolution of
        the previous step (``vicinity_filters``), the pitch-class context (how many
        pitches of this pitch's class sounded), the beat one-hot of the predicted
        step and the style. ``step`` (B, T) is each predicted step's index in its
        piece.
        """
        b, t, p, _ = prev.shape
        cfg = self.config
        w = cfg.neighbour_window
        parts = []
        if w:
            padded = F.pad(prev[..., :VOLUME], (0, 0, w, w))  # (B, T, P + 2w, 2)
            neighbours = padded.unfold(2, 2 * w + 1, 1)  # (B, T, P, 2, 2w + 1)
            parts.append(neighbours.reshape(b, t, p, 2 * (2 * w + 1)))
        else:
            parts.append(prev[..., :VOLUME])
        parts += [prev[..., VOLUME:], self.pitch_features.expand(b, t, p, 13)]
        if self.vicinity is not None:
            k = cfg.vicinity_kernel  # Keras "same": the extra pad of an even kernel on the right
            flat = F.pad(prev.reshape(b * t, p, 3).transpose(1, 2), ((k - 1) // 2, k // 2))
            conv = self.vicinity(flat)  # (B*T, C, P)
            parts.append(torch.tanh(conv).transpose(1, 2).reshape(b, t, p, -1))
        if cfg.pitch_class_context:
            classes = self.pitch_class_onehot  # (P, 12)
            counts = prev[..., PLAY] @ classes  # (B, T, 12)
            parts.append((counts @ classes.T)[..., None])  # (B, T, P, 1)
        if cfg.beat_period:
            beat = F.one_hot(step.remainder(cfg.beat_period), cfg.beat_period).to(prev.dtype)
            parts.append(beat[:, :, None, :].expand(b, t, p, cfg.beat_period))
        parts.append(style_vec[:, None, None, :].expand(b, t, p, style_vec.size(-1)))
        return torch.cat(parts, dim=-1)

    def note_inputs(
        self, h: torch.Tensor, current: torch.Tensor, style_vec: torch.Tensor
    ) -> torch.Tensor:
        """(B, T, P, H) features + (B, T, P, 3) this step's truth -> (B, T, P, H + 3 + S):
        pitch p gets pitch p - 1's play, replay and volume (zeros below), as DeepJ's."""
        b, t, p, _ = h.shape
        lower = F.pad(current, (0, 0, 1, 0))[:, :, :p]  # (B, T, P, 3)
        style = style_vec[:, None, None, :].expand(b, t, p, style_vec.size(-1))
        return torch.cat([h, lower, style], dim=-1)


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
        played cell), cells (number of pitch-steps), played (number of played cells),
        play_rate_bias (mean predicted P(play) minus the true play rate, per
        pitch-step: > 0 means the model expects more sound than the data has).
        The model weights replay and dynamics into its loss (``aux_loss_cells``).
    """
    cell_mask = mask[..., None].expand_as(target[..., PLAY])  # (B, T, P)
    played = target[..., PLAY] * cell_mask  # (B, T, P)
    cells = cell_mask.sum().clamp(min=1.0)
    n_played = played.sum()
    bce = F.binary_cross_entropy_with_logits
    play = bce(logits[..., PLAY], target[..., PLAY], reduction="none")
    replay = bce(logits[..., REPLAY], target[..., REPLAY], reduction="none")
    volume_error = (torch.sigmoid(logits[..., VOLUME]) - target[..., VOLUME]) ** 2
    predicted_rate = (torch.sigmoid(logits[..., PLAY]) * cell_mask).sum() / cells
    return {
        "play": (play * cell_mask).sum() / cells,
        "replay": (replay * played).sum() / n_played.clamp(min=1.0),
        "dynamics": (volume_error * played).sum() / n_played.clamp(min=1.0),
        "cells": cells,
        "played": n_played,
        "play_rate_bias": predicted_rate - n_played / cells,
    }
