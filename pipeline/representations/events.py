"""Events: the Performance encoding of Oore et al. (2018), one token row per piece.

Vocabulary (``VOCAB_SIZE`` = 391)::

    PAD=0  BOS=1  EOS=2
    NOTE_ON  p        3 + p        p = 0..127
    NOTE_OFF p        131 + p
    TIME_SHIFT k*10ms 258 + k      k = 1..100 (259..358)
    SET_VELOCITY b    359 + b      b = 0..31

Times are rounded to 10 ms; a gap longer than 1 s is several TIME_SHIFTs. A note
whose rounded onset and release coincide keeps one 10 ms step. Velocity falls in
32 bins of 4 (bin b holds velocities 4b+1..4b+4 and decodes to 4b+3), and a
SET_VELOCITY is emitted only when the bin changes. At one time, NOTE_OFFs come
before NOTE_ONs, each in pitch order. Every sequence is BOS ... EOS.

Decoding pairs NOTE_OFFs with NOTE_ONs first-in-first-out per pitch (the same
policy as `pipeline.midi`), so it accepts any token sequence a model generates:
an unmatched NOTE_OFF is ignored, notes still on at the end close at the final
time, and PAD/BOS/EOS and out-of-range tokens are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.core.params import require
from pipeline.representations import Representation, register
from pipeline.representations.notes import NoteArrays, check_one_piece, piece_column, prepare_notes

NAME = "events"

PAD = 0
BOS = 1
EOS = 2
NOTE_ON = 3  # + pitch
NOTE_OFF = 131  # + pitch
TIME_SHIFT = 258  # + k, k = 1..MAX_SHIFT_STEPS
SET_VELOCITY = 359  # + bin
N_PITCHES = 128
MAX_SHIFT_STEPS = 100
N_VELOCITY_BINS = 32
VOCAB_SIZE = SET_VELOCITY + N_VELOCITY_BINS  # 391
STEP_S = 0.01  # one TIME_SHIFT unit, seconds
VELOCITY_BIN_SIZE = 4  # ceil(127 / 32)
DEFAULT_VELOCITY_BIN = 15  # used by decode before any SET_VELOCITY (velocity 63)

SCHEMA = pa.schema([("piece_id", pa.string()), ("tokens", pa.list_(pa.uint16()))])


@dataclass(frozen=True)
class Params:
    """The `events` section of params.yaml."""

    sustain: bool  # extend notes held by the sustain pedal before encoding
    max_tokens_per_piece: int  # truncate (keeping BOS ... EOS); 0 = no limit

    def validate(self) -> None:
        require(
            self.max_tokens_per_piece == 0 or self.max_tokens_per_piece >= 2,
            "max_tokens_per_piece must be 0 (no limit) or >= 2 (room for BOS and EOS)",
        )


def velocity_bin(velocity: np.ndarray) -> np.ndarray:
    """Bin 0..31 of MIDI velocities 1..127."""
    return (np.clip(np.asarray(velocity, np.int64), 1, 127) - 1) // VELOCITY_BIN_SIZE


def bin_velocity(bins: np.ndarray) -> np.ndarray:
    """Velocity a bin decodes to: the middle of its range (error at most 2)."""
    return np.asarray(bins, np.int64) * VELOCITY_BIN_SIZE + 3


def token_name(token: int) -> str:
    """Human-readable name of a token, e.g. 'NOTE_ON_60' (for debugging and reports)."""
    token = int(token)
    if token in (PAD, BOS, EOS):
        return ("PAD", "BOS", "EOS")[token]
    if NOTE_ON <= token < NOTE_OFF:
        return f"NOTE_ON_{token - NOTE_ON}"
    if NOTE_OFF <= token < TIME_SHIFT + 1:
        return f"NOTE_OFF_{token - NOTE_OFF}"
    if TIME_SHIFT < token < SET_VELOCITY:
        return f"TIME_SHIFT_{(token - TIME_SHIFT) * 10}ms"
    if SET_VELOCITY <= token < VOCAB_SIZE:
        return f"SET_VELOCITY_{token - SET_VELOCITY}"
    return f"INVALID_{token}"


# --- encode --------------------------------------------------------------------


def encode(notes: pd.DataFrame, pedals: pd.DataFrame | None, params: Params) -> pd.DataFrame:
    """Notes of any number of pieces -> one (piece_id, tokens) row per piece with notes.

    piece_id comes back as a pandas Categorical (see `tuples.piece_column`); pieces
    keep their input order.
    """
    arrays = prepare_notes(notes, pedals, sustain=params.sustain)
    pieces, flat, bounds = _encode_arrays(arrays)
    rows = []
    limit = params.max_tokens_per_piece
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        tokens = flat[lo:hi]
        if limit and len(tokens) > limit:
            tokens = np.append(tokens[: limit - 1], np.uint16(EOS))
        rows.append(tokens)
    return pd.DataFrame({"piece_id": piece_column(arrays.piece_ids, pieces), "tokens": rows})


def encode_piece(notes: pd.DataFrame, max_tokens: int = 0) -> np.ndarray:
    """One piece's notes (pitch, velocity, start, end) -> tokens BOS ... EOS (uint16).

    No pedal is applied (pass notes that already sound as intended); drum notes are
    dropped when an is_drum column says so. A piece without notes is [BOS, EOS].
    """
    notes = notes.drop(columns=["piece_id"], errors="ignore")
    rows = encode(notes, None, Params(sustain=False, max_tokens_per_piece=max_tokens))
    if rows.empty:
        return np.array([BOS, EOS], np.uint16)
    return rows["tokens"].iloc[0]


def _encode_arrays(notes: NoteArrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token sequences of all pieces, vectorised over every note at once.

    Returns (piece codes with notes, flat uint16 tokens, bounds) with piece i's
    tokens at flat[bounds[i]:bounds[i + 1]].
    """
    n = len(notes)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint16), np.zeros(1, np.int64)
    on_step = np.rint(notes.start / STEP_S).astype(np.int64)
    off_step = np.maximum(np.rint(notes.end / STEP_S).astype(np.int64), on_step + 1)
    # events: NOTE_OFFs (kind 0) then NOTE_ONs (kind 1); sort by (piece, time, kind, pitch)
    piece = np.concatenate([notes.piece, notes.piece])
    time = np.concatenate([off_step, on_step])
    kind = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
    pitch = np.concatenate([notes.pitch, notes.pitch])
    vbin = np.concatenate([np.zeros(n, np.int64), velocity_bin(notes.velocity)])
    key = ((piece * (1 << 23) + time) * 2 + kind) * N_PITCHES + pitch
    if int(time.max()) >= 1 << 23 or int(piece.max()) >= 1 << 22:
        order = np.lexsort((pitch, kind, time, piece))  # beyond the packed key's range
    else:
        order = np.argsort(key, kind="stable")
    piece, time, kind = piece[order], time[order], kind[order]
    pitch, vbin = pitch[order], vbin[order]

    m = len(order)
    first = np.ones(m, bool)
    first[1:] = piece[1:] != piece[:-1]
    last = np.ones(m, bool)
    last[:-1] = first[1:]
    prev_time = np.zeros(m, np.int64)
    prev_time[1:] = time[:-1]
    prev_time[first] = 0
    gap = time - prev_time
    n_full, rem = np.divmod(gap, MAX_SHIFT_STEPS)
    n_shift = n_full + (rem > 0)
    # SET_VELOCITY where an onset's bin differs from the previous onset's in the piece
    is_on = kind == 1
    on_index = np.flatnonzero(is_on)
    new_vel = np.ones(len(on_index), bool)
    new_vel[1:] = (vbin[on_index][1:] != vbin[on_index][:-1]) | (
        piece[on_index][1:] != piece[on_index][:-1]
    )
    vel_flag = np.zeros(m, bool)
    vel_flag[on_index[new_vel]] = True

    count = first + n_shift + vel_flag + 1 + last
    end = np.cumsum(count)
    start = end - count
    out = np.empty(int(end[-1]), np.uint16)
    out[start[first]] = BOS
    shift_at = start + first
    total_full = int(n_full.sum())
    if total_full:
        cum_full = np.cumsum(n_full) - n_full
        full_pos = np.repeat(shift_at - cum_full, n_full) + np.arange(total_full)
        out[full_pos] = TIME_SHIFT + MAX_SHIFT_STEPS
    has_rem = rem > 0
    out[(shift_at + n_full)[has_rem]] = TIME_SHIFT + rem[has_rem]
    event_at = shift_at + n_shift + vel_flag
    out[(event_at - 1)[vel_flag]] = SET_VELOCITY + vbin[vel_flag]
    out[event_at] = np.where(is_on, NOTE_ON + pitch, NOTE_OFF + pitch)
    out[event_at[last] + 1] = EOS
    bounds = np.append(start[first], len(out))
    return piece[first], out, bounds


