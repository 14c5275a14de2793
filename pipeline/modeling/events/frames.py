"""An upper bound on the frame NLL from the events model (`transformer`).

The Music Transformer gives a probability to each piece's event-token sequence, and
the events determine which keys sound at every frame, so the frames' probability is
at least the events' (other event sequences give the same frames: a re-struck note,
another velocity or timing). Hence ``-log P(frames) <= -log P(events)``, and the
events' NLL divided by the piece's frames is an **upper bound** on the frame NLL in
nats per frame (labelled so; loose, since it also pays for timing and velocity
tokens that frames do not have).

Each piece is scored whole: sliding windows of the model's ``seq_len`` tokens,
each new one moved by ``stride`` tokens and scoring only the tokens the previous
ones did not, so every token after the first (BOS) is scored once with at least
``seq_len - stride`` tokens of context (the first window's tokens with what precedes
them). ``stride = seq_len`` gives the consecutive windows `etude evaluate` scores.

Loaded by the `frames` stage only (not by training), like ``sampling.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.modeling.base import StoreData
from pipeline.modeling.events import split_tokens
from pipeline.modeling.frames import UNIT, FrameError, FramesParams, eval_mode


@dataclass
class TokenNll:
    """Summed nats and counts over one split's pieces."""

    nats: float  # -log P(tokens[1:] | BOS) summed over pieces
    tokens: int  # scored tokens
    frames: int  # frames of the pieces at the stage's grid
    pieces: int


@torch.no_grad()
def sequence_nll(model: Any, tokens: np.ndarray, stride: int) -> float:
    """Nats of ``tokens[1:]`` given ``tokens[0]``, in sliding windows (module docstring)."""
    seq_len = model.config.seq_len
    if not 1 <= stride <= seq_len:
        raise ValueError(f"stride must be in 1..seq_len ({seq_len}), got {stride}")
    device = next(model.parameters()).device
    seq = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=device)
    n = int(seq.numel())
    total, scored = 0.0, 0  # scored: the last target index scored so far
    start = 0
    while scored < n - 1:
        window = seq[start : start + seq_len + 1]
        logits, _ = model.logits(window[None, :-1])  # (1, T, V)
        nll = F.cross_entropy(logits[0].double(), window[1:], reduction="none")  # (T,)
        first_new = scored - start  # targets window[1 + j] = seq[start + 1 + j]; new: j >= this
        total += float(nll[first_new:].sum())
        scored = start + int(window.numel()) - 1
        start += stride
    return total


def frame_bound(
    model: Any, store: StoreData, split: str, steps_per_second: float, stride: int
) -> TokenNll:
    """Summed event NLL and frame count of `split` (frames: ceil(duration x grid))."""
    if "duration" not in store.pieces:
        raise ValueError(
            f"events store {store.path or '(in memory)'}: pieces.parquet has no 'duration'"
        )
    pieces_table = store.pieces
    durations = dict(
        zip(pieces_table["piece_id"].astype(str), pieces_table["duration"], strict=True)
    )
    nats, tokens, frames, pieces = 0.0, 0, 0, 0
    for piece_id, seq in split_tokens(store, split):
        duration = float(durations.get(piece_id, math.nan))
        if not math.isfinite(duration) or duration < 0:
            raise ValueError(
                f"events store {store.path or '(in memory)'}: piece {piece_id!r} has no "
                f"duration in pieces.parquet (got {durations.get(piece_id)!r})"
            )
        nats += sequence_nll(model, seq, stride)
        tokens += len(seq) - 1
        frames += math.ceil(duration * steps_per_second - 1e-6)
        pieces += 1
    return TokenNll(nats, tokens, frames, pieces)


def score(
    model: Any, store: StoreData, params: FramesParams, *, steps_per_second: float | None = None
) -> dict[str, Any]:
    """The frames stage's result for an events model: an upper bound (module docstring).

    An events store has no frame grid, so `steps_per_second` comes from the store that
    has one (the stage's ``--grid``, the benchmark's prv store).
    """
    if steps_per_second is None:
        raise FrameError(
            f"events store {store.path or '(in memory)'} has no frame grid: give the store "
            "whose frames to score on with --grid (e.g. data/processed/prv)"
        )
    with eval_mode(model):
        bound = frame_bound(model, store, params.split, steps_per_second, params.token_stride)
    if bound.frames == 0:
        raise FrameError(f"{params.split}: no frames to score")
    return {
        "frame_nll": bound.nats / bound.frames,
        "bound": True,
        "method": "upper bound: the event sequence's NLL divided by the piece's frames "
        f"(sliding windows, stride {params.token_stride} tokens)",
        "nats_per_token": bound.nats / max(1, bound.tokens),
        "tokens": bound.tokens,
        "pieces": bound.pieces,
        "frames": bound.frames,
        "split": params.split,
        "unit": UNIT,
    }
