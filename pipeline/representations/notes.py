"""What the four encodings share: note preparation and frame rasterisation.

Every representation must see the same notes for their round trips to be
comparable, so `prepare_notes` (drums out, sustain pedal applied, onset order) lives
here and each encoding imports it; dvc.yaml lists this file as a dependency of every
`represent@*` stage. The frame grid helpers (`rasterise`, `runs_to_notes`) serve both
frame-based encodings (pianoroll, prv).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


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


def check_one_piece(rows: pd.DataFrame, name: str) -> None:
    """Refuse rows of several pieces: decode rebuilds one piece."""
    if "piece_id" in rows.columns and len(rows):
        ids = pd.unique(rows["piece_id"])
        if len(ids) > 1:
            raise ValueError(
                f"{name} decode: rows of {len(ids)} pieces given ({list(ids[:3])}...); "
                "decode takes one piece"
            )


# Cells of the dense scratch grid per batch (uint8): bounds encode's memory (~64 MB)
# whatever the number and length of the pieces.
GRID_CELLS = 64_000_000


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
