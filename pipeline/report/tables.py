"""The `tables` stage: several data sets' tables side by side, as the 2012 paper lays them out.

Reads one table per data set (``tables/<name>.json``, written by the `table` stage,
`pipeline.report.table`) and writes ``table.json``: models as rows, data sets as
columns (``tables.columns``: each data set's heading, in the paper's order; a listed
data set with no table yet is a column of "not run yet", named in ``missing``)::

    {"title", "unit", "columns": [{"dataset", "split", "frames", "measured"}],
     "order": [name, ...], "headings": {name: heading}, "missing": [name, ...],
     "rows": [{"model", "source", "kind", "citations": [...],
               "cells": {name: {"frame_nll", "min", "max", "n_seeds", "seed"} | null}}]}

plus ``table.md`` (pasted into the README) and ``table.html``. A row is one model as
each table names it, with Etude's "(median of N)" and "(best of N by validation)"
written without N (the cell says how many seeds), so one model's rows line up across
data sets whatever their seed counts. Rows are ordered by their mean rank over the
columns they appear in (ties: by name). A row whose kind (exact or bound, first frame
scored or not) differs between data sets is refused: one row, one protocol.

Each data set's table is committed beside its results, so the combined table is
rebuilt from them without retraining data sets another session ran.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.core.config import PARAMS_FILE
from pipeline.core.params import require
from pipeline.core.stage_utils import user_errors
from pipeline.report.table import TableError, kind_text

SEEDS = (
    (re.compile(r" \(median of \d+\)$"), " (median)"),
    (re.compile(r" \(best of \d+ by validation\)$"), " (best by validation)"),
)


@dataclass(frozen=True)
class TablesParams:
    """The `tables` section: the combined table's heading and its columns' order."""

    title: str
    columns: dict[str, str]  # data set (tables/<name>.json) -> heading, in column order

    @property
    def datasets(self) -> list[str]:
        return list(self.columns)

    def validate(self) -> None:
        require(bool(self.title), "title must not be empty")
        require(bool(self.columns), "columns must name at least one data set")


def row_name(row: dict[str, Any]) -> str:
    """The name a row goes by across data sets: Etude's seed counts taken out (a
    published row keeps its name: "median of 5" there is the paper's protocol)."""
    name = str(row["model"])
    if row["source"] != "etude":
        return name
    for pattern, text in SEEDS:
        name = pattern.sub(text, name)
    return name


def read_tables(folder: Path, datasets: list[str]) -> dict[str, dict[str, Any]]:
    """``<folder>/<name>.json`` for each name of `datasets` that has one."""
    if not folder.is_dir():
        raise TableError(f"{folder}: no such folder (the table stage writes <dataset>.json)")
    found = {}
    for name in datasets:
        path = folder / f"{name}.json"
        if not path.exists():
            continue
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TableError(f"{path}: not a table: {exc}") from None
        if not isinstance(table, dict) or not isinstance(table.get("rows"), list):
            raise TableError(f"{path}: not a table (no rows)")
        found[name] = table
    if not found:
        raise TableError(f"{folder}: no table of any of {datasets} (<dataset>.json)")
    return found


def combine(tables: dict[str, dict[str, Any]], params: TablesParams) -> dict[str, Any]:
    """The combined table.json object (module docstring)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, table in tables.items():
        for row in table["rows"]:
            key = row_name(row)
            entry = rows.setdefault(
                key,
                {
                    "model": key,
                    "source": row["source"],
                    "kind": kind_text(row),
                    "citations": [],
                    "cells": dict.fromkeys(params.datasets),
                },
            )
            if entry["kind"] != kind_text(row):
                raise TableError(
                    f"{name}: row {key!r} is {kind_text(row)} here but {entry['kind']} in "
                    "another data set's table: one row, one protocol"
                )
            if entry["cells"][name] is not None:
                raise TableError(f"{name}: two rows named {key!r}")
            entry["cells"][name] = {
                k: row.get(k) for k in ("frame_nll", "min", "max", "n_seeds", "seed")
            }
            if row["citation"] not in entry["citations"]:
                entry["citations"].append(row["citation"])
    ranks: dict[str, list[int]] = {key: [] for key in rows}
    for name in tables:
        present = sorted(
            (entry["cells"][name]["frame_nll"], key)
            for key, entry in rows.items()
            if entry["cells"][name] is not None
        )
        for rank, (_, key) in enumerate(present):
            ranks[key].append(rank)
    ordered = sorted(rows, key=lambda k: (statistics.mean(ranks[k]), k))
    return {
        "title": params.title,
        "unit": "nats per frame, summed over the 88 keys, pooled over all test frames",
        "columns": [
            {
                "dataset": name,
                "split": table.get("split"),
                "frames": table.get("frames"),
                "measured": table.get("measured"),
            }
            for name, table in tables.items()
        ],
        "order": params.datasets,
        "headings": params.columns,
        "missing": [name for name in params.datasets if name not in tables],
        "rows": [rows[key] for key in ordered],
    }


def cell_text(cell: dict[str, Any] | None) -> str:
    """A cell as shown: the NLL, a median's min-max and seed count beside it."""
    if cell is None:
        return "—"
    text = f"{cell['frame_nll']:.3f}"
    n = cell.get("n_seeds") or 0
    if n > 1 and cell.get("min") is not None:
        text += f" ({cell['min']:.3f}\u2013{cell['max']:.3f}, {n} seeds)"
    elif n > 1 and cell.get("seed") is not None:
        text += f" (seed {cell['seed']} of {n})"
    return text


