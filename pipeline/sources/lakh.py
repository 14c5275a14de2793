"""The Lakh MIDI Dataset (Raffel 2016): lmd_full, lmd_matched or clean_midi.

The archive is downloaded once into a cache folder and verified; its MIDI files
(all, or a reproducible subset) are extracted with the archive layout
(`lmd_full/<h>/<md5>.mid`, `lmd_matched/<A>/<B>/<C>/<track>/<md5>.mid`,
`clean_midi/<Artist>/<Title>.mid`). Files with identical bytes (lmd_matched lists a
MIDI once per matched track) are kept once.

Lakh has no official split. The manifest leaves it empty and names each file's
group (`group_of`), so ingest draws one split per work (ingest's
validation_fraction/test_fraction, `pipeline.splits`): clean_midi groups by
artist/title (case, spacing and Lakh's `.1`, `.2` duplicate numbering ignored),
lmd_matched by MSD track (tracks that share a MIDI file form one group), lmd_full
has no names to go by and is grouped by ingest's content fingerprint alone. In all
three variants ingest also joins files with one fingerprint across groups.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pipeline.core.io import atomic_dir
from pipeline.core.params import require
from pipeline.core.stores import MANIFEST, MANIFEST_COLUMNS
from pipeline.download import DownloadError, download, extract_into
from pipeline.sources import Source, register
from pipeline.splits import stable_fraction

log = logging.getLogger(__name__)

Variant = Literal["lmd_full", "lmd_matched", "clean_midi"]
BASE_URL = "http://hog.ee.columbia.edu/craffel/lmd"
URLS: dict[str, str] = {
    v: f"{BASE_URL}/{v}.tar.gz" for v in ("lmd_full", "lmd_matched", "clean_midi")
}
# (md5, size in bytes) of the official archives as published in muspy
# (muspy/datasets/lmd.py); none is published for clean_midi.
KNOWN: dict[str, tuple[str, int]] = {
    URLS["lmd_full"]: ("2536ce3fd2cede53ddaa264f731859ab", 1768163879),
    URLS["lmd_matched"]: ("fb80d01c22020295bb3eeef31f1aa63a", 1407072670),
}
MIDI_SUFFIXES = (".mid", ".midi", ".kar")
_MD5_NAME = re.compile(r"[0-9a-f]{32}")
_TRACK_ID = re.compile(r"TR[0-9A-Z]{16}")
_DUPLICATE_NUMBER = re.compile(r"\.\d+$")  # clean_midi's "Title.1.mid", "Title.2.mid"


@dataclass(frozen=True)
class Params:
    """The `lakh` section: which archive and how much of it (ingest draws the splits)."""

    variant: Variant
    url: str  # empty = the official URL of the variant
    md5: str | None  # null = the published MD5 of the official archive, if any
    size_bytes: int | None  # null = the published size of the official archive, if any
    max_files: int  # 0 = all; else a reproducible subset
    cache_dir: str  # the archive is kept here between runs

    def validate(self) -> None:
        require(
            self.url == "" or self.url.startswith(("http://", "https://")),
            f"url must be empty or http(s), got {self.url!r}",
        )
        require(
            self.md5 is None or re.fullmatch(r"[0-9a-fA-F]{32}", self.md5) is not None,
            f"md5 must be 32 hex digits or null, got {self.md5!r}",
        )
        require(self.size_bytes is None or self.size_bytes > 0, "size_bytes must be > 0 or null")
        require(self.max_files >= 0, "max_files must be >= 0")
        require(bool(self.cache_dir), "cache_dir must not be empty")

    @property
    def resolved_url(self) -> str:
        return self.url or URLS[self.variant]

    def checks(self) -> tuple[str | None, int | None]:
        """(md5, size) to verify: the explicit ones, else the published ones for the URL."""
        known_md5, known_size = KNOWN.get(self.resolved_url, (None, None))
        return self.md5 or known_md5, self.size_bytes or known_size


def select(names: list[str], max_files: int) -> list[str]:
    """MIDI members to extract: all, or the `max_files` with the lowest stable hash of their path.

    The subset hash uses its own salt, independent of the split hash, so a subset
    keeps the split fractions of the whole. Names carrying an MD5 (lmd_full,
    lmd_matched) are de-duplicated here already, before the subset is taken.
    """
    midi = [n for n in names if n.lower().endswith(MIDI_SUFFIXES)]
    seen: set[str] = set()
    unique = []
    for name in sorted(midi):
        key = _name_md5(name) or name
        if key not in seen:
            seen.add(key)
            unique.append(name)
    if max_files == 0 or max_files >= len(unique):
        return unique
    ranked = sorted(unique, key=lambda n: (stable_fraction(n, salt="subset"), n))
    return sorted(ranked[:max_files])


def _name_md5(name: str) -> str | None:
    """The MD5 that lmd_full/lmd_matched use as the file name, if this name is one."""
    stem = posixpath.splitext(posixpath.basename(name))[0]
    return stem if _MD5_NAME.fullmatch(stem) else None


def file_md5(path: Path) -> str:
    """MD5 of a file's bytes (pipeline.midi has one too, but importing it pulls in pandas)."""
    h = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def title_of(variant: str, member: str) -> str:
    """`Artist/Title` for clean_midi (`clean_midi/<Artist>/<Title>.mid`), else empty."""
    if variant != "clean_midi":
        return ""
    parts = member.split("/")
    return f"{parts[-2]}/{posixpath.splitext(parts[-1])[0]}" if len(parts) >= 2 else ""


