"""MIDI files -> the notes store (notes, pieces, rejects, pedals Parquet files).

Every input file ends up in exactly one of `pieces` or `rejects` (with a reason).
Files are parsed in a process pool (symusic, see `pipeline.midi` for the note
policy), streamed to Parquet in input order so memory stays bounded by the largest
piece, and the output folder appears atomically only when complete.
"""

from __future__ import annotations

import csv
import logging
import multiprocessing as mp
import os
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import atomic_dir
from pipeline.midi import MidiError, ParseLimits, file_md5, parse_midi
from pipeline.params import require
from pipeline.sources import MANIFEST
from pipeline.splits import stable_shard, stable_split
from pipeline.stores import NOTES, PEDALS, PIECES, REJECTS, with_meta, write_store

log = logging.getLogger(__name__)

MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".smf")


@dataclass(frozen=True)
class IngestParams:
    """The `ingest` section of params.yaml."""

    workers: int  # 0 = one process per core
    max_reject_rate: float  # fail the stage above this fraction of rejected files
    max_notes: int  # per file; more is rejected as hostile
    max_duration_s: float  # per file
    file_timeout_s: int  # per file parse time; 0 = no limit
    validation_fraction: float  # for files whose manifest gives no split
    test_fraction: float

    def validate(self) -> None:
        require(self.workers >= 0, "workers must be >= 0")
        require(0.0 <= self.max_reject_rate <= 1.0, "max_reject_rate must be in [0, 1]")
        require(self.max_notes > 0, "max_notes must be > 0")
        require(self.max_duration_s > 0, "max_duration_s must be > 0")
        require(self.file_timeout_s >= 0, "file_timeout_s must be >= 0")
        require(
            0 <= self.validation_fraction and 0 <= self.test_fraction
            and self.validation_fraction + self.test_fraction < 1,
            "validation_fraction and test_fraction must be >= 0 and sum to < 1",
        )


DEFAULT_PARAMS = IngestParams(
    workers=0,
    max_reject_rate=0.05,
    max_notes=2_000_000,
    max_duration_s=4 * 3600.0,
    file_timeout_s=60,
    validation_fraction=0.1,
    test_fraction=0.1,
)


class IngestError(RuntimeError):
    """Ingest cannot produce a trustworthy store (e.g. too many rejects)."""


@dataclass(frozen=True)
class IngestSummary:
    files: int
    pieces: int
    rejects: int
    notes: int
    reject_reasons: dict[str, int]


@dataclass(frozen=True)
class _Job:
    path: str  # absolute
    rel: str  # relative to the input folder, '/'-separated
    split: str
    composer: str
    title: str


def find_midi_files(root: Path) -> list[Path]:
    """All MIDI files below `root`, sorted by relative path (deterministic order)."""
    files = [
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def read_manifest(root: Path) -> dict[str, dict[str, str]]:
    """Read `root/manifest.csv` (path, split, composer, title) if present."""
    path = root / MANIFEST
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "split"} - set(reader.fieldnames or [])
        if missing:
            raise IngestError(f"{path}: manifest lacks column(s) {sorted(missing)}")
        return {row["path"]: row for row in reader}


