"""The events family: token windows and the baselines of the Music Transformer.

The model is `pipeline.modeling.events.transformer`; its sampler is
`pipeline.modeling.events.sampling`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.modeling.base import StoreData
from pipeline.representations.events import PAD, VOCAB_SIZE

log = logging.getLogger(__name__)

# Bigram baseline: pseudo-counts added to each row, spread like the unigram (additive
# smoothing toward the unigram, a Dirichlet prior of this total mass).
BIGRAM_PRIOR_COUNT = 10.0


def _piece_tokens(store: StoreData, split: str) -> list[np.ndarray]:
    """Token arrays (int64) of one split's pieces, checked against the vocabulary."""
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
            out.append(arr)
    return out


class EventWindows(Dataset):
    """Windows of ``seq_len + 1`` tokens (inputs + shifted targets), PAD-filled at the end.

    Training (``random_offsets=True``): an epoch has ``ceil((n-1)/seq_len)`` items per
    piece of n tokens (so pieces count by length); item i of epoch e is a window at
    a random offset drawn from a generator seeded by (seed, e, i), so windows depend
    only on the epoch (set by the training loop through `set_epoch`) and the index,
    never on fetch order, and a resumed run sees the same windows. Evaluation: consecutive windows
    starting every ``seq_len`` tokens; window w's targets are tokens
    ``w*seq_len+1 .. (w+1)*seq_len``, so every token after the first is predicted
    exactly once.
    """

    def __init__(self, pieces: list[np.ndarray], seq_len: int, random_offsets: bool, seed: int = 0):
        self.pieces = pieces
        self.seq_len = seq_len
        self.random_offsets = random_offsets
        self.seed = seed
        self.epoch = 0
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

    def __len__(self) -> int:
        if self.random_offsets:
            return int(self._ends[-1]) if len(self._ends) else 0
        return len(self._windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.random_offsets:
            piece_index = int(np.searchsorted(self._ends, index, side="right"))
            tokens = self.pieces[piece_index]
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            start = int(rng.integers(0, max(0, len(tokens) - self.seq_len - 1) + 1))
        else:
            piece_index, start = self._windows[index]
            tokens = self.pieces[piece_index]
        window = np.full(self.seq_len + 1, PAD, dtype=np.int64)
        chunk = tokens[start : start + self.seq_len + 1]
        window[: len(chunk)] = chunk
        return {"tokens": torch.from_numpy(window)}


def make_dataset(store: StoreData, config: Any, split: str) -> EventWindows:
    """Windows over one split: random offsets for train, covering windows otherwise.

    The training offsets are seeded from ``torch.initial_seed()`` at construction, so
    the loop's seed (``train.seed``) fixes them.
    """
    pieces = _piece_tokens(store, split)
    if split == "train":
        seed = int(torch.initial_seed() % (2**63))
        return EventWindows(pieces, config.seq_len, random_offsets=True, seed=seed)
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
