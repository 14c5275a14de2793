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
import threading
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import atomic_dir
from pipeline.midi import MidiError, ParseLimits, file_md5, parse_midi_arrays
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
            0 <= self.validation_fraction
            and 0 <= self.test_fraction
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
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES]
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

    rejects: list[dict[str, str]] = []
    n_pieces = n_notes = 0
    with atomic_dir(out_dir) as tmp:
        notes_out = _BufferedWriter(tmp / "notes.parquet", NOTES, "notes")
        pedals_out = _BufferedWriter(tmp / "pedals.parquet", PEDALS, "pedals")
        pieces_out = _BufferedWriter(tmp / "pieces.parquet", PIECES, "pieces")
        try:
            results = _parse_all(jobs, source, limits, params)
            bar = tqdm(
                results,
                total=len(jobs),
                desc=f"ingest {source}",
                unit="file",
                disable=not progress or None,
            )
            for job, outcome in zip(jobs, bar, strict=True):
                if isinstance(outcome, str):
                    rejects.append({"path": job.rel, "reason": outcome})
                    continue
                notes_out.write(outcome["notes"])
                if outcome["pedals"] is not None:
                    pedals_out.write(outcome["pedals"])
                n_pieces += 1
                n_notes += outcome["n_notes"]
                pieces_out.write_row(
                    {
                        "piece_id": _piece_id(source, job.rel),
                        "source": source,
                        "split": job.split or stable_split(outcome["md5"], *fractions),
                        "path": job.rel,
                        "md5": outcome["md5"],
                        "composer": job.composer,
                        "title": job.title or Path(job.rel).stem,
                        "style": job.composer or source,
                        "duration": outcome["duration"],
                        "n_notes": outcome["n_notes"],
                        "n_tracks": outcome["n_tracks"],
                        "ticks_per_quarter": outcome["ticks_per_quarter"],
                    }
                )
        finally:
            for writer in (notes_out, pedals_out, pieces_out):
                writer.close()
        import pandas as pd

        write_store(
            pd.DataFrame(rejects, columns=REJECTS.names),
            tmp / "rejects.parquet",
            "rejects",
            REJECTS,
        )
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
    summary = IngestSummary(total, n_pieces, len(rejects), n_notes, dict(reasons))
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
            _Job(
                str(path),
                rel,
                split,
                (row.get("composer") or "").strip(),
                (row.get("title") or "").strip(),
            )
        )
    return jobs


def _piece_id(source: str, rel: str) -> str:
    return f"{source}:{rel}"


ROW_GROUP_ROWS = 1 << 20  # one Parquet row group per ~1M rows, not one per piece


