"""Tuples: one row per note, (pitch, step, duration, velocity), in onset order.

The TensorFlow "music generation with an RNN" format: ``step`` is the time since
the previous note's onset (the first note's step is its own onset), so a piece is
rebuilt with ``start = cumsum(step)``. Steps and durations are float32 in the
store; encode snaps onsets to a 2**-18 s grid (~3.8 us) so that every step is exact
in float32 and ``cumsum`` rebuilds the onsets without drift over a long piece:
decoded onsets are within 2**-19 s of the true ones (gaps over 64 s add one float32
rounding each), durations within one float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.representations import Representation, register
from pipeline.representations.notes import check_one_piece, onset_order, piece_column, prepare_notes

NAME = "tuples"

SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),
        ("index", pa.int32()),
        ("pitch", pa.int16()),
        ("step", pa.float32()),  # seconds since the previous note's onset
        ("duration", pa.float32()),  # seconds
        ("velocity", pa.int16()),
    ]
)

# Onset grid of the steps (seconds): a power of two, so steps are exact in float32
# up to 2**24 grid units (64 s); see `_steps`.
STEP_GRID_S = 2.0**-18


@dataclass(frozen=True)
class Params:
    """The `tuples` section of params.yaml."""

    sustain: bool  # extend notes held by the sustain pedal before encoding

    def validate(self) -> None:
        """Nothing to check beyond types (kept for a uniform interface)."""


# --- shared note preparation -------------------------------------------------


# --- tuples ------------------------------------------------------------------


def encode(notes: pd.DataFrame, pedals: pd.DataFrame | None, params: Params) -> pd.DataFrame:
    """Notes of any number of pieces -> tuples rows (drums excluded), in onset order.

    piece_id comes back as a pandas Categorical (see `tuples.piece_column`); pieces
    keep their input order.
    """
    arrays = prepare_notes(notes, pedals, sustain=params.sustain)
    arrays = arrays.take(onset_order(arrays))
    piece = arrays.piece
    first = np.ones(len(piece), bool)
    first[1:] = piece[1:] != piece[:-1]
    starts_at = np.flatnonzero(first)
    sizes = np.diff(np.append(starts_at, len(piece)))
    index = np.arange(len(piece), dtype=np.int64) - np.repeat(starts_at, sizes)
    return pd.DataFrame(
        {
            "piece_id": piece_column(arrays.piece_ids, piece),
            "index": index.astype(np.int32),
            "pitch": arrays.pitch.astype(np.int16),
            "step": _steps(arrays.start, first),
            "duration": (arrays.end - arrays.start).astype(np.float32),
            "velocity": arrays.velocity.astype(np.int16),
        }
    )


def _steps(start: np.ndarray, first: np.ndarray) -> np.ndarray:
    """float32 steps whose float64 cumsum per piece reproduces the onsets without drift.

    Onsets are snapped to a grid of STEP_GRID_S (2**-18 s, ~3.8 us); a step is then an
    integer multiple of the grid below 2**24 grid units (64 s), which float32 holds
    exactly, and a float64 cumsum of such steps is exact. Rounding each float64 step
    to float32 instead would add one rounding error per note: a systematic drift
    over a long piece (e.g. ~3e-4 s after 100k triplet steps).
    """
    grid = np.rint(start / STEP_GRID_S)
    steps = np.diff(grid, prepend=0.0)
    steps[first] = grid[first]
    return (steps * STEP_GRID_S).astype(np.float32)


def decode(rows: pd.DataFrame, params: Params) -> pd.DataFrame:
    """One piece's tuples rows -> notes (pitch, velocity, start, end), start = cumsum(step)."""
    check_one_piece(rows, NAME)
    rows = rows.sort_values("index", kind="stable")
    start = np.cumsum(rows["step"].to_numpy(dtype=np.float64))
    end = start + rows["duration"].to_numpy(dtype=np.float64)
    return pd.DataFrame(
        {
            "pitch": rows["pitch"].to_numpy(dtype=np.int16),
            "velocity": rows["velocity"].to_numpy(dtype=np.int16),
            "start": start,
            "end": end,
        }
    )


# --- expectations (run by the validate stage) -------------------------------------------


def expectations(meta: dict[str, Any]) -> list[Any]:
    """One row per note index, MIDI ranges, non-negative steps, positive durations."""
    from pipeline.expect import MIDI_MAX, between, unique

    return [
        between("index", 0),
        between("pitch", 0, MIDI_MAX),
        between("step", 0),
        between("duration", 0, strict_min=True),
        between("velocity", 1, MIDI_MAX),
        unique("piece_id", "index"),
    ]


def density(splits: dict[str, Any], meta: dict[str, Any]) -> pd.DataFrame:
    """Notes and seconds (last note end) of each piece."""
    from pipeline.expect import concat_frames

    df = concat_frames(splits, ["piece_id", "index", "step", "duration"])
    df = df.sort_values(["piece_id", "index"], kind="stable")
    onset = df.groupby("piece_id", sort=False)["step"].cumsum().astype("float64")
    df = df.assign(end=onset + df["duration"].astype("float64"))
    agg = df.groupby("piece_id").agg(notes=("end", "size"), seconds=("end", "max"))
    return agg.reset_index()


register(
    Representation(NAME, Params, SCHEMA, encode, decode, expectations=expectations, density=density)
)
