"""The `represent` stage: interim notes stores -> one representation's processed store.

``data/processed/<name>/`` holds ``train.parquet``, ``validation.parquet``,
``test.parquet`` (rows of the representation's schema), ``pieces.parquet`` (the
pieces that have rows) and ``params.json`` (the params section used, so the store
describes itself and `decode` needs no params.yaml). Notes are streamed from each
source's notes.parquet and encoded a chunk of pieces at a time, so memory is bounded
by the chunk, not the data set; the folder appears atomically when complete.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.core.config import PARAMS_FILE, SPLITS
from pipeline.representations import (
    PARAMS_JSON,
    PIECES_FILE,
    RepresentError,
    get_or_params_error,
    read_store_params,
)

log = logging.getLogger(__name__)

CHUNK_PIECES = 200  # pieces encoded at once: bounds memory, amortises numpy overhead
_BATCH_ROWS = 1 << 20  # notes read from Parquet at a time


def build_store(
    name: str,
    interim_dirs: list[Path],
    out_dir: Path,
    params: Any,
    *,
    chunk_pieces: int = CHUNK_PIECES,
    progress: bool = True,
) -> dict[str, int]:
    """Encode the notes of all `interim_dirs` into `out_dir` (replaced atomically).

    Args:
        name: registered representation name.
        interim_dirs: interim store folders (notes, pedals, pieces), merged in order.
        out_dir: the processed store folder to write.
        params: the representation's params dataclass.
        chunk_pieces: pieces encoded per chunk.
        progress: show a tqdm bar on stderr.

    Returns:
        Row counts per split, plus "pieces" (pieces with rows) and "notes" (read).

    Raises:
        RepresentError: a piece has no split, or notes of one piece are not contiguous.
        StoreError: an interim store is missing or of another schema version.
    """
    from tqdm import tqdm

    from pipeline import representations
    from pipeline.core.io import atomic_dir, write_json
    from pipeline.core.stores import PIECES, read_interim, with_meta, write_store

    rep = representations.get(name)
    dirs = [Path(d) for d in interim_dirs]
    pieces = read_interim(dirs, "pieces")
    bad = sorted(set(pieces["split"]) - set(SPLITS))
    if bad:
        raise RepresentError(f"pieces: unknown split(s) {bad}; expected {list(SPLITS)}")
    split_of = dict(zip(pieces["piece_id"], pieces["split"], strict=True))
    schema = with_meta(rep.schema, name)
    bar = functools.partial(
        tqdm,
        total=len(pieces),
        desc=f"represent {name}",
        unit="piece",
        disable=not progress or None,
    )
    with atomic_dir(out_dir) as tmp:
        written = _write_splits(rep, dirs, tmp, schema, split_of, params, chunk_pieces, bar)
        in_store = pieces[pieces["piece_id"].isin(set(written.kept))]
        write_store(in_store, tmp / PIECES_FILE, "pieces", PIECES)
        meta = {"representation": name, "params": dataclasses.asdict(params)}
        write_json(tmp / PARAMS_JSON, meta)
    result = {**written.counts, "pieces": len(in_store), "notes": written.notes}
    log.info("represent %s: %s -> %s", name, result, out_dir)
    return result


@dataclasses.dataclass
class _Written:
    """What `_write_splits` wrote: rows per split, the pieces with rows, notes read."""

    counts: dict[str, int] = dataclasses.field(
        default_factory=lambda: {split: 0 for split in SPLITS}
    )
    kept: list[Any] = dataclasses.field(default_factory=list)  # piece ids, in the order written
    notes: int = 0


def _write_splits(
    rep: Any,
    dirs: list[Path],
    tmp: Path,
    schema: Any,
    split_of: dict[str, str],
    params: Any,
    chunk_pieces: int,
    bar: Callable[[], Any],
) -> _Written:
    """Encode the notes of `dirs` a chunk of pieces at a time into `tmp/<split>.parquet`.

    `bar` makes the progress bar (once the split files are open). On any failure the
    split files are closed without a footer.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    from pipeline.core.io import close_writers

    written = _Written()
    writers: dict[str, Any] = {}
    try:
        for split in SPLITS:
            writers[split] = pq.ParquetWriter(tmp / f"{split}.parquet", schema, compression="zstd")
        progress = bar()
        for notes, pedals in _chunks(dirs, chunk_pieces):
            missing = set(pd.unique(notes["piece_id"])) - split_of.keys()
            if missing:
                raise RepresentError(
                    f"notes: piece {sorted(missing)[0]!r} is in no pieces.parquet of {dirs}"
                )
            written.notes += len(notes)
            rows = rep.encode(notes, pedals, params)
            progress.update(int(notes["piece_id"].nunique()))
            if not rows.empty:
                written.kept.extend(_write_rows(rows, schema, split_of, writers, written.counts))
        progress.close()
    except BaseException:
        close_writers(writers.values(), abandon=True)  # never raises over this error
        raise
    close_writers(writers.values())
    return written


