"""MIDI files -> the notes store (notes, pieces, rejects, pedals Parquet files).

Every input file ends up in exactly one of `pieces` or `rejects` (with a reason).
Splits come from the manifest where it gives one, else per work: pieces sharing a
manifest group or a content fingerprint share a split (`pipeline.splits`), decided
once every file is parsed.
Files are parsed in a process pool (`pipeline.ingest_pool`; symusic, see
`pipeline.midi` for the note policy) that sends plain numpy columns back; one parent
streams them to Parquet in input order. Nothing is held per file (the file list is
walked lazily) but the three short keys per piece that drawing the splits needs, so
memory stays nearly flat with the number of files, and the output folder appears
atomically only when complete.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
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
from pipeline.ingest_pool import Chunk, IngestError, PieceSummary, parse_all
from pipeline.midi import ParseLimits
from pipeline.splits import assign_splits, stable_shard

__all__ = ["IngestError", "IngestParams", "IngestSummary", "ingest_dir", "ingest_command"]

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

    def jobs() -> Iterator[_Job]:
        return _jobs(in_dir, manifest, shard)

    total = sum(1 for _ in jobs())  # a cheap first walk, for the progress bar
    if total == 0:
        raise IngestError(f"{in_dir}: no MIDI files found ({', '.join(MIDI_SUFFIXES)})")
    fractions = (params.validation_fraction, params.test_fraction)
    limits = ParseLimits(max_notes=params.max_notes, max_duration_s=params.max_duration_s)

    tally = _Tally()
    with atomic_dir(out_dir) as tmp:
        writers: list[_ColumnWriter | _RowWriter] = []
        results = None
        try:
            out = _open_outputs(tmp, writers)
            results = parse_all(
                jobs(), total, source, limits, params.workers, params.file_timeout_s
            )
            bar = tqdm(
                total=total, desc=f"ingest {source}", unit="file", disable=not progress or None
            )
            with bar:
                for batch, chunk in results:
                    bar.update(len(batch))
                    _write_chunk(batch, chunk, source, out, tally)
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
        _check_rejects(in_dir, total, tally, params.max_reject_rate)
    n_rejects = sum(tally.reasons.values())
    summary = IngestSummary(total, tally.pieces, n_rejects, tally.notes, dict(tally.reasons))
    log.info("ingest %s: %s", source, asdict(summary))
    return summary


def _jobs(in_dir: Path, manifest: Manifest, shard: tuple[int, int] | None) -> Iterator[_Job]:
    """The files to ingest (this shard's, if any), each with its manifest row."""
    no_meta = _Meta()
    for rel in iter_midi_files(in_dir):
        meta = manifest.get(rel, no_meta)
        if shard is None or stable_shard(meta.group or rel, shard[1]) == shard[0]:
            yield _Job(str(in_dir / rel), rel, meta)


@dataclass
class _Tally:
    """What was written so far: pieces, notes, and reject reasons by kind."""

    pieces: int = 0
    notes: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class _Outputs:
    """The four files one ingest streams to (pieces before their splits are drawn)."""

    notes: _ColumnWriter
    pedals: _ColumnWriter
    pieces: _RowWriter
    rejects: _RowWriter


def _open_outputs(tmp: Path, opened: list[_ColumnWriter | _RowWriter]) -> _Outputs:
    """Open the writers in `tmp`, adding each to `opened` as soon as it exists, so that
    a failure while opening the next one still closes it."""

    def keep(writer: Any) -> Any:
        opened.append(writer)
        return writer

    notes = keep(_ColumnWriter(tmp / "notes.parquet", NOTES, "notes"))
    pedals = keep(_ColumnWriter(tmp / "pedals.parquet", PEDALS, "pedals"))
    # split and group are final only once every piece is known: see _finish_pieces
    pieces = keep(_RowWriter(tmp / UNSPLIT, PIECES, "pieces"))
    rejects = keep(_RowWriter(tmp / "rejects.parquet", REJECTS, "rejects"))
    return _Outputs(notes, pedals, pieces, rejects)


def _write_chunk(
    batch: list[_Job], chunk: Chunk, source: str, out: _Outputs, tally: _Tally
) -> None:
    """Stream one parsed chunk: a rejects row per failed file, a pieces row per good one,
    and the good files' notes and pedals as one block each."""
    note_runs: list[tuple[str, int]] = []
    pedal_runs: list[tuple[str, int]] = []
    for job, outcome in zip(batch, chunk.outcomes, strict=True):
        if isinstance(outcome, str):
            out.rejects.write({"path": job.rel, "reason": outcome})
            tally.reasons[_reason_kind(outcome)] += 1
            continue
        piece_id = _piece_id(source, job.rel)
        note_runs.append((piece_id, outcome.n_notes))
        if outcome.n_pedals:
            pedal_runs.append((piece_id, outcome.n_pedals))
        tally.pieces += 1
        tally.notes += outcome.n_notes
        out.pieces.write(_piece_row(piece_id, source, job, outcome))
    out.notes.write(note_runs, chunk.notes)
    out.pedals.write(pedal_runs, chunk.pedals)


def _piece_row(piece_id: str, source: str, job: _Job, outcome: PieceSummary) -> dict[str, Any]:
    """One row of pieces.parquet, before its split and group are drawn."""
    meta = job.meta
    return {
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


def _check_rejects(in_dir: Path, total: int, tally: _Tally, max_reject_rate: float) -> None:
    """Refuse the store when a file went missing or too many were rejected."""
    n_rejects = sum(tally.reasons.values())
    if tally.pieces + n_rejects != total:
        raise IngestError(f"{in_dir}: {total} files found, {tally.pieces + n_rejects} ingested")
    rate = n_rejects / total
    if rate > max_reject_rate:
        top = ", ".join(f"{k}: {v}" for k, v in tally.reasons.most_common(3))
        raise IngestError(
            f"{in_dir}: {n_rejects} of {total} files rejected ({rate:.1%}) > "
            f"ingest.max_reject_rate={max_reject_rate:.1%}; top reasons: {top}"
        )


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
