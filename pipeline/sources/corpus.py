"""The embedded default source: real scores shipped inside the music21 wheel.

Works with no network. Each score of the chosen collections is exported to MIDI
once, as `<its path below the music21 corpus, dots made '_'>.mid`
(`bach/bwv281.krn` -> `bach/bwv281_krn.mid`); scores whose notes are identical to
an earlier one are skipped. Versions that differ (bwv281 as .krn and .mxl share 97%
of their pitches) are kept, and the manifest names the work each file is a version
of (`work_key`), so ingest puts all versions of a work in one split.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import multiprocessing as mp
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.io import atomic_dir
from pipeline.core.params import require
from pipeline.core.stores import MANIFEST, MANIFEST_COLUMNS
from pipeline.sources import Source, register
from pipeline.splits import stable_fraction

log = logging.getLogger(__name__)

COMPOSERS = {
    "bach": "Johann Sebastian Bach",
    "beethoven": "Ludwig van Beethoven",
    "mozart": "Wolfgang Amadeus Mozart",
    "haydn": "Joseph Haydn",
    "handel": "George Frideric Handel",
    "monteverdi": "Claudio Monteverdi",
    "palestrina": "Giovanni Pierluigi da Palestrina",
    "schumann": "Robert Schumann",
    "chopin": "Frederic Chopin",
    "joplin": "Scott Joplin",
}


@dataclass(frozen=True)
class Params:
    """The `corpus` section: which music21 collections to export."""

    collections: list[str]  # music21 composer names, e.g. [bach]
    max_files: int  # 0 = all; else a reproducible subset
    workers: int  # 0 = one process per core

    def validate(self) -> None:
        require(len(self.collections) > 0, "collections must not be empty")
        unknown = [c for c in self.collections if c not in COMPOSERS]
        require(not unknown, f"unknown collection(s) {unknown}; allowed: {sorted(COMPOSERS)}")
        require(self.max_files >= 0, "max_files must be >= 0")
        require(self.workers >= 0, "workers must be >= 0")


def list_scores(collections: list[str]) -> list[tuple[str, Path]]:
    """(collection, path) of every score file of the collections, sorted."""
    from music21 import corpus

    found = []
    for name in collections:
        for path in corpus.getComposer(name):
            found.append((name, Path(path)))
    return sorted(found, key=lambda item: (item[0], item[1].name))


_BWV_NAME = re.compile(r"bwv(\d+)(?:\.(\d+))?(?:-[0-9a-z]+)?", re.IGNORECASE)
_BWV_HEADER = re.compile(r"^BWV:\s*(\d+)(?:\(\d+\))?(?:\.(\d+))?", re.MULTILINE)


def corpus_path(path: Path) -> str:
    """`path` relative to the music21 corpus folder, '/'-separated (`bach/bwv1.6.mxl`)."""
    parts = path.parts
    if "corpus" in parts:  # music21/corpus/<collection>/...
        index = len(parts) - 1 - parts[::-1].index("corpus")
        return "/".join(parts[index + 1 :])
    return path.name


def work_key(path: Path) -> str:
    """The work a corpus score is a version of: scores with one key share a split.

    The names music21 9 ships for Bach (`list_scores(["bach"])`, 433 scores) are
    `bwv<N>.<movement>[-<suffix>].<ext>` or `bwv<N>[-<suffix>].<ext>`, where the
    extension is the encoding (.mxl, .krn, .xml) and the suffix a version of the
    same movement: `-inst`/`-w`/`-lz`/`-lpz`/`-sc`/`-a` (instrumental, Weimar,
    Leipzig, ... settings) or, for the Christmas Oratorio (BWV 248), the part number
    `-1`..`-6` and `-s`/`-3c` variants. The key keeps number and movement and drops
    both: bwv248.64-6 and bwv248.64-s -> `bwv248_64`, bwv190.7-inst -> `bwv190_7`,
    bwv281.krn and .mxl -> `bwv281`, bwv69.6-a -> `bwv69_6`. A suffix with no
    movement keeps the bare number (bwv145-a -> `bwv145`, distinct from bwv145.5:
    measured 15% pitch overlap). `riemenschneider<NNN>.rntxt` are Roman-numeral
    analyses of chorales (their chords exported as MIDI): the key comes from their
    `BWV:` header line (`BWV: 248(2).12` -> `bwv248_12`, `BWV: 41.6s` -> `bwv41_6`).
    Any other score (other collections) is keyed by its corpus path without the
    extension, so encodings of one file share a key
    (`monteverdi/madrigal.3.1.mxl` and `.rntxt` -> `monteverdi/madrigal.3.1`).
    Content duplicates under unrelated keys are caught by ingest's fingerprint.
    """
    rel = corpus_path(path)
    stem = path.name.rsplit(".", 1)[0]
    found = _BWV_NAME.fullmatch(stem)
    if found is None and path.suffix.lower() == ".rntxt":
        with path.open(encoding="utf-8", errors="replace") as fh:
            found = _BWV_HEADER.search(fh.read(2000))
    if found is not None:
        number, movement = found.group(1), found.group(2)
        return f"bwv{int(number)}" + (f"_{int(movement)}" if movement else "")
    return rel.rsplit(".", 1)[0]


def export_name(path: Path) -> str:
    """A score's MIDI file below the source folder: `bach/bwv1.6.mxl` -> `bach/bwv1_6_mxl.mid`.

    The corpus path, not the bare name: beethoven/opus18no1/movement1.mxl and
    opus59no1/movement1.mxl would otherwise overwrite each other.
    """
    folder, _, name = corpus_path(path).rpartition("/")
    return f"{folder}/{name.replace('.', '_')}.mid" if folder else f"{name.replace('.', '_')}.mid"


def _export(args: tuple[str, str, str]) -> tuple[str, str | None, str]:
    """Export one score to MIDI; return (relpath, content hash or None, error)."""
    import music21

    src, dest, rel = args
    try:
        score = music21.converter.parse(src)
        fp = music21.midi.translate.music21ObjectToMidiFile(score)
        data = fp.writestr()
        content = [
            (float(n.offset), tuple(p.midi for p in n.pitches), float(n.quarterLength))
            for n in score.flatten().notes
        ]
    except Exception as exc:  # music21 raises many exception types on odd scores
        return rel, None, f"{type(exc).__name__}: {str(exc)[:120]}"
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    Path(dest).write_bytes(data)
    # duplicates differ in metadata (titles, encodings), so compare the notes
    return rel, hashlib.md5(repr(content).encode()).hexdigest(), ""


def fetch(params: Params, out_dir: Path) -> None:
    """Export the collections to `out_dir/<corpus path>.mid` plus manifest.csv."""
    scores = list_scores(params.collections)
    if params.max_files:
        scores = sorted(scores, key=lambda s: stable_fraction(corpus_path(s[1])))
        scores = sorted(scores[: params.max_files], key=lambda s: (s[0], s[1].name))
    export(scores, out_dir, params.workers)


def export(scores: list[tuple[str, Path]], out_dir: Path, workers: int = 0) -> None:
    """Export (collection, score path) pairs to MIDI in `out_dir`, with manifest.csv."""
    from tqdm import tqdm

    with atomic_dir(out_dir) as tmp:
        tasks = []
        for _, path in scores:
            rel = export_name(path)
            tasks.append((str(path), str(tmp / rel), rel))
        workers = workers or mp.cpu_count()
        with mp.get_context("forkserver").Pool(workers) as pool:
            results = list(
                tqdm(
                    pool.imap(_export, tasks, chunksize=4),
                    total=len(tasks),
                    desc="export corpus",
                    unit="score",
                )
            )
        seen: set[str] = set()
        rows = []
        for (collection, path), (rel, digest, error) in zip(scores, results, strict=True):
            if digest is None:
                log.warning("corpus: %s: not exported (%s)", path.name, error)
                continue
            if digest in seen:
                (tmp / rel).unlink()
                continue
            seen.add(digest)
            rows.append(
                {
                    "path": rel,
                    "split": "",  # ingest draws it per work
                    "composer": COMPOSERS[collection],
                    "title": path.stem,
                    "group": work_key(path),
                    "style": "",
                }
            )
        with (tmp / MANIFEST).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        log.info("corpus: exported %d unique scores of %d", len(rows), len(scores))


register(Source("corpus", Params, fetch))
