"""The `validate` stage: run a store's suite, write JSON + HTML reports and data metrics.

`etude validate <kind> DIR` validates any store folder, inside DVC or not. A failed
expectation still writes every report (so the reason can be read), prints one line
per failure to stderr and exits with status 1, which stops `dvc repro`.
"""

from __future__ import annotations

import html as html_lib
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.core.config import PARAMS_FILE, REPORTS


def _default(path: Path | None, fallback: Path) -> Path:
    return path if path is not None else fallback


def validate_command(
    kind: Annotated[
        str, typer.Argument(help="Store kind: notes, pianoroll, tuples, events or prv.")
    ],
    path: Annotated[Path, typer.Argument(help="Store folder, e.g. data/processed/events.")],
    report: Annotated[
        Path | None, typer.Option(help="JSON result Default: reports/validation/<kind>.json.")
    ] = None,
    html: Annotated[
        Path | None, typer.Option(help="HTML summary Default: <kind>.html beside the JSON.")
    ] = None,
    data_report: Annotated[
        Path | None, typer.Option(help="Data metrics JSON Default: reports/data/<kind>.json.")
    ] = None,
    params: Annotated[Path, typer.Option("--params", help="params.yaml to read.")] = PARAMS_FILE,
) -> None:
    """Validate the store in PATH with the suite of KIND; exit 1 if any expectation fails."""
    from pipeline.core.params import load_params
    from pipeline.core.stage_utils import user_errors
    from pipeline.validation.suites import ValidateParams, ValidationError, validate_store

    with user_errors(ValidationError, OSError):
        settings = load_params("validate", ValidateParams, params)
        report = _default(report, REPORTS / "validation" / f"{kind}.json")
        html = _default(html, report.with_name(f"{kind}.html"))
        data_report = _default(data_report, REPORTS / "data" / f"{kind}.json")
        result = validate_store(kind, path, settings)
        write_reports(result, report, html, data_report)
    failed = [c for c in result["checks"] if not c["success"]]
    if failed:
        for check in failed:
            typer.echo(failure_line(result, check), err=True)
        raise typer.Exit(1)
    typer.echo(f"validate {kind} {path}: {len(result['checks'])} checks passed -> {report}")


def failure_line(result: dict[str, Any], check: dict[str, Any]) -> str:
    """One line naming the store, the table and column, and a few offending values."""
    where = check["table"] + (f".{check['column']}" if check["column"] else "")
    count = check.get("unexpected_count")
    unexpected = f" ({count} unexpected)" if count else ""
    examples = ", ".join(_short(v) for v in check["examples"][:3])
    line = (
        f"validate {result['store']} {result['path']}: {where}: {check['expectation']} failed"
        f"{unexpected}; e.g. {examples or '-'}"
    )
    return " ".join(line.split())  # one line, whatever the examples contain


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def data_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The DVC metrics of a store: rows per split, bytes on disk, pieces."""
    return {"rows": result["rows"], "size_bytes": result["size_bytes"], "pieces": result["pieces"]}


def write_reports(result: dict[str, Any], report: Path, html: Path, data_report: Path) -> None:
    """Write the JSON result, the HTML summary and the data metrics, each atomically."""
    from pipeline.core.io import atomic_path, write_json

    write_json(report, result)
    with atomic_path(html) as tmp:
        tmp.write_text(render_html(result), encoding="utf-8")
    write_json(data_report, data_metrics(result))


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
tr.fail td{background:#fde8e8}
.ok{color:#1a7f37;font-weight:bold}.bad{color:#c62828;font-weight:bold}
code{font-size:90%}
"""


def render_html(result: dict[str, Any]) -> str:
    """A standalone page: verdict, row counts, then every check (failures first)."""
    esc = html_lib.escape
    failed = [c for c in result["checks"] if not c["success"]]
    verdict = (
        '<span class="ok">PASSED</span>'
        if result["success"]
        else f'<span class="bad">FAILED</span> ({len(failed)} of {len(result["checks"])} checks)'
    )
    rows = "".join(
        f"<tr><td>{esc(str(split))}</td><td>{n:,}</td></tr>" for split, n in result["rows"].items()
    )
    ordered = sorted(result["checks"], key=lambda c: c["success"])
    checks = "".join(
        "<tr{cls}><td>{status}</td><td>{table}</td><td>{column}</td><td><code>{exp}</code>"
        "<br><small>{details}</small></td><td>{count}</td><td>{examples}</td></tr>".format(
            cls="" if c["success"] else ' class="fail"',
            status="ok" if c["success"] else "FAIL",
            table=esc(str(c["table"])),
            column=esc(str(c["column"] or "")),
            exp=esc(c["expectation"]),
            details=esc(c.get("details") or ""),
            count="" if c["unexpected_count"] is None else c["unexpected_count"],
            examples=esc(", ".join(_short(v) for v in c["examples"])),
        )
        for c in ordered
    )
    title = f"Validation: {result['store']} store"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>{_CSS}</style></head><body>
<h1>{esc(title)}</h1>
<p>Store folder: <code>{esc(result["path"])}</code><br>Result: {verdict}<br>
Pieces: {result["pieces"]:,} &middot; size on disk: {result["size_bytes"]:,} bytes</p>
<h2>Rows per split</h2>
<table><tr><th>split</th><th>rows</th></tr>{rows}</table>
<h2>Checks</h2>
<table><tr><th>status</th><th>table</th><th>column</th><th>expectation</th>
<th>unexpected</th><th>examples</th></tr>{checks}</table>
</body></html>
"""
