"""The events family: token windows and the baselines of the Music Transformer.

The model is `pipeline.modeling.events.transformer`; its sampler is
`pipeline.modeling.events.sampling`.

Training windows start at a random offset, except a share (`bos_window_share`) that
is anchored at the piece's start: every unprimed sample begins at BOS, and random
offsets alone put a piece's opening in only ~1 in 500 training windows. Training
windows can also be augmented (`train.augment`, `EventWindows.set_augment`):
transposed and time-stretched token by token, see `augment_tokens`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.modeling.base import Augment, StoreData
from pipeline.representations.events import (
    MAX_SHIFT_STEPS,
    N_PITCHES,
    NOTE_OFF,
    NOTE_ON,
    PAD,
    TIME_SHIFT,
    VOCAB_SIZE,
)

log = logging.getLogger(__name__)

# Bigram baseline: pseudo-counts added to each row, spread like the unigram (additive
# smoothing toward the unigram, a Dirichlet prior of this total mass).
BIGRAM_PRIOR_COUNT = 10.0


def _piece_tokens(store: StoreData, split: str) -> list[np.ndarray]:
    """Token arrays (int64) of one split's pieces, checked against the vocabulary."""
    return [tokens for _, tokens in split_tokens(store, split)]


def split_tokens(store: StoreData, split: str) -> list[tuple[str, np.ndarray]]:
    """(piece_id, int64 tokens) of one split's pieces of >= 2 tokens, checked."""
    if split not in store.rows:
        raise KeyError(f"events store {store.path or ''}: no '{split}' split")
    rows = store.rows[split]
    if "tokens" not in rows:
        raise ValueError(f"events store {store.path or ''}: {split} rows have no 'tokens' column")
    out = []
    for piece_id, tokens in zip(rows["piece_id"], rows["tokens"], strict=True):
        arr = np.asarray(tokens, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= VOCAB_SIZE):
            raise ValueError(
                f"events store {store.path or ''}: piece {piece_id!r} ({split}) has token "
                f"ids outside 0..{VOCAB_SIZE - 1}"
            )
        if arr.size >= 2:  # a piece needs a context token and a target
            out.append((str(piece_id), arr))
    return out


def augment_tokens(tokens: np.ndarray, semitones: int, factor: float) -> np.ndarray:
    """Event tokens transposed by `semitones` and stretched in time by `factor`.

    Transposition moves every NOTE_ON/NOTE_OFF by `semitones`. A note pushed outside
    0..127 is dropped, both its NOTE_ON and NOTE_OFF (a pitch's events all move
    together, so pairing stays intact), as the piano-roll augmentation drops cells
    that leave its pitch window; SET_VELOCITY, BOS, EOS and PAD are kept.

    Stretch (factor > 1: slower) re-times on the 10 ms grid: the time T (steps since
    the first token) of every non-TIME_SHIFT token, and the time at the end, become
    ``floor(T * factor + 0.5)``, so each lands within half a step of its exact
    stretched time; but two tokens at different times stay at least one step apart
    (a gap never closes, so NOTE_OFF-before-NOTE_ON order at one time and every note's
    length of at least one step, the encoder's invariants, hold). That floor only acts
    when compressing (factor < 1), on runs of 1-step gaps, and delays a token by at
    most (1 - factor) steps per gap of the run beyond the half step. Each gap is then
    written as the encoder writes it: full 1 s TIME_SHIFTs, then the remainder, so
    the token count can change (adjacent TIME_SHIFT runs left by a dropped note merge).

    Args:
        tokens: (N,) token ids (any integer dtype).

    Returns:
        (M,) int64 tokens; `tokens` unchanged (as int64) for (0, 1.0).
    """
    out = np.asarray(tokens, dtype=np.int64)
    is_on = (out >= NOTE_ON) & (out < NOTE_ON + N_PITCHES)
    is_off = (out >= NOTE_OFF) & (out < NOTE_OFF + N_PITCHES)
    dropped = False
    if semitones:
        base = np.where(is_on, NOTE_ON, NOTE_OFF)
        pitch = out - base + semitones
        is_note = is_on | is_off
        keep = ~is_note | ((pitch >= 0) & (pitch < N_PITCHES))
        out = np.where(is_note, base + pitch, out)[keep]
        dropped = not bool(keep.all())
    if factor == 1.0 and not dropped:
        return out
    is_shift = (out > TIME_SHIFT) & (out <= TIME_SHIFT + MAX_SHIFT_STEPS)
    clock = np.cumsum(np.where(is_shift, out - TIME_SHIFT, 0))  # steps up to each token
    events = out[~is_shift]  # (E,) everything but TIME_SHIFTs, in order
    # times of the events and of the end, with the start (time 0) in front: (E + 2,)
    times = np.concatenate([[0], clock[~is_shift], clock[-1:] if len(out) else [0]])
    target = np.floor(times * factor + 0.5).astype(np.int64)
    moves = np.concatenate([[0], (np.diff(times) > 0).astype(np.int64)])
    steps = np.cumsum(moves)  # positive gaps so far
    # new[j] = max(new[j-1] + moves[j], target[j]) in closed form
    new = np.maximum.accumulate(target - steps) + steps
    gaps = np.diff(new)  # (E + 1,) steps before each event, then before the end
    n_full, rem = np.divmod(gaps, MAX_SHIFT_STEPS)
    n_shift = n_full + (rem > 0)
    units = np.append(events, PAD)  # a placeholder closes the trailing gap
    count = n_shift + 1
    start = np.cumsum(count) - count
    result = np.empty(int(count.sum()), np.int64)
    total_full = int(n_full.sum())
    if total_full:
        first_full = np.repeat(start - (np.cumsum(n_full) - n_full), n_full)
        result[first_full + np.arange(total_full)] = TIME_SHIFT + MAX_SHIFT_STEPS
    has_rem = rem > 0
    result[(start + n_full)[has_rem]] = TIME_SHIFT + rem[has_rem]
    result[start + n_shift] = units
    return result[:-1]


