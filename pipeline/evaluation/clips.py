"""The clips a model is judged by: real windows, primers, and what the model wrote.

Find the fake compares like with like. Every clip, real or generated, is exactly
`seconds` long and starts `offset` seconds into a piece: the offset is the primer's
length, so that when a model continues a real opening, the real clips are the same
part of a piece (a classifier must not learn "openings" from the real side alone).

- `windows`: real clips, the non-overlapping `seconds`-long windows after `offset`
  that fit wholly inside a piece of one split (a piece too short for one is skipped:
  a shorter clip would give itself away by its length; so is a window without a
  note). Each piece's first window
  comes before any piece's second, so clips are spread over as many works as the
  split has.
- `primers`: openings of VALIDATION pieces (never test: the clips are judged
  against test), encoded back into the model's representation.
- `written`: a generated sample with its primer cut away and its time shifted to 0,
  so the score judges only what the model wrote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pipeline.representations import StoreData

__all__ = ["Window", "piece_notes", "primers", "real_clips", "trim", "windows", "written"]


@dataclass(frozen=True)
class Window:
    """`seconds` of piece `piece_id` starting at `start` (seconds into the piece)."""

    piece_id: str
    start: float


def piece_notes(store: StoreData, split: str, representation: str) -> dict[str, pd.DataFrame]:
    """Every piece of `split` decoded to notes (sorted piece ids)."""
    from pipeline.representations import decode_rows

    rows = store.rows.get(split)
    if rows is None or rows.empty:
        return {}
    return {
        str(pid): decode_rows(representation, group, store.params)
        for pid, group in rows.groupby("piece_id", observed=True, sort=True)
    }


def windows(
    pieces: dict[str, pd.DataFrame], n: int | None, seconds: float, offset: float, seed: int
) -> list[Window]:
    """`n` windows (fewer if the split has fewer; None: all), drawn reproducibly.

    Windows are ranked by their index within the piece (first windows of all pieces
    first, in a seeded order), so that a split with enough pieces gives one clip per
    work.
    """
    rng = np.random.default_rng(seed)
    ranked: list[tuple[int, float, Window]] = []
    for pid in sorted(pieces):
        notes = pieces[pid]
        length = float(notes["end"].max()) if len(notes) else 0.0
        count = max(0, math.floor((length - offset) / seconds + 1e-9))
        for k in range(count):
            ranked.append((k, float(rng.random()), Window(pid, offset + k * seconds)))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [w for _, _, w in ranked[:n]]


def trim(notes: pd.DataFrame, start: float, seconds: float) -> pd.DataFrame:
    """Notes starting in [start, start + seconds), shifted to 0 and cut at `seconds`.

    A note already sounding at `start` belongs to what came before (a primer, or the
    piece before the window) and is left out.
    """
    if notes.empty:
        return notes.reset_index(drop=True)
    kept = notes[(notes["start"] >= start - 1e-9) & (notes["start"] < start + seconds)].copy()
    kept["start"] = (kept["start"] - start).clip(lower=0.0)
    kept["end"] = (kept["end"] - start).clip(upper=seconds)
    return kept[kept["end"] > kept["start"]].reset_index(drop=True)


def real_clips(
    pieces: dict[str, pd.DataFrame], n: int, seconds: float, offset: float, seed: int
) -> tuple[list[str], list[pd.DataFrame]]:
    """`n` real clips of `pieces` (see `windows`): their labels and notes.

    A window without a note is passed over (the silence before a file's first note
    is not music a model should be compared with).
    """
    labels, clips = [], []
    for w in windows(pieces, None, seconds, offset, seed):
        clip = trim(pieces[w.piece_id], w.start, seconds)
        if len(clip) and len(clips) < n:
            labels.append(f"{w.piece_id}@{w.start:g}s")
            clips.append(clip)
    return labels, clips


def primers(
    store: StoreData, representation: str, n: int, seconds: float, seed: int
) -> list[tuple[str, pd.DataFrame]]:
    """`n` openings of `seconds` from validation pieces, as store rows, one per sample.

    The openings are the first windows of `n` validation pieces long enough for the
    opening and one clip after it (cycled when there are fewer pieces than samples).
    Each opening is re-encoded from its notes, so a primer is what the model's
    representation makes of it.

    Raises:
        ValueError: no validation piece is long enough (the message says how long).
    """
    from pipeline.representations import get

    pieces = piece_notes(store, "validation", representation)
    long_enough = windows(pieces, len(pieces), seconds, 0.0, seed)
    if not long_enough:
        raise ValueError(
            f"no validation piece of {representation} is {seconds:g} s long for a primer; "
            "lower sample.<model>.primer_seconds or set it to 0 (no primer)"
        )
    encode = get(representation).encode
    out = []
    for i in range(n):
        window = long_enough[i % len(long_enough)]
        # zero-padded: a sampler given them all at once takes them in sorted order
        notes = trim(pieces[window.piece_id], 0.0, seconds).assign(piece_id=f"primer-{i:06d}")
        out.append((window.piece_id, encode(notes, None, store.params)))
    return out


def written(notes: pd.DataFrame, primer_seconds: float, seconds: float) -> pd.DataFrame:
    """What the model wrote: the sample after its primer, shifted to 0, `seconds` long."""
    return trim(notes, primer_seconds, seconds)


def describe(pieces: dict[str, Any]) -> str:
    """A short count for messages: "57 pieces"."""
    return f"{len(pieces)} piece{'s' if len(pieces) != 1 else ''}"
