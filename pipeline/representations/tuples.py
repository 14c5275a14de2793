"""Tuples: one row per note, (pitch, step, duration, velocity), in onset order.

The TensorFlow "music generation with an RNN" format: ``step`` is the time since
the previous note's onset (the first note's step is its own onset), so a piece is
rebuilt with ``start = cumsum(step)``. Steps and durations are float32 in the
store; encode snaps onsets to a 2**-18 s grid (~3.8 us) so that every step is exact
in float32 and ``cumsum`` rebuilds the onsets without drift over a long piece:
decoded onsets are within 2**-19 s of the true ones (gaps over 64 s add one float32
rounding each), durations within one float32 rounding.

This module also holds the note preparation the four representations share
(`prepare_notes`: drums out, sustain pedal applied), because every representation
must see the same notes for their round trips to be comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.representations import Representation, register

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

    sustain: bool = True  # extend notes held by the sustain pedal before encoding

    def validate(self) -> None:
        """Nothing to check beyond types (kept for a uniform interface)."""


# --- shared note preparation -------------------------------------------------


@dataclass
class NoteArrays:
    """Notes of many pieces as parallel numpy arrays, pieces as integer codes.

    ``piece_ids[piece[i]]`` is the piece of note ``i``; codes follow the order in
    which pieces first appear in the input, so outputs keep the input's piece order.
    """

    piece_ids: np.ndarray  # (n_pieces,) object: unique piece ids
    piece: np.ndarray  # (n,) int64 codes into piece_ids
    pitch: np.ndarray  # (n,) int64
    velocity: np.ndarray  # (n,) int64, clipped to 1..127
    start: np.ndarray  # (n,) float64 seconds, >= 0
    end: np.ndarray  # (n,) float64 seconds, >= start (> for notes parsed from MIDI)
    track: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.pitch)

    def take(self, index: np.ndarray) -> NoteArrays:
        """The notes at `index` (a boolean mask or positions); pieces are kept."""
        return NoteArrays(
            self.piece_ids,
            self.piece[index],
            self.pitch[index],
            self.velocity[index],
            self.start[index],
            self.end[index],
            self.track[index],
        )


REQUIRED_COLUMNS = ("pitch", "velocity", "start", "end")


def prepare_notes(notes: pd.DataFrame, pedals: pd.DataFrame | None, *, sustain: bool) -> NoteArrays:
    """Drop drum notes and (if `sustain`) extend notes held by the sustain pedal.

    Args:
        notes: notes-store rows (piece_id, pitch, velocity, start, end; track and
            is_drum optional). A missing piece_id means a single piece "".
        pedals: pedals-store rows (piece_id, track, start, end), or None.
        sustain: apply the pedal (see `sustain_ends`).

    Raises:
        ValueError: a required column is missing (named in the message).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in notes.columns]
    if missing:
        raise ValueError(f"notes: missing column(s) {missing}")
    n = len(notes)
    # factorize before dropping drums: filtering the string column costs more than
    # everything else here; a drum-only piece then simply has no notes
    if "piece_id" in notes.columns:
        codes, uniques = pd.factorize(notes["piece_id"], sort=False)
        piece_ids = np.asarray(uniques, dtype=object)
    else:
        codes, piece_ids = np.zeros(n, np.int64), np.array([""], dtype=object)
    if "track" in notes.columns:
        track = notes["track"].to_numpy(dtype=np.int64)
    else:
        track = np.zeros(n, np.int64)
    arrays = NoteArrays(
        piece_ids=piece_ids,
        piece=np.asarray(codes, dtype=np.int64),
        pitch=notes["pitch"].to_numpy(dtype=np.int64),
        velocity=np.clip(notes["velocity"].to_numpy(dtype=np.int64), 1, 127),
        start=notes["start"].to_numpy(dtype=np.float64),
        end=notes["end"].to_numpy(dtype=np.float64),
        track=track,
    )
    if n and arrays.start.min() < 0:  # not from MIDI, but grids must not go negative
        arrays.start = np.maximum(arrays.start, 0.0)
        arrays.end = np.maximum(arrays.end, arrays.start)
    if "is_drum" in notes.columns:
        drum = notes["is_drum"].to_numpy(dtype=bool)
        if drum.any():
            arrays = arrays.take(~drum)
            n = len(arrays)
    if sustain and pedals is not None and len(pedals) and n:
        arrays.end = sustain_ends(arrays, pedals)
    return arrays


