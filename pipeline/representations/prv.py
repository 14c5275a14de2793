"""Play/replay/volume (DeepJ, Mao et al. 2018) on a coarse time grid.

A row (piece_id, step, pitch, replay, volume) means the pitch sounds during that
step: ``play`` is implied by the row, ``replay`` is True at the step where a note
starts (also when it re-strikes a pitch that is still sounding, which is what
tells two tied notes from one long note), and ``volume`` is velocity / 127 of the
loudest note on the cell. ``pitch`` is an index 0..n_pitches-1 above
``min_pitch``; notes outside that window are transposed by whole octaves into it
(so a low bass line keeps its pitch classes instead of vanishing). Drums are left
out. Times snap to the grid: a note covers steps ``round(start * sps)`` up to (not
including) ``max(round(end * sps), first + 1)``.

Deliberate deviation from DeepJ's midi_util, which sets replay only where a pitch
that is already sounding is struck again: here replay marks every onset. The two
carry the same information (DeepJ's flag = this flag AND the pitch sounded at the
previous step, and decoding starts a note at every run of played steps either way),
but with every onset flagged the store's replay cells count its notes (`density`,
the validate stage) and a sampler can force an onset after a rest.
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

NAME = "prv"

SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),
        ("step", pa.int32()),
        ("pitch", pa.int16()),  # index above min_pitch, 0..n_pitches-1
        ("replay", pa.bool_()),
        ("volume", pa.float32()),  # velocity / 127, in [0, 1]
    ]
)


@dataclass(frozen=True)
class Params:
    """The `prv` section of params.yaml."""

    steps_per_second: int
    min_pitch: int  # C2
    n_pitches: int  # four octaves, C2..B5
    sustain: bool  # extend notes held by the sustain pedal before gridding
    max_steps_per_piece: int  # crop each piece to this many steps; 0 = no crop

    def validate(self) -> None:
        require(self.steps_per_second > 0, "steps_per_second must be > 0")
        require(self.n_pitches >= 12, "n_pitches must be >= 12 (octave folding needs an octave)")
        require(
            0 <= self.min_pitch and self.min_pitch + self.n_pitches <= 128,
            "need 0 <= min_pitch and min_pitch + n_pitches <= 128",
        )
        require(self.max_steps_per_piece >= 0, "max_steps_per_piece must be >= 0 (0 = no crop)")

    @property
    def step_s(self) -> float:
        return 1.0 / self.steps_per_second


def fold_pitch(pitch: np.ndarray, min_pitch: int, n_pitches: int) -> np.ndarray:
    """Index 0..n_pitches-1 of each MIDI pitch, moving outsiders by whole octaves."""
    rel = np.asarray(pitch, dtype=np.int64) - min_pitch
    up = np.where(rel < 0, (-rel + 11) // 12, 0)
    down = np.where(rel >= n_pitches, (rel - n_pitches + 12) // 12, 0)
    return rel + 12 * (up - down)


def encode(notes: pd.DataFrame, pedals: pd.DataFrame | None, params: Params) -> pd.DataFrame:
    """Notes of any number of pieces -> played cells, ordered by (piece, step, pitch).

    piece_id comes back as a pandas Categorical (see `tuples.piece_column`); pieces
    keep their input order.
    """
    arrays = prepare_notes(notes, pedals, sustain=params.sustain)
    first, stop = frame_span(arrays.start, arrays.end, params.step_s)
    if params.max_steps_per_piece:
        stop = np.minimum(stop, params.max_steps_per_piece)
        keep = first < stop
        arrays, first, stop = arrays.take(keep), first[keep], stop[keep]
    row = fold_pitch(arrays.pitch, params.min_pitch, params.n_pitches)
    piece, step, pitch, velocity, replay = rasterise(
        arrays, first, stop, row, params.n_pitches, onsets=True
    )
    return pd.DataFrame(
        {
            "piece_id": piece_column(arrays.piece_ids, piece),
            "step": step.astype(np.int32),
            "pitch": pitch.astype(np.int16),
            "replay": replay.astype(bool),
            "volume": (velocity / 127.0).astype(np.float32),
        }
    )


def decode(rows: pd.DataFrame, params: Params) -> pd.DataFrame:
    """One piece's cells -> notes: runs of played steps per pitch, a replay starting a new note.

    Pitches come back inside the window (octave-folded notes stay folded); times are
    grid edges, within half a step of the encoded notes (one step for notes shorter
    than a step); velocity is the first step's volume * 127.
    """
    check_one_piece(rows, NAME)
    step = rows["step"].to_numpy(dtype=np.int64)
    pitch = rows["pitch"].to_numpy(dtype=np.int64) + params.min_pitch
    velocity = np.rint(rows["volume"].to_numpy(dtype=np.float64) * 127).astype(np.int64)
    replay = rows["replay"].to_numpy(dtype=bool)
    return runs_to_notes(step, pitch, velocity, replay, params.step_s)


# --- expectations (run by the validate stage) -------------------------------------------


def expectations(meta: dict[str, Any]) -> list[Any]:
    """Cells inside the pitch window and step budget, volumes in [0, 1], one row per cell."""
    from pipeline.expect import MIDI_MAX, between, meta_int, unique

    n_pitches = meta_int(meta, "n_pitches", MIDI_MAX + 1)
    specs = [
        between("step", 0),
        between("pitch", 0, n_pitches - 1),
        between("volume", 0, 1),
        unique("piece_id", "step", "pitch"),
    ]
    max_steps = meta_int(meta, "max_steps_per_piece", 0)
    if max_steps > 0:
        specs.append(between("step", 0, max_steps - 1))
    return specs


def density(splits: dict[str, Any], meta: dict[str, Any]) -> pd.DataFrame | None:
    """Onsets (replay cells) and seconds of each piece; None without a step rate."""
    from pipeline.expect import concat_frames

    steps_per_second = meta.get("steps_per_second")
    if not isinstance(steps_per_second, (int, float)) or steps_per_second <= 0:
        return None
    df = concat_frames(splits, ["piece_id", "step", "replay"])
    agg = df.groupby("piece_id").agg(notes=("replay", "sum"), last_step=("step", "max"))
    agg["seconds"] = (agg["last_step"].astype("float64") + 1) / float(steps_per_second)
    return agg.reset_index()[["piece_id", "notes", "seconds"]]


register(
    Representation(NAME, Params, SCHEMA, encode, decode, expectations=expectations, density=density)
)
