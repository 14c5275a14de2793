"""MIDI files -> the notes store (notes, pieces, rejects, pedals Parquet files).

Every input file ends up in exactly one of `pieces` or `rejects` (with a reason).
Splits come from the manifest where it gives one, else per work: pieces sharing a
manifest group or a content fingerprint share a split (`pipeline.splits`), decided
once every file is parsed.
Files are parsed in a process pool (symusic, see `pipeline.midi` for the note
policy) that sends plain numpy columns back; one parent streams them to Parquet in
input order. Nothing is held per file (the file list is walked lazily) but the
three short keys per piece that drawing the splits needs, so memory stays nearly flat
with the number of files, and the output folder appears atomically only when complete.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import itertools
import logging
import multiprocessing as mp
import os
import signal
import threading
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import typer

from pipeline.core.config import PARAMS_FILE
from pipeline.core.io import abandon_writer, atomic_dir, writing
from pipeline.core.params import require
from pipeline.core.stores import (
    MANIFEST,
    NOTES,
    PEDALS,
    PIECES,
    REJECTS,
    parquet_options,
    storage_schema,
    with_meta,
)
from pipeline.midi import MidiError, ParseLimits, PieceArrays, parse_midi_arrays
from pipeline.splits import assign_splits, content_fingerprint, stable_shard

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
    meta: _Meta


def iter_midi_files(root: Path) -> Iterator[str]:
    """Relative '/'-paths of the MIDI files below `root`, streamed in sorted order.

    The order equals sorting all relative paths as strings (a directory sorts as its
    name plus '/'), without holding the list: memory stays flat at Lakh's 180k files.
    Symlinked directories are not followed (no loops, nothing outside `root`).
    """

    def walk(folder: Path, prefix: str) -> Iterator[str]:
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise IngestError(f"{folder}: cannot list folder ({exc.strerror})") from exc
        keyed = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                keyed.append((entry.name + "/", entry))
            elif entry.name.lower().endswith(MIDI_SUFFIXES) and entry.is_file():
                keyed.append((entry.name, entry))
        del entries
        for key, entry in sorted(keyed, key=lambda item: item[0]):
            if key.endswith("/"):
                yield from walk(Path(entry.path), prefix + key)
            else:
                yield prefix + key

    yield from walk(root, "")


def find_midi_files(root: Path) -> list[Path]:
    """All MIDI files below `root`, sorted by relative path (deterministic order)."""
    return [root / rel for rel in iter_midi_files(root)]


@dataclass(frozen=True)
class _Meta:
    """What the manifest says of one file (empty strings where it says nothing)."""

    split: str = ""
    composer: str = ""
    title: str = ""
    group: str = ""
    style: str = ""


Manifest = dict[str, _Meta]  # rel path -> its manifest row


def read_manifest(root: Path) -> Manifest:
    """Read `root/manifest.csv` (path, split[, composer, title, group, style]) if present."""
    path = root / MANIFEST
    if not path.exists():
        return {}
    out: Manifest = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "split"} - set(reader.fieldnames or [])
        if missing:
            raise IngestError(f"{path}: manifest lacks column(s) {sorted(missing)}")
        for row in reader:
            split = (row.get("split") or "").strip()
            if split and split not in SPLITS:
                raise IngestError(f"{path}: {row['path']}: unknown split {split!r}")
            fields = ("composer", "title", "group", "style")
            out[row["path"]] = _Meta(split, *((row.get(k) or "").strip() for k in fields))
    return out


SPLITS = ("train", "validation", "test")


def ingest_dir(
    in_dir: str | Path,
    out_dir: str | Path,
    *,
    source: str,
    params: IngestParams,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> IngestSummary:
    """Ingest every MIDI file below `in_dir` into `out_dir/{notes,pieces,rejects,pedals}.parquet`.

    Args:
        in_dir: folder of MIDI files (any depth), optionally with manifest.csv.
        out_dir: output folder; replaced atomically when ingest succeeds.
        source: source name recorded in pieces and used as the piece_id prefix.
        params: the ingest params section.
        shard: (index, count) to ingest only files whose stable hash (of their
            manifest group, else of their path) falls in this shard; shard outputs
            concatenate to the unsharded result. Splits are decided per shard: a work
            with a manifest group stays in one shard, but two files of one
            fingerprint and no shared group can land in two shards and then be
            split apart (`etude validate notes` on the merged store reports it).
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

    no_meta = _Meta()

    def jobs() -> Iterator[_Job]:
        for rel in iter_midi_files(in_dir):
            meta = manifest.get(rel, no_meta)
            if shard is None or stable_shard(meta.group or rel, shard[1]) == shard[0]:
                yield _Job(str(in_dir / rel), rel, meta)

    total = sum(1 for _ in jobs())  # a cheap first walk, for the progress bar
    if total == 0:
        raise IngestError(f"{in_dir}: no MIDI files found ({', '.join(MIDI_SUFFIXES)})")
    fractions = (params.validation_fraction, params.test_fraction)
    limits = ParseLimits(max_notes=params.max_notes, max_duration_s=params.max_duration_s)

    reasons: Counter[str] = Counter()
    n_pieces = n_notes = 0
    with atomic_dir(out_dir) as tmp:
        writers: list[_ColumnWriter | _RowWriter] = []
        results = None
        try:
            notes_out = _ColumnWriter(tmp / "notes.parquet", NOTES, "notes")
            writers.append(notes_out)
            pedals_out = _ColumnWriter(tmp / "pedals.parquet", PEDALS, "pedals")
            writers.append(pedals_out)
            # split and group are final only once every piece is known: see _finish_pieces
            pieces_out = _RowWriter(tmp / UNSPLIT, PIECES, "pieces")
            writers.append(pieces_out)
            rejects_out = _RowWriter(tmp / "rejects.parquet", REJECTS, "rejects")
            writers.append(rejects_out)
            results = _parse_all(jobs(), total, source, limits, params)
            bar = tqdm(
                total=total, desc=f"ingest {source}", unit="file", disable=not progress or None
            )
            with bar:
                for batch, chunk in results:
                    bar.update(len(batch))
                    note_runs: list[tuple[str, int]] = []
                    pedal_runs: list[tuple[str, int]] = []
                    for job, outcome in zip(batch, chunk.outcomes, strict=True):
                        if isinstance(outcome, str):
                            rejects_out.write({"path": job.rel, "reason": outcome})
                            reasons[_reason_kind(outcome)] += 1
                            continue
                        piece_id = _piece_id(source, job.rel)
                        note_runs.append((piece_id, outcome.n_notes))
                        if outcome.n_pedals:
                            pedal_runs.append((piece_id, outcome.n_pedals))
                        n_pieces += 1
                        n_notes += outcome.n_notes
                        meta = job.meta
                        pieces_out.write(
                            {
                                "piece_id": piece_id,
                                "source": source,
                                "split": meta.split,  # "" = drawn in _finish_pieces
                                "path": job.rel,
                                "md5": outcome.md5,
                                "group": meta.group,  # "" = the fingerprint, in _finish_pieces
                                "fingerprint": outcome.fingerprint,
                                "composer": meta.composer,
                                "title": meta.title or Path(job.rel).stem,
                                "style": meta.style or meta.composer or source,
                                "duration": outcome.duration,
                                "n_notes": outcome.n_notes,
                                "n_tracks": outcome.n_tracks,
                                "ticks_per_quarter": outcome.ticks_per_quarter,
                            }
                        )
                    notes_out.write(note_runs, chunk.notes)
                    pedals_out.write(pedal_runs, chunk.pedals)
            for writer in writers:
                writer.close()
            _finish_pieces(tmp / UNSPLIT, tmp / "pieces.parquet", fractions)
        except BaseException:
            # Unwinding (a full disk, Ctrl-C, a parser error): stop the pool now, and close
            # the files being thrown away without writing again, so that no cleanup error
            # replaces or chains onto this one.
            if results is not None:
                with contextlib.suppress(Exception):
                    results.close()
            for writer in writers:
                writer.abort()
            raise
        n_rejects = sum(reasons.values())
        if n_pieces + n_rejects != total:
            raise IngestError(f"{in_dir}: {total} files found, {n_pieces + n_rejects} ingested")
        rate = n_rejects / total
        if rate > params.max_reject_rate:
            top = ", ".join(f"{k}: {v}" for k, v in reasons.most_common(3))
            raise IngestError(
                f"{in_dir}: {n_rejects} of {total} files rejected ({rate:.1%}) > "
                f"ingest.max_reject_rate={params.max_reject_rate:.1%}; top reasons: {top}"
            )
    summary = IngestSummary(total, n_pieces, n_rejects, n_notes, dict(reasons))
    log.info("ingest %s: %s", source, asdict(summary))
    return summary


