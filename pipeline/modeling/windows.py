"""Where the fixed-length training and evaluation windows of a dataset fall.

Shared by the window datasets (piano-roll frames, prv steps): random offsets on
train, seeded by (seed, epoch, index) so a resumed run sees the same windows;
consecutive windows covering each piece once on validation/test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class WindowIndex:
    """Maps a dataset index to (piece, start) for windows of `window` units."""

    def __init__(self, lengths: Sequence[int], window: int, random_offsets: bool, seed: int = 0):
        self.lengths = [int(n) for n in lengths]
        self.window = window
        self.random_offsets = random_offsets
        self.seed = seed
        self.epoch = 0
        per_piece = np.array([max(1, math.ceil(n / window)) for n in self.lengths], dtype=np.int64)
        self._ends = np.cumsum(per_piece)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random offsets (fit calls this at each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def locate(self, index: int) -> tuple[int, int]:
        """(piece, first unit of the window) for dataset item `index`."""
        piece = int(np.searchsorted(self._ends, index, side="right"))
        length = self.lengths[piece]
        if self.random_offsets:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            return piece, int(rng.integers(0, max(0, length - self.window) + 1))
        first = int(self._ends[piece - 1]) if piece else 0
        return piece, (int(index) - first) * self.window