def _headings(table: dict[str, Any]) -> list[str]:
    """Each column's heading; a data set with no table yet says so."""
    missing = set(table["missing"])
    return [
        f"{table['headings'][name]}{' (not run yet)' if name in missing else ''}"
        for name in table["order"]
    ]


def markdown(table: dict[str, Any]) -> str:
    """The combined rows as a Markdown table (what the README shows)."""
    head = ["Model", *_headings(table), "Kind", "Source"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(table["order"]) + "---|---|"]
    for row in table["rows"]:
        cells = [cell_text(row["cells"][name]) for name in table["order"]]
        lines.append(
            f"| {row['model']} | " + " | ".join(cells) + f" | {row['kind']} | {row['source']} |"
        )
    return "\n".join(lines) + "\n"


def html_page(table: dict[str, Any]) -> str:
    """The combined table as a static page in the report's style (offline)."""
    from pipeline.report.templating import esc, page
    from pipeline.report.templating import table as html_table

    body_rows = []
    for row in table["rows"]:
        cls = ' class="ours"' if row["source"] == "etude" else ""
        cells = "".join(
            f'<td class="num">{esc(cell_text(row["cells"][name]))}</td>' for name in table["order"]
        )
        body_rows.append(
            f"<tr{cls}><td>{esc(row['model'])}</td>{cells}<td>{esc(row['kind'])}</td>"
            f"<td>{esc(row['source'])}</td><td>{esc('; '.join(row['citations']))}</td></tr>"
        )
    measured = "; ".join(
        f"{table['headings'][c['dataset']]}: {c['frames']} {c['split']} frames, measured "
        f"{(c.get('measured') or {}).get('date', 'date unknown')}"
        for c in table["columns"]
    )
    missing = f" Not run yet: {', '.join(table['missing'])}." if table["missing"] else ""
    body = (
        f"<h1>{esc(table['title'])}</h1>"
        f"<p>{esc(table['unit'])}; lower is better; a bound is comparable only as a bound; "
        f"Etude's medians have their seeds' min\u2013max beside them. {esc(measured)}."
        f"{esc(missing)}</p>"
        + html_table(
            "benchmark",
            ["Model", *_headings(table), "Kind", "Source", "Citations"],
            body_rows,
        )
    )
    return page(table["title"], body, ["report.js"])


def tables_command(
    folder: Annotated[Path, typer.Argument(help="Folder of the table stage's <dataset>.json.")],
    out: Annotated[Path, typer.Option(help="table.json to write.")] = Path("table.json"),
    markdown_out: Annotated[
        Path, typer.Option("--markdown", help="Markdown copy of the rows.")
    ] = Path("table.md"),
    html_out: Annotated[Path, typer.Option("--html", help="The table as a page.")] = Path(
        "table.html"
    ),
    params: Annotated[Path, typer.Option("--params", help="params.yaml to read.")] = PARAMS_FILE,
) -> None:
    """Write the data sets' tables side by side (models as rows, data sets as columns)."""
    from pipeline.core.io import atomic_path, write_json
    from pipeline.core.params import load_params

    with user_errors(TableError):
        p = load_params("tables", TablesParams, params)
        table = combine(read_tables(folder, p.datasets), p)
        write_json(out, table)
        with atomic_path(markdown_out) as tmp:
            tmp.write_text(markdown(table), encoding="utf-8")
        with atomic_path(html_out) as tmp:
            tmp.write_text(html_page(table), encoding="utf-8")
        shown = len(table["columns"])
        typer.echo(f"tables: {len(table['rows'])} rows over {shown} data set(s) -> {out}")
