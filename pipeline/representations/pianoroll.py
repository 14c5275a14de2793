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

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.params import require
from pipeline.representations import Representation, register
from pipeline.representations.tuples import NoteArrays, check_one_piece, piece_column, prepare_notes

NAME = "pianoroll"

SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),
        ("frame", pa.int32()),
        ("pitch", pa.int16()),  # MIDI pitch, min_pitch..max_pitch
        ("velocity", pa.int16()),
    ]
)

# Cells of the dense scratch grid per batch (uint8): bounds encode's memory (~64 MB)
# whatever the number and length of the pieces.
GRID_CELLS = 64_000_000


@dataclass(frozen=True)
class Params:
    """The `pianoroll` section of params.yaml."""

    frame_ms: int = 50
    min_pitch: int = 21  # A0, lowest piano key; notes outside the range are dropped
    max_pitch: int = 108  # C8, highest piano key (inclusive)
    sustain: bool = True  # extend notes held by the sustain pedal before rasterising
    max_frames_per_piece: int = 0  # crop each piece to this many frames; 0 = no crop

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


def frame_span(start: np.ndarray, end: np.ndarray, frame_s: float) -> tuple[np.ndarray, np.ndarray]:
    """First frame and stop frame (exclusive) of each note; at least one frame each."""
    first = np.rint(start / frame_s).astype(np.int64)
    stop = np.maximum(np.rint(end / frame_s).astype(np.int64), first + 1)
    return first, stop


def rasterise(
    notes: NoteArrays,
    first: np.ndarray,
    stop: np.ndarray,
    row: np.ndarray,
    n_rows: int,
    onsets: bool = False,
) -> tuple[np.ndarray, ...]:
    """Active cells of notes spanning frames [first, stop) on grid row `row`.

    Returns (piece, frame, row, velocity) of every active cell ordered by (piece,
    frame, row); velocity is the loudest note on the cell. With `onsets`, a fifth
    array says whether some note starts on the cell (used by prv's replay).
    Pieces are rasterised in batches of at most GRID_CELLS grid cells.
    """
    n_pieces = len(notes.piece_ids)
    empty = np.zeros(0, np.int64)
    if len(first) == 0:
        return (empty,) * (5 if onsets else 4)
    frames = np.zeros(n_pieces, np.int64)
    np.maximum.at(frames, notes.piece, stop)
    cells = frames * n_rows
    # batch b holds the pieces whose cumulative cell count falls in its window
    batch = np.zeros(n_pieces, np.int64)
    cum = np.cumsum(cells)
    batch[1:] = (cum[:-1] // GRID_CELLS).astype(np.int64)
    batch = np.maximum.accumulate(batch)
    # compact batch ids (0, 1, 2, ...) so an oversized piece gets its own batch
    _, batch = np.unique(batch, return_inverse=True)
    parts: list[tuple[np.ndarray, ...]] = []
    n_batches = int(batch.max()) + 1
    for b in range(n_batches):
        if n_batches == 1:
            sel: slice | np.ndarray = slice(None)
        else:
            sel = batch[notes.piece] == b
        parts.append(
            _rasterise_batch(
                notes.piece[sel],
                first[sel],
                stop[sel],
                row[sel],
                notes.velocity[sel],
                frames,
                batch == b,
                n_rows,
                onsets,
            )
        )
    return tuple(np.concatenate(cols) for cols in zip(*parts, strict=True))


def _rasterise_batch(
    piece: np.ndarray,
    first: np.ndarray,
    stop: np.ndarray,
    row: np.ndarray,
    velocity: np.ndarray,
    frames: np.ndarray,
    in_batch: np.ndarray,
    n_rows: int,
    onsets: bool,
) -> tuple[np.ndarray, ...]:
    pieces = np.flatnonzero(in_batch)  # batch pieces, in order
    offset = np.zeros(len(frames), np.int64)  # global frame of each piece's frame 0
    offset[pieces] = np.cumsum(frames[pieces]) - frames[pieces]
    total_frames = int(frames[pieces].sum())
    size = total_frames * n_rows
    grid = np.zeros(size + (-size) % 8, np.uint8)  # padded to whole uint64 words
    length = stop - first
    # cell k of note i sits at global frame offset + first_i + k: one repeat of the
    # per-note base, plus a running arange
    base = (offset[piece] + first) * n_rows + row - (np.cumsum(length) - length) * n_rows
    flat = np.repeat(base, length) + np.arange(int(length.sum()), dtype=np.int64) * n_rows
    np.maximum.at(grid, flat, np.repeat(velocity.astype(np.uint8), length))
    del flat
    active = _active_cells(grid)
    global_frame, cell_row = np.divmod(active, n_rows)
    # active cells are in global-frame order, so each piece's cells are one slice
    bounds = np.searchsorted(global_frame, offset[pieces])
    counts = np.diff(np.append(bounds, len(active)))
    cell_piece = np.repeat(pieces, counts)
    out: tuple[np.ndarray, ...] = (
        cell_piece,
        global_frame - np.repeat(offset[pieces], counts),
        cell_row,
        grid[active],
    )
    if onsets:
        grid[:] = 0
        grid[(offset[piece] + first) * n_rows + row] = 1
        out = out + (grid[active].astype(bool),)
    return out


def _active_cells(grid: np.ndarray) -> np.ndarray:
    """Sorted positions of the non-zero bytes of `grid` (length a multiple of 8).

    Scans 8 cells at a time as uint64 words, then looks inside the non-zero words
    only: ~8x faster than np.flatnonzero on a sparse grid.
    """
    words = np.flatnonzero(grid.view(np.uint64))
    inside = np.flatnonzero(grid.reshape(-1, 8)[words])
    return words[inside >> 3] * 8 + (inside & 7)


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


def runs_to_notes(
    step: np.ndarray,
    pitch: np.ndarray,
    velocity: np.ndarray,
    onset: np.ndarray | None,
    step_s: float,
) -> pd.DataFrame:
    """Runs of consecutive steps per pitch -> notes; an `onset` True also starts a note."""
    order = np.lexsort((step, pitch))
    step, pitch, velocity = step[order], pitch[order], velocity[order]
    new = np.ones(len(step), bool)
    new[1:] = (pitch[1:] != pitch[:-1]) | (step[1:] != step[:-1] + 1)
    if onset is not None:
        new |= onset[order]
    heads = np.flatnonzero(new)
    tails = np.append(heads[1:], len(step))[: len(heads)] - 1
    notes = pd.DataFrame(
        {
            "pitch": pitch[heads].astype(np.int16),
            "velocity": np.clip(velocity[heads], 1, 127).astype(np.int16),
            "start": step[heads] * step_s,
            "end": (step[tails] + 1) * step_s,
        }
    )
    return notes.sort_values(["start", "pitch"], kind="stable", ignore_index=True)


register(Representation(NAME, Params, SCHEMA, encode, decode))
