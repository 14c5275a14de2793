"""Your own MIDI as a pipeline source: any folder of .mid/.midi files.

`dvc exp run -S 'sources=[folder]' -S folder.path=/abs/path` runs the whole pipeline
on it. Fetch copies the MIDI files below `folder.path` (searched recursively, in
sorted order, symlinked folders not followed) into data/raw/folder, keeping their
relative paths, with a manifest.csv whose split and group are empty: ingest groups
the files by content fingerprint, so two renditions of one piece (another tempo,
other velocities, re-saved) share a split (`pipeline.splits`). The style label of
each file is `folder.style`, or when that is empty the name of the file's top
sub-folder below `path` (`jazz/x.mid` -> "jazz"; a file directly in `path` gets the
source name, "folder").

DVC and the external folder: the fetch stage depends on the `folder` params section,
so it reruns when the path (or style, max_files) changes, but DVC does not look
inside the folder. After adding, removing or editing files there, rerun the fetch
yourself: `dvc repro --force --single-item fetch@folder` (or `etude fetch folder
--out data/raw/folder`), then `dvc repro`; the stages after it rerun only when the
copied files differ, because data/raw/folder is a tracked output with their content.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.io import atomic_dir
from pipeline.core.params import ParamsError, require
from pipeline.core.stores import MANIFEST, MANIFEST_COLUMNS
from pipeline.sources import Source, register
from pipeline.splits import stable_fraction

log = logging.getLogger(__name__)

MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".smf")  # as ingest reads them


@dataclass(frozen=True)
class Params:
    """The `folder` section: where the files are, their style label, how many."""

    path: str  # the folder; empty is an error when the source is fetched
    style: str  # a fixed style label; empty = each file's top sub-folder name
    max_files: int  # 0 = all; else a reproducible subset

    def validate(self) -> None:
        require(self.max_files >= 0, "max_files must be >= 0")


def midi_files(root: Path) -> Iterator[str]:
    """Relative '/'-paths of the MIDI files below `root`, sorted; symlinked folders skipped."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        base = Path(folder).relative_to(root).as_posix()
        for name in sorted(files):
            if name.lower().endswith(MIDI_SUFFIXES) and os.path.isfile(os.path.join(folder, name)):
                yield name if base == "." else f"{base}/{name}"


def style_of(rel: str, fixed: str) -> str:
    """`fixed`, else the top sub-folder of `rel` ("" for a file at the top)."""
    if fixed:
        return fixed
    top, sep, _ = rel.partition("/")
    return top if sep else ""


def fetch(params: Params, out_dir: Path) -> None:
    """Copy the MIDI files below `params.path` to `out_dir`, with manifest.csv.

    Raises:
        ParamsError: `path` is empty, not a folder, or holds no MIDI file.
    """
    if not params.path:
        raise ParamsError("folder.path is empty: set it, e.g. -S folder.path=/abs/path/to/midi")
    root = Path(params.path).expanduser()
    if not root.is_dir():
        raise ParamsError(f"folder.path={params.path}: folder not found")
    found = list(midi_files(root))
    if not found:
        raise ParamsError(f"folder.path={params.path}: no MIDI files ({', '.join(MIDI_SUFFIXES)})")
    if params.max_files and params.max_files < len(found):
        ranked = sorted(found, key=lambda rel: (stable_fraction(rel, salt="subset"), rel))
        found = sorted(ranked[: params.max_files])
    with atomic_dir(out_dir) as tmp:
        rows = []
        for rel in found:
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, dest)
            rows.append(
                {
                    "path": rel,
                    "split": "",  # ingest draws it per fingerprint
                    "composer": "",
                    "title": Path(rel).stem,
                    "group": "",
                    "style": style_of(rel, params.style),
                }
            )
        with (tmp / MANIFEST).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    log.info("folder: copied %d MIDI files from %s to %s", len(rows), root, out_dir)


register(Source("folder", Params, fetch))
