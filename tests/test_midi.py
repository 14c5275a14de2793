"""The note-pairing policy of pipeline.midi, checked against pretty_midi and a
reference pairing written directly on mido events."""

from __future__ import annotations

import functools
from collections import defaultdict, deque
from pathlib import Path

import mido
import numpy as np
import pandas as pd
import pretty_midi
import pytest
from conftest import MIDI_FILES

from pipeline.midi import MidiError, notes_to_midi, parse_midi


def reference_notes(path: Path) -> pd.DataFrame:
    """The documented policy on raw mido events: FIFO pairing per (track, channel,
    pitch), never-released and zero-length notes dropped; times via pretty_midi's
    tick->seconds map (same tempo handling)."""
    midi = mido.MidiFile(str(path))
    pm = pretty(path)
    pm.get_end_time()
    tick_to_time = pm._PrettyMIDI__tick_to_time  # pretty_midi's own precomputed tempo map
    rows = []
    for track in midi.tracks:
        tick = 0
        open_notes: dict[tuple[int, int], deque] = defaultdict(deque)
        for msg in track:
            tick += msg.time
            if msg.type == "note_on" and msg.velocity > 0:
                open_notes[(msg.channel, msg.note)].append((tick, msg.velocity))
            elif msg.type in ("note_off", "note_on"):
                queue = open_notes[(msg.channel, msg.note)]
                if queue:
                    start, velocity = queue.popleft()
                    if tick > start:
                        rows.append((msg.note, velocity, start, tick))
    if not rows:
        return pd.DataFrame(columns=["pitch", "velocity", "start", "end"])
    rows_arr = np.array(rows)
    last = len(tick_to_time) - 1
    rows = [
        (p, v, tick_to_time[min(s, last)], tick_to_time[min(e, last)]) for p, v, s, e in rows_arr
    ]
    return sorted_notes(pd.DataFrame(rows, columns=["pitch", "velocity", "start", "end"]))


def sorted_notes(df: pd.DataFrame) -> pd.DataFrame:
    """Canonical order; times rounded to 1 ms for ordering only (parsers differ by ~1e-9)."""
    df = df[["pitch", "velocity", "start", "end"]].astype({"pitch": int, "velocity": int})
    keys = df.assign(s=(df["start"] * 1000).round(), e=(df["end"] * 1000).round())
    order = keys.sort_values(["s", "pitch", "e", "velocity"], kind="stable").index
    return df.loc[order].reset_index(drop=True)


@functools.cache
def pretty(path: Path) -> pretty_midi.PrettyMIDI:
    return pretty_midi.PrettyMIDI(str(path))


def has_same_pitch_overlap(path: Path) -> bool:
    pm = pretty(path)
    for inst in pm.instruments:
        last_end: dict[int, float] = {}
        for note in sorted(inst.notes, key=lambda n: n.start):
            if note.start < last_end.get(note.pitch, -1.0) - 1e-9:
                return True
            last_end[note.pitch] = max(last_end.get(note.pitch, -1.0), note.end)
    return False


def assert_same_notes(ours: pd.DataFrame, ref: pd.DataFrame, tol_s: float) -> None:
    """Same notes: per (pitch, velocity), the same count and start/end times within tol_s.

    Grouping first makes the check independent of how sub-millisecond timing
    differences between the parsers' tempo maps reorder simultaneous notes.
    """
    assert len(ours) == len(ref)
    ref_groups = dict(tuple(ref.groupby(["pitch", "velocity"])))
    for key, group in ours.groupby(["pitch", "velocity"]):
        other = ref_groups.pop(key)
        a = group.sort_values(["start", "end"])
        b = other.sort_values(["start", "end"])
        assert len(a) == len(b), key
        np.testing.assert_allclose(a["start"].to_numpy(), b["start"].to_numpy(), atol=tol_s)
        np.testing.assert_allclose(a["end"].to_numpy(), b["end"].to_numpy(), atol=tol_s)
    assert not ref_groups


@pytest.mark.parametrize("path", MIDI_FILES, ids=lambda p: p.name[:40])
def test_parse_follows_policy(path):
    """Every fixture: our notes equal the policy applied to raw events (within 1 ms)."""
    assert_same_notes(sorted_notes(parse_midi(path).notes), reference_notes(path), 1e-3)


# Known-hard files: notes of one pitch overlap, so pretty_midi's close-all and the
# FIFO policy legitimately differ; the mido reference test above covers them.
OVERLAPPING = {
    "miditok_Aicha.mid",
    "miditok_All_The_Small_Things.mid",
    "miditok_Funkytown.mid",
    "miditok_Girls_Just_Want_to_Have_Fun.mid",
    "miditok_I_Gotta_Feeling.mid",
    "miditok_In_Too_Deep.mid",
    "miditok_Les_Yeux_Revolvers.mid",
    "miditok_Mr._Blue_Sky.mid",
    "miditok_Shut_Up.mid",
    "giantmidi_preview_Chopin__Frédéric__Études__Op.10__g0hoN6_HDVU.mid",
    "giantmidi_preview_Handel__George_Frideric__Air_in_E_major__HWV_425__bNzVz5byPqk.mid",
    "giantmidi_preview_Liszt__Franz__Hungarian_Rhapsody_No.2__S.244_2__LdH1hSWGFGU.mid",
    "giantmidi_preview_Ravel__Maurice__Jeux_d'eau__v-QmwrhO3ec.mid",
    "miditok_POP909_008.mid",
    "miditok_POP909_010.mid",
    "miditok_POP909_022.mid",
    "miditok_POP909_191.mid",
    "miditoolkit_1390.mid",
    "noteseq_example_complex.mid",
    "symusic_1.midi",
}