UNSPLIT = "pieces.unsplit.parquet"  # pieces before their splits are drawn (temporary)


def _finish_pieces(unsplit: Path, out: Path, fractions: tuple[float, float]) -> None:
    """Rewrite the streamed pieces with their final split and group, then drop `unsplit`.

    A split depends on every piece sharing a group or fingerprint with it, so it is
    drawn here, after parsing (`pipeline.splits.assign_splits`). Only three string
    columns are held (about 100 bytes a piece: 18 MB for Lakh's 178k files); the
    rows are copied one row group at a time.
    """
    keys = pq.read_table(unsplit, columns=["split", "group", "fingerprint"]).to_pydict()
    splits = assign_splits(keys["group"], keys["fingerprint"], keys["split"], *fractions)
    groups = [g or f for g, f in zip(keys["group"], keys["fingerprint"], strict=True)]
    del keys
    source = pq.ParquetFile(unsplit)
    schema = with_meta(PIECES, "pieces")
    done = 0
    with writing(out):
        writer = pq.ParquetWriter(out, schema, **parquet_options(PIECES))
    try:
        for i in range(source.num_row_groups):
            table = source.read_row_group(i)
            rows = slice(done, done + table.num_rows)
            done += table.num_rows
            table = table.set_column(
                PIECES.get_field_index("split"), "split", pa.array(splits[rows], pa.string())
            )
            table = table.set_column(
                PIECES.get_field_index("group"), "group", pa.array(groups[rows], pa.string())
            )
            with writing(out):
                writer.write_table(table.cast(schema))
        with writing(out):
            writer.close()
    except BaseException:
        abandon_writer(writer)
        raise
    unsplit.unlink()


