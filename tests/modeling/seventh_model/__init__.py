"""A seventh model, written the way the README tells a model author to: outside
`pipeline/`, so that tests/modeling/test_new_model.py shows a model enters the pipeline
through the registry alone.

The family package (here: the data of the ``bigram`` model) reads the ``tuples`` store:
each item is a (previous pitch, pitch) pair of consecutive notes of a piece.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from pipeline.modeling.base import StoreData


class PitchPairs(Dataset):
    """Items ``{"previous": (), "pitch": ()}``: int64 pitches of consecutive notes."""

    def __init__(self, previous: torch.Tensor, pitch: torch.Tensor):
        self.previous, self.pitch = previous, pitch

    def __len__(self) -> int:
        return len(self.pitch)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"previous": self.previous[index], "pitch": self.pitch[index]}


def make_dataset(store: StoreData, config: Any, split: str) -> PitchPairs:
    """The consecutive-note pitch pairs of one split of a tuples store."""
    rows = store.rows[split].sort_values(["piece_id", "index"])
    previous, pitch = [], []
    for _, piece in rows.groupby("piece_id", sort=True):
        pitches = piece["pitch"].tolist()
        previous += pitches[:-1]
        pitch += pitches[1:]
    return PitchPairs(torch.tensor(previous), torch.tensor(pitch))


def baseline(store: StoreData, config: Any) -> dict[str, float]:
    """No baseline: the spec's objective names none."""
    return {}
