"""The `table` stage: a benchmark's results beside the published ones (``etude table``).

Reads the `frames` stage's results (one JSON per trained run, ``results/frames/``),
each run's training summary (``reports/train/<run>/summary.json``, for its wall time)
and the published rows (a YAML list, e.g. ``benchmarks/jsb/published.yaml``), and
writes ``table.json``::

    {"title", "unit", "split", "frames", "measured": {"date", "machine"},
     "rows": [{"model", "frame_nll", "source": "etude" | "published", "citation",
               "bound", "train_seconds", "n_seeds", "min", "max", "selected_by",
               "seed", "first_frame", "estimate"}],  # sorted by frame_nll
     "runs": [every run's result, as the frames stage wrote it, + train_seconds]}

and the same rows as a Markdown table (``table.md``, pasted into the README; a test
checks the README's copy against table.json) and as a static page (``table.html``, in
the report's style; the main report page shows it in a frame and links it). The main
report does not read table.json as a DVC dependency on purpose: that would make the
main `dvc repro` reproduce the whole benchmark first.

Per model, Etude's row is the median over its seeds of the test frame NLL
(``selected_by: "median"``, ``n_seeds``, and the seeds' ``min`` and ``max``, shown
beside the median); a model with several seeds also gets a "best" row, the seed with
the lowest *validation* frame NLL (``selected_by: "validation"``, its ``seed``;
labelled "best of N by validation"), so that no number is chosen by looking at test
and a lucky seed is never shown alone. Runs scored before the frames stage recorded a
validation NLL get no "best" row. Published rows and the baseline leave the new keys
null. The prv models' results also carry the per-key frequency baseline on
the same store, which becomes Etude's own "Note 1-Gram" row (the check that the
metric agrees with the paper's).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.core.config import PARAMS_FILE
from pipeline.core.params import require
from pipeline.core.stage_utils import user_errors

ROW_KEYS = (
    "model",
    "frame_nll",
    "source",
    "citation",
    "bound",
    "train_seconds",
    "n_seeds",
    "min",
    "max",
    "selected_by",
    "seed",
    "first_frame",
    "estimate",
)
SOURCES = ("etude", "published")


class TableError(ValueError):
    """A results or published file that cannot make the table; the message names it."""


@dataclass(frozen=True)
class TableParams:
    """The `table` section: how the table is titled and where Etude's rows point."""

    title: str  # the table's heading
    citation: str  # what Etude's rows cite (this benchmark's folder)
    labels: dict[str, str]  # model name -> its row label (e.g. biaxial -> BALSTM (DeepJ))

    def validate(self) -> None:
        require(bool(self.title), "title must not be empty")
        require(bool(self.citation), "citation must not be empty")