def _piece_id(source: str, rel: str) -> str:
    return f"{source}:{rel}"


def _reason_kind(reason: str) -> str:
    return reason.split(":")[0]


# --- the single writing parent ----------------------------------------------------

ROW_GROUP_ROWS = 1 << 20  # one Parquet row group per ~1M rows, not one per piece


class _ColumnWriter:
    """Stream per-piece numpy columns into one Parquet file in ~1M-row row groups.

    Workers send each chunk's notes as one block of numpy columns; the piece_id column
    is written dictionary-encoded from (id, count) runs (see `stores.storage_schema`), so
    no per-piece Arrow table or per-note string is ever made, pickled or kept.
    Per-piece row groups would cost ~7 KB of footer each (memory growing with files).
    """

    def __init__(self, path: Path, schema: pa.Schema, kind: str) -> None:
        self.path = path
        self.schema = storage_schema(schema)
        with writing(path):
            self.writer = pq.ParquetWriter(
                path, with_meta(self.schema, kind), **parquet_options(self.schema)
            )
        self.names = [name for name in schema.names if name != "piece_id"]
        self._reset()

    def _reset(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in self.names}
        self.ids: list[str] = []
        self.counts: list[int] = []
        self.rows = 0

    def write(self, runs: list[tuple[str, int]], columns: dict[str, np.ndarray]) -> None:
        """Append a block of rows: `runs` gives each piece's id and row count, in order."""
        n = len(columns[self.names[0]])
        if sum(count for _, count in runs) != n:
            raise IngestError(f"internal: {n} rows for runs {runs[:3]}...")
        if n == 0:
            return
        for name in self.names:
            self.parts[name].append(columns[name])
        for piece_id, count in runs:
            self.ids.append(piece_id)
            self.counts.append(count)
        self.rows += n
        if self.rows >= ROW_GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        runs = np.repeat(np.arange(len(self.ids), dtype=np.int32), self.counts)
        ids = pa.DictionaryArray.from_arrays(pa.array(runs), pa.array(self.ids, pa.string()))
        arrays = [ids] + [
            pa.array(np.concatenate(self.parts[name]), self.schema.field(name).type)
            for name in self.names
        ]
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        self._reset()  # written or failed, never written twice
        with writing(self.path):
            self.writer.write_table(table)

    def close(self) -> None:
        """Write what is buffered and the footer; on failure the caller must `abort`."""
        self.flush()
        with writing(self.path):
            self.writer.close()

    def abort(self) -> None:
        """Drop what is buffered and close the file being thrown away; never raises."""
        self._reset()
        abandon_writer(self.writer)