def _write_rows(
    rows: Any,
    schema: Any,
    split_of: dict[str, str],
    writers: dict[str, Any],
    counts: dict[str, int],
) -> Any:
    """Append encoded rows to their pieces' split files; returns those pieces, in order."""
    import numpy as np
    import pandas as pd

    codes, uniques = pd.factorize(rows["piece_id"], sort=False)
    split = np.array([split_of[u] for u in uniques], dtype=object)[codes]
    for name in SPLITS:
        part = rows[split == name]
        if len(part):
            writers[name].write_table(rows_table(part, schema))
            counts[name] += len(part)
    return uniques


def rows_table(rows: Any, schema: Any) -> Any:
    """Encoder rows -> a pyarrow table of exactly `schema` (metadata kept).

    Categorical columns (the encoders' piece_id) go through a dictionary array and
    one Arrow cast; `pa.Table.from_pandas` would convert them row by row (~25x slower).
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    arrays = []
    for field in schema:
        column = rows[field.name]
        if isinstance(column.dtype, pd.CategoricalDtype):
            codes = column.cat.codes.to_numpy().astype(np.int32)
            dictionary = pa.array(list(column.cat.categories), type=field.type)
            indices = pa.array(codes, mask=codes < 0)
            arrays.append(pa.DictionaryArray.from_arrays(indices, dictionary).cast(field.type))
        else:
            arrays.append(pa.array(column, type=field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=schema)


def _chunks(dirs: list[Path], chunk_pieces: int) -> Iterator[tuple[Any, Any]]:
    """Yield (notes, pedals) DataFrames of about `chunk_pieces` whole pieces at a time.

    Notes are read in record batches; ingest writes each piece's notes contiguously,
    so a piece is complete once a later piece starts (or the file ends).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.core.stores import decode_dictionaries, read_store, read_table

    for folder in dirs:
        path = folder / "notes.parquet"
        read_table(path, "notes", columns=[])  # checks kind and schema version
        pedals = read_store(folder / "pedals.parquet", "pedals")
        pedal_rows = pedals.groupby("piece_id", sort=False).indices if len(pedals) else {}
        done: set[str] = set()
        pending: list[pa.Table] = []
        pending_pieces = 0
        last_piece: str | None = None
        for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS):
            if batch.num_rows == 0:
                continue
            table = decode_dictionaries(pa.Table.from_batches([batch]))
            ids = table.column("piece_id").to_numpy(zero_copy_only=False)
            starts = [0, *((ids[1:] != ids[:-1]).nonzero()[0] + 1).tolist()]
            for lo, hi in zip(starts, [*starts[1:], len(ids)], strict=True):
                piece = ids[lo]
                if piece != last_piece:
                    if piece in done:
                        raise RepresentError(
                            f"{path}: notes of piece {piece!r} are not contiguous "
                            "(rebuild the interim store with `etude ingest`)"
                        )
                    if last_piece is not None:
                        done.add(last_piece)
                        pending_pieces += 1
                    last_piece = piece
                    if pending_pieces >= chunk_pieces:
                        # everything pending before this piece is complete
                        yield _with_pedals(pending, pedals, pedal_rows)
                        pending, pending_pieces = [], 0
                pending.append(table.slice(lo, hi - lo))
        if pending:
            yield _with_pedals(pending, pedals, pedal_rows)