def read_published(path: Path) -> list[dict[str, Any]]:
    """The published rows of `path`: a YAML list of {model, frame_nll, citation, bound},
    each with an optional ``first_frame`` (default true: the paper scores every frame;
    false: it never scores a piece's first frame, as Bai et al.'s code does) and an
    optional ``estimate`` (the estimator, e.g. "AIS", where the number is an estimate of
    the likelihood that is neither exact nor a bound; default: exact)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TableError(f"{path}: cannot read the published rows: {exc}") from None
    if not isinstance(data, list) or not data:
        raise TableError(f"{path}: expected a non-empty list of rows")
    rows = []
    keys = {"model", "frame_nll", "citation", "bound"}
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise TableError(f"{path}: row {i} must be a mapping, got {item!r}")
        name = f"row {i} ({item.get('model')})"
        given = set(item) - {"first_frame", "estimate"}
        if given != keys:
            wrong = sorted(keys - given) or sorted(given - keys)
            what = "no" if keys - given else "unknown key"
            raise TableError(
                f"{path}: {name}: {what} {wrong[0]!r} (a row has model, frame_nll, "
                "citation, bound and optionally first_frame and estimate)"
            )
        first_frame = item.get("first_frame", True)
        if not isinstance(first_frame, bool):
            raise TableError(
                f"{path}: {name}: first_frame must be true or false, got {first_frame!r}"
            )
        estimate = item.get("estimate")
        if estimate is not None and (not isinstance(estimate, str) or not estimate.strip()):
            raise TableError(
                f"{path}: {name}: estimate must name the estimator (e.g. AIS), got {estimate!r}"
            )
        if estimate is not None and item["bound"] is True:
            raise TableError(f"{path}: {name}: a row is a bound or an estimate, not both")
        if not isinstance(item["model"], str) or not item["model"].strip():
            raise TableError(f"{path}: {name}: model must be a non-empty name")
        if not _finite_number(item["frame_nll"]) or item["frame_nll"] <= 0:
            raise TableError(
                f"{path}: {name}: frame_nll must be a positive number, got {item['frame_nll']!r}"
            )
        if not isinstance(item["bound"], bool):
            raise TableError(f"{path}: {name}: bound must be true or false, got {item['bound']!r}")
        row = _row(
            str(item["model"]), item["frame_nll"], str(item["citation"]), item["bound"], None
        )
        rows.append(
            {**row, "source": "published", "first_frame": first_frame, "estimate": estimate}
        )
    return rows


def read_runs(results: Path, train_reports: Path) -> list[dict[str, Any]]:
    """Every ``results/*.json`` of the frames stage, with its run's training seconds."""
    paths = sorted(results.glob("*.json"))
    if not paths:
        raise TableError(f"{results}: no frames results (*.json)")
    runs = []
    for path in paths:
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TableError(f"{path}: not a frames result: {exc}") from None
        if not isinstance(run, dict):
            raise TableError(f"{path}: not a frames result (not a JSON object)")
        missing = [k for k in ("model", "run", "frame_nll", "bound", "frames") if k not in run]
        if missing:
            raise TableError(f"{path}: not a frames result (no {missing[0]!r})")
        if not _finite_number(run["frame_nll"]):  # NaN would scramble the sorted rows
            raise TableError(f"{path}: frame_nll must be a finite number, got {run['frame_nll']!r}")
        summary = train_reports / run["run"] / "summary.json"
        try:
            run["train_seconds"] = json.loads(summary.read_text(encoding="utf-8"))["wall_time_s"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            run["train_seconds"] = None  # trained elsewhere: the table says "n/a"
        runs.append(run)
    return runs


def _finite_number(value: Any) -> bool:
    """A real number (YAML/JSON true is an int to Python, and no number) that is finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def etude_rows(
    runs: list[dict[str, Any]], params: TableParams, measured: str
) -> list[dict[str, Any]]:
    """Etude's rows: per model, the median over its seeds with their min and max, and the
    seed with the best validation NLL where every seed has one (never chosen on test).
    Each row cites the dates its own runs were scored on, and their sliding window if any."""
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_model[run["model"]].append(run)
    rows = []
    for model, group in sorted(by_model.items()):
        label = f"Etude {params.labels.get(model, model)}"
        seeds = sorted(r.get("seed") for r in group if r.get("seed") is not None)
        dates = sorted({str(r["scored_on"]) for r in group if r.get("scored_on")})
        when = " to ".join(dict.fromkeys([dates[0], dates[-1]])) if dates else measured
        window = scoring_window(model, group)
        how = f"; scored in sliding windows of {window} steps" if window else ""
        cite = f"{params.citation} ({when}; seeds {', '.join(map(str, seeds))}{how})"
        values = [r["frame_nll"] for r in group]
        times = [r["train_seconds"] for r in group if r["train_seconds"] is not None]
        bound = any(r["bound"] for r in group)
        n = len(group)
        rows.append(
            _row(
                label if n == 1 else f"{label} (median of {n})",
                statistics.median(values),
                cite,
                bound,
                statistics.median(times) if times else None,
                n_seeds=n,
                low=min(values),
                high=max(values),
                selected_by="median",
            )
        )
        best = best_by_validation(model, group)
        if n > 1 and best is not None:
            rows.append(
                _row(
                    f"{label} (best of {n} by validation)",
                    best["frame_nll"],
                    cite,
                    bound,
                    best["train_seconds"],
                    n_seeds=n,
                    selected_by="validation",
                    seed=best.get("seed"),
                )
            )
    unigram = [r["note_unigram"] for r in runs if r.get("note_unigram") is not None]
    if unigram:
        rows.append(
            _row(
                "Etude Note 1-Gram (per-key frequencies of train)",
                unigram[0],
                f"{params.citation} ({measured}); pipeline.evaluation.frames",
                False,
                None,
            )
        )
    return rows


def scoring_window(model: str, group: list[dict[str, Any]]) -> int:
    """The sliding window all of a model's runs were scored in (0: whole pieces).

    A row is one way of scoring: runs of one model scored differently are refused.
    """
    windows = {int(r.get("window") or 0) for r in group}
    if len(windows) != 1:
        raise TableError(
            f"{model}: runs were scored in different windows ({sorted(windows)}; 0: whole "
            "pieces): re-score them all with one frames.window"
        )
    return windows.pop()


def best_by_validation(model: str, group: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run of `group` with the lowest validation frame NLL (ties: the lowest seed).

    None when a run has no validation NLL (scored before the frames stage gave one):
    then no "best" row is shown, rather than one chosen on test. Runs scored on
    different validation frames are refused.
    """
    if not all(_finite_number(r.get("validation_frame_nll")) for r in group):
        return None
    counts = {r.get("validation_frames") for r in group}
    if len(counts) != 1:
        raise TableError(
            f"{model}: runs were validated on different data (validation frame counts "
            f"{sorted(map(str, counts))}): no best seed can be chosen"
        )
    return min(group, key=lambda r: (r["validation_frame_nll"], str(r.get("seed"))))


def _row(
    model: str,
    nll: float,
    citation: str,
    bound: bool,
    seconds: float | None,
    *,
    n_seeds: int | None = None,
    low: float | None = None,
    high: float | None = None,
    selected_by: str | None = None,
    seed: Any = None,
) -> dict[str, Any]:
    return {
        "model": model,
        "frame_nll": float(nll),
        "source": "etude",
        "citation": citation,
        "bound": bool(bound),
        "train_seconds": None if seconds is None else round(float(seconds), 1),
        "n_seeds": n_seeds,
        "min": None if low is None else float(low),
        "max": None if high is None else float(high),
        "selected_by": selected_by,
        "seed": seed,
        "first_frame": True,  # Etude scores every frame of every piece
        "estimate": None,  # Etude's numbers are exact or bounds
    }


def build_table(
    runs: list[dict[str, Any]], published: list[dict[str, Any]], params: TableParams
) -> dict[str, Any]:
    """The table.json object (module docstring) from runs and published rows."""
    splits = {r.get("split") for r in runs}
    frames = {r["frames"] for r in runs}
    if len(splits) != 1 or len(frames) != 1:
        raise TableError(
            f"runs were scored on different data (splits {sorted(map(str, splits))}, "
            f"frame counts {sorted(frames)}): one table needs one test set"
        )
    dates = sorted(str(r["scored_on"]) for r in runs if r.get("scored_on"))
    machines = sorted({str(r["machine"]) for r in runs if r.get("machine")})
    measured = dates[-1] if dates else "date unknown"
    rows = etude_rows(runs, params, measured) + published
    rows.sort(key=lambda r: (r["frame_nll"], r["source"], r["model"]))
    return {
        "title": params.title,
        "unit": "nats per frame, summed over the 88 keys, pooled over all test frames",
        "split": splits.pop(),
        "frames": frames.pop(),
        "measured": {"date": measured, "machine": "; ".join(machines) or "unknown"},
        "rows": rows,
        "runs": runs,
    }


def _seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def _nll(row: dict[str, Any]) -> str:
    """A row's frame NLL as shown: a median over seeds has their min-max beside it.

    Rows without the keys (a table.json written before they existed) show the number
    alone, as they did.
    """
    text = f"{row['frame_nll']:.3f}"
    if (row.get("n_seeds") or 0) > 1 and row.get("selected_by") == "median":
        text += f" ({row['min']:.3f}\u2013{row['max']:.3f})"
    return text


def kind_text(row: dict[str, Any]) -> str:
    """What a row's number is: exact, a bound or an estimate, and whether first frames
    count."""
    if row["bound"]:
        kind = "upper bound"
    elif row.get("estimate"):
        kind = f"{row['estimate']} estimate"
    else:
        kind = "exact"
    return kind if row.get("first_frame", True) else f"{kind}, frames 2..T"


def markdown(table: dict[str, Any]) -> str:
    """The rows as a Markdown table (what the README shows)."""
    lines = [
        "| Model | Frame NLL (nats/step) | Kind | Source | Training (wall) | Citation |",
        "|---|---:|---|---|---:|---|",
    ]
    for row in table["rows"]:
        kind = kind_text(row)
        lines.append(
            f"| {row['model']} | {_nll(row)} | {kind} | {row['source']} "
            f"| {_seconds(row['train_seconds'])} | {row['citation']} |"
        )
    return "\n".join(lines) + "\n"


def html_page(table: dict[str, Any]) -> str:
    """The table as a static page in the report's style (offline; the report links it)."""
    from pipeline.report.templating import esc as _esc
    from pipeline.report.templating import page as _page
    from pipeline.report.templating import table as _table

    rows = []
    for row in table["rows"]:
        kind = kind_text(row)
        cls = ' class="ours"' if row["source"] == "etude" else ""
        rows.append(
            f"<tr{cls}><td>{_esc(row['model'])}</td>"
            f'<td class="num" data-sort="{row["frame_nll"]}">{_esc(_nll(row))}</td>'
            f"<td>{kind}</td><td>{_esc(row['source'])}</td>"
            f"<td>{_esc(_seconds(row['train_seconds']))}</td><td>{_esc(row['citation'])}</td></tr>"
        )
    measured = table["measured"]
    body = (
        f"<h1>{_esc(table['title'])}</h1>"
        f"<p>{_esc(table['unit'])}; {table['frames']} {_esc(table['split'])} frames. Etude's "
        f"rows measured {_esc(measured['date'])} on {_esc(measured['machine'])}; lower is "
        "better; an upper bound is comparable only as a bound; a median over seeds has "
        "their min\u2013max beside it.</p>"
        + _table(
            "benchmark",
            ["Model", "Frame NLL (nats/step)", "Kind", "Source", "Training (wall)", "Citation"],
            rows,
        )
    )
    return _page(table["title"], body, ["report.js"])


def table_command(
    results: Annotated[Path, typer.Argument(help="Folder of the frames stage's JSON results.")],
    published: Annotated[Path, typer.Option(help="YAML list of the published rows.")],
    train_reports: Annotated[
        Path, typer.Option(help="Folder of each run's <run>/summary.json.")
    ] = Path("reports/train"),
    out: Annotated[Path, typer.Option(help="table.json to write.")] = Path("table.json"),
    markdown_out: Annotated[
        Path, typer.Option("--markdown", help="Markdown copy of the rows.")
    ] = Path("table.md"),
    html_out: Annotated[Path, typer.Option("--html", help="The table as a page.")] = Path(
        "table.html"
    ),
    params: Annotated[Path, typer.Option("--params", help="params.yaml to read.")] = PARAMS_FILE,
) -> None:
    """Write the benchmark table (JSON and Markdown): Etude's runs and the published rows."""
    from pipeline.core.io import atomic_path, write_json
    from pipeline.core.params import load_params

    with user_errors(TableError):
        p = load_params("table", TableParams, params)
        table = build_table(read_runs(results, train_reports), read_published(published), p)
        write_json(out, table)
        with atomic_path(markdown_out) as tmp:
            tmp.write_text(markdown(table), encoding="utf-8")
        with atomic_path(html_out) as tmp:
            tmp.write_text(html_page(table), encoding="utf-8")
        best = table["rows"][0]
        typer.echo(f"table: {len(table['rows'])} rows, best {best['model']} -> {out}")