# --- decode --------------------------------------------------------------------


def decode_tokens(tokens: np.ndarray | list[int]) -> pd.DataFrame:
    """Tokens -> notes (pitch, velocity, start, end), tolerant of ill-formed sequences.

    NOTE_OFF closes the oldest open note of its pitch (FIFO) and is ignored when none
    is open; notes still open at the end close at the final time; a note never
    lasts less than one 10 ms step. PAD/BOS/EOS and tokens outside the vocabulary
    are skipped.
    """
    tokens = np.asarray(tokens, dtype=np.int64).ravel()
    shift = np.where((tokens > TIME_SHIFT) & (tokens < SET_VELOCITY), tokens - TIME_SHIFT, 0)
    clock = np.cumsum(shift)  # time (in steps) at each token
    is_vel = (tokens >= SET_VELOCITY) & (tokens < VOCAB_SIZE)
    last_vel = np.maximum.accumulate(np.where(is_vel, np.arange(len(tokens)), -1))
    bins = np.where(
        last_vel >= 0, tokens[np.maximum(last_vel, 0)] - SET_VELOCITY, DEFAULT_VELOCITY_BIN
    )
    velocity = bin_velocity(bins)
    final = int(clock[-1]) if len(clock) else 0

    is_on = (tokens >= NOTE_ON) & (tokens < NOTE_OFF)
    is_off = (tokens >= NOTE_OFF) & (tokens <= TIME_SHIFT)
    on_at, off_at = _pair_fifo(tokens, is_on, is_off)
    pitch = tokens[on_at] - NOTE_ON
    on = clock[on_at]
    off = np.where(off_at >= 0, clock[np.maximum(off_at, 0)], final)
    off = np.maximum(off, on + 1)
    notes = pd.DataFrame(
        {
            "pitch": pitch.astype(np.int16),
            "velocity": velocity[on_at].astype(np.int16),
            "start": on * STEP_S,
            "end": off * STEP_S,
        }
    )
    return notes.sort_values(["start", "pitch"], kind="stable", ignore_index=True)


