"""Faults the ingest survives: hostile, corrupt and absurd MIDI files.

Each test names one fault in its docstring. To *survive* a fault means: `ingest_dir`
returns (no crash, no hang); every input file is in exactly one of pieces or rejects;
every reject has a non-empty reason; every stored note has end > start, finite times
and a pitch in 0..127; and the pieces table agrees with the notes it describes.

Faults are made by mutating the real fixtures (tests/fixtures/midi) at the level
of their chunks and events, so the rest of each file stays realistic, plus a few
files built byte by byte. The Hypothesis test mixes all mutations at random.
"""

from __future__ import annotations

import dataclasses
import signal
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from pipeline.core.params import default_params
from pipeline.core.stores import read_store
from pipeline.ingest import IngestParams, ingest_dir

DEFAULT_PARAMS = default_params("ingest", IngestParams)

# Small real files of each kind: a multitrack pop song, a MAESTRO performance
# (one track, tpq 384), and a Lakh file with two stray bytes after its last chunk.
SAMPLES = (
    "other/miditok_POP909_008.mid",
    "maestro/giantmidi_eval_MIDI-Unprocessed_09_R3_2008_01-07_ORIG_MID--AUDIO_09_R3_2008_wav--2.mid",
    "lakh/miditok_d6caebd1964d9e4a3c5ea59525230e2a.mid",
)
SAMPLE_NAMES = tuple(Path(s).name for s in SAMPLES)
EOT = b"\x00\xff\x2f\x00"  # end-of-track meta event, delta 0
MAX_VLQ = 0x0FFFFFFF  # largest delta time a 4-byte variable-length quantity can hold


# --- building and taking apart Standard MIDI Files ------------------------------------


