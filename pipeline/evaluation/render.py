"""A notes table -> a small WAV to listen to and a piano-roll PNG to look at.

Audio comes from pretty_midi: FluidSynth with pretty_midi's bundled General MIDI
soundfont (TimGM6mb.sf2) when the ``fluidsynth`` Python module (pip ``pyfluidsynth``)
and the ``libfluidsynth`` shared library (Debian ``libfluidsynth3``) both load, and
pretty_midi's additive sine synthesis otherwise, with a warning. Clips are mono
16-bit PCM, peak-normalised, at 22.05 kHz by default: a 20-s clip is under 1 MB.
Both files are written atomically.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.io import atomic_path
from pipeline.evaluation.audio import SUFFIX, ogg_bytes

if TYPE_CHECKING:
    import pandas as pd
    import pretty_midi

log = logging.getLogger(__name__)

RELEASE_S = 0.5
"""Silence kept after the last note end when no clip length is given (the release tail)."""
PEAK = 0.9  # normalised peak, below full scale so that the 16-bit cast never clips


@functools.cache
def fluidsynth_available() -> bool:
    """Whether pretty_midi can synthesise with FluidSynth here (module and C library load)."""
    try:
        import fluidsynth  # noqa: F401  (pyfluidsynth loads libfluidsynth on import)
    except (ImportError, OSError) as exc:
        log.debug("fluidsynth unavailable: %s", exc)
        return False
    return True


def render_clip(
    notes: pd.DataFrame,
    out_stem: Path,
    *,
    seconds: float | None = None,
    sample_rate: int = 22050,
) -> dict[str, Path]:
    """Write ``<out_stem>.ogg`` (Ogg Vorbis) and ``<out_stem>.png`` for one clip.

    Args:
        notes: pitch, velocity, start, end (seconds); program and is_drum optional.
        out_stem: output path without suffix; its folder is created.
        seconds: clip length: notes starting later are dropped, longer ones cut, and the
            audio is exactly this long (padded with silence), so that clips compared
            side by side have equal length. None: last note end + `RELEASE_S`.
        sample_rate: audio sample rate in Hz.

    Returns:
        {"audio": path, "png": path}.
    """
    out_stem = Path(out_stem)
    if seconds is not None and seconds <= 0:
        raise ValueError(f"{out_stem}: seconds must be > 0, got {seconds}")
    clip = crop(notes, seconds)
    length_s = seconds if seconds is not None else _end(clip) + RELEASE_S
    audio = synthesize(clip, sample_rate)
    n_samples = max(1, math.ceil(length_s * sample_rate))
    audio = np.pad(audio[:n_samples], (0, max(0, n_samples - len(audio))))
    sound = out_stem.with_name(out_stem.name + SUFFIX)
    png = out_stem.with_name(out_stem.name + ".png")
    write_audio(sound, audio, sample_rate)
    write_piano_roll(png, clip, length_s, title=out_stem.name)
    return {"audio": sound, "png": png}


def crop(notes: pd.DataFrame, seconds: float | None) -> pd.DataFrame:
    """Notes that start before `seconds`, their ends clipped to it (all notes if None)."""
    missing = [c for c in ("pitch", "start", "end") if c not in notes.columns]
    if missing:
        raise KeyError(f"notes table: missing column {missing[0]!r}")
    if seconds is None or notes.empty:
        return notes.reset_index(drop=True)
    kept = notes[notes["start"] < seconds].copy()
    kept["end"] = kept["end"].clip(upper=seconds)
    return kept[kept["end"] > kept["start"]].reset_index(drop=True)


def _end(notes: pd.DataFrame) -> float:
    return float(notes["end"].max()) if len(notes) else 0.0


def to_pretty_midi(notes: pd.DataFrame) -> pretty_midi.PrettyMIDI:
    """One instrument per (program, is_drum); piano when the table has no program."""
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=120.0)
    if notes.empty:
        return midi
    program = notes["program"] if "program" in notes.columns else 0
    is_drum = notes["is_drum"] if "is_drum" in notes.columns else False
    df = notes.assign(program=program, is_drum=is_drum)
    velocity = df["velocity"] if "velocity" in df.columns else 80
    df = df.assign(velocity=velocity)
    for (prog, drum), group in df.groupby(["program", "is_drum"], sort=True):
        inst = pretty_midi.Instrument(program=int(prog), is_drum=bool(drum))
        inst.notes = [
            pretty_midi.Note(
                velocity=int(np.clip(v, 1, 127)), pitch=int(np.clip(p, 0, 127)), start=s, end=e
            )
            for p, v, s, e in zip(
                group["pitch"].to_numpy(),
                group["velocity"].to_numpy(),
                group["start"].to_numpy(np.float64).tolist(),
                group["end"].to_numpy(np.float64).tolist(),
                strict=True,
            )
        ]
        midi.instruments.append(inst)
    return midi


def synthesize(notes: pd.DataFrame, sample_rate: int) -> np.ndarray:
    """Mono float audio of the notes: FluidSynth if available, else sine waves (warned)."""
    midi = to_pretty_midi(notes)
    if not midi.instruments:
        return np.zeros(0, np.float64)
    if fluidsynth_available():
        return np.asarray(midi.fluidsynth(fs=sample_rate), np.float64)
    log.warning(
        "libfluidsynth/pyfluidsynth not loadable: rendering with sine waves "
        "(pip install pyfluidsynth; apt-get install libfluidsynth3)"
    )
    return np.asarray(midi.synthesize(fs=sample_rate), np.float64)


def write_audio(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Peak-normalise and write mono Ogg Vorbis (`pipeline.evaluation.audio`), atomically."""
    audio = np.nan_to_num(np.asarray(audio, np.float64))
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak > 0:
        audio = audio * (PEAK / peak)
    data = ogg_bytes(audio, sample_rate)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_piano_roll(path: Path, notes: pd.DataFrame, length_s: float, title: str = "") -> None:
    """Draw notes as bars (time in seconds x MIDI pitch, shade = velocity) to a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if notes.empty:
        ax.text(0.5, 0.5, "no notes", ha="center", va="center", transform=ax.transAxes)
        low, high = 48, 84
    else:
        pitch = notes["pitch"].to_numpy(np.float64)
        start = notes["start"].to_numpy(np.float64)
        velocity = notes["velocity"].to_numpy(np.float64) if "velocity" in notes.columns else 80.0
        shade = 0.35 + 0.65 * np.clip(np.asarray(velocity) / 127.0, 0.0, 1.0)
        colors = np.zeros((len(notes), 4))
        colors[:, 2] = 0.55
        colors[:, 3] = np.broadcast_to(shade, (len(notes),))
        ax.barh(
            pitch,
            notes["end"].to_numpy(np.float64) - start,
            left=start,
            height=0.9,
            color=colors,
            linewidth=0,
        )
        low, high = int(pitch.min()) - 2, int(pitch.max()) + 2
    ax.set_xlim(0.0, max(length_s, 1e-3))
    ax.set_ylim(low, high)
    c_notes = [p for p in range(0, 128, 12) if low <= p <= high]
    ax.set_yticks(c_notes, [f"C{p // 12 - 1}" for p in c_notes])
    ax.set_xlabel("time (s)")
    ax.set_ylabel("pitch")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
