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
* **sliding** (``frames.window``, per model; instead of whole): windows of ``window``
  steps that advance by half a window, each step scored in the window that gives it
  the most context, so every step sees at least ``window // 2`` earlier ones (all of
  them near the piece's start) and at most ``window - 1``. Still exact: which window
  scores a step depends on its position only. For a model trained on short windows
  whose time axis does not carry over to long pieces: the frame transformer trained on
  64-step windows and run over whole MuseData pieces (hundreds to thousands of steps,
  its attention spread over all of them) scored 6.28 nats/frame on validation, in
  64-step sliding windows 5.91 (seed 1); on Nottingham's shorter pieces whole was the
  better (2.04 against 2.09). Chosen per data set on validation.

With a data set's reference rolls (``etude frames --reference``; `check_store`,
`reference_targets`), the targets are those rolls: the window must hold every pitch of
the split scored and the store must equal them cell for cell, and each piece is scored
to the reference's last frame (silent frames at a piece's end have no store rows).

Loaded by the `frames` stage only (not by training), like ``sampling.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.core.config import SPLITS
from pipeline.modeling.base import StoreData
from pipeline.modeling.frames import (
    KEY_LOW,
    N_KEYS,
    UNIT,
    FrameError,
    FramesParams,
    check_rolls,
    eval_mode,
    frame_nll,
    note_unigram_baseline,
    refuse_outside_window,
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

if TYPE_CHECKING:
    from pipeline.sources.poly2012 import Reference


@dataclass
class PlayLogits:
    """Per piece of one split: its id, the true 88-key roll and the model's play logits.

    ``whole``, ``windowed`` and ``sliding`` are ``(n_steps, n_pitches)`` float64 logits
    of the pitches ``min_pitch .. min_pitch + n_pitches - 1`` (``whole`` empty when
    scored in sliding windows, ``sliding`` empty when not); ``rolls`` are
    ``(n_steps, 88)``.
    """

    piece_ids: list[str]
    rolls: list[np.ndarray]
    whole: list[np.ndarray]
    windowed: list[np.ndarray]
    min_pitch: int
    sliding: list[np.ndarray] = dataclasses.field(default_factory=list)
    window: int = 0  # the sliding windows' length; 0: whole pieces

    @property
    def scored(self) -> list[np.ndarray]:
        """The benchmark's logits: sliding windows where asked for, else whole pieces."""
        return self.sliding if self.window else self.whole


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


def sliding_starts(n: int, window: int) -> list[tuple[int, int, int]]:
    """(window start, first kept step, end of kept steps) covering steps 0..n - 1.

    Windows of `window` steps advance by half a window; the first keeps all its steps,
    each later one its last half, so a kept step has at least ``window // 2`` earlier
    steps in its window (or every earlier step of the piece).
    """
    if window < 2:
        raise ValueError(f"a sliding window needs at least 2 steps, got {window}")
    hop = window // 2
    spans = [(0, 0, min(window, n))]
    start = hop
    while spans[-1][2] < n:
        spans.append((start, spans[-1][2], min(start + window, n)))
        start += hop
    return spans


def _window_logits(
    model: Any, pieces: PrvPieces, i: int, starts: list[int], length: int, style: torch.Tensor
) -> torch.Tensor:
    """(W, length, P) play logits of piece `i`'s windows of `length` steps at `starts`,
    each from a fresh state (its step index given, for the beat features)."""
    n_pitches = model.config.n_pitches
    xs = np.stack([dense_steps(pieces, i, s - 1, length + 1, n_pitches) for s in starts])
    return model.logits(
        torch.from_numpy(xs).to(style.device),
        style.expand(len(starts)),
        torch.tensor(starts, dtype=torch.long, device=style.device),
    )[..., PLAY]


def _sliding(
    model: Any, pieces: PrvPieces, i: int, style: torch.Tensor, n: int, window: int
) -> np.ndarray:
    """Piece `i`'s play logits in sliding windows (`sliding_starts`)."""
    spans = sliding_starts(n, window)
    out = []
    for k in range(0, len(spans), SLIDING_BATCH):  # bounded memory on long pieces
        chunk = spans[k : k + SLIDING_BATCH]
        logits = _window_logits(model, pieces, i, [s for s, _, _ in chunk], window, style)
        out += [logits[j, a - s : b - s] for j, (s, a, b) in enumerate(chunk)]
    return torch.cat(out).double().cpu().numpy()


SLIDING_BATCH = 32  # windows per forward pass in sliding scoring


@torch.no_grad()
def play_logits(
    model: Any,
    store: StoreData,
    split: str,
    n_frames: Callable[[str], int] | None = None,
    window: int = 0,
) -> PlayLogits:
    """Whole-piece (or sliding, `window` > 0) and windowed play logits of every piece of
    `split` (module docstring).

    Each piece is scored up to its last sounding step, or for ``n_frames(piece_id)``
    frames where given (the silent frames a data set's piece ends with, which a store has no
    rows for); ``rolls`` are the store's either way.
    """
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
    whole, windowed, sliding = [], [], []
    for i, pid in enumerate(pieces.piece_ids):
        n = int(pieces.n_steps[i]) if n_frames is None else n_frames(pid)
        style = torch.tensor([style_index(config.styles, by_piece.get(pid))], device=device)
        if window:
            sliding.append(_sliding(model, pieces, i, style, n, window))
        else:
            x = torch.from_numpy(dense_steps(pieces, i, -1, n + 1, n_pitches))[None].to(device)
            start = torch.zeros(1, dtype=torch.long, device=device)
            whole.append(model.logits(x, style, start)[0, :, :, PLAY].double().cpu().numpy())
        starts = list(range(0, n, config.seq_len))
        logits = _window_logits(model, pieces, i, starts, config.seq_len, style)
        windowed.append(logits.reshape(-1, n_pitches)[:n].double().cpu().numpy())
    rolls = piece_rolls(pieces, min_pitch)
    return PlayLogits(pieces.piece_ids, rolls, whole, windowed, min_pitch, sliding, window)


def store_rolls(store: StoreData, split: str) -> dict[str, np.ndarray]:
    """The 88-key rolls of one split of a prv store, keyed as the reference keys pieces."""
    from pipeline.sources.poly2012 import piece_key

    min_pitch, n_pitches, _ = store_prv_params(store)
    pieces = split_pieces(store, split, n_pitches)
    rolls = piece_rolls(pieces, min_pitch)
    return {piece_key(pid): roll for pid, roll in zip(pieces.piece_ids, rolls, strict=True)}


def check_store(
    store: StoreData, reference: Reference, splits: Sequence[str] = SPLITS
) -> dict[str, int]:
    """The pipeline's check that a prv store holds the data set's own frames.

    Each piece of each of `splits`, its play channel unfolded to MIDI pitches, must
    equal the reference roll cell for cell (`check_rolls`: silent frames after a
    piece's last sounding one excepted, which a prv store has no rows for), and the
    store's grid must be the reference's one step per frame. Returns the frames
    checked per split; raises a one-line `FrameError` naming the data set, split,
    piece, frame and pitch of the first difference.
    """
    _, _, grid = store_prv_params(store)
    if abs(grid - reference.steps_per_second) > 1e-9:
        raise FrameError(
            f"{reference.dataset}: prv store {store.path or '(in memory)'} has "
            f"steps_per_second {grid}, the data set's frames need {reference.steps_per_second} "
            "(one step per frame)"
        )
    return {
        split: check_rolls(
            store_rolls(store, split),
            reference.split(split),
            dataset=reference.dataset,
            split=split,
            name=reference.name,
        )
        for split in splits
    }


def reference_targets(store: StoreData, split: str, reference: Reference) -> dict[str, np.ndarray]:
    """The reference rolls a prv store's `split` is scored against, after two checks.

    First the model's pitch window (the store's) must hold every sounding pitch of the
    split (`refuse_outside_window`: one line naming the data set, piece, frame and
    pitch), then the store must be the data set's frames (`check_store`).
    """
    min_pitch, n_pitches, _ = store_prv_params(store)
    targets = reference.split(split)
    refuse_outside_window(
        targets,
        min_pitch,
        n_pitches,
        dataset=reference.dataset,
        split=split,
        name=reference.name,
    )
    check_store(store, reference, [split])
    return targets


def score(
    model: Any,
    store: StoreData,
    params: FramesParams,
    *,
    steps_per_second: float | None = None,
    reference: Reference | None = None,
    window: int = 0,
) -> dict[str, Any]:
    """The frames stage's result for a prv model: exact, whole pieces or (`window` > 0)
    sliding windows, and `etude evaluate`'s windows beside them.

    One frame per step: the grid is the store's own (its params.json). A grid given
    from elsewhere (`steps_per_second`, the stage's ``--grid``) must be the same.
    With a `reference` (the data set's own rolls, `pipeline.sources.poly2012`), the
    targets are its rolls, every frame of them, and the Note 1-Gram is its train
    split's; the window and the store are checked first (`reference_targets`).
    """
    _, _, grid = store_prv_params(store)
    if steps_per_second is not None and abs(grid - steps_per_second) > 1e-9:
        raise FrameError(
            f"prv store {store.path or '(in memory)'} has steps_per_second {grid}, "
            f"but the frames are on a grid of {steps_per_second}: one frame per step needed"
        )
    targets = None if reference is None else reference_targets(store, params.split, reference)
    with eval_mode(model):
        if targets is None:
            scored = play_logits(model, store, params.split, window=window)
        else:  # loaded only here: the benchmarks without a reference never load sources
            from pipeline.sources.poly2012 import piece_key

            frames = lambda p: len(targets[piece_key(p)])  # noqa: E731
            scored = play_logits(model, store, params.split, frames, window)
    if targets is None or reference is None:
        rolls, train = scored.rolls, split_rolls(store, "train")
    else:
        rolls = [targets[piece_key(pid)] for pid in scored.piece_ids]
        train = list(reference.split("train").values())
    kw = {"min_pitch": scored.min_pitch, "logits": True}
    how = (
        f"in sliding windows of {window} steps, each step seeing at least {window // 2} "
        "earlier ones (all near the piece's start)"
        if window
        else "each piece scored whole from its first step"
    )
    return {
        "frame_nll": frame_nll(scored.scored, rolls, **kw),
        "frame_nll_windowed": frame_nll(scored.windowed, rolls, **kw),
        "window": window,
        "note_unigram": note_unigram_baseline(train, rolls),
        "bound": False,
        "method": "exact: play probabilities of each pitch given earlier steps and "
        f"lower pitches, {how}",
        "pieces": len(rolls),
        "frames": int(sum(len(r) for r in rolls)),
        "split": params.split,
        "unit": UNIT,
    }
