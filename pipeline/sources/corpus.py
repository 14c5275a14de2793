"""The embedded default source: real scores shipped inside the music21 wheel.

Works with no network. Each score of the chosen collections is exported to MIDI
once; scores whose notes are identical to an earlier one (the corpus holds some
chorales twice, e.g. as .mxl and .krn, or under two BWV numbers) are skipped so
no piece can land in both train and test.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import multiprocessing as mp
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
    """Export the collections to `out_dir/<collection>/<name>.mid` plus manifest.csv."""
    from tqdm import tqdm

    scores = list_scores(params.collections)
    if params.max_files:
        scores = sorted(scores, key=lambda s: stable_fraction(f"{s[0]}/{s[1].name}"))
        scores = sorted(scores[: params.max_files], key=lambda s: (s[0], s[1].name))
    with atomic_dir(out_dir) as tmp:
        tasks = []
        for collection, path in scores:
            rel = f"{collection}/{path.name.replace('.', '_')}.mid"
            tasks.append((str(path), str(tmp / rel), rel))
        workers = params.workers or mp.cpu_count()
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
                {"path": rel, "split": "", "composer": COMPOSERS[collection], "title": path.stem}
            )
        with (tmp / MANIFEST).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        log.info("corpus: exported %d unique scores of %d", len(rows), len(scores))


register(Source("corpus", Params, fetch))