def _with_pedals(tables: list[Any], pedals: Any, pedal_rows: dict[str, Any]) -> tuple[Any, Any]:
    """The notes of `tables` as one DataFrame, and the pedals of the same pieces."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    notes = pa.concat_tables(tables).to_pandas()
    positions = [pedal_rows[i] for i in pd.unique(notes["piece_id"]) if i in pedal_rows]
    if not positions:
        return notes, pedals.iloc[:0]
    return notes, pedals.iloc[np.sort(np.concatenate(positions))]


# --- CLI -------------------------------------------------------------------------


def represent_command(
    name: Annotated[str, typer.Argument(help="Representation: pianoroll, tuples, events or prv.")],
    out: Annotated[Path, typer.Option(help="Processed store folder (replaced atomically).")],
    inputs: Annotated[
        list[Path] | None,
        typer.Option("--in", help="Interim store folder (repeat for several sources)."),
    ] = None,
    interim: Annotated[
        Path | None,
        typer.Option(
            help="Parent of the interim stores: uses INTERIM/<s> for each `sources` entry."
        ),
    ] = None,
    params: Annotated[Path, typer.Option("--params", help="params.yaml to read.")] = PARAMS_FILE,
) -> None:
    """Encode the notes of the interim stores into OUT/{train,validation,test,pieces}.parquet."""
    from pipeline.core.params import ParamsError, load_list, load_params
    from pipeline.core.stage_utils import user_errors

    with user_errors(RepresentError, ValueError, OSError):
        rep = get_or_params_error(name)
        settings = load_params(name, rep.params_cls, params)
        dirs = list(inputs or [])
        if interim is not None:
            dirs += [interim / s for s in load_list("sources", None, params)]
        if not dirs:
            raise ParamsError("give the interim stores with --in DIR (repeatable) or --interim DIR")
        counts = build_store(name, dirs, out, settings)
        typer.echo(
            f"{name}: {counts['pieces']} pieces, {counts['notes']} notes -> "
            + ", ".join(f"{s} {counts[s]} rows" for s in SPLITS)
            + f" in {out}"
        )


def decode_command(
    name: Annotated[str, typer.Argument(help="Representation of the store file.")],
    store_file: Annotated[
        Path, typer.Argument(help="A split file, e.g. data/processed/events/test.parquet.")
    ],
    piece: Annotated[
        str, typer.Option("--piece", help="piece_id to decode (default: the first).")
    ] = "",
    out: Annotated[Path, typer.Option("--out", help="MIDI file to write.")] = Path("decoded.mid"),
    params: Annotated[
        Path,
        typer.Option("--params", help="params.yaml, read only if the store has no params.json."),
    ] = PARAMS_FILE,
) -> None:
    """Decode one piece of a processed store file back to MIDI (to listen to what a model sees)."""
    from pipeline.core.params import load_params
    from pipeline.core.stage_utils import user_errors
    from pipeline.core.stores import read_store
    from pipeline.midi import notes_to_midi

    with user_errors(RepresentError, ValueError, OSError):
        rep = get_or_params_error(name)
        rows = read_store(store_file, name)
        if rows.empty:
            raise RepresentError(f"{store_file}: no rows")
        piece_id = piece or str(rows["piece_id"].iloc[0])
        rows = rows[rows["piece_id"] == piece_id]
        if rows.empty:
            raise RepresentError(f"{store_file}: no piece {piece_id!r}")
        if (store_file.parent / PARAMS_JSON).exists():
            settings = read_store_params(store_file.parent, name)
        else:
            settings = load_params(name, rep.params_cls, params)
        notes = rep.decode(rows, settings)
        notes_to_midi(notes, out)
        typer.echo(f"{piece_id}: {len(notes)} notes -> {out}")