class _BufferedWriter:
    """Stream tables (or rows) into one Parquet file in large row groups.

    Per-piece row groups would cost ~7 KB of footer metadata each (measured 6.9 MiB
    per 1,000 pieces), so memory would grow with the number of files.
    """

    def __init__(self, path: Path, schema: pa.Schema, kind: str) -> None:
        self.schema = schema
        self.writer = pq.ParquetWriter(path, with_meta(schema, kind), compression="zstd")
        self.tables: list[pa.Table] = []
        self.rows: list[dict[str, Any]] = []
        self.buffered = 0

    def write(self, table: pa.Table) -> None:
        self.tables.append(table)
        self.buffered += table.num_rows
        if self.buffered >= ROW_GROUP_ROWS:
            self.flush()
        elif len(self.tables) >= 256:
            # thousands of tiny per-piece tables cost more in buffers and metadata than
            # their rows (measured ~150 MiB per 10k small files): compact them
            self.tables = [pa.concat_tables(self.tables).combine_chunks()]

    def write_row(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= 10_000:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.tables.append(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []
        if self.tables:
            self.writer.write_table(pa.concat_tables(self.tables).cast(self.schema))
            self.tables, self.buffered = [], 0

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.writer.close()


def _arrays_table(arrays: dict[str, np.ndarray], piece_id: str, schema: pa.Schema) -> pa.Table:
    n = len(next(iter(arrays.values())))
    ids = pa.array([piece_id], pa.string()).take(pa.array(np.zeros(n, np.int32)))
    columns = [ids] + [pa.array(arrays[f.name], f.type) for f in schema if f.name != "piece_id"]
    return pa.Table.from_arrays(columns, schema=schema)


def _reason_kind(reason: str) -> str:
    return reason.split(":")[0]


# --- worker side -----------------------------------------------------------------

_LIMITS: ParseLimits | None = None
_TIMEOUT_S = 0
_SOURCE = ""


class _Timeout(Exception):
    pass


def _configure(source: str, limits: ParseLimits, timeout_s: int) -> None:
    global _LIMITS, _TIMEOUT_S, _SOURCE
    _SOURCE, _LIMITS, _TIMEOUT_S = source, limits, timeout_s


def _init_worker(source: str, limits: ParseLimits, timeout_s: int) -> None:
    _configure(source, limits, timeout_s)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout


def _parse_one(job: tuple[str, str]) -> dict[str, Any] | str:
    """Parse one file (path, rel) in a worker; return Arrow tables or a reject reason.

    The tables are built here, in parallel, so the single writing parent only
    concatenates them.
    """
    assert _LIMITS is not None
    path, rel = job
    use_alarm = _TIMEOUT_S > 0 and hasattr(signal, "SIGALRM")
    if use_alarm:
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(_TIMEOUT_S)
    try:
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            return f"unreadable: {exc.strerror}"
        if size == 0:
            return "empty file"
        parsed = parse_midi_arrays(path, _LIMITS)
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
        if use_alarm:
            signal.alarm(0)
    piece_id = _piece_id(_SOURCE, rel)
    n_pedals = len(parsed.pedals["start"])
    return {
        "notes": _arrays_table(parsed.notes, piece_id, NOTES),
        "pedals": _arrays_table(parsed.pedals, piece_id, PEDALS) if n_pedals else None,
        "md5": md5,
        "n_notes": len(parsed.notes["pitch"]),
        "duration": float(parsed.notes["end"].max()),
        "n_tracks": parsed.n_tracks,
        "ticks_per_quarter": parsed.ticks_per_quarter,
    }


def _parse_all(
    jobs: list[_Job], source: str, limits: ParseLimits, params: IngestParams
) -> Iterator[dict[str, Any] | str]:
    """Yield parse outcomes in job order, from a process pool when it pays off.

    At most a few chunks per worker are in flight, so a slow writer makes the
    workers wait instead of piling results up in memory.
    """
    workers = params.workers or os.cpu_count() or 1
    tasks = [(j.path, j.rel) for j in jobs]
    if workers == 1 or len(tasks) < 8:
        in_main = threading.current_thread() is threading.main_thread()
        _configure(source, limits, params.file_timeout_s if in_main else 0)
        old = signal.getsignal(signal.SIGALRM) if in_main and hasattr(signal, "SIGALRM") else None
        try:
            yield from map(_parse_one, tasks)
        finally:
            if old is not None:
                signal.signal(signal.SIGALRM, old)
        return
    ctx = mp.get_context("forkserver" if hasattr(os, "fork") else "spawn")
    chunk = max(1, min(32, len(tasks) // (workers * 8)))
    chunks = [tasks[i : i + chunk] for i in range(0, len(tasks), chunk)]
    with ctx.Pool(
        workers, initializer=_init_worker, initargs=(source, limits, params.file_timeout_s)
    ) as pool:
        pending: deque[Any] = deque()
        next_chunk = 0
        while pending or next_chunk < len(chunks):
            while next_chunk < len(chunks) and len(pending) < 4 * workers:
                pending.append(pool.map_async(_parse_one, chunks[next_chunk]))
                next_chunk += 1
            yield from pending.popleft().get()