def test_overlapping_list_is_accurate():
    assert {p.name for p in MIDI_FILES if has_same_pitch_overlap(p)} == OVERLAPPING


@pytest.mark.parametrize(
    "path", [p for p in MIDI_FILES if p.name not in OVERLAPPING], ids=lambda p: p.name[:40]
)
def test_against_pretty_midi(path):
    """Where no notes of one pitch overlap, pretty_midi is the reference, note for note."""
    pm = pretty(path)
    ref = pd.DataFrame(
        [
            (n.pitch, n.velocity, n.start, n.end)
            for i in pm.instruments
            for n in i.notes
            if n.end > n.start
        ],
        columns=["pitch", "velocity", "start", "end"],
    )
    assert_same_notes(sorted_notes(parse_midi(path).notes), sorted_notes(ref), 1e-3)


def test_overlap_zero_length_and_unreleased_policy(tmp_path):
    """Literal expectations on a hand-made file showing all three ambiguous cases."""
    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track += [
        mido.Message("note_on", note=60, velocity=80, time=0),
        mido.Message("note_on", note=60, velocity=70, time=240),  # re-struck while held
        mido.Message("note_off", note=60, time=240),  # ends the FIRST note (FIFO)
        mido.Message("note_off", note=60, time=240),  # ends the second
        mido.Message("note_on", note=62, velocity=80, time=0),
        mido.Message("note_off", note=62, time=0),  # zero-length: dropped
        mido.Message("note_on", note=64, velocity=80, time=0),  # never released: dropped
    ]
    path = tmp_path / "cases.mid"
    mid.save(str(path))
    notes = parse_midi(path).notes
    assert notes[["pitch", "velocity", "start", "end"]].values.tolist() == [
        [60, 80, 0.0, 0.5],
        [60, 70, 0.25, 0.75],
    ]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "unreadable"),
        (b"\x00" * 100, "unreadable"),
        (b"MThd\x00\x00\x00\x06\x00\x01", "unreadable"),
    ],
)
def test_junk_bytes_raise_midi_error(tmp_path, content, reason):
    path = tmp_path / "junk.mid"
    path.write_bytes(content)
    with pytest.raises(MidiError, match=reason):
        parse_midi(path)


def test_file_without_notes_is_an_error(tmp_path):
    mid = mido.MidiFile()
    mid.tracks.append(mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000)]))
    path = tmp_path / "silent.mid"
    mid.save(str(path))
    with pytest.raises(MidiError, match="no notes"):
        parse_midi(path)


# notes_to_midi writes 480 ticks per beat at 120 bpm: 960 ticks per second, so a time
# moves by at most half a tick; symusic then reads seconds as float32 (~6e-5 s apart
# at ten minutes). A whole tick off (1/960 s) is outside this tolerance.
ROUND_TRIP_TOL_S = 0.5 / 960 + 1e-4


@pytest.mark.parametrize(
    "name",
    [
        "miditok_Aicha.mid",  # 13 tracks, 12 programs, drums, same-pitch overlaps
        "miditok_Maestro_2.mid",  # one piano track over 10 minutes: float32 times
    ],
)
def test_notes_to_midi_round_trip(tmp_path: Path, name: str) -> None:
    """Every column survives notes_to_midi then parse_midi: pitch, velocity, program and
    is_drum exactly, times within half a tick; tracks are renumbered in the order of
    notes_to_midi's (track, program, is_drum) instruments, each keeping its notes."""
    (src,) = [p for p in MIDI_FILES if p.name == name]
    notes = parse_midi(src).notes
    out = notes_to_midi(notes, tmp_path / "copy.mid")
    back = parse_midi(out).notes
    assert list(back.columns) == list(notes.columns)
    assert back.dtypes.to_dict() == notes.dtypes.to_dict()
    instruments = notes.groupby(["track", "program", "is_drum"], sort=True).ngroup()
    expected = notes.assign(track=instruments.astype(notes["track"].dtype))
    key = ["track", "pitch", "start", "end", "velocity"]
    a = expected.sort_values(key, kind="stable", ignore_index=True)
    b = back.sort_values(key, kind="stable", ignore_index=True)
    assert len(a) == len(b)
    exact = [c for c in notes.columns if c not in ("start", "end")]  # ints and is_drum
    pd.testing.assert_frame_equal(a[exact], b[exact])
    for column in ("start", "end"):
        np.testing.assert_allclose(b[column], a[column], rtol=0, atol=ROUND_TRIP_TOL_S)