def _pair_fifo(
    tokens: np.ndarray, is_on: np.ndarray, is_off: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of each NOTE_ON and of the NOTE_OFF that closes it (-1: never closed).

    Per pitch, the open-note count is a walk of +1 (ON) / -1 (OFF) clamped at zero;
    an OFF is ignored exactly when it would take the unclamped walk S below its
    running minimum (and below 0), and the k-th kept OFF closes the k-th ON (FIFO).
    Vectorised with one sort of the note tokens by (pitch, position).
    """
    positions = np.flatnonzero(is_on | is_off)
    pitch = np.where(is_on[positions], tokens[positions] - NOTE_ON, tokens[positions] - NOTE_OFF)
    order = np.argsort(pitch, kind="stable")  # positions stay in order within a pitch
    positions, pitch = positions[order], pitch[order]
    up = is_on[positions]
    rank = _rank_within(pitch)
    first = rank == 0
    group = np.cumsum(first) - 1
    total = np.cumsum(np.where(up, 1, -1))
    walk = total - (total - np.where(up, 1, -1))[first][group]  # restart at each pitch
    # running minimum per pitch, including the initial 0: pitch g is shifted by
    # -g * span, below every earlier value, so one minimum.accumulate serves all
    span = 2 * len(positions) + 2
    zero = -group * span
    low = np.minimum(np.minimum.accumulate(walk + zero), zero)
    low_before = np.where(first, zero, np.roll(low, 1))
    kept_off = ~up & (walk + zero >= low_before)
    on_pos, on_pitch = positions[up], pitch[up]
    off_pos, off_pitch = positions[kept_off], pitch[kept_off]
    # the k-th kept OFF of a pitch closes its k-th ON; ONs are grouped by pitch
    closes = np.searchsorted(on_pitch, off_pitch, side="left") + _rank_within(off_pitch)
    off_at = np.full(len(on_pos), -1, np.int64)
    off_at[closes] = off_pos
    return on_pos, off_at


def _rank_within(sorted_keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of an already grouped array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, np.int64)
    first = np.ones(len(sorted_keys), bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    heads = np.flatnonzero(first)
    sizes = np.diff(np.append(heads, len(sorted_keys)))
    return np.arange(len(sorted_keys)) - np.repeat(heads, sizes)


def decode(rows: pd.DataFrame, params: Params) -> pd.DataFrame:
    """One piece's row(s) -> notes; several rows of one piece are read in order."""
    check_one_piece(rows, NAME)
    if rows.empty:
        return decode_tokens(np.zeros(0, np.int64))
    tokens = np.concatenate([np.asarray(t, dtype=np.int64) for t in rows["tokens"]])
    return decode_tokens(tokens)


# --- expectations (run by the validate stage) -------------------------------------------


def expectations(meta: dict[str, Any]) -> list[Any]:
    """One row (token list) per piece."""
    from pipeline.expect import unique

    return [unique("piece_id")]


def _token_columns(splits: dict[str, Any]) -> tuple[Any, np.ndarray, np.ndarray, Any]:
    """(token lists, flat tokens, parent row of each token, piece ids) over all splits."""
    import pyarrow.compute as pc

    table = pa.concat_tables(
        [t.select(["piece_id", "tokens"]) for t in splits.values()], promote_options="permissive"
    )
    lists = table.column("tokens").combine_chunks()
    parents = pc.list_parent_indices(lists).to_numpy()
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    return lists, flat, parents, table.column("piece_id").to_pandas()


def checks(splits: dict[str, Any], meta: dict[str, Any]) -> list[Any]:
    """Every token in the vocabulary; every sequence BOS ... EOS."""
    import pyarrow.compute as pc

    from pipeline.expect import Table, between, in_set

    lists, flat, _, piece_ids = _token_columns(splits)
    tokens = pd.DataFrame({"token": flat})  # no piece_id: a million repeated strings cost seconds
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    has = lengths > 0
    first = np.full(len(lengths), -1, np.int64)
    last = np.full(len(lengths), -1, np.int64)
    first[has] = flat[starts[has]]
    last[has] = flat[starts[has] + lengths[has] - 1]
    sequences = pd.DataFrame(
        {"piece_id": piece_ids, "length": lengths, "first_token": first, "last_token": last}
    )
    return [
        Table("tokens", tokens, [between("token", 0, VOCAB_SIZE - 1)]),
        Table(
            "sequences",
            sequences,
            [between("length", 2), in_set("first_token", [BOS]), in_set("last_token", [EOS])],
        ),
    ]


def density(splits: dict[str, Any], meta: dict[str, Any]) -> pd.DataFrame:
    """NOTE_ON tokens and summed TIME_SHIFTs (seconds) of each piece."""
    lists, flat, parents, piece_ids = _token_columns(splits)
    n_rows = len(lists)
    is_on = (flat >= NOTE_ON) & (flat < NOTE_ON + N_PITCHES)
    is_shift = (flat > TIME_SHIFT) & (flat <= TIME_SHIFT + MAX_SHIFT_STEPS)
    notes = np.bincount(parents, weights=is_on, minlength=n_rows)
    shift_s = (flat - TIME_SHIFT) * STEP_S * is_shift
    seconds = np.bincount(parents, weights=shift_s, minlength=n_rows)
    return pd.DataFrame({"piece_id": piece_ids, "notes": notes, "seconds": seconds})


register(
    Representation(
        NAME,
        Params,
        SCHEMA,
        encode,
        decode,
        expectations=expectations,
        checks=checks,
        density=density,
    )
)