def _track_of(name: str) -> str | None:
    """The MSD track id of an lmd_matched member (`.../<TR...>/<md5>.mid`), if any."""
    parts = name.split("/")
    return parts[-2] if len(parts) >= 2 and _TRACK_ID.fullmatch(parts[-2]) else None


def matched_groups(names: list[str]) -> dict[str, str]:
    """lmd_matched: MIDI MD5 -> its group, the smallest MSD track id joined to it.

    One MIDI is matched to several tracks (and a track to several MIDIs); tracks
    linked through a shared MIDI are one group, computed over every member of the
    archive (not only the extracted subset) so the groups do not depend on max_files.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    pairs = []
    for name in names:
        digest, track = _name_md5(name), _track_of(name)
        if digest and track:
            pairs.append((digest, track))
            a, b = find("m" + digest), find("t" + track)
            if a != b:
                # track nodes ("t...") sort after MIDI nodes ("m..."): keep a track as root
                # where there is one, the smallest such
                if a.startswith("t") and (not b.startswith("t") or a < b):
                    parent[b] = a
                else:
                    parent[a] = b
    return {digest: find("m" + digest)[1:] for digest, _ in pairs}


def group_of(variant: str, member: str, matched: dict[str, str] | None = None) -> str:
    """The work a Lakh file belongs to ("" for lmd_full: ingest uses the fingerprint).

    clean_midi: `artist/title` casefolded, runs of spaces collapsed, the `.N`
    duplicate number dropped ("Sum 41/In Too Deep.1.mid" -> "sum 41/in too deep").
    lmd_matched: the MSD track group of `matched_groups`, else the track in the path.
    """
    if variant == "clean_midi":
        parts = member.split("/")
        if len(parts) < 2:
            return ""
        title = _DUPLICATE_NUMBER.sub("", posixpath.splitext(parts[-1])[0])
        return " ".join(f"{parts[-2]}/{title}".casefold().split())
    if variant == "lmd_matched":
        digest = _name_md5(member)
        if matched and digest in matched:
            return matched[digest]
        return _track_of(member) or ""
    return ""


def fetch(params: Params, out_dir: Path) -> None:
    """Download the Lakh archive (cached) and write MIDI files plus manifest.csv to `out_dir`."""
    url = params.resolved_url
    md5, size = params.checks()
    archive = Path(params.cache_dir) / (
        posixpath.basename(urlparse(url).path) or f"{params.variant}.tar.gz"
    )
    download(url, archive, md5=md5, size=size)
    matched: dict[str, str] = {}

    def choose(names: list[str]) -> list[str]:
        if params.variant == "lmd_matched":
            matched.update(matched_groups(names))
        return select(names, params.max_files)

    with atomic_dir(out_dir) as tmp:
        files = extract_into(archive, tmp, choose=choose)
        if not files:
            raise DownloadError(f"{archive}: contains no MIDI files")
        rows = []
        seen: dict[str, str] = {}
        # of byte-identical files keep the shortest name ("Song.mid" over "Song.1.mid")
        for path in sorted(files, key=lambda f: (len(f.as_posix()), f.as_posix())):
            rel = path.relative_to(tmp).as_posix()
            # trust the name only where Lakh names files by their MD5
            digest = (_name_md5(rel) if params.variant != "clean_midi" else None) or file_md5(path)
            if digest in seen:  # same bytes under another name (clean_midi has a few)
                log.debug("lakh: %s duplicates %s; dropped", rel, seen[digest])
                path.unlink()
                continue
            seen[digest] = rel
            rows.append(
                {
                    "path": rel,
                    "split": "",  # ingest draws it per group and fingerprint
                    "composer": "",
                    "title": title_of(params.variant, rel),
                    "group": group_of(params.variant, rel, matched),
                    "style": "",
                }
            )
        rows.sort(key=lambda r: r["path"])
        with (tmp / MANIFEST).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    groups = len({r["group"] for r in rows if r["group"]})
    dropped = len(files) - len(rows)
    log.info(
        "lakh %s: wrote %d files to %s (%d named groups; %d duplicates dropped)",
        params.variant,
        len(rows),
        out_dir,
        groups,
        dropped,
    )


register(Source("lakh", Params, fetch))
