"""Piano-roll: sparse active cells (piece_id, frame, pitch, velocity) on a frame grid.

A note covers frames ``round(start / F)`` up to (not including)
``max(round(end / F), first + 1)`` where ``F = frame_ms / 1000``: onsets and offsets
move by at most half a frame, and every note keeps at least one frame. Where notes
overlap on a cell (two tracks doubling a pitch), the cell keeps the loudest velocity.
Only active cells are stored, so the store is small even at 50 ms frames; the
autoencoder and VAE densify windows of it.

Encoding rasterises a whole batch of pieces into one dense uint8 grid with
``np.maximum.at`` and reads the active cells back with ``np.flatnonzero``, which
yields them already ordered by (piece, frame, pitch) without a sort.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.core.params import require
from pipeline.representations import Representation, register
from pipeline.representations.notes import (
    check_one_piece,
    frame_span,
    piece_column,
    prepare_notes,
    rasterise,
    runs_to_notes,
)

NAME = "pianoroll"

SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),
        ("frame", pa.int32()),
        ("pitch", pa.int16()),  # MIDI pitch, min_pitch..max_pitch
        ("velocity", pa.int16()),
    ]
)


@dataclass(frozen=True)
class Params:
    """The `pianoroll` section of params.yaml."""

    frame_ms: int
    min_pitch: int  # A0, lowest piano key; notes outside the range are dropped
    max_pitch: int  # C8, highest piano key (inclusive)
    sustain: bool  # extend notes held by the sustain pedal before rasterising
    max_frames_per_piece: int  # crop each piece to this many frames; 0 = no crop

    def validate(self) -> None:
        require(self.frame_ms > 0, "frame_ms must be > 0")
        require(
            0 <= self.min_pitch <= self.max_pitch <= 127,
            "need 0 <= min_pitch <= max_pitch <= 127",
        )
        require(self.max_frames_per_piece >= 0, "max_frames_per_piece must be >= 0 (0 = no crop)")

    @property
    def n_pitches(self) -> int:
        return self.max_pitch - self.min_pitch + 1

    @property
    def frame_s(self) -> float:
        return self.frame_ms / 1000.0


def encode(notes: pd.DataFrame, pedals: pd.DataFrame | None, params: Params) -> pd.DataFrame:
    """Notes of any number of pieces -> active cells, ordered by (piece, frame, pitch).

    Drum notes and notes outside min_pitch..max_pitch are dropped; with `sustain`,
    pedal-held notes are extended first (see `tuples.sustain_ends`). piece_id comes
    back as a pandas Categorical (see `tuples.piece_column`).
    """
    arrays = prepare_notes(notes, pedals, sustain=params.sustain)
    arrays = arrays.take((arrays.pitch >= params.min_pitch) & (arrays.pitch <= params.max_pitch))
    first, stop = frame_span(arrays.start, arrays.end, params.frame_s)
    if params.max_frames_per_piece:
        stop = np.minimum(stop, params.max_frames_per_piece)
        keep = first < stop
        arrays, first, stop = arrays.take(keep), first[keep], stop[keep]
    piece, frame, pitch, velocity = rasterise(
        arrays, first, stop, arrays.pitch - params.min_pitch, params.n_pitches
    )
    return pd.DataFrame(
        {
            "piece_id": piece_column(arrays.piece_ids, piece),
            "frame": frame.astype(np.int32),
            "pitch": (pitch + params.min_pitch).astype(np.int16),
            "velocity": velocity.astype(np.int16),
        }
    )


def decode(rows: pd.DataFrame, params: Params) -> pd.DataFrame:
    """One piece's active cells -> notes.

    Consecutive active frames of one pitch become one note with the velocity of its
    first frame; so a note re-struck right as the previous one ends (no silent frame
    between them) comes back as one long note. Times are frame edges, so onsets and
    offsets are within half a frame of the encoded notes (one frame for notes that
    were shorter than a frame).
    """
    check_one_piece(rows, NAME)
    frame = rows["frame"].to_numpy(dtype=np.int64)
    pitch = rows["pitch"].to_numpy(dtype=np.int64)
    velocity = rows["velocity"].to_numpy(dtype=np.int64)
    return runs_to_notes(frame, pitch, velocity, None, params.frame_s)


# --- expectations (run by the validate stage) -------------------------------------------


def expectations(meta: dict[str, Any]) -> list[Any]:
    """Cells inside the store's pitch range and frame budget, one row per cell."""
    from pipeline.expect import MIDI_MAX, between, meta_int, unique

    specs = [
        between("frame", 0),
        between("pitch", meta_int(meta, "min_pitch", 0), meta_int(meta, "max_pitch", MIDI_MAX)),
        between("velocity", 1, MIDI_MAX),
        unique("piece_id", "frame", "pitch"),
    ]
    max_frames = meta_int(meta, "max_frames_per_piece", 0)
    if max_frames > 0:
        specs.append(between("frame", 0, max_frames - 1))
    return specs


# piano-roll cells are not notes, so there is no density check; cell uniqueness bounds it


register(Representation(NAME, Params, SCHEMA, encode, decode, expectations=expectations))