def vlq(value: int) -> bytes:
    """MIDI variable-length quantity (delta times, meta lengths)."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


@dataclass
class Smf:
    """A Standard MIDI File as chunks, so faults can be planted in its structure."""

    fmt: int
    division: int  # ticks per quarter note (or an SMPTE code when the top bit is set)
    tracks: list[bytes]
    trailer: bytes = b""  # bytes after the last chunk
    ntracks: int | None = None  # header override; None = len(tracks)
    length_extra: dict[int, int] = field(default_factory=dict)  # track -> lie in its length

    @classmethod
    def parse(cls, data: bytes) -> Smf:
        header_len = struct.unpack(">I", data[4:8])[0]
        fmt, _, division = struct.unpack(">HHH", data[8:14])
        pos, tracks = 8 + header_len, []
        while pos + 8 <= len(data):
            size = struct.unpack(">I", data[pos + 4 : pos + 8])[0]
            tracks.append(data[pos + 8 : pos + 8 + size])
            pos += 8 + size
        return cls(fmt, division, tracks, data[pos:])

    def to_bytes(self) -> bytes:
        ntracks = len(self.tracks) if self.ntracks is None else self.ntracks
        out = [b"MThd", struct.pack(">IHHH", 6, self.fmt, ntracks, self.division)]
        for i, body in enumerate(self.tracks):
            declared = min(len(body) + self.length_extra.get(i, 0), 0xFFFFFFFF)
            out += [b"MTrk", struct.pack(">I", declared), body]
        return b"".join(out) + self.trailer

    def prepend(self, track: int, events: bytes) -> None:
        """Insert events at the start of a track (every later event shifts by their deltas)."""
        track %= len(self.tracks)
        self.tracks[track] = events + self.tracks[track]


def smf(*tracks: bytes, division: int = 480, fmt: int = 1) -> bytes:
    return Smf(fmt, division, list(tracks)).to_bytes()


def note_events(pitch: int = 60, ticks: int = 480, channel: int = 0) -> bytes:
    return bytes([0, 0x90 | channel, pitch, 64]) + vlq(ticks) + bytes([0x80 | channel, pitch, 64])


def many_notes(n: int, division: int = 480) -> bytes:
    """A format-0 file of `n` back-to-back notes, built with numpy in ~0.1 s for 1e6.

    Running status throughout: each note is `00 pp 40` (on) then `01 pp 00` (note-on
    velocity 0 = off), 6 bytes, one tick long.
    """
    pitches = (np.arange(n) % 88 + 21).astype(np.uint8)
    events = np.empty((n, 6), np.uint8)
    events[:, 0], events[:, 1], events[:, 2] = 0, pitches, 64
    events[:, 3], events[:, 4], events[:, 5] = 1, pitches, 0
    body = b"\x00\x90" + events.tobytes()[1:] + EOT
    return smf(body, division=division, fmt=0)


# --- the faults, as mutations of a parsed file ------------------------------------------


def set_tempo(f: Smf, mspq: int) -> None:
    """Absurd tempo: every set_tempo event (and a new one at tick 0) gets `mspq` µs/quarter."""
    value = mspq.to_bytes(3, "big")
    for i, body in enumerate(f.tracks):
        buf = bytearray(body)
        at = buf.find(b"\xff\x51\x03")
        while at != -1:
            buf[at + 3 : at + 6] = value
            at = buf.find(b"\xff\x51\x03", at + 6)
        f.tracks[i] = bytes(buf)
    f.prepend(0, b"\x00\xff\x51\x03" + value)


def huge_delta(f: Smf, track: int, delta: int) -> None:
    """A delta time of up to 2^28 - 1 ticks before everything else in a track."""
    f.prepend(track, vlq(delta) + b"\xff\x01\x00")  # an empty text event after the gap


def huge_note(f: Smf, track: int, delta: int) -> None:
    """One note held for `delta` ticks (days at any sane tempo)."""
    f.prepend(track, b"\x00\x9f\x3c\x40" + vlq(delta) + b"\x8f\x3c\x40")


def zero_length_tracks(f: Smf, positions: list[int]) -> None:
    """Empty MTrk chunks (no events, not even end-of-track) among the real tracks."""
    for pos in positions:
        f.tracks.insert(pos % (len(f.tracks) + 1), b"")
    f.fmt = 1


def running_status_abuse(f: Smf, track: int, variant: int) -> None:
    """Data bytes with no status byte, or running status carried across meta/sysex events."""
    f.prepend(
        track,
        [
            b"\x00\x3c\x40",  # running status with no status ever set
            b"\x00\x9e\x3c\x40\x00\xff\x01\x00\x10\x3c\x00",  # ... carried across a meta event
            b"\x00\x9e\x3c\x40\x00\xf0\x01\xf7\x10\x3c\x00",  # ... carried across a sysex event
        ][variant % 3],
    )


def unreleased_notes(f: Smf, track: int, pitches: list[int]) -> None:
    """Note-ons that no note-off ever ends (channel 14, unused by the fixtures)."""
    f.prepend(track, b"".join(bytes([0, 0x9D, p, 64]) for p in pitches))


def track_length_lie(f: Smf, track: int, extra: int) -> None:
    """A track length field that claims `extra` more bytes than there are (max 0xFFFFFFFF)."""
    track %= len(f.tracks)
    last = track == len(f.tracks) - 1
    f.length_extra[track] = extra + (len(f.trailer) if last else 0)  # stray bytes don't count


TRACK = st.integers(0, 63)  # taken modulo the file's track count
PITCHES = st.lists(st.integers(0, 127), min_size=1, max_size=8)
POSITIONS = st.lists(st.integers(0, 63), min_size=1, max_size=3)

MUTATIONS: dict[str, Callable[[st.DataObject, Smf], None]] = {
    "tempo 0": lambda d, f: set_tempo(f, 0),
    "tempo 0xFFFFFF": lambda d, f: set_tempo(f, 0xFFFFFF),
    "tempo random": lambda d, f: set_tempo(f, d.draw(st.integers(0, 0xFFFFFF))),
    "zero ticks per quarter": lambda d, f: setattr(f, "division", 0),
    "SMPTE division": lambda d, f: setattr(f, "division", 0xE728),
    "huge delta": lambda d, f: huge_delta(f, d.draw(TRACK), d.draw(st.integers(1, MAX_VLQ))),
    "huge note": lambda d, f: huge_note(f, d.draw(TRACK), d.draw(st.integers(1, MAX_VLQ))),
    "zero-length tracks": lambda d, f: zero_length_tracks(f, d.draw(POSITIONS)),
    "running status": lambda d, f: running_status_abuse(
        f, d.draw(TRACK), d.draw(st.integers(0, 2))
    ),
    "unreleased notes": lambda d, f: unreleased_notes(f, d.draw(TRACK), d.draw(PITCHES)),
    "track length > file": lambda d, f: track_length_lie(
        f, d.draw(TRACK), d.draw(st.integers(1, 0xFFFFFFFF))
    ),
    "track count lie": lambda d, f: setattr(f, "ntracks", d.draw(st.integers(0, 0xFFFF))),
}


def bit_flips(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for pos, bit in flips:
        buf[pos % len(buf)] ^= 1 << bit
    return bytes(buf)


# --- running ingest and checking that it survived ----------------------------------------


@dataclass
class Outcome:
    pieces: pd.DataFrame
    rejects: pd.DataFrame
    notes: pd.DataFrame

    def reason(self, name: str) -> str | None:
        hit = self.rejects.loc[self.rejects["path"] == name, "reason"]
        return None if hit.empty else str(hit.iloc[0])

    def notes_of(self, name: str) -> pd.DataFrame:
        rows = self.notes[self.notes["piece_id"] == f"fault:{name}"]
        return rows.sort_values(["start", "pitch", "end", "velocity"], ignore_index=True)


def ingest_bytes(files: dict[str, bytes], workers: int = 1, **changes: object) -> Outcome:
    """Write `files` to a temp folder, ingest it, and check every survival invariant."""
    params = dataclasses.replace(
        DEFAULT_PARAMS, workers=workers, max_reject_rate=1.0, file_timeout_s=30, **changes
    )
    with tempfile.TemporaryDirectory(prefix="etude-faults-") as tmp:
        in_dir, out_dir = Path(tmp) / "in", Path(tmp) / "out"
        in_dir.mkdir()
        for name, data in files.items():
            (in_dir / name).write_bytes(data)
        summary = ingest_dir(in_dir, out_dir, source="fault", params=params, progress=False)
        outcome = Outcome(
            *(read_store(out_dir / f"{k}.parquet", k) for k in ("pieces", "rejects", "notes"))
        )
    check_survived(files, outcome)
    assert (summary.files, summary.pieces, summary.rejects, summary.notes) == (
        len(files),
        len(outcome.pieces),
        len(outcome.rejects),
        len(outcome.notes),
    )
    return outcome


def check_survived(files: dict[str, bytes], out: Outcome) -> None:
    pieces, rejects, notes = out.pieces, out.rejects, out.notes
    accounted = [*pieces["path"], *rejects["path"]]
    assert sorted(accounted) == sorted(files), "a file is missing or counted twice"
    assert rejects["reason"].str.strip().str.len().gt(0).all(), "a reject without a reason"
    assert np.isfinite(notes[["start", "end"]].to_numpy()).all(), "non-finite note times"
    assert (notes["end"] > notes["start"]).all(), "a note ends before it starts"
    assert (notes["start"] >= 0).all()
    assert notes["pitch"].between(0, 127).all() and notes["velocity"].between(1, 127).all()
    assert set(notes["piece_id"]) == set(pieces["piece_id"]), "a piece without notes, or vice versa"
    per_piece = notes.groupby("piece_id").agg(n=("pitch", "size"), end=("end", "max"))
    per_piece = per_piece.loc[pieces["piece_id"]]
    assert (per_piece["n"].to_numpy() == pieces["n_notes"].to_numpy()).all()
    assert (per_piece["end"].to_numpy() == pieces["duration"].to_numpy()).all()
    assert np.isfinite(pieces["duration"]).all()


def same_notes(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    cols = ["pitch", "velocity", "start", "end"]
    return len(a) == len(b) and np.array_equal(a[cols].to_numpy(), b[cols].to_numpy())


_HANDLERS_AT_IMPORT = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGALRM)}


@pytest.fixture(autouse=True)
def _restore_signal_handlers() -> Iterator[None]:
    """Ingest with workers=1 runs in this process; keep its signal changes out of other tests."""
    yield
    for sig, handler in _HANDLERS_AT_IMPORT.items():
        signal.signal(sig, handler)


@pytest.fixture(scope="session")
def real(fixtures_dir: Path) -> dict[str, bytes]:
    """The sample fixtures' bytes, keyed by a flat file name."""
    return {Path(rel).name: (fixtures_dir / rel).read_bytes() for rel in SAMPLES}