def sustain_ends(notes: NoteArrays, pedals: pd.DataFrame) -> np.ndarray:
    """Note ends after applying the sustain pedal of the note's own (piece, track).

    A note released while the pedal is down (pedal start <= end < pedal release)
    sounds until the release, but no later than the next onset of the same pitch on
    the same track (a re-struck piano key damps the previous sound; Magenta's
    ``apply_sustain_control_changes`` does the same). Ends are never shortened.
    Overlapping pedal intervals of one track are merged first. Times are compared
    at 1 us resolution, which lets one int64 key hold (track, time) for a single
    `searchsorted` instead of a multi-key sort.
    """
    end = notes.end
    lookup = pd.Index(notes.piece_ids)
    if "piece_id" in pedals.columns:
        p_piece = lookup.get_indexer(pedals["piece_id"])
    else:
        p_piece = np.zeros(len(pedals), np.int64)
    if "track" in pedals.columns:
        p_track = pedals["track"].to_numpy(dtype=np.int64)
    else:
        p_track = np.zeros(len(pedals), np.int64)
    p_start = pedals["start"].to_numpy(dtype=np.float64)
    p_end = pedals["end"].to_numpy(dtype=np.float64)
    ok = (p_piece >= 0) & (p_end > p_start)
    if not ok.any():
        return end
    p_group = _group_key(p_piece[ok], p_track[ok])
    p_start, p_end = p_start[ok], p_end[ok]
    groups = np.unique(p_group)  # the (piece, track)s that have a pedal, ranked
    if len(groups) >= 1 << 20:  # the int64 keys below hold rank * 128 + pitch
        raise ValueError(f"pedals: {len(groups)} pedalled tracks in one call; encode in chunks")
    p_rank = np.searchsorted(groups, p_group)
    order = np.lexsort((p_start, p_rank))
    p_rank, p_start, p_end = p_rank[order], p_start[order], p_end[order]
    # merge overlapping intervals per track: a region starts where the track changes
    # or the interval starts after everything before it on the track has ended
    running = pd.Series(p_end).groupby(p_rank).cummax().to_numpy()
    head = np.ones(len(p_rank), bool)
    head[1:] = (p_rank[1:] != p_rank[:-1]) | (p_start[1:] > running[:-1])
    region = np.cumsum(head) - 1
    r_end = np.zeros(int(region[-1]) + 1)
    np.maximum.at(r_end, region, p_end)
    r_key = _time_key(p_rank[head], p_start[head])

    # only notes on a track with a pedal can change
    n_group = _group_key(notes.piece, notes.track)
    n_rank = np.minimum(np.searchsorted(groups, n_group), len(groups) - 1)
    candidate = np.flatnonzero(groups[n_rank] == n_group)
    if len(candidate) == 0:
        return end
    rank, c_end = n_rank[candidate], end[candidate]
    # the last region of the note's track starting at or before its end
    reg = np.searchsorted(r_key, _time_key(rank, c_end), side="right") - 1
    held = reg >= 0
    held[held] = (r_key[reg[held]] >> _TIME_BITS == rank[held]) & (c_end[held] < r_end[reg[held]])
    if not held.any():
        return end
    note, release = candidate[held], r_end[reg[held]]
    # damp at the next onset of the same pitch on the same track (strictly later)
    onset_key = _time_key(n_rank[candidate] * 128 + notes.pitch[candidate], notes.start[candidate])
    by_onset = np.argsort(onset_key, kind="stable")
    onsets = onset_key[by_onset]
    own = _time_key(n_rank[note] * 128 + notes.pitch[note], notes.start[note])
    nxt = np.searchsorted(onsets, own, side="right")
    has_next = nxt < len(onsets)
    has_next[has_next] = onsets[nxt[has_next]] >> _TIME_BITS == own[has_next] >> _TIME_BITS
    next_start = np.full(len(note), np.inf)
    next_start[has_next] = notes.start[candidate[by_onset[nxt[has_next]]]]
    new_end = end.copy()
    new_end[note] = np.maximum(end[note], np.minimum(release, next_start))
    return new_end


_TIME_BITS = 36  # microseconds up to ~19 hours (longer times clip; ingest caps pieces at 4 h)
_TIME_MASK = (1 << _TIME_BITS) - 1


def _time_key(prefix: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """int64 key ordering by (prefix, time at 1 us); prefix < 2**27."""
    micro = np.clip(np.rint(seconds * 1e6), 0, _TIME_MASK).astype(np.int64)
    return (prefix.astype(np.int64) << _TIME_BITS) | micro


def _group_key(piece: np.ndarray, track: np.ndarray) -> np.ndarray:
    return piece.astype(np.int64) * 65536 + (track.astype(np.int64) & 0xFFFF)


def onset_order(notes: NoteArrays) -> np.ndarray:
    """Positions ordering notes by (piece, start, pitch), stable; skips sorting sorted input."""
    piece, start, pitch = notes.piece, notes.start, notes.pitch
    if len(piece) < 2:
        return np.arange(len(piece))
    dp, ds, dpi = np.diff(piece), np.diff(start), np.diff(pitch)
    if bool(np.all((dp > 0) | ((dp == 0) & ((ds > 0) | ((ds == 0) & (dpi >= 0)))))):
        return np.arange(len(piece))
    return np.lexsort((pitch, start, piece))


def piece_column(piece_ids: np.ndarray, codes: np.ndarray) -> pd.Categorical:
    """The piece_id column for integer piece codes, as a pandas Categorical of str.

    One category per piece that has rows: a per-row string column would cost more
    time and memory than the encoding itself (2.7M piano-roll cells x ~80-byte
    ids), while a Categorical compares, groups and writes (see
    `pipeline.representations.stage.rows_table`) like the strings it stands for.
    """
    codes = np.asarray(codes, dtype=np.int64)
    used = np.bincount(codes, minlength=len(piece_ids)) > 0
    remap = np.cumsum(used) - 1
    categories = pd.Index(piece_ids[used].astype(str), dtype=object)
    return pd.Categorical.from_codes(remap[codes], categories=categories)


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


def check_one_piece(rows: pd.DataFrame, name: str) -> None:
    """Refuse rows of several pieces: decode rebuilds one piece."""
    if "piece_id" in rows.columns and len(rows):
        ids = pd.unique(rows["piece_id"])
        if len(ids) > 1:
            raise ValueError(
                f"{name} decode: rows of {len(ids)} pieces given ({list(ids[:3])}...); "
                "decode takes one piece"
            )


register(Representation(NAME, Params, SCHEMA, encode, decode))