class EventWindows(Dataset):
    """Windows of ``seq_len + 1`` tokens (inputs + shifted targets), PAD-filled at the end.

    Training (``random_offsets=True``): an epoch has ``ceil((n-1)/seq_len)`` items per
    piece of n tokens (so pieces count by length); item i of epoch e is a window at
    a random offset drawn from a generator seeded by (seed, e, i), so windows depend
    only on the epoch (set by the training loop through `set_epoch`) and the index,
    never on fetch order, and a resumed run sees the same windows. With probability
    `bos_share` (a second draw of the same generator, so a share of 0 gives exactly
    the windows of a dataset without it) the window starts at the piece's first
    token (BOS) instead. Evaluation: consecutive windows starting every ``seq_len``
    tokens; window w's targets are tokens ``w*seq_len+1 .. (w+1)*seq_len``, so every
    token after the first is predicted exactly once.

    ``set_augment`` (training only; fit calls it when ``train.augment`` is active):
    item i of epoch e is then `augment_tokens` of the piece from the same start, by
    ``aug.draw(seed, e, i)``, cut to ``seq_len + 1`` tokens (PAD-filled past the
    piece's end). A draw of (0, 1.0) gives exactly the unaugmented window.
    """

    def __init__(
        self,
        pieces: list[np.ndarray],
        seq_len: int,
        random_offsets: bool,
        seed: int = 0,
        bos_share: float = 0.0,
    ):
        self.pieces = pieces
        self.seq_len = seq_len
        self.random_offsets = random_offsets
        self.seed = seed
        self.bos_share = bos_share
        self.epoch = 0
        self.augment: Augment | None = None
        per_piece = np.array(
            [max(1, math.ceil((len(p) - 1) / seq_len)) for p in pieces], dtype=np.int64
        )
        if random_offsets:
            self._ends = np.cumsum(per_piece)
        else:
            self._windows = [
                (i, w * seq_len) for i, count in enumerate(per_piece) for w in range(int(count))
            ]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random offsets the training windows use."""
        self.epoch = epoch

    def set_augment(self, aug: Augment | None) -> None:
        """Transpose and stretch each training window by ``aug.draw(seed, epoch, index)``."""
        if aug is not None and aug.active and not self.random_offsets:
            raise ValueError("events windows: augmentation is for training windows only")
        self.augment = aug if aug is not None and aug.active else None

    def __len__(self) -> int:
        if self.random_offsets:
            return int(self._ends[-1]) if len(self._ends) else 0
        return len(self._windows)

    def locate(self, index: int) -> tuple[int, int]:
        """(piece, first token of the window) of item `index`."""
        if not self.random_offsets:
            return self._windows[index]
        piece_index = int(np.searchsorted(self._ends, index, side="right"))
        n_tokens = len(self.pieces[piece_index])
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        start = int(rng.integers(0, max(0, n_tokens - self.seq_len - 1) + 1))
        if rng.random() < self.bos_share:  # drawn second: share 0 leaves `start` as it was
            start = 0
        return piece_index, start

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        piece_index, start = self.locate(index)
        tokens = self.pieces[piece_index]
        size = self.seq_len + 1
        semitones, factor = 0, 1.0
        if self.augment is not None:
            semitones, factor = self.augment.draw(self.seed, self.epoch, index)
        if semitones == 0 and factor == 1.0:
            chunk = tokens[start : start + size]
        else:
            chunk = _augmented_chunk(tokens, start, size, semitones, factor)
        window = np.full(size, PAD, dtype=np.int64)
        window[: len(chunk)] = chunk
        return {"tokens": torch.from_numpy(window)}


def _is_shift(token: int) -> bool:
    return TIME_SHIFT < token <= TIME_SHIFT + MAX_SHIFT_STEPS


def _augmented_chunk(
    tokens: np.ndarray, start: int, size: int, semitones: int, factor: float
) -> np.ndarray:
    """The first `size` tokens of `augment_tokens` of the piece from `start`.

    Augmentation changes the token count (stretched gaps, dropped notes), so the
    source span grows until the result fills the window or the piece ends. A span
    never ends inside a run of TIME_SHIFTs, whose gap would be re-timed short.
    """
    span = 2 * size
    while True:
        end = min(start + span, len(tokens))
        while end < len(tokens) and _is_shift(int(tokens[end - 1])):
            end += 1
        out = augment_tokens(tokens[start:end], semitones, factor)
        if len(out) >= size or end == len(tokens):
            return out[:size]
        span *= 2


def make_dataset(store: StoreData, config: Any, split: str) -> EventWindows:
    """Windows over one split: random offsets for train, covering windows otherwise.

    The training offsets are seeded from ``torch.initial_seed()`` at construction, so
    the loop's seed (``train.seed``) fixes them; a share ``config.bos_window_share``
    of them starts at BOS.
    """
    pieces = _piece_tokens(store, split)
    if split == "train":
        seed = int(torch.initial_seed() % (2**63))
        return EventWindows(
            pieces,
            config.seq_len,
            random_offsets=True,
            seed=seed,
            bos_share=config.bos_window_share,
        )
    return EventWindows(pieces, config.seq_len, random_offsets=False)


def _targets_with_context(
    store: StoreData, config: Any, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """(previous token, target) pairs of every non-PAD target in the evaluation windows."""
    data = make_dataset(store, config, split)
    if len(data) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    windows = np.stack([data[i]["tokens"].numpy() for i in range(len(data))])  # (W, T+1)
    prev, target = windows[:, :-1].ravel(), windows[:, 1:].ravel()
    valid = target != PAD
    return prev[valid], target[valid]


def baseline(store: StoreData, config: Any) -> dict[str, float]:
    """Unigram and bigram token models fitted on train, mean NLL (nats) on test targets.

    The unigram uses add-one smoothing. The bigram adds BIGRAM_PRIOR_COUNT
    pseudo-counts to each context, spread in proportion to the unigram (additive
    smoothing toward the unigram), so unseen pairs fall back gracefully. Both are
    scored on exactly the targets the model is scored on (the test windows of
    `make_dataset`), and ``baseline_nll`` is the better of the two.
    """
    train = _piece_tokens(store, "train")
    prev, target = _targets_with_context(store, config, "test")
    if target.size == 0 or not train:
        log.warning("transformer baseline: empty train or test split; returning NaN")
        nan = float("nan")
        return {"baseline_nll": nan, "unigram_nll": nan, "bigram_nll": nan}
    unigram_counts = np.zeros(VOCAB_SIZE, dtype=np.float64)
    bigram_counts = np.zeros((VOCAB_SIZE, VOCAB_SIZE), dtype=np.float64)
    for tokens in train:
        np.add.at(unigram_counts, tokens[1:], 1.0)
        np.add.at(bigram_counts, (tokens[:-1], tokens[1:]), 1.0)
    unigram = (unigram_counts + 1.0) / (unigram_counts.sum() + VOCAB_SIZE)  # (V,)
    bigram = (bigram_counts + BIGRAM_PRIOR_COUNT * unigram[None, :]) / (
        bigram_counts.sum(axis=1, keepdims=True) + BIGRAM_PRIOR_COUNT
    )  # (V, V), rows sum to 1
    unigram_nll = float(-np.log(unigram[target]).mean())
    bigram_nll = float(-np.log(bigram[prev, target]).mean())
    return {
        "baseline_nll": min(unigram_nll, bigram_nll),
        "unigram_nll": unigram_nll,
        "bigram_nll": bigram_nll,
    }
