"""JSB Chorales (Boulanger-Lewandowski et al., ICML 2012): 382 Bach chorales, quarter-note steps.

The benchmark file (`jsb-chorales-quarter.json`, czhuang/JSB-Chorales-dataset) holds
the paper's split, keys ``train``/``valid``/``test`` (229/76/77 chorales), each piece a
list of quarter-note steps, each step the list of sounding MIDI pitches ([] = rest).
Fetch downloads it once (checksummed; a local file path in ``jsb.url`` is copied, so
the benchmark runs offline) and writes one MIDI file per chorale to
``<split>/chorale_<index>.mid`` with a manifest that keeps the official split
(``valid`` -> ``validation``) and gives each chorale its own group (``jsb:valid/012``),
so ingest neither redraws nor merges it. The JSON itself is not kept. A file with a
missing or empty split is refused, naming the file or URL the user gave.

Time: step t spans quarter notes [t, t+1) at a fixed tempo of ``jsb.bpm`` (the data has
no tempo), 480 ticks per quarter, so a prv store with ``steps_per_second = bpm / 60``
has exactly one step per chorale step.

Held or repeated? The data only says which pitches sound at each step, so a pitch
sounding at two consecutive steps is one held note or two strikes. Etude ties it: each
run of consecutive steps in which a pitch sounds becomes one note (a rest or a step
without that pitch ends it). Only onsets (prv's replay channel, the note count) depend
on this choice; which pitches sound at each step (the play channel, and the frame
metric of `pipeline.evaluation.frames`) is the same either way.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pipeline.core.config import SPLITS
from pipeline.core.io import atomic_dir
from pipeline.core.params import ParamsError, require
from pipeline.core.stage_utils import Interrupted
from pipeline.core.stores import MANIFEST, MANIFEST_COLUMNS
from pipeline.download import DownloadError, download
from pipeline.sources import Source, register
from pipeline.splits import stable_fraction

log = logging.getLogger(__name__)

OFFICIAL_SPLITS = {"train": "train", "valid": "validation", "test": "test"}  # file key -> Etude
TICKS_PER_QUARTER = 480
VELOCITY = 80  # the data has no dynamics
COMPOSER = "Johann Sebastian Bach"
SOURCE_FILE = "jsb-chorales-quarter.json"

P = TypeVar("P")  # a piece with a `group` (JsbPiece, poly2012.Piece)
Step = Sequence[int]
Chorale = Sequence[Step]


@dataclass(frozen=True)
class Params:
    """The `jsb` section: where the JSON comes from, its checksum, the tempo, how many."""

    url: str  # http(s) URL, or a local file path (copied, not downloaded)
    sha256: str | None  # hex SHA-256 of the JSON, or null (not checked)
    bpm: int  # fixed tempo: one step = one quarter note = 60 / bpm seconds
    max_files: int  # 0 = all 382; else a reproducible subset keeping the official splits

    def validate(self) -> None:
        require(bool(self.url), "url must not be empty")
        require(self.bpm > 0, "bpm must be > 0")
        require(self.max_files >= 0, "max_files must be >= 0")
        require(
            self.sha256 is None or re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256) is not None,
            f"sha256 must be 64 hex digits or null, got {self.sha256!r}",
        )


@dataclass(frozen=True)
class JsbPiece:
    """One chorale of the file: its official split key, index in it, and steps."""

    official: str  # "train", "valid" or "test" (the file's key)
    index: int
    steps: Chorale

    @property
    def split(self) -> str:
        return OFFICIAL_SPLITS[self.official]

    @property
    def rel(self) -> str:
        return f"{self.split}/chorale_{self.index:03d}.mid"

    @property
    def group(self) -> str:
        return f"jsb:{self.official}/{self.index:03d}"


def read_chorales(path: Path, name: str | None = None) -> list[JsbPiece]:
    """All chorales of the JSON file, validated (keys, non-empty splits, MIDI pitches).

    Messages name `name` (default: `path`): fetch reads a temporary copy, gone by the
    time anyone reads the message, so it passes the file or URL the user gave.
    A split with no chorale is refused: the benchmark trains, selects and scores on
    all three, and a score over an empty test split would be no score at all.
    """
    name = str(path) if name is None else name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DownloadError(f"{name}: not a JSON file: {exc}") from None
    if not isinstance(data, dict) or set(data) != set(OFFICIAL_SPLITS):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DownloadError(f"{name}: expected keys {sorted(OFFICIAL_SPLITS)}, got {keys}")
    for official in OFFICIAL_SPLITS:
        if not isinstance(data[official], list):
            kind = type(data[official]).__name__
            raise DownloadError(f"{name}: '{official}' must be a list of chorales, got a {kind}")
        if not data[official]:
            raise DownloadError(
                f"{name}: the '{official}' split is empty; the benchmark needs chorales "
                f"in each of {list(OFFICIAL_SPLITS)}"
            )
    out = []
    for official in OFFICIAL_SPLITS:
        for index, steps in enumerate(data[official]):
            where = f"{name}: {official}[{index}]"
            if not isinstance(steps, list) or not steps:
                raise DownloadError(f"{where}: a chorale must be a non-empty list of steps")
            for t, step in enumerate(steps):
                if not isinstance(step, list) or not all(
                    type(p) is int and 0 <= p <= 127 for p in step
                ):
                    raise DownloadError(f"{where}: step {t} is not a list of MIDI pitches: {step}")
            out.append(JsbPiece(official, index, steps))
    return out


def chorale_notes(steps: Chorale, *, tie: bool = True) -> list[tuple[int, int, int]]:
    """Notes ``(pitch, first_step, stop_step)`` of a chorale, sorted by (first_step, pitch).

    ``tie=True`` (what fetch writes): one note per run of consecutive steps in which the
    pitch sounds. ``tie=False``: one note per (step, pitch), i.e. every step re-strikes.
    Both sound the same pitches at every step.
    """
    notes = []
    open_since: dict[int, int] = {}  # pitch -> first step of its current run
    for t, step in enumerate([*steps, []]):  # the sentinel rest closes every run
        sounding = set(step)
        for pitch in sorted(open_since):
            if pitch not in sounding or not tie:
                notes.append((pitch, open_since.pop(pitch), t))
        for pitch in sorted(sounding):
            open_since.setdefault(pitch, t)
    return sorted(notes, key=lambda n: (n[1], n[0]))


def write_midi(steps: Chorale, path: Path, bpm: int, *, tie: bool = True) -> None:
    """One piano track: step t = quarter note t at `bpm`; the file lasts every step."""
    import mido

    events = []  # (tick, order, message): note-offs before note-ons on one tick
    for pitch, first, stop in chorale_notes(steps, tie=tie):
        events.append((first * TICKS_PER_QUARTER, 1, "note_on", pitch, VELOCITY))
        events.append((stop * TICKS_PER_QUARTER, 0, "note_off", pitch, 0))
    events.sort()
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0))
    now = 0
    for tick, _, kind, pitch, velocity in events:
        track.append(mido.Message(kind, note=pitch, velocity=velocity, time=tick - now))
        now = tick
    end = len(steps) * TICKS_PER_QUARTER  # trailing rests keep their length
    track.append(mido.MetaMessage("end_of_track", time=end - now))
    midi = mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_QUARTER)
    midi.tracks.append(track)
    midi.save(str(path))


def select(chorales: list[P], max_files: int) -> list[P]:
    """A reproducible subset: the `max_files` with the lowest stable hash of their group.

    Nested as `max_files` grows and the same on every machine; splits stay official.
    Any piece with a ``group`` (poly2012's too).
    """
    if max_files == 0 or max_files >= len(chorales):
        return chorales
    ranked = sorted(chorales, key=lambda c: (stable_fraction(c.group, salt="subset"), c.group))
    chosen = {c.group for c in ranked[:max_files]}
    return [c for c in chorales if c.group in chosen]


def given(params: Params) -> str:
    """The JSON as the user named it: the URL, or the local file (`~` expanded)."""
    if params.url.startswith(("http://", "https://")):
        return params.url
    return str(Path(params.url).expanduser())


def obtain(params: Params, dest: Path) -> Path:
    """The JSON at `dest`: downloaded (resumable, checksummed) or copied from a local path."""
    if params.url.startswith(("http://", "https://")):
        # dest is in fetch's temporary folder, removed on failure: no .part to resume
        return download(params.url, dest, sha256=params.sha256, keep_partial=False)
    source = Path(params.url).expanduser()
    if not source.is_file():
        raise ParamsError(f"jsb.url={params.url}: not an http(s) URL and no such file")
    shutil.copyfile(source, dest)
    if params.sha256:
        got = hashlib.sha256(dest.read_bytes()).hexdigest()
        if got != params.sha256.lower():
            dest.unlink()
            raise DownloadError(
                f"{source}: SHA256 mismatch: expected {params.sha256.lower()}, got {got}"
            )
    return dest


def _kept(out_dir: Path) -> str:
    """What a failed fetch left of `out_dir` (it is replaced only when complete)."""
    return f"{out_dir} {'left as it was' if out_dir.exists() else 'not written'}"


def fetch(params: Params, out_dir: Path) -> None:
    """Write one MIDI file per chorale plus manifest.csv (official splits) to `out_dir`.

    A file that fails validation leaves `out_dir` as it was (or absent), and says so.
    """
    with atomic_dir(out_dir) as tmp:
        try:
            source = obtain(params, tmp / SOURCE_FILE)
        except DownloadError as exc:
            raise DownloadError(f"{exc}; {_kept(out_dir)}; a rerun fetches it again") from None
        except KeyboardInterrupt:  # a partial file sits in tmp, which goes with it
            raise Interrupted(
                f"jsb: the partial download was discarded with the temporary folder and "
                f"{_kept(out_dir)}; a rerun fetches the file again"
            ) from None
        try:
            chorales = select(read_chorales(source, given(params)), params.max_files)
        except DownloadError as exc:  # out_dir is untouched until the new one is complete
            raise DownloadError(f"{exc}; {_kept(out_dir)}") from None
        source.unlink()
        rows = []
        for c in chorales:
            dest = tmp / c.rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_midi(c.steps, dest, params.bpm)
            rows.append(
                {
                    "path": c.rel,
                    "split": c.split,  # official: ingest keeps it
                    "composer": COMPOSER,
                    "title": f"JSB chorale {c.official} {c.index}",
                    "group": c.group,  # its own: never merged with another chorale by group
                    "style": "",
                }
            )
        with (tmp / MANIFEST).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    counts = {s: sum(c.split == s for c in chorales) for s in SPLITS}
    log.info("jsb: wrote %d chorales to %s (%s)", len(chorales), out_dir, counts)


register(Source("jsb", Params, fetch))
