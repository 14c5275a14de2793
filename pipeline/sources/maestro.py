"""MAESTRO v3.0.0: 1,276 piano performances with the official train/validation/test split.

The MIDI-only zip (~56 MB) is downloaded once into a cache folder, verified, and the
MIDI files (all, or a reproducible subset) are extracted with their archive layout
(`maestro-v3.0.0/<year>/<name>.midi`) beside a manifest that carries the official
split and the canonical composer and title from `maestro-v3.0.0.csv`.
"""

from __future__ import annotations

import csv
import io
import logging
import posixpath
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pipeline.core.config import SPLITS
from pipeline.core.io import atomic_dir
from pipeline.core.params import require
from pipeline.core.stores import MANIFEST, MANIFEST_COLUMNS
from pipeline.download import DownloadError, download, extract_into
from pipeline.sources import Source, register
from pipeline.splits import stable_fraction

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "canonical_composer",
    "canonical_title",
    "split",
    "year",
    "midi_filename",
    "audio_filename",
    "duration",
)
_CSV_NAME = re.compile(r"maestro-v[\d.]+\.csv")


@dataclass(frozen=True)
class Params:
    """The `maestro` section: where the zip comes from and how much of it to keep."""

    url: str
    md5: str | None  # hex MD5 of the zip, or null
    sha256: str | None  # hex SHA-256 of the zip, or null (set null with a mirror url)
    size_bytes: int | None  # expected zip size, or null
    max_files: int  # 0 = all 1,276; else a reproducible subset, official splits kept
    cache_dir: str  # the zip is kept here between runs

    def validate(self) -> None:
        require(
            self.url.startswith(("http://", "https://")), f"url must be http(s), got {self.url!r}"
        )
        require(self.max_files >= 0, "max_files must be >= 0")
        require(self.size_bytes is None or self.size_bytes > 0, "size_bytes must be > 0 or null")
        for key in ("md5", "sha256"):
            value = getattr(self, key)
            length = 32 if key == "md5" else 64
            require(
                value is None or re.fullmatch(rf"[0-9a-fA-F]{{{length}}}", value) is not None,
                f"{key} must be {length} hex digits or null, got {value!r}",
            )
        require(bool(self.cache_dir), "cache_dir must not be empty")


@dataclass(frozen=True)
class Performance:
    """One row of maestro-v3.0.0.csv that matters here."""

    member: str  # path inside the zip
    split: str
    composer: str
    title: str


def read_metadata(archive: Path) -> list[Performance]:
    """Read the performances listed in the zip's `maestro-v*.csv`, validated."""
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        candidates = sorted(n for n in names if _CSV_NAME.fullmatch(posixpath.basename(n)))
        if not candidates:
            raise DownloadError(f"{archive}: no maestro-v*.csv inside: not a MAESTRO archive")
        csv_member = candidates[0]
        text = zf.read(csv_member).decode("utf-8-sig")
    where = f"{archive}:{csv_member}"
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DownloadError(f"{where}: missing column(s) {missing}")
    root = posixpath.dirname(csv_member)
    rows = []
    for line, row in enumerate(reader, start=2):
        split = row["split"].strip()
        if split not in SPLITS:
            raise DownloadError(
                f"{where}: line {line}: split {split!r} is not one of {list(SPLITS)}"
            )
        member = posixpath.join(root, row["midi_filename"].strip())
        if member not in names:
            raise DownloadError(
                f"{where}: line {line}: {row['midi_filename']!r} is not in the archive"
            )
        rows.append(
            Performance(
                member, split, row["canonical_composer"].strip(), row["canonical_title"].strip()
            )
        )
    if not rows:
        raise DownloadError(f"{where}: lists no performances")
    return rows


def select(performances: list[Performance], max_files: int) -> list[Performance]:
    """A reproducible subset: the `max_files` with the lowest stable hash of their file name.

    Hashing the name (not drawing at random) keeps the subset the same on every
    machine and nested as `max_files` grows; each file keeps its official split.
    """
    if max_files == 0 or max_files >= len(performances):
        return sorted(performances, key=lambda p: p.member)
    ranked = sorted(
        performances, key=lambda p: (stable_fraction(_midi_filename(p), salt="subset"), p.member)
    )
    return sorted(ranked[:max_files], key=lambda p: p.member)


def _midi_filename(p: Performance) -> str:
    """The CSV's midi_filename (`2004/x.midi`): the key does not depend on the zip's folder name."""
    return p.member.split("/", 1)[1] if "/" in p.member else p.member


def fetch(params: Params, out_dir: Path) -> None:
    """Download the MAESTRO zip (cached) and write MIDI files plus manifest.csv to `out_dir`."""
    archive = Path(params.cache_dir) / (
        posixpath.basename(urlparse(params.url).path) or "maestro.zip"
    )
    download(params.url, archive, md5=params.md5, sha256=params.sha256, size=params.size_bytes)
    chosen = select(read_metadata(archive), params.max_files)
    wanted = {p.member for p in chosen}
    with atomic_dir(out_dir) as tmp:
        extract_into(archive, tmp, choose=lambda names: [n for n in names if n in wanted])
        with (tmp / MANIFEST).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            for p in chosen:
                writer.writerow(
                    {
                        "path": p.member,
                        "split": p.split,  # official: ingest keeps it
                        "composer": p.composer,
                        "title": p.title,
                        "group": "",  # performances: ingest's fingerprint joins exact copies
                        "style": "",
                    }
                )
    counts = {s: sum(p.split == s for p in chosen) for s in SPLITS}
    log.info("maestro: wrote %d performances to %s (%s)", len(chosen), out_dir, counts)


register(Source("maestro", Params, fetch))