@pytest.fixture(scope="session")
def originals(real: dict[str, bytes]) -> Outcome:
    """The unmutated samples, ingested once, to compare mutated files against."""
    return ingest_bytes(real)


def with_prefix(prefix: str, files: dict[str, bytes]) -> dict[str, bytes]:
    return {f"{prefix}-{name}": data for name, data in files.items()}


def mutated(real: dict[str, bytes], fn: Callable[[Smf], None]) -> dict[str, bytes]:
    out = {}
    for name, data in real.items():
        f = Smf.parse(data)
        fn(f)
        out[name] = f.to_bytes()
    return out


# --- the faults ------------------------------------------------------------------------


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_fuzzed_real_files(data: st.DataObject, midi_files: list[Path]) -> None:
    """Fault: real files hit by a random mix of every mutation in MUTATIONS, then random
    bit flips and truncation at a random point."""
    files: dict[str, bytes] = {}
    for k in range(data.draw(st.integers(1, 3), label="files")):
        path = data.draw(st.sampled_from(midi_files), label="fixture")
        f = Smf.parse(path.read_bytes())
        names = data.draw(
            st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=3), label="mutations"
        )
        for name in names:
            MUTATIONS[name](data, f)
        blob = f.to_bytes()
        flips = data.draw(
            st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 7)), max_size=8),
            label="bit flips",
        )
        blob = bit_flips(blob, flips)
        if data.draw(st.booleans(), label="truncate"):
            blob = blob[: data.draw(st.integers(0, len(blob)), label="cut at")]
        note(f"{k}: {path.name} {names} flips={len(flips)} bytes={len(blob)}")
        files[f"{k}.mid"] = blob
    ingest_bytes(files)


