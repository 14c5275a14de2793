"""`etude quality`: the find-the-fake table of the quality recipe (benchmarks/quality).

Reads each model's ``reports/evaluate/<model>.json`` (evaluate's details: the
classifier two-sample test, the overlapping areas and their intervals, the musical
metrics) and ``reports/train/<model>/summary.json`` (training wall time), and writes:

- ``table.json``: per model the find-the-fake accuracy with its 95% interval, the
  real-against-real control, OA mean with its bootstrap interval and per metric,
  clip counts and training seconds, and the recipe's checks (scale consistency within
  0.05 of real, polyphony within 30% of real);
- ``table.md``: the table the README shows;
- an HTML page with the table and, per model, its most and least convincing clips
  (the generated clips the classifier scored least and most likely fake, out of
  fold), to listen to.

The lowest accuracy is best: 0.5 means the classifier cannot tell the model's clips
from real ones.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.core.config import PARAMS_FILE
from pipeline.core.params import require
from pipeline.core.stage_utils import user_errors

log = logging.getLogger(__name__)

CHECKED = {"scale_consistency": ("abs", 0.05), "polyphony": ("rel", 0.30)}
"""Recipe checks: generated mean within 0.05 of real (absolute) / within 30% (relative)."""


class QualityError(ValueError):
    """A model's evaluation is missing or unreadable."""


@dataclass(frozen=True)
class QualityParams:
    """The `quality` section: which models, and how many clips to show."""

    models: tuple[str, ...]
    title: str = "Find the fake: how often a classifier tells each model from Bach"
    listen: int = 2  # most and least convincing clips shown per model

    def validate(self) -> None:
        require(len(self.models) > 0, "models must list at least one model")
        require(self.listen >= 0, "listen must be >= 0")


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QualityError(f"{path}: missing (run the evaluate stage first)") from None
    except json.JSONDecodeError as exc:
        raise QualityError(f"{path}: not valid JSON ({exc})") from exc


def _check(metric: dict[str, Any], rule: tuple[str, float]) -> bool | None:
    gen, real = metric.get("generated_mean"), metric.get("real_mean")
    if gen is None or real is None:
        return None
    kind, bound = rule
    gap = abs(gen - real) if kind == "abs" else abs(gen - real) / max(abs(real), 1e-12)
    return bool(gap <= bound)


