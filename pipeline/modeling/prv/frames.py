"""Frame scores of the prv models (biaxial, PopH) for the frame metric.

Both models factorise each step over pitches (the note axis), so the play channel's
per-pitch probabilities *are* the probability of each frame given the earlier ones:
`pipeline.modeling.frames.frame_nll` scores them exactly. Only play counts (the
benchmarks have no articulation or dynamics to score).

Two ways to run a piece through the model, both returned so the difference is
measured, not assumed:

* **whole**: one pass over the whole piece from its first step, every step seeing all
  earlier ones (the time-axis LSTM's state is never reset; PopH's attention spans
  the piece). This is the benchmark's number.
* **windowed**: what `etude evaluate` scores, the piece cut into consecutive
  ``seq_len`` windows, each starting from a fresh state (so each window's first steps
  lack context and the NLL is biased upward).

Loaded by the `frames` stage only (not by training), like ``sampling.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.modeling.base import StoreData
from pipeline.modeling.frames import (
    KEY_LOW,
    N_KEYS,
    UNIT,
    FrameError,
    FramesParams,
    eval_mode,
    frame_nll,
    note_unigram_baseline,
)
from pipeline.modeling.prv import (
    PLAY,
    PrvPieces,
    dense_steps,
    piece_styles,
    split_pieces,
    store_prv_params,
    style_index,
)


@dataclass
class PlayLogits:
    """Per piece of one split: its id, the true 88-key roll and the model's play logits.

    ``whole`` and ``windowed`` are ``(n_steps, n_pitches)`` float64 logits of the
    pitches ``min_pitch .. min_pitch + n_pitches - 1``; ``rolls`` are ``(n_steps, 88)``.
    """

    piece_ids: list[str]
    rolls: list[np.ndarray]
    whole: list[np.ndarray]
    windowed: list[np.ndarray]
    min_pitch: int


def piece_rolls(pieces: PrvPieces, min_pitch: int) -> list[np.ndarray]:
    """The ``(n_steps, 88)`` boolean rolls of sparse prv pieces (play cells only)."""
    rolls = []
    for i, steps in enumerate(pieces.steps):
        keys = pieces.pitches[i] + (min_pitch - KEY_LOW)
        if keys.size and (keys.min() < 0 or keys.max() >= N_KEYS):
            bad = int(keys[(keys < 0) | (keys >= N_KEYS)][0]) + KEY_LOW
            raise ValueError(
                f"prv piece {pieces.piece_ids[i]!r}: MIDI {bad} is outside the 88 keys 21-108"
            )
        roll = np.zeros((int(pieces.n_steps[i]), N_KEYS), dtype=bool)
        roll[steps, keys] = True
        rolls.append(roll)
    return rolls


def split_rolls(store: StoreData, split: str) -> list[np.ndarray]:
    """The 88-key rolls of every piece of one split of a prv store."""
    min_pitch, n_pitches, _ = store_prv_params(store)
    return piece_rolls(split_pieces(store, split, n_pitches), min_pitch)


@torch.no_grad()
def play_logits(model: Any, store: StoreData, split: str) -> PlayLogits:
    """Whole-piece and windowed play logits of every piece of `split` (module docstring)."""
    config = model.config
    device = next(model.parameters()).device
    min_pitch, n_pitches, _ = store_prv_params(store)
    if (min_pitch, n_pitches) != (config.min_pitch, config.n_pitches):
        raise ValueError(
            f"prv store {store.path or '(in memory)'} covers MIDI {min_pitch} + {n_pitches} "
            f"pitches, the model {config.min_pitch} + {config.n_pitches}: not the store it "
            "was trained on"
        )
    pieces = split_pieces(store, split, n_pitches)
    by_piece = piece_styles(store)
    whole, windowed = [], []
    for i, pid in enumerate(pieces.piece_ids):
        n = int(pieces.n_steps[i])
        style = torch.tensor([style_index(config.styles, by_piece.get(pid))], device=device)
        x = torch.from_numpy(dense_steps(pieces, i, -1, n + 1, n_pitches))[None].to(device)
        start = torch.zeros(1, dtype=torch.long, device=device)
        whole.append(model.logits(x, style, start)[0, :, :, PLAY].double().cpu().numpy())
        length = config.seq_len
        starts = list(range(0, n, length))
        xs = np.stack([dense_steps(pieces, i, s - 1, length + 1, n_pitches) for s in starts])
        logits = model.logits(
            torch.from_numpy(xs).to(device),
            style.expand(len(starts)),
            torch.tensor(starts, dtype=torch.long, device=device),
        )[..., PLAY]  # (W, seq_len, P)
        windowed.append(logits.reshape(-1, n_pitches)[:n].double().cpu().numpy())
    return PlayLogits(pieces.piece_ids, piece_rolls(pieces, min_pitch), whole, windowed, min_pitch)


def score(
    model: Any, store: StoreData, params: FramesParams, *, steps_per_second: float | None = None
) -> dict[str, Any]:
    """The frames stage's result for a prv model: exact, whole pieces (and windowed).

    One frame per step: the grid is the store's own (its params.json). A grid given
    from elsewhere (`steps_per_second`, the stage's ``--grid``) must be the same.
    """
    _, _, grid = store_prv_params(store)
    if steps_per_second is not None and abs(grid - steps_per_second) > 1e-9:
        raise FrameError(
            f"prv store {store.path or '(in memory)'} has steps_per_second {grid}, "
            f"but the frames are on a grid of {steps_per_second}: one frame per step needed"
        )
    with eval_mode(model):
        scored = play_logits(model, store, params.split)
    rolls = scored.rolls
    kw = {"min_pitch": scored.min_pitch, "logits": True}
    return {
        "frame_nll": frame_nll(scored.whole, rolls, **kw),
        "frame_nll_windowed": frame_nll(scored.windowed, rolls, **kw),
        "note_unigram": note_unigram_baseline(split_rolls(store, "train"), rolls),
        "bound": False,
        "method": "exact: play probabilities of each pitch given earlier steps and "
        "lower pitches, each piece scored whole from its first step",
        "pieces": len(rolls),
        "frames": int(sum(len(r) for r in rolls)),
        "split": params.split,
        "unit": UNIT,
    }