def test_bit_flips(real: dict[str, bytes]) -> None:
    """Fault: a single flipped bit, at 12 points spread over each real file (one per copy)."""
    files = {}
    for name, data in real.items():
        for pos in range(14, len(data), max(1, (len(data) - 14) // 12)):  # past the header
            files[f"{pos}-{name}"] = bit_flips(data, [(pos, pos % 8)])
    ingest_bytes(files)


def test_truncation(real: dict[str, bytes]) -> None:
    """Fault: real files cut short at the header, inside a chunk header, and mid-track."""
    files = {}
    for name, data in real.items():
        for cut in (0, 1, 8, 13, 14, 18, 22, len(data) // 3, len(data) - 5):
            files[f"{cut}-{name}"] = data[:cut]
    out = ingest_bytes(files)
    mid_track = [f"{len(data) // 3}-{name}" for name, data in real.items()]
    assert all(out.reason(n) for n in mid_track), "a file cut mid-track must be rejected"
    assert out.reason(f"0-{SAMPLE_NAMES[0]}") == "empty file"


def test_huge_delta_times(real: dict[str, bytes]) -> None:
    """Fault: a 2^28 - 1 tick delta time before a track's events, and a note held that long."""
    # The last track holds notes in every sample (track 0 of format 1 is the tempo map).
    files = with_prefix("gap", mutated(real, lambda f: huge_delta(f, -1, MAX_VLQ)))
    files |= with_prefix("note", mutated(real, lambda f: huge_note(f, 0, MAX_VLQ)))
    out = ingest_bytes(files)
    # 2^28 ticks is > 38 h at any tpq these files use: rejected by the duration limit.
    assert all("ingest.max_duration_s" in (out.reason(n) or "") for n in files), out.rejects


def test_tempo_zero(real: dict[str, bytes]) -> None:
    """Fault: set_tempo 0 µs per quarter (infinitely fast), at tick 0 and at every tempo change.

    symusic would give every later note zero length, silently truncating the piece;
    instead each file is rejected, naming the broken tempo."""
    files = mutated(real, lambda f: set_tempo(f, 0))
    out = ingest_bytes(files)
    assert out.pieces.empty and out.notes.empty
    for name in files:
        assert out.reason(name) == (
            "invalid tempo: 0 microseconds per quarter note (broken tempo map)"
        ), name


def test_tempo_max(real: dict[str, bytes], originals: Outcome) -> None:
    """Fault: set_tempo 0xFFFFFF µs per quarter (16.8 s per beat) everywhere."""
    out = ingest_bytes(mutated(real, lambda f: set_tempo(f, 0xFFFFFF)))
    for piece in out.pieces.itertuples():
        original = originals.pieces.set_index("path").loc[piece.path]
        assert piece.duration > original.duration  # slower tempo, longer piece, still finite


def test_zero_ticks_per_quarter(real: dict[str, bytes]) -> None:
    """Fault: a header whose division (ticks per quarter note) is 0, or an SMPTE code."""
    files = with_prefix("zero", mutated(real, lambda f: setattr(f, "division", 0)))
    files |= with_prefix("smpte", mutated(real, lambda f: setattr(f, "division", 0xE728)))
    out = ingest_bytes(files)
    assert out.pieces.empty, "times in seconds need ticks per quarter: these must be rejected"
    assert all("ticks per quarter" in out.reason(n) for n in files if n.startswith("zero-"))


def test_zero_length_tracks(real: dict[str, bytes], originals: Outcome) -> None:
    """Fault: empty MTrk chunks (length 0, no end-of-track) before, among and after real tracks."""
    out = ingest_bytes(mutated(real, lambda f: zero_length_tracks(f, [0, 1, 99])))
    for name in real:
        assert same_notes(out.notes_of(name), originals.notes_of(name)), name


def test_running_status_abuse(real: dict[str, bytes]) -> None:
    """Fault: running status with no status byte ever sent, and carried across meta and sysex."""
    files = {}
    for variant in range(3):
        abuse = mutated(real, lambda f, v=variant: running_status_abuse(f, 0, v))
        files |= with_prefix(str(variant), abuse)
    files["bare.mid"] = smf(b"\x00\x3c\x40\x10\x3c\x00" + EOT)
    out = ingest_bytes(files)
    assert out.reason("bare.mid"), "data bytes with no status cannot be a note"


def test_notes_never_released(real: dict[str, bytes], originals: Outcome) -> None:
    """Fault: note-ons that no note-off ends; the policy drops them and keeps the rest."""
    files = mutated(real, lambda f: unreleased_notes(f, 0, [0, 60, 127]))
    files["only-unreleased.mid"] = smf(b"\x00\x90\x3c\x40\x00\x90\x40\x40" + EOT)
    out = ingest_bytes(files)
    for name in real:
        assert same_notes(out.notes_of(name), originals.notes_of(name)), name
    assert out.reason("only-unreleased.mid") == "no notes"


def test_track_length_larger_than_file(real: dict[str, bytes]) -> None:
    """Fault: a track length field that points past the end of the file (by 1 byte up to 4 GiB)."""
    files = {}
    for extra in (1, 1 << 20, 0xFFFFFFFF):
        lie = mutated(real, lambda f, e=extra: track_length_lie(f, -1, e))
        files |= with_prefix(str(extra), lie)
    out = ingest_bytes(files)
    assert out.pieces.empty and all(out.reason(n) for n in files)


def test_track_count_lies(real: dict[str, bytes], originals: Outcome) -> None:
    """Fault: a header that claims 0, or 65535, tracks.

    The header's count is believed: claiming 0 reads no track, so no notes. Claiming
    65535, the parser reads every real track and stops at the end of the file (same
    notes as the original) unless bytes follow the last chunk: read as a truncated
    chunk header, they make the file unreadable."""
    files = with_prefix("0", mutated(real, lambda f: setattr(f, "ntracks", 0)))
    files |= with_prefix("max", mutated(real, lambda f: setattr(f, "ntracks", 0xFFFF)))
    out = ingest_bytes(files)
    trailing = {name for name, data in real.items() if Smf.parse(data).trailer}
    assert trailing == {SAMPLE_NAMES[2]}  # the Lakh sample's two stray bytes
    for name in real:
        assert out.reason(f"0-{name}") == "no notes", name
        if name in trailing:
            reason = out.reason(f"max-{name}") or ""
            assert reason.startswith("unreadable MIDI:"), (name, reason)
        else:
            assert out.reason(f"max-{name}") is None, name
            assert same_notes(out.notes_of(f"max-{name}"), originals.notes_of(name)), name


def test_a_million_notes() -> None:
    """Fault: one file with 1,000,000 notes (6 MB): stored in full, not a memory blow-up."""
    out = ingest_bytes({"million.mid": many_notes(1_000_000)})
    assert out.pieces["n_notes"].tolist() == [1_000_000]
    assert len(out.notes) == 1_000_000


def test_per_file_limits_name_their_param(real: dict[str, bytes], originals: Outcome) -> None:
    """Fault: a file just over ingest.max_notes or ingest.max_duration_s; the reason names
    the param."""
    name = SAMPLE_NAMES[0]
    piece = originals.pieces.set_index("path").loc[name]
    one = {name: real[name]}
    assert ingest_bytes(one, max_notes=int(piece.n_notes)).reason(name) is None  # at the limit
    reason = ingest_bytes(one, max_notes=int(piece.n_notes) - 1).reason(name)
    assert reason and "ingest.max_notes" in reason
    assert ingest_bytes(one, max_duration_s=float(piece.duration)).reason(name) is None
    reason = ingest_bytes(one, max_duration_s=float(piece.duration) * 0.99).reason(name)
    assert reason and "ingest.max_duration_s" in reason
    reason = ingest_bytes({"many.mid": many_notes(5_000)}, max_notes=4_999).reason("many.mid")
    assert reason and "ingest.max_notes" in reason


def test_process_pool_matches_in_process(real: dict[str, bytes]) -> None:
    """Fault: a batch of hostile files through the process pool (workers=2, >= 8 files):
    same pieces, rejects and notes as parsing them one by one in process."""
    files = dict(real)
    files |= with_prefix("tpq0", mutated(real, lambda f: setattr(f, "division", 0)))
    files |= with_prefix("len", mutated(real, lambda f: track_length_lie(f, 0, 1 << 30)))
    files |= with_prefix("rs", mutated(real, lambda f: running_status_abuse(f, 0, 1)))
    files["empty.mid"] = b""
    in_process, pooled = ingest_bytes(files, workers=1), ingest_bytes(files, workers=2)
    assert len(pooled.pieces) == 6 and len(pooled.rejects) == 7  # originals and rs- are kept
    for kind in ("pieces", "rejects", "notes"):
        pd.testing.assert_frame_equal(getattr(in_process, kind), getattr(pooled, kind))


def test_ctrl_c_still_works_after_in_process_ingest(real: dict[str, bytes]) -> None:
    """Fault: the caller's Ctrl-C handler. Parsing in process (workers=1, or < 8 files)
    must not leave SIGINT ignored, or `etude ingest` can no longer be interrupted."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's KeyboardInterrupt
    ingest_bytes(real)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ingest_from_a_worker_thread(real: dict[str, bytes]) -> None:
    """Fault: ingest_dir called off the main thread (a server, a notebook helper), where
    signal handlers cannot be installed; it must ingest, not raise."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            ingest_bytes(real)
        except BaseException as exc:  # re-raised on the main thread below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert not errors, repr(errors[0]) if errors else ""