def ingest_dir(
    in_dir: str | Path,
    out_dir: str | Path,
    *,
    source: str,
    params: IngestParams = DEFAULT_PARAMS,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> IngestSummary:
    """Ingest every MIDI file below `in_dir` into `out_dir/{notes,pieces,rejects,pedals}.parquet`.

    Args:
        in_dir: folder of MIDI files (any depth), optionally with manifest.csv.
        out_dir: output folder; replaced atomically when ingest succeeds.
        source: source name recorded in pieces and used as the piece_id prefix.
        params: the ingest params section.
        shard: (index, count) to ingest only files whose stable hash falls in this
            shard; shard outputs concatenate to the unsharded result.
        progress: show a tqdm progress bar on stderr.

    Raises:
        IngestError: the input folder is missing, or the reject rate passes
            `params.max_reject_rate` (the previous output is left intact).
    """
    from tqdm import tqdm

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise IngestError(f"{in_dir}: input folder not found")
    manifest = read_manifest(in_dir)
    jobs = _plan(in_dir, manifest, params, shard)
    fractions = (params.validation_fraction, params.test_fraction)
    limits = ParseLimits(max_notes=params.max_notes, max_duration_s=params.max_duration_s)

    pieces: list[dict[str, Any]] = []
    rejects: list[dict[str, str]] = []
    n_notes = 0
    with atomic_dir(out_dir) as tmp:
        notes_writer = pq.ParquetWriter(tmp / "notes.parquet", with_meta(NOTES, "notes"), compression="zstd")
        pedals_writer = pq.ParquetWriter(tmp / "pedals.parquet", with_meta(PEDALS, "pedals"), compression="zstd")
        try:
            results = _parse_all(jobs, limits, params)
            bar = tqdm(results, total=len(jobs), desc=f"ingest {source}", unit="file",
                       disable=not progress or None)
            for job, outcome in zip(jobs, bar):
                if isinstance(outcome, str):
                    rejects.append({"path": job.rel, "reason": outcome})
                    continue
                piece_id = f"{source}:{job.rel}"
                notes = outcome["notes"]
                notes_writer.write_table(_with_piece_id(notes, piece_id, NOTES))
                if len(outcome["pedals"]["start"]):
                    pedals_writer.write_table(_with_piece_id(outcome["pedals"], piece_id, PEDALS))
                n_notes += len(notes["pitch"])
                split = job.split or stable_split(outcome["md5"], *fractions)
                pieces.append(
                    {
                        "piece_id": piece_id,
                        "source": source,
                        "split": split,
                        "path": job.rel,
                        "md5": outcome["md5"],
                        "composer": job.composer,
                        "title": job.title or Path(job.rel).stem,
                        "style": job.composer or source,
                        "duration": float(notes["end"].max()),
                        "n_notes": len(notes["pitch"]),
                        "n_tracks": outcome["n_tracks"],
                        "ticks_per_quarter": outcome["ticks_per_quarter"],
                    }
                )
        finally:
            notes_writer.close()
            pedals_writer.close()
        import pandas as pd

        write_store(pd.DataFrame(pieces, columns=PIECES.names), tmp / "pieces.parquet", "pieces", PIECES)
        write_store(pd.DataFrame(rejects, columns=REJECTS.names), tmp / "rejects.parquet", "rejects", REJECTS)
        reasons = Counter(_reason_kind(r["reason"]) for r in rejects)
        total = len(jobs)
        rate = len(rejects) / total if total else 0.0
        if total == 0:
            raise IngestError(f"{in_dir}: no MIDI files found ({', '.join(MIDI_SUFFIXES)})")
        if rate > params.max_reject_rate:
            top = ", ".join(f"{k}: {v}" for k, v in reasons.most_common(3))
            raise IngestError(
                f"{in_dir}: {len(rejects)} of {total} files rejected ({rate:.1%}) > "
                f"ingest.max_reject_rate={params.max_reject_rate:.1%}; top reasons: {top}"
            )
    summary = IngestSummary(total, len(pieces), len(rejects), n_notes, dict(reasons))
    log.info("ingest %s: %s", source, asdict(summary))
    return summary


def _plan(
    in_dir: Path,
    manifest: dict[str, dict[str, str]],
    params: IngestParams,
    shard: tuple[int, int] | None,
) -> list[_Job]:
    jobs = []
    for path in find_midi_files(in_dir):
        rel = path.relative_to(in_dir).as_posix()
        if shard is not None and stable_shard(rel, shard[1]) != shard[0]:
            continue
        row = manifest.get(rel, {})
        split = (row.get("split") or "").strip()
        if split and split not in ("train", "validation", "test"):
            raise IngestError(f"{in_dir / MANIFEST}: {rel}: unknown split {split!r}")
        jobs.append(
            _Job(str(path), rel, split, (row.get("composer") or "").strip(), (row.get("title") or "").strip())
        )
    return jobs


def _with_piece_id(arrays: dict[str, np.ndarray], piece_id: str, schema: pa.Schema) -> pa.Table:
    n = len(next(iter(arrays.values())))
    columns = {"piece_id": pa.array([piece_id] * n, pa.string())}
    for field in schema:
        if field.name != "piece_id":
            columns[field.name] = pa.array(arrays[field.name], field.type)
    return pa.Table.from_pydict(columns, schema=schema)


def _reason_kind(reason: str) -> str:
    return reason.split(":")[0]


# --- worker side -----------------------------------------------------------------

_LIMITS: ParseLimits | None = None
_TIMEOUT_S = 0


class _Timeout(Exception):
    pass


def _init_worker(limits: ParseLimits, timeout_s: int) -> None:
    global _LIMITS, _TIMEOUT_S
    _LIMITS, _TIMEOUT_S = limits, timeout_s
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout


def _parse_one(path: str) -> dict[str, Any] | str:
    """Parse one file in a worker; return arrays or a reject reason string."""
    assert _LIMITS is not None
    if _TIMEOUT_S and hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(_TIMEOUT_S)
    try:
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            return f"unreadable: {exc.strerror}"
        if size == 0:
            return "empty file"
        parsed = parse_midi(path, _LIMITS)
        md5 = file_md5(path)
    except MidiError as exc:
        return str(exc)
    except _Timeout:
        return f"timeout: parsing took longer than {_TIMEOUT_S} s (ingest.file_timeout_s)"
    except MemoryError:
        return "too large: out of memory while parsing"
    except Exception as exc:  # a parser bug must not stop the whole ingest
        return f"parser error: {type(exc).__name__}: {str(exc)[:200]}"
    finally:
        if _TIMEOUT_S and hasattr(signal, "SIGALRM"):
            signal.alarm(0)
    return {
        "notes": {c: parsed.notes[c].to_numpy() for c in parsed.notes.columns},
        "pedals": {c: parsed.pedals[c].to_numpy() for c in parsed.pedals.columns},
        "md5": md5,
        "n_tracks": parsed.n_tracks,
        "ticks_per_quarter": parsed.ticks_per_quarter,
    }


def _parse_all(
    jobs: list[_Job], limits: ParseLimits, params: IngestParams
) -> Iterator[dict[str, Any] | str]:
    """Yield parse outcomes in job order, from a process pool when it pays off."""
    workers = params.workers or os.cpu_count() or 1
    paths = [j.path for j in jobs]
    if workers == 1 or len(paths) < 8:
        _init_worker(limits, params.file_timeout_s)
        yield from map(_parse_one, paths)
        return
    ctx = mp.get_context("forkserver" if hasattr(os, "fork") else "spawn")
    chunk = max(1, min(64, len(paths) // (workers * 8)))
    with ctx.Pool(workers, initializer=_init_worker, initargs=(limits, params.file_timeout_s)) as pool:
        yield from pool.imap(_parse_one, paths, chunksize=chunk)