class _RowWriter:
    """Stream dict rows (pieces, rejects) into one Parquet file, 10k rows per row group."""

    def __init__(self, path: Path, schema: pa.Schema, kind: str) -> None:
        self.path = path
        self.schema = schema
        with writing(path):
            self.writer = pq.ParquetWriter(path, with_meta(schema, kind), **parquet_options(schema))
        self.rows: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= 10_000:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            table = pa.Table.from_pylist(self.rows, schema=self.schema)
            self.rows = []  # written or failed, never written twice
            with writing(self.path):
                self.writer.write_table(table)

    def close(self) -> None:
        """Write what is buffered and the footer; on failure the caller must `abort`."""
        self.flush()
        with writing(self.path):
            self.writer.close()

    def abort(self) -> None:
        """Drop what is buffered and close the file being thrown away; never raises."""
        self.rows = []
        abandon_writer(self.writer)


# --- worker side -----------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    """What the parent needs to know of one good file besides its rows."""

    md5: str
    fingerprint: str
    n_notes: int
    n_pedals: int
    duration: float
    n_tracks: int
    ticks_per_quarter: int


@dataclass(frozen=True)
class _Chunk:
    """A worker's answer for a list of files: one outcome per file (a piece or a reject
    reason) and the good pieces' notes and pedals as single concatenated column blocks,
    so the parent handles a few arrays per chunk instead of seven per file."""

    outcomes: list[_Piece | str]
    notes: dict[str, np.ndarray]
    pedals: dict[str, np.ndarray]


_LIMITS: ParseLimits | None = None
_TIMEOUT_S = 0


class _Timeout(Exception):
    pass


def _configure(limits: ParseLimits, timeout_s: int) -> None:
    global _LIMITS, _TIMEOUT_S
    _LIMITS, _TIMEOUT_S = limits, timeout_s


def _init_worker(limits: ParseLimits, timeout_s: int) -> None:
    _configure(limits, timeout_s)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout


def _parse_one(path: str) -> tuple[_Piece, PieceArrays] | str:
    """Parse one file; return its columns or a one-line reject reason."""
    assert _LIMITS is not None
    use_alarm = _TIMEOUT_S > 0 and hasattr(signal, "SIGALRM")
    if use_alarm:
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(_TIMEOUT_S)
    try:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            return f"unreadable: {exc.strerror}"
        if not data:
            return "empty file"
        md5 = hashlib.md5(data).hexdigest()
        parsed = parse_midi_arrays(data, _LIMITS)
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
    notes = parsed.notes
    piece = _Piece(
        md5=md5,
        fingerprint=content_fingerprint(notes["pitch"], notes["start"], notes["is_drum"]),
        n_notes=len(parsed.notes["pitch"]),
        n_pedals=len(parsed.pedals["start"]),
        duration=float(parsed.notes["end"].max()),
        n_tracks=parsed.n_tracks,
        ticks_per_quarter=parsed.ticks_per_quarter,
    )
    return piece, parsed