def model_row(name: str, details: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """One model's row of table.json from its evaluate details and train summary."""
    samples = details.get("samples") or {}
    fake = samples.get("fake") or {}
    score, control = fake.get("score") or {}, fake.get("control") or {}
    metrics = samples.get("metrics") or {}
    interval = samples.get("oa_interval") or {}
    return {
        "model": name,
        "fake": {k: score.get(k) for k in ("accuracy", "low", "high", "n_real", "n_fake")},
        "control": {k: control.get(k) for k in ("accuracy", "low", "high")},
        "oa_mean": samples.get("oa_mean"),
        "oa_interval": interval.get("oa_mean"),
        "metrics": {
            k: {m: v.get(m) for m in ("generated_mean", "real_mean", "oa")}
            for k, v in sorted(metrics.items())
        },
        "checks": {k: _check(metrics.get(k) or {}, rule) for k, rule in CHECKED.items()},
        "clips": samples.get("n"),
        "seconds": samples.get("seconds"),
        "train_seconds": summary.get("wall_time_s"),
        "steps": summary.get("steps"),
        "error": score.get("error"),
    }


def build_table(reports: Path, params: QualityParams) -> dict[str, Any]:
    """table.json: one row per model (params order), best (lowest accuracy) first."""
    rows = []
    for name in params.models:
        details = _read(reports / "evaluate" / f"{name}.json")
        summary_path = reports / "train" / name / "summary.json"
        summary = _read(summary_path) if summary_path.exists() else {}
        rows.append(model_row(name, details, summary))
    scored = [r for r in rows if r["fake"]["accuracy"] is not None]
    scored.sort(key=lambda r: r["fake"]["accuracy"])
    rows = scored + [r for r in rows if r["fake"]["accuracy"] is None]
    controls = [r["control"] for r in rows if r["control"]["accuracy"] is not None]
    return {
        "title": params.title,
        "metric": "find the fake: cross-validated accuracy of a classifier telling "
        "generated from real test clips (0.5: cannot tell; 1.0: every fake caught)",
        "rows": rows,
        "control": controls[0] if controls else None,
        "best": rows[0]["model"] if scored else None,
    }


def _pct(value: Any) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _ci(d: dict[str, Any] | None) -> str:
    """An interval dict as "[low, high]", or "-"."""
    if not d or d.get("low") is None:
        return "-"
    return f"[{_pct(d['low'])}, {_pct(d.get('high'))}]"


def _interval(d: dict[str, Any] | None) -> str:
    """A find-the-fake result as "accuracy [low, high]", or "-"."""
    if not d or d.get("accuracy") is None:
        return "-"
    return f"{_pct(d['accuracy'])} {_ci(d)}"


def markdown(table: dict[str, Any]) -> str:
    """The rows as a Markdown table (what the README shows)."""
    head = (
        "| Model | Find the fake (95% CI) | Real vs real | OA mean (95% CI) "
        "| Scale gen / real | Polyphony gen / real | Clips | Training |"
    )
    lines = [head, "|---|---|---|---|---|---|---:|---:|"]
    for r in table["rows"]:
        m = r["metrics"]
        scale, poly = m.get("scale_consistency") or {}, m.get("polyphony") or {}
        oa = f"{_pct(r['oa_mean'])} {_ci(r['oa_interval'])}"
        train = "-" if r["train_seconds"] is None else f"{r['train_seconds'] / 60:.1f} min"
        lines.append(
            f"| {r['model']} | {_interval(r['fake'])} | {_interval(r['control'])} | {oa} "
            f"| {_pct(scale.get('generated_mean'))} / {_pct(scale.get('real_mean'))} "
            f"| {_pct(poly.get('generated_mean'))} / {_pct(poly.get('real_mean'))} "
            f"| {r['clips']} | {train} |"
        )
    return "\n".join(lines) + "\n"


def convincing(details: dict[str, Any], k: int) -> tuple[list[int], list[int]]:
    """Indices of the `k` generated clips the classifier found least / most fake."""
    score = ((details.get("samples") or {}).get("fake") or {}).get("score") or {}
    probs = score.get("fake_probability_fake") or []
    order = sorted(range(len(probs)), key=lambda i: (probs[i], i))
    return order[:k], order[::-1][:k]


def html_page(table: dict[str, Any], reports: Path, page: Path, listen: int) -> str:
    """The table and each model's most and least convincing clips, offline."""
    from pipeline.evaluation.audio import SUFFIX
    from pipeline.report.templating import esc, href
    from pipeline.report.templating import page as shell
    from pipeline.report.templating import table as html_table

    head = ["Model", "Find the fake", "Real vs real", "OA mean", "Clips"]
    rows = [
        f"<tr><td>{esc(r['model'])}</td><td>{esc(_interval(r['fake']))}</td>"
        f"<td>{esc(_interval(r['control']))}</td><td>{esc(_pct(r['oa_mean']))}</td>"
        f"<td>{r['clips']}</td></tr>"
        for r in table["rows"]
    ]
    parts = [f"<h1>{esc(table['title'])}</h1><p>{esc(table['metric'])}.</p>"]
    parts.append(html_table("quality", head, rows))
    for r in table["rows"]:
        details = _read(reports / "evaluate" / f"{r['model']}.json")
        probs = details["samples"].get("fake", {}).get("score", {}).get("fake_probability_fake")
        best, worst = convincing(details, listen)
        parts.append(f"<h2>{esc(r['model'])}</h2>")
        for label, chosen in (("most convincing", best), ("least convincing", worst)):
            for i in chosen:
                audio = reports / "samples" / r["model"] / f"sample-{i}{SUFFIX}"
                parts.append(
                    f"<p>{label}: sample-{i} (classifier: {probs[i]:.2f} fake) "
                    f'<audio controls preload="none" src="{esc(href(audio, page.parent))}">'
                    "</audio></p>"
                )
    return shell(table["title"], "".join(parts), ["report.js"])


def quality_command(
    reports: Annotated[Path, typer.Option(help="Folder of evaluate/ and train/.")] = Path(
        "reports"
    ),
    out: Annotated[Path, typer.Option(help="table.json to write.")] = Path("table.json"),
    markdown_out: Annotated[Path, typer.Option("--markdown", help="Markdown table.")] = Path(
        "table.md"
    ),
    html_out: Annotated[Path, typer.Option("--html", help="The page to listen.")] = Path(
        "reports/quality.html"
    ),
    params: Annotated[Path, typer.Option("--params", help="params.yaml to read.")] = PARAMS_FILE,
) -> None:
    """Write the find-the-fake table (JSON, Markdown) and a page of convincing clips."""
    from pipeline.core.io import atomic_path, write_json
    from pipeline.core.params import load_params

    with user_errors(QualityError):
        p = load_params("quality", QualityParams, params)
        table = build_table(reports, p)
        write_json(out, table)
        with atomic_path(markdown_out) as tmp:
            tmp.write_text(markdown(table), encoding="utf-8")
        with atomic_path(html_out) as tmp:
            tmp.write_text(html_page(table, reports, html_out, p.listen), encoding="utf-8")
        typer.echo(f"quality: {len(table['rows'])} models, best {table['best']} -> {out}")
