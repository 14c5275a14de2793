"""Raw source folders (fixture copies + manifest.csv) for tests that ingest or fetch."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path


def make_raw_source(
    dest: Path,
    fixtures_dir: Path,
    pieces: dict[str, str],
    extra: dict[str, tuple[bytes, str]] | None = None,
) -> Path:
    """Copy fixtures (path below fixtures_dir -> split) into `dest`, flat, with a manifest.

    `extra` adds files the test makes itself (name -> (bytes, split)), e.g. a broken one.
    """
    dest.mkdir(parents=True, exist_ok=True)
    lines = ["path,split,composer,title"]
    for rel, split in pieces.items():
        shutil.copy(fixtures_dir / rel, dest / Path(rel).name)
        lines.append(f"{Path(rel).name},{split},,")
    for name, (data, split) in (extra or {}).items():
        (dest / name).write_bytes(data)
        lines.append(f"{name},{split},,")
    (dest / "manifest.csv").write_text("\n".join(lines) + "\n")
    return dest


def read_manifest(out_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of `out_dir/manifest.csv` (as a fetch stage wrote it)."""
    with (out_dir / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def processed_stores(root: Path, pieces: dict[Path, str]) -> Path:
    """Ingest `pieces` (file -> split) and build the tuples and pianoroll stores with the
    real stages' code; return the `processed` folder. Piano rolls are capped at 200
    frames per piece to keep model tests fast."""
    import dataclasses

    from pipeline.core.params import default_params
    from pipeline.ingest import IngestParams, ingest_dir

    DEFAULT_PARAMS = default_params("ingest", IngestParams)
    from pipeline.representations import get as get_representation
    from pipeline.representations.stage import build_store

    make_raw_source(root / "raw", Path("/"), {str(p): split for p, split in pieces.items()})
    params = dataclasses.replace(DEFAULT_PARAMS, workers=1)
    ingest_dir(root / "raw", root / "interim", source="fixtures", params=params, progress=False)
    for name in ("tuples", "pianoroll"):
        rep_params = default_params(name, get_representation(name).params_cls)
        if name == "pianoroll":
            rep_params = dataclasses.replace(rep_params, max_frames_per_piece=200)
        build_store(name, [root / "interim"], root / "processed" / name, rep_params, progress=False)
    return root / "processed"


RENDITION_SOURCES = ("other", "lakh")  # 24 real fixture files: pop, piano, multitrack


def rendition(data: bytes, tempo_factor: float = 1.37) -> bytes:
    """The same piece as another file: every tempo slowed by `tempo_factor` (a tempo
    event added where the file has none), velocities rescaled, tracks written in
    reverse order, re-encoded by mido (other bytes). Notes, ticks and pitches stay."""
    import io

    import mido

    midi = mido.MidiFile(file=io.BytesIO(data), clip=True)
    has_tempo = False
    for track in midi.tracks:
        for i, msg in enumerate(track):
            if msg.type == "set_tempo":
                has_tempo = True
                track[i] = msg.copy(tempo=min(0xFFFFFF, int(msg.tempo * tempo_factor)))
            elif msg.type == "note_on" and msg.velocity > 0:
                track[i] = msg.copy(velocity=max(1, min(127, int(msg.velocity * 0.6) + 20)))
    if not has_tempo:
        tempo = mido.MetaMessage("set_tempo", tempo=int(500_000 * tempo_factor), time=0)
        midi.tracks[0].insert(0, tempo)
    if midi.type == 1 and len(midi.tracks) > 2:  # keep the conductor track first
        midi.tracks[1:] = midi.tracks[1:][::-1]
    out = io.BytesIO()
    midi.save(file=out)
    return out.getvalue()


def make_renditions(dest: Path, fixtures_dir: Path) -> dict[str, str]:
    """Write each of the 24 fixture files twice below `dest`: `a/<name>` as it is and
    `b/<name>` as a `rendition`; return {path of the b file: path of the a file}."""
    pairs = {}
    for sub in RENDITION_SOURCES:
        for src in sorted((fixtures_dir / sub).iterdir()):
            if src.suffix.lower() not in (".mid", ".midi"):
                continue
            a, b = dest / "a" / f"{sub}_{src.name}", dest / "b" / f"{sub}_{src.stem}_slow.mid"
            a.parent.mkdir(parents=True, exist_ok=True)
            b.parent.mkdir(parents=True, exist_ok=True)
            data = src.read_bytes()
            a.write_bytes(data)
            b.write_bytes(rendition(data))
            pairs[b.relative_to(dest).as_posix()] = a.relative_to(dest).as_posix()
    return pairs