def _parse_chunk(paths: list[str]) -> _Chunk:
    outcomes: list[_Piece | str] = []
    notes: list[dict[str, np.ndarray]] = []
    pedals: list[dict[str, np.ndarray]] = []
    for path in paths:
        result = _parse_one(path)
        if isinstance(result, str):
            outcomes.append(result)
            continue
        piece, arrays = result
        outcomes.append(piece)
        notes.append(arrays.notes)
        pedals.append(arrays.pedals)
    return _Chunk(outcomes, _concat(notes, NOTES), _concat(pedals, PEDALS))


def _concat(parts: list[dict[str, np.ndarray]], schema: pa.Schema) -> dict[str, np.ndarray]:
    names = [name for name in schema.names if name != "piece_id"]
    if not parts:
        return {name: np.empty(0, schema.field(name).type.to_pandas_dtype()) for name in names}
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in names}


# --- the pool --------------------------------------------------------------------

CRASHED = "parser crashed: its process died (segfault or out of memory) on this file"
HUNG = "timeout: the parser hung and was killed"
MAX_CONSECUTIVE_CRASHES = 5
HANG_SLACK_S = 10.0  # beyond file_timeout_s before a chunk counts as hung (pool start-up)


def _parse_all(
    jobs: Iterator[_Job], total: int, source: str, limits: ParseLimits, params: IngestParams
) -> Iterator[tuple[list[_Job], _Chunk]]:
    """Yield (jobs, chunk) in job order, from a process pool when it pays off.

    At most a few chunks per worker are in flight, so a slow writer makes the workers
    wait instead of piling results up in memory. A worker that dies (a parser
    segfault, the OOM killer) breaks the pool, and one stuck where SIGALRM cannot
    reach it (inside symusic's C++) is noticed when its chunk overruns
    `file_timeout_s` + HANG_SLACK_S and killed; either way the files the pool may
    have held are re-parsed one at a time in a fresh process, and the one that kills
    or hangs it again is rejected, so a single hostile file can neither hang nor
    abort the ingest.
    """
    workers = params.workers or os.cpu_count() or 1
    if workers == 1 or total < 8:
        yield from _parse_in_process(jobs, limits, params.file_timeout_s)
        return
    chunk = max(1, min(32, total // (workers * 8)))
    chunks = _batched(jobs, chunk)
    budget = _hang_budget(params.file_timeout_s)
    pending: deque[tuple[list[_Job], Future[_Chunk]]] = deque()
    pool = _pool(workers, limits, params.file_timeout_s)
    try:
        while True:
            while len(pending) < 4 * workers:
                batch = next(chunks, None)
                if batch is None:
                    break
                pending.append((batch, pool.submit(_parse_chunk, [j.path for j in batch])))
            if not pending:
                return
            batch, future = pending.popleft()
            try:
                chunk_result = future.result(timeout=budget)
            except (BrokenProcessPool, TimeoutError) as exc:
                lost = [(batch, future), *pending]
                pending.clear()
                _stop(pool)
                what = "died" if isinstance(exc, BrokenProcessPool) else "hung and was killed"
                log.warning(
                    "ingest %s: a parser process %s; retrying its files one by one", source, what
                )
                yield from _isolate(lost, limits, params.file_timeout_s)
                pool = _pool(workers, limits, params.file_timeout_s)
                continue
            yield batch, chunk_result
    finally:
        _stop(pool)


def _parse_in_process(
    jobs: Iterator[_Job], limits: ParseLimits, timeout_s: int
) -> Iterator[tuple[list[_Job], _Chunk]]:
    in_main = threading.current_thread() is threading.main_thread()
    _configure(limits, timeout_s if in_main else 0)  # SIGALRM only works in the main thread
    old = signal.getsignal(signal.SIGALRM) if in_main and hasattr(signal, "SIGALRM") else None
    try:
        for batch in _batched(jobs, 32):
            yield batch, _parse_chunk([job.path for job in batch])
    finally:
        if old is not None:
            signal.signal(signal.SIGALRM, old)


def _isolate(
    lost: list[tuple[list[_Job], Future[_Chunk]]], limits: ParseLimits, timeout_s: int
) -> Iterator[tuple[list[_Job], _Chunk]]:
    """Outcomes of the chunks a broken pool held: finished ones as they are, the rest
    re-parsed file by file in a one-process pool that is replaced after each crash
    or hang."""
    pool = _pool(1, limits, timeout_s)
    budget = _hang_budget(timeout_s)
    crashes = 0
    try:
        for batch, future in lost:
            if future.done() and not future.cancelled() and future.exception() is None:
                yield batch, future.result()
                continue
            for job in batch:
                try:
                    outcome = pool.submit(_parse_chunk, [job.path]).result(timeout=budget)
                    crashes = 0
                except TimeoutError:
                    _stop(pool)
                    pool = _pool(1, limits, timeout_s)
                    reason = f"{HUNG}: more than {timeout_s} s (ingest.file_timeout_s)"
                    outcome = _rejected(reason)
                except BrokenProcessPool:
                    crashes += 1
                    if crashes >= MAX_CONSECUTIVE_CRASHES:
                        raise IngestError(
                            f"parser processes died on {crashes} files in a row (last: "
                            f"{job.path}); is the machine out of memory?"
                        ) from None
                    _stop(pool)
                    pool = _pool(1, limits, timeout_s)
                    outcome = _rejected(CRASHED)
                yield [job], outcome
    finally:
        _stop(pool)


def _hang_budget(timeout_s: int) -> float | None:
    """How long to wait on a chunk (or an isolated file) before calling it hung."""
    return timeout_s + HANG_SLACK_S if timeout_s else None


def _rejected(reason: str) -> _Chunk:
    """The chunk answer for one file that a dead or hung parser could not parse."""
    return _Chunk([reason], _concat([], NOTES), _concat([], PEDALS))


def _pool(workers: int, limits: ParseLimits, timeout_s: int) -> ProcessPoolExecutor:
    ctx = mp.get_context("forkserver" if hasattr(os, "fork") else "spawn")
    return ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(limits, timeout_s)
    )


def _stop(pool: ProcessPoolExecutor) -> None:
    """Shut a pool down without waiting on files still being parsed (Ctrl-C, errors)."""
    procs = dict(getattr(pool, "_processes", None) or {})  # private, hence the getattr
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs.values():
        if proc.is_alive():
            proc.terminate()
    for proc in procs.values():
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)


def _batched(items: Iterator[_Job], size: int) -> Iterator[list[_Job]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


# --- CLI -------------------------------------------------------------------------------


def ingest_command(
    in_dir: Annotated[
        Path, typer.Argument(help="Folder of .mid/.midi files (searched recursively).")
    ],
    out: Annotated[Path, typer.Option(help="Output folder for the notes store.")],
    source: Annotated[str, typer.Option(help="Source name recorded in the store.")] = "",
    shard: Annotated[str, typer.Option(help="Only shard I of N, as I/N (stable hash).")] = "",
    params: Annotated[Path, typer.Option("--params", help="params.yaml to read.")] = PARAMS_FILE,
) -> None:
    """Parse MIDI files to OUT/{notes,pieces,rejects,pedals}.parquet."""
    from pipeline.core.params import load_params
    from pipeline.core.stage_utils import user_errors

    with user_errors(IngestError):
        settings = load_params("ingest", IngestParams, params)
        summary = ingest_dir(
            in_dir, out, source=source or in_dir.name, params=settings, shard=parse_shard(shard)
        )
        typer.echo(
            f"{summary.pieces} pieces, {summary.rejects} rejected, {summary.notes} notes -> {out}"
        )


def parse_shard(text: str) -> tuple[int, int] | None:
    """`--shard I/N` -> (I, N); empty -> None."""
    from pipeline.core.params import ParamsError

    if not text:
        return None
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ParamsError(f"--shard must look like I/N, got {text!r}") from None
    if not 0 <= index < count:
        raise ParamsError(f"--shard {text}: need 0 <= I < N")
    return index, count
