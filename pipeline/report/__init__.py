"""The `report` stage: ``reports/index.html`` and the blind ``reports/fake.html``.

Both pages are static and open offline from disk: CSS and JavaScript are inlined from
``templates/``, images and audio are relative links into ``reports/samples/``, and
nothing refers to another host. The report reads only what the other stages wrote:

* ``reports/evaluate/<model>.json`` (evaluate's full results):
  {"objective": {"name", "kind", "unit", "description", "test", "train",
  "baseline": {"key", "name", "description", "test"} or null},
  "test": {"nll", "baseline_nll", ...},
  "train": {...}, "samples": {"n", ..., "oa_mean", "kl_mean", "metrics": {name: {...}}}}
* ``reports/train/<model>/summary.json`` (train): {"steps", "best_val_loss",
  "wall_time_s", "n_parameters"}, and DVCLive's curves under
  ``reports/train/<model>/plots/metrics/**/*.tsv`` (columns step, <metric>), drawn here
  as inline SVG, so the report needs no plotting library in the browser
* ``reports/samples/<model>/{sample,real}-<i>.{wav,png}`` (evaluate)
* ``reports/data/*.json`` and ``reports/validation/*.json`` (represent, validate)

Whatever is missing shows as "not run yet"; unreadable files are listed on the page.
Test numbers are grouped by the objective's kind and unit (one table each), so the
page never ranks a loss or a bound beside a likelihood, or one unit beside another.

`dvc plots show` normally loads vega from a CDN; ``plots/dvc_plots.html`` is an
HTML template with vega, vega-lite and vega-embed inlined (see
`write_dvc_plots_template`) so that it works offline too, once ``.dvc/config`` has
``plots.html_template = ../pipeline/report/plots/dvc_plots.html``.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import math
import os
import random
import re
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from pipeline.core.config import PARAMS_FILE, REPORTS
from pipeline.core.params import require

log = logging.getLogger(__name__)

NOT_RUN = "not run yet"
MAX_CURVE_POINTS = 400  # per series, so that long runs keep the page small
PALETTE = ("#3a3aa0", "#d1495b", "#2e933c", "#edae49", "#00798c", "#7a4988", "#6e6e73")


@dataclass(frozen=True)
class ReportParams:
    """params.yaml `report`: the find-the-fake page."""

    fake_pairs: int  # pairs of (real, generated) clips; 0 = every pair available
    seed: int  # shuffles the pairs and which side the fake is on
    benchmarks: list[str]  # benchmark table pages (etude table --html) shown in frames

    def validate(self) -> None:
        require(self.fake_pairs >= 0, "fake_pairs must be >= 0")
        require(
            all(str(b).endswith(".html") for b in self.benchmarks),
            "benchmarks must list .html pages written by `etude table`",
        )


@dataclass
class Clip:
    """One rendered clip in ``reports/samples/<model>/``."""

    stem: str
    wav: Path | None
    png: Path | None

    @property
    def real(self) -> bool:
        return self.stem.startswith("real-")


@dataclass
class Series:
    """One DVCLive curve: a metric's values by step."""

    name: str
    steps: list[float]
    values: list[float]


@dataclass
class ModelReport:
    """Everything the report knows about one model (None where a stage has not run)."""

    name: str
    metrics: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    curves: dict[str, list[Series]] = field(default_factory=dict)
    clips: list[Clip] = field(default_factory=list)


# --- reading ---------------------------------------------------------------------


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """Parse a JSON object file; None if absent; unreadable files go to `problems`."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path}: unreadable JSON ({str(exc).splitlines()[0]})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a JSON object, got {type(data).__name__}")
        return None
    return data


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def read_curves(plots_dir: Path, problems: list[str]) -> dict[str, list[Series]]:
    """DVCLive TSVs under `plots_dir`, grouped by metric name (``train/loss`` -> ``loss``)."""
    groups: dict[str, list[Series]] = {}
    if not plots_dir.is_dir():
        return groups
    for path in sorted(plots_dir.rglob("*.tsv"), key=lambda p: _natural_key(str(p))):
        metric = path.stem
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh, delimiter="\t"))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            problems.append(f"{path}: unreadable TSV ({exc})")
            continue
        steps: list[float] = []
        values: list[float] = []
        for i, row in enumerate(rows):
            try:
                step = float(row.get("step") or i)
                value = float(row.get(metric) or "nan")
            except ValueError:
                continue
            if math.isfinite(step) and math.isfinite(value):
                steps.append(step)
                values.append(value)
        if not steps:
            continue
        if len(steps) > MAX_CURVE_POINTS:
            keep = sorted(
                {
                    round(k * (len(steps) - 1) / (MAX_CURVE_POINTS - 1))
                    for k in range(MAX_CURVE_POINTS)
                }
            )
            steps = [steps[k] for k in keep]
            values = [values[k] for k in keep]
        name = path.relative_to(plots_dir).with_suffix("").as_posix()
        groups.setdefault(metric, []).append(Series(name, steps, values))
    return groups


def read_clips(samples_dir: Path) -> list[Clip]:
    """The clips in a model's samples folder, by stem (natural order)."""
    if not samples_dir.is_dir():
        return []
    stems: dict[str, Clip] = {}
    for path in samples_dir.iterdir():
        if path.suffix.lower() not in (".wav", ".png") or not path.is_file():
            continue
        clip = stems.setdefault(path.stem, Clip(path.stem, None, None))
        if path.suffix.lower() == ".wav":
            clip.wav = path
        else:
            clip.png = path
    return [stems[s] for s in sorted(stems, key=_natural_key)]


def discover_models(reports_dir: Path) -> list[str]:
    """Model names that any stage has written something for."""
    names: set[str] = set()
    metrics = reports_dir / "evaluate"
    if metrics.is_dir():
        names.update(p.stem for p in metrics.glob("*.json"))
    for folder in (reports_dir / "train", reports_dir / "samples"):
        if folder.is_dir():
            names.update(p.name for p in folder.iterdir() if p.is_dir())
    return sorted(names)


def collect(reports_dir: Path, models: Sequence[str], problems: list[str]) -> list[ModelReport]:
    """Read every model's metrics, training summary, curves and clips."""
    result = []
    for name in models:
        train = reports_dir / "train" / name
        result.append(
            ModelReport(
                name=name,
                metrics=_read_json(reports_dir / "evaluate" / f"{name}.json", problems),
                summary=_read_json(train / "summary.json", problems),
                curves=read_curves(train / "plots" / "metrics", problems),
                clips=read_clips(reports_dir / "samples" / name),
            )
        )
    return result


# --- formatting ----------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    return None


def _fmt(value: Any, digits: int = 4) -> str:
    number = _number(value)
    if number is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if number != 0 and (abs(number) < 1e-3 or abs(number) >= 1e5):
        return f"{number:.{digits - 1}e}"
    return f"{number:.{digits}g}"


def _duration(seconds: Any) -> str:
    number = _number(seconds)
    if number is None:
        return "—"
    minutes, secs = divmod(int(round(number)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _td(value: Any, text: str | None = None, cls: str = "") -> str:
    """A table cell whose data-v (the sort key) is the raw number or text, empty if none."""
    number = _number(value)
    sort = value if isinstance(value, str) else ("" if number is None else repr(number))
    shown = text if text is not None else (value if isinstance(value, str) else _fmt(value))
    attr = f' class="{cls}"' if cls else ""
    return f'<td data-v="{_esc(sort)}"{attr}>{_esc(shown)}</td>'


def _href(target: Path, page_dir: Path) -> str:
    """A relative, URL-quoted link from a page in `page_dir` to a file."""
    rel = os.path.relpath(target.resolve(), page_dir.resolve())
    return quote(Path(rel).as_posix())


def _get(data: dict[str, Any] | None, *keys: str) -> Any:
    node: Any = data
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _metric_stats(model: ModelReport) -> dict[str, dict[str, Any]]:
    samples = _get(model.metrics, "samples")
    if not isinstance(samples, dict):
        return {}
    table = samples.get("metrics")
    if isinstance(table, dict):
        return {k: v for k, v in table.items() if isinstance(v, dict)}
    return {k: v for k, v in samples.items() if isinstance(v, dict) and "oa" in v}


def _n_samples(model: ModelReport) -> Any:
    samples = _get(model.metrics, "samples")
    if isinstance(samples, dict):
        for key in ("n", "n_generated"):
            if _number(samples.get(key)) is not None:
                return samples[key]
    generated = [c for c in model.clips if not c.real]
    return len(generated) if generated else None


def _n_parameters(model: ModelReport) -> Any:
    value = _get(model.summary, "n_parameters")
    return value if value is not None else _get(model.metrics, "model", "n_parameters")


# --- page parts ----------------------------------------------------------------


def _asset(name: str) -> str:
    return (
        resources.files("pipeline.report").joinpath("templates").joinpath(name).read_text("utf-8")
    )


def _page(title: str, body: str, script_names: Sequence[str] = ()) -> str:
    scripts = "".join(f"<script>\n{_asset(n)}</script>\n" for n in script_names)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>\n{_asset('report.css')}</style>\n</head>\n"
        f"<body>\n{body}\n{scripts}</body>\n</html>\n"
    )


KIND_TITLES = {
    "likelihood": "Likelihoods",
    "bound": "Bounds on a likelihood",
    "loss": "Losses",
}
KIND_NOTES = {
    "likelihood": (
        "Negative log-likelihoods of the test data (or of the named part of it), beside a "
        "trivial model's exact NLL on the same units; lower is better."
    ),
    "bound": (
        "Upper bounds on a negative log-likelihood (the true NLL is at most this). A bound "
        "below the baseline's exact NLL beats it; a bound above it proves nothing."
    ),
    "loss": (
        "Training losses that are not likelihoods of the data (e.g. a denoising loss: the "
        "model sees most of the answer). Comparable only between runs of the same model."
    ),
}
KIND_ORDER = ("likelihood", "bound", "loss")


def _objective(model: ModelReport) -> dict[str, Any] | None:
    """The model's objective as evaluate recorded it (name, kind, unit, values)."""
    objective = _get(model.metrics, "objective")
    if not isinstance(objective, dict):
        return None
    if not all(isinstance(objective.get(k), str) for k in ("name", "kind", "unit")):
        return None
    return objective


def _label(name: str) -> str:
    return name.replace("_", " ")


def _objective_caption(objective: dict[str, Any] | None) -> str:
    if objective is None:
        return ""
    return f"{_label(objective['name'])} ({objective['kind']}, {objective['unit']})"


def _summary_table(models: list[ModelReport]) -> str:
    """One row per model: what it reports and the numbers every model shares.

    Test numbers are not here: they are in one table per objective kind and unit
    (`_objective_tables`), so that no column ranks a loss or a bound beside a
    likelihood, or nats per note beside nats per token.
    """
    head = (
        "model", "representation", "objective", "steps", "train time", "parameters",
        "samples", "mean OA ↑", "mean KL ↓",
    )  # fmt: skip
    rows = []
    for m in models:
        objective = _objective(m)
        evaluated = m.metrics is not None
        trained = m.summary is not None
        samples = _get(m.metrics, "samples")
        if objective is not None:
            objective_cell = _td(_objective_caption(objective))
        elif evaluated:
            objective_cell = _td(None, "not recorded (rerun evaluate)", "missing")
        else:
            objective_cell = _td(None, NOT_RUN, "missing")
        cells = [
            f'<td data-v="{_esc(m.name)}"><a href="#model-{_esc(m.name)}">{_esc(m.name)}</a></td>',
            _td(str(_get(m.metrics, "model", "representation") or "")),
            objective_cell,
            _td(_get(m.summary, "steps")) if trained else _td(None, NOT_RUN, "missing"),
            _td(_get(m.summary, "wall_time_s"), _duration(_get(m.summary, "wall_time_s"))),
            _td(_n_parameters(m)),
            _td(_n_samples(m)),
            _td(_get(samples, "oa_mean")),
            _td(_get(samples, "kl_mean")),
        ]
        rows.append(f'<tr data-model="{_esc(m.name)}">' + "".join(cells) + "</tr>")
    return _table("models", head, rows)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def objective_groups(models: list[ModelReport]) -> list[tuple[str, str, list[ModelReport]]]:
    """Evaluated models grouped by (objective kind, unit): likelihoods, bounds, losses."""
    groups: dict[tuple[str, str], list[ModelReport]] = {}
    for m in models:
        objective = _objective(m)
        if objective is not None:
            groups.setdefault((objective["kind"], objective["unit"]), []).append(m)

    def order(key: tuple[str, str]) -> tuple[int, str]:
        kind, unit = key
        return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), unit)

    return [(kind, unit, groups[(kind, unit)]) for kind, unit in sorted(groups, key=order)]


def _objective_tables(models: list[ModelReport]) -> str:
    """One sortable table of test numbers per objective kind and unit."""
    parts = []
    for kind, unit, members in objective_groups(models):
        title = KIND_TITLES.get(kind, kind)
        with_baseline = kind != "loss"
        head = ["model", "objective", f"test ({unit})"]
        if with_baseline:
            head += ["baseline", f"baseline ({unit})", "test − baseline"]
        head.append(f"train ({unit})")
        rows = []
        for m in members:
            objective = _objective(m) or {}
            test = objective.get("test")
            cells = [
                f'<td data-v="{_esc(m.name)}"><a href="#model-{_esc(m.name)}">'
                f"{_esc(m.name)}</a></td>",
                _td(_label(objective["name"])),
                _td(test),
            ]
            if with_baseline:
                baseline = objective.get("baseline")
                if isinstance(baseline, dict):
                    base = baseline.get("test")
                    delta = (
                        _number(test) - _number(base)
                        if _number(test) is not None and _number(base) is not None
                        else None
                    )
                    cells += [
                        _td(_label(str(baseline.get("name", "")))),
                        _td(base),
                        _td(delta, None if delta is None else f"{delta:+.4g}"),
                    ]
                else:
                    cells += [_td(None, "none of this kind", "missing"), _td(None), _td(None)]
            cells.append(_td(objective.get("train")))
            rows.append(f'<tr data-model="{_esc(m.name)}">' + "".join(cells) + "</tr>")
        table_id = f"objective-{_slug(kind)}-{_slug(unit)}"
        parts.append(
            f'<h3 id="{table_id}-title">{_esc(title)}, {_esc(unit)}</h3>'
            f"<p>{_esc(KIND_NOTES.get(kind, ''))}</p>" + _table(table_id, head, rows)
        )
    unrecorded = [m.name for m in models if m.metrics is not None and _objective(m) is None]
    if unrecorded:
        parts.append(
            f'<p class="missing">Objective not recorded for {_esc(", ".join(unrecorded))}: '
            "their evaluation predates named objectives; rerun evaluate.</p>"
        )
    if not parts:
        return f'<p class="missing">Test numbers: {NOT_RUN} (no model evaluated).</p>'
    return "".join(parts)


def _table(table_id: str, head: Sequence[str], rows: list[str]) -> str:
    header = "".join(f"<th>{_esc(h)}</th>" for h in head)
    return (
        f'<div class="scroll"><table class="sortable" id="{table_id}">'
        f"<thead><tr>{header}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>"
    )


def _ordered(names: set[str]) -> list[str]:
    """Metric names in `metrics.METRICS` order, unknown ones after, sorted."""
    from pipeline.evaluation.metrics import METRICS

    return [k for k in METRICS if k in names] + sorted(names - set(METRICS))


def _musical_table(models: list[ModelReport]) -> str:
    names = _ordered({key for m in models for key in _metric_stats(m)})
    if not names:
        return f'<p class="missing">Musical metrics: {NOT_RUN} (no model evaluated).</p>'
    rows = []
    for m in models:
        stats = _metric_stats(m)
        cells = [f'<td data-v="{_esc(m.name)}">{_esc(m.name)}</td>']
        if not stats:
            cells += [_td(None, NOT_RUN, "missing")] + [_td(None) for _ in names[1:]]
        else:
            cells += [_td(_get(stats, n, "oa")) for n in names]
        rows.append(f'<tr data-model="{_esc(m.name)}">' + "".join(cells) + "</tr>")
    return _table("musical", ["model", *names], rows)


PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def _pitch_class_table(models: list[ModelReport]) -> str:
    """Pitch-class profile of each model's samples beside the real clips' profile.

    Comparing the `poph` row with the `biaxial` row shows what PopH's harmony loss
    changed; "max key share" is the largest share of notes inside one major or
    natural-minor scale (1.0 = every note in one key).
    """
    rows = []
    for m in models:
        profile = _get(m.metrics or {}, "samples", "pitch_class_profile")
        if not isinstance(profile, dict):
            continue
        for label, values in (
            ("generated", profile.get("generated")),
            ("real", profile.get("real")),
        ):
            if not isinstance(values, list) or len(values) != 12:
                continue
            cells = [f'<td data-v="{_esc(m.name)}">{_esc(m.name)}</td>', f"<td>{label}</td>"]
            cells += [_td(_number(v)) for v in values]
            cells.append(_td(_max_key_share(values)))
            rows.append(f'<tr data-model="{_esc(m.name)}">' + "".join(cells) + "</tr>")
    if not rows:
        return f'<p class="missing">Pitch-class profiles: {NOT_RUN}.</p>'
    return (
        '<h2 id="pitch-classes">Pitch-class profiles</h2><p>Share of notes per pitch class '
        "in each model's samples and in the real clips it was compared with; compare "
        "<code>poph</code> (harmony loss) with <code>biaxial</code> (none).</p>"
        + _table("pitch-classes", ["model", "clips", *PITCH_CLASSES, "max key share"], rows)
    )


def _max_key_share(profile: list[float]) -> float | None:
    values = [_number(v) for v in profile]
    if any(v is None for v in values):
        return None
    major = (0, 2, 4, 5, 7, 9, 11)
    minor = (0, 2, 3, 5, 7, 8, 10)
    return max(
        sum(values[(root + step) % 12] for step in scale)  # type: ignore[misc]
        for root in range(12)
        for scale in (major, minor)
    )


def _term_names(objective: dict[str, Any] | None) -> dict[str, str]:
    """Captions of the forward terms that the objective names: ``nll`` and its baseline."""
    if objective is None:
        return {}
    unit = objective["unit"]
    names = {"nll": f"nll = {_label(objective['name'])} ({objective['kind']}, {unit})"}
    baseline = objective.get("baseline")
    if isinstance(baseline, dict) and isinstance(baseline.get("key"), str):
        names[baseline["key"]] = (
            f"{baseline['key']} = baseline {_label(str(baseline.get('name', '')))} "
            f"(likelihood, {unit})"
        )
    return names


def _model_metrics(model: ModelReport) -> str:
    if model.metrics is None:
        return f'<p class="missing">Evaluation: {NOT_RUN}.</p>'
    parts = []
    objective = _objective(model)
    if objective is not None:
        baseline = objective.get("baseline")
        against = (
            f" Baseline: {baseline.get('description', '')}."
            if isinstance(baseline, dict)
            else " No baseline of this kind."
        )
        parts.append(
            f'<p class="objective">Reported: <b>{_esc(_label(objective["name"]))}</b> '
            f"({_esc(objective['kind'])}, {_esc(objective['unit'])}): "
            f"{_esc(objective.get('description', ''))}.{_esc(against)}</p>"
        )
    names = _term_names(objective)
    for split in ("test", "train"):
        terms = _get(model.metrics, split)
        if isinstance(terms, dict) and terms:
            body = "".join(
                f"<tr><td>{_esc(names.get(k, k))}</td><td>{_esc(_fmt(v))}</td></tr>"
                for k, v in terms.items()
                if _number(v) is not None or v is None
            )
            parts.append(f"<table><thead><tr><th>{split}</th><th></th></tr></thead>{body}</table>")
    stats = _metric_stats(model)
    if stats:
        rows = "".join(
            f"<tr><td>{_esc(name)}</td>"
            f"<td>{_esc(_fmt(s.get('generated_mean')))} ± {_esc(_fmt(s.get('generated_std')))}</td>"
            f"<td>{_esc(_fmt(s.get('real_mean')))} ± {_esc(_fmt(s.get('real_std')))}</td>"
            f"<td>{_esc(_fmt(s.get('oa')))}</td><td>{_esc(_fmt(s.get('kl')))}</td></tr>"
            for name, s in ((n, stats[n]) for n in _ordered(set(stats)))
        )
        parts.append(
            "<table><thead><tr><th>musical metric</th><th>generated</th><th>real</th>"
            f"<th>OA ↑</th><th>KL ↓</th></tr></thead>{rows}</table>"
        )
    else:
        parts.append(f'<p class="missing">Musical metrics: {NOT_RUN}.</p>')
    return '<div class="tables">' + "".join(parts) + "</div>"


def svg_chart(title: str, series: list[Series], width: int = 460, height: int = 220) -> str:
    """A line chart of one metric's curves as inline SVG (no JavaScript, no library)."""
    left, right, top, bottom = 58, 12, 24, 34
    xs = [x for s in series for x in s.steps]
    ys = [y for s in series for y in s.values]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * plot_h

    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_esc(title)}">',
        f'<text x="{left}" y="15" style="font-weight:600;fill:#1d1d1f">{_esc(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#d2d2d7"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        yv = y0 + frac * (y1 - y0)
        out.append(
            f'<text x="{left - 4}" y="{py(yv) + 4:.1f}" text-anchor="end">'
            f"{_esc(_fmt(yv, 3))}</text>"
        )
        xv = x0 + frac * (x1 - x0)
        out.append(
            f'<text x="{px(xv):.1f}" y="{height - bottom + 14}" text-anchor="middle">'
            f"{_esc(_fmt(xv, 3))}</text>"
        )
    out.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" text-anchor="middle">step</text>'
    )
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        points = " ".join(
            f"{px(x):.1f},{py(y):.1f}" for x, y in zip(s.steps, s.values, strict=True)
        )
        out.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}">'
            f"<title>{_esc(s.name)}</title></polyline>"
        )
        out.append(
            f'<text x="{width - right - 4}" y="{top + 14 + 13 * i}" text-anchor="end" '
            f'style="fill:{color}">{_esc(s.name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _model_curves(model: ModelReport) -> str:
    if not model.curves:
        return f'<p class="missing">Training curves: {NOT_RUN}.</p>'
    charts = [svg_chart(metric, series) for metric, series in sorted(model.curves.items())]
    return '<div class="charts">' + "".join(charts) + "</div>"


def _clip_figure(clip: Clip, page_dir: Path, label: str) -> str:
    parts = [f'<figure data-clip="{_esc(clip.stem)}">']
    if clip.png is not None:
        parts.append(
            f'<img src="{_href(clip.png, page_dir)}" alt="piano roll of {_esc(clip.stem)}" '
            'loading="lazy">'
        )
    if clip.wav is not None:
        parts.append(f'<audio controls preload="none" src="{_href(clip.wav, page_dir)}"></audio>')
    parts.append(f"<figcaption>{_esc(label)}: {_esc(clip.stem)}</figcaption></figure>")
    return "".join(parts)


def _model_clips(model: ModelReport, page_dir: Path) -> str:
    if not model.clips:
        return f'<p class="missing">Samples: {NOT_RUN}.</p>'
    generated = [c for c in model.clips if not c.real]
    real = [c for c in model.clips if c.real]
    parts = []
    for title, clips, label in (("Generated", generated, model.name), ("Real", real, "real")):
        if clips:
            figures = "".join(_clip_figure(c, page_dir, label) for c in clips)
            parts.append(f'<h4>{title}</h4><div class="clips">{figures}</div>')
        else:
            parts.append(f'<h4>{title}</h4><p class="missing">{NOT_RUN}.</p>')
    return "".join(parts)


def _training_line(model: ModelReport) -> str:
    """Steps, time and the selected checkpoint's validation loss (the model's own units)."""
    if model.summary is None:
        return ""
    best, step = _get(model.summary, "best_val_loss"), _get(model.summary, "best_step")
    at = f" at step {_fmt(step)}" if _number(step) is not None else ""
    return (
        f"<p>{_esc(_fmt(_get(model.summary, 'steps')))} steps in "
        f"{_esc(_duration(_get(model.summary, 'wall_time_s')))}; model.pt is the checkpoint "
        f"with the lowest validation loss, {_esc(_fmt(best))}{_esc(at)} (its training loss "
        "term, in the model's own units: not comparable across models).</p>"
    )


def _model_section(model: ModelReport, page_dir: Path) -> str:
    return (
        f'<section id="model-{_esc(model.name)}" class="model">'
        f"<h2>{_esc(model.name)}</h2>"
        f"<h3>Evaluation</h3>{_model_metrics(model)}"
        f"<h3>Training</h3>{_training_line(model)}{_model_curves(model)}"
        f"<h3>Samples</h3>{_model_clips(model, page_dir)}"
        "</section>"
    )


def _benchmark_section(pages: Sequence[str], page_dir: Path) -> str:
    """Each benchmark's table page (`etude table --html`) in a frame, with a link.

    The page is framed, not read: a benchmark's table is an output of its own pipeline
    (e.g. benchmarks/jsb/dvc.yaml), and a DVC dependency on it would make the main
    `dvc repro` reproduce the whole benchmark first. The committed page is shown as it is.
    """
    parts = ['<h2 id="benchmarks">Benchmarks</h2>']
    if not pages:
        parts.append('<p class="missing">No benchmark pages listed (report.benchmarks).</p>')
    for page in pages:
        path = Path(page)
        if not path.is_file():
            parts.append(
                f'<p class="missing">{_esc(page)}: {NOT_RUN} (dvc repro '
                f"{_esc(path.parent.as_posix())}/dvc.yaml).</p>"
            )
            continue
        href = _href(path, page_dir)
        parts.append(
            f'<p><a href="{href}">{_esc(page)}</a> (its own pipeline: '
            f"<code>dvc repro {_esc(path.parent.as_posix())}/dvc.yaml</code>)</p>"
            f'<iframe class="benchmark" src="{href}" title="{_esc(page)}"></iframe>'
        )
    return "\n".join(parts)


def _data_section(reports_dir: Path, problems: list[str]) -> str:
    parts = ['<section id="data"><h2>Data</h2><h3>Stores</h3>']
    data_files = (
        sorted((reports_dir / "data").glob("*.json")) if (reports_dir / "data").is_dir() else []
    )
    rows = []
    for path in data_files:
        info = _read_json(path, problems)
        if info is None:
            continue
        counts = info.get("rows")
        if isinstance(counts, dict):
            keys = [k for k in ("train", "validation", "test") if k in counts]
            keys += sorted(k for k in counts if k not in keys)
            row_text = ", ".join(f"{k}: {_fmt(counts[k])}" for k in keys)
        else:
            row_text = _fmt(counts)
        size = _number(info.get("size_bytes"))
        rows.append(
            f"<tr><td>{_esc(path.stem)}</td>{_td(info.get('pieces'))}"
            f"<td>{_esc(row_text)}</td>"
            f"{_td(size, '—' if size is None else f'{size / 1e6:.2f} MB')}</tr>"
        )
    if rows:
        parts.append(_table("stores", ["store", "pieces", "rows", "size"], rows))
    else:
        parts.append(f'<p class="missing">Store summaries: {NOT_RUN}.</p>')
    parts.append("<h3>Validation</h3>")
    val_dir = reports_dir / "validation"
    val_files = sorted(val_dir.glob("*.json")) if val_dir.is_dir() else []
    rows = []
    details = []
    for path in val_files:
        info = _read_json(path, problems)
        if info is None:
            continue
        checks = info.get("checks") if isinstance(info.get("checks"), list) else []
        failed = [c for c in checks if isinstance(c, dict) and c.get("success") is False]
        ok = info.get("success") is True
        status = '<td class="pass">passed</td>' if ok else '<td class="fail">FAILED</td>'
        rows.append(
            f"<tr><td>{_esc(path.stem)}</td>{status}{_td(len(checks))}{_td(len(failed))}</tr>"
        )
        for check in failed:
            text = json.dumps(check, sort_keys=True, default=str)
            details.append(f"<li><b>{_esc(path.stem)}</b>: <code>{_esc(text[:400])}</code></li>")
    if rows:
        parts.append(_table("validation", ["store", "result", "checks", "failed"], rows))
        if details:
            parts.append("<ul>" + "".join(details) + "</ul>")
    else:
        parts.append(f'<p class="missing">Validation: {NOT_RUN}.</p>')
    parts.append("</section>")
    return "".join(parts)


# --- find the fake ---------------------------------------------------------------


@dataclass
class FakePair:
    """One blind pair: the fake is side `fake` ("a" or "b")."""

    a: Clip
    b: Clip
    fake: str
    model: str


def fake_pairs(models: list[ModelReport], params: ReportParams) -> list[FakePair]:
    """Pair each model's generated clip i with its real clip i, shuffle, cap, hide the side."""
    rng = random.Random(params.seed)
    candidates: list[tuple[str, Clip, Clip]] = []
    for m in models:
        generated = [c for c in m.clips if not c.real and c.wav is not None]
        real = [c for c in m.clips if c.real and c.wav is not None]
        for gen, ref in zip(generated, real, strict=False):
            gen_s, real_s = _wav_seconds(gen.wav), _wav_seconds(ref.wav)
            if gen_s is not None and real_s is not None and abs(gen_s - real_s) > 0.05:
                log.warning(
                    "%s: %s (%.2f s) and %s (%.2f s) differ in length; render both with "
                    "the same `seconds` for a fair test",
                    m.name, gen.stem, gen_s, ref.stem, real_s,
                )  # fmt: skip
            candidates.append((m.name, gen, ref))
    rng.shuffle(candidates)
    if params.fake_pairs:
        candidates = candidates[: params.fake_pairs]
    pairs = []
    for model, gen, ref in candidates:
        if rng.random() < 0.5:
            pairs.append(FakePair(a=gen, b=ref, fake="a", model=model))
        else:
            pairs.append(FakePair(a=ref, b=gen, fake="b", model=model))
    return pairs


def blind_copies(pairs: list[FakePair], folder: Path) -> list[FakePair]:
    """Copy each pair's clips to `folder/pair-NN-{a,b}.wav`, so that the audio file
    names on the page (``sample-0.wav`` vs ``real-0.wav``) do not give the answer away.

    The folder is replaced atomically; the returned pairs point at the copies.
    """
    import shutil

    from pipeline.core.io import atomic_dir

    blinded = []
    with atomic_dir(folder) as tmp:
        for i, pair in enumerate(pairs):
            sides = {}
            for side, clip in (("a", pair.a), ("b", pair.b)):
                name = f"pair-{i:02d}-{side}.wav"
                if clip.wav is not None:
                    shutil.copyfile(clip.wav, tmp / name)
                sides[side] = Clip(clip.stem, folder / name if clip.wav else None, None)
            blinded.append(FakePair(a=sides["a"], b=sides["b"], fake=pair.fake, model=pair.model))
    return blinded


def _wav_seconds(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        with wave.open(str(path), "rb") as fh:
            return fh.getnframes() / fh.getframerate()
    except (OSError, EOFError, wave.Error):
        return None


def fake_page(pairs: list[FakePair], page_dir: Path, index_name: str = "index.html") -> str:
    """The blind listening test: pick the generated clip of each pair, then check."""
    back = f'<p><a href="{quote(index_name)}">Back to the report</a></p>'
    if not pairs:
        body = (
            '<h1>Find the fake</h1><p class="missing">No pairs: evaluate has '
            f"{NOT_RUN} (each model needs sample-*.wav and real-*.wav clips).</p>" + back
        )
        return _page("Etude: find the fake", body)
    blocks = []
    answers = []
    for i, pair in enumerate(pairs):
        choices = []
        for side, clip in (("a", pair.a), ("b", pair.b)):
            src = _href(clip.wav, page_dir) if clip.wav is not None else ""
            choices.append(
                f'<div class="choice"><b>{side.upper()}</b>'
                f'<audio controls controlslist="nodownload" preload="none" src="{src}"></audio>'
                f'<label><input type="radio" name="pair-{i}" value="{side}"> '
                f"{side.upper()} is the fake</label></div>"
            )
        blocks.append(
            f'<div class="pair" id="pair-{i}"><h3>Pair {i + 1}</h3>'
            f'<div class="choices">{"".join(choices)}</div><div class="reveal"></div></div>'
        )
        answers.append(
            {
                "fake": pair.fake,
                "model": pair.model,
                "a": {"name": pair.a.stem, "real": pair.a.real, "model": pair.model},
                "b": {"name": pair.b.stem, "real": pair.b.real, "model": pair.model},
            }
        )
    key = json.dumps(answers, sort_keys=True).replace("<", "\\u003c")
    body = (
        "<h1>Find the fake</h1>"
        f"<p>Each of the {len(pairs)} pairs holds one real clip from the test split and one "
        "generated by a model, of the same length, in random order. Listen, mark the one "
        "you think is generated, then check your answers.</p>"
        + "".join(blocks)
        + '<p><button id="check" type="button">Check my answers</button>'
        '<span id="score"></span></p><div id="tally"></div>'
        + back
        + f'<script type="application/json" id="answers">{key}</script>'
    )
    return _page("Etude: find the fake", body, ["fake.js"])


# --- the report --------------------------------------------------------------------


def build_report(
    reports_dir: Path = REPORTS,
    out: Path | None = None,
    models: Sequence[str] | None = None,
    *,
    params: ReportParams,
) -> Path:
    """Write the report page and the find-the-fake page beside it.

    Args:
        reports_dir: the ``reports/`` folder the other stages wrote.
        out: the report page [default: ``<reports_dir>/index.html``]; ``fake.html`` is
            written in the same folder.
        models: models to show, in order (missing ones say "not run yet");
            None: every model any stage wrote something for.
        params: the `report` params section.

    Returns:
        The path of the report page.
    """
    reports_dir = Path(reports_dir)
    out = Path(out) if out is not None else reports_dir / "index.html"
    page_dir = out.parent
    page_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    names = list(models) if models is not None else discover_models(reports_dir)
    reports = collect(reports_dir, names, problems)
    pairs = blind_copies(fake_pairs(reports, params), page_dir / "fake")
    fake_path = page_dir / "fake.html"

    sections = [
        "<h1>Etude report</h1>",
        '<nav><a href="#models">Models</a><a href="#objectives">Test numbers</a>'
        '<a href="#musical">Musical metrics</a>'
        '<a href="#benchmarks">Benchmarks</a><a href="#data">Data</a>'
        f'<a href="{_href(fake_path, page_dir)}">Find the fake ({len(pairs)} pairs)</a></nav>',
        '<h2 id="summary">Models</h2>',
        "<p>What each model reports on the held-out test split, and the numbers every "
        "model shares. Click a column to sort.</p>",
        _summary_table(reports) if reports else f'<p class="missing">Models: {NOT_RUN}.</p>',
        '<h2 id="objectives">Test numbers, by kind and unit</h2>',
        "<p>Each model's own objective, in one table per kind (likelihood, bound on a "
        "likelihood, loss) and unit: numbers in different tables are not comparable. "
        "Within a table, models are comparable only on the same data.</p>",
        _objective_tables(reports),
        "<h2>Musical metrics: overlap with real data</h2>",
        "<p>Per metric, the overlapping area (OA, 1 = generated clips differ from real ones "
        "as much as real ones differ among themselves) of the generated-vs-real distance "
        "distribution with the real-vs-real one (Yang &amp; Lerch 2018).</p>",
        _musical_table(reports),
        _pitch_class_table(reports),
        *(_model_section(m, page_dir) for m in reports),
        _benchmark_section(params.benchmarks, page_dir),
        _data_section(reports_dir, problems),
    ]
    if problems:
        items = "".join(f"<li>{_esc(p)}</li>" for p in problems)
        sections.append(f'<section id="problems"><h2>Problems</h2><ul>{items}</ul></section>')
        for problem in problems:
            log.warning("%s", problem)
    from pipeline.core.io import atomic_path

    with atomic_path(fake_path) as tmp:
        tmp.write_text(fake_page(pairs, page_dir, out.name), encoding="utf-8")
    with atomic_path(out) as tmp:
        tmp.write_text(_page("Etude report", "\n".join(sections), ["report.js"]), encoding="utf-8")
    log.info("report: %d models, %d fake pairs -> %s", len(reports), len(pairs), out)
    return out


def models_from_params(data: dict[str, Any]) -> list[str] | None:
    """Model names from params.yaml's `models` (a mapping or a list); None if absent."""
    value = data.get("models")
    if isinstance(value, dict):
        return [str(k) for k in value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def report_command(
    reports: Annotated[Path, typer.Option(help="The reports folder the stages wrote.")] = REPORTS,
    out: Annotated[
        Path | None,
        typer.Option(help="Report page (default: REPORTS/index.html); fake.html goes beside it."),
    ] = None,
    params: Annotated[Path, typer.Option("--params", help="params.yaml to read.")] = PARAMS_FILE,
) -> None:
    """Write reports/index.html (table, curves, clips) and the find-the-fake page."""
    from pipeline.core.params import from_mapping, get_section, params_errors, read_params_file
    from pipeline.core.stage_utils import user_errors

    with user_errors(OSError):
        data = read_params_file(params)
        with params_errors(params):
            settings = from_mapping(get_section(data, "report"), ReportParams, "report")
        page = build_report(reports, out, models_from_params(data), params=settings)
        typer.echo(f"report -> {page}")


# --- offline `dvc plots show` --------------------------------------------------------


def write_dvc_plots_template(
    js_files: Sequence[Path],
    out: Path,
    labels: Sequence[str] | None = None,
    notice: str = "",
) -> Path:
    """Write a `dvc plots show` HTML template with the given scripts inlined.

    DVC fills ``{plot_divs}`` (and ``{refresh_tag}``) and only adds its CDN
    ``<script src>`` tags where a template has ``{scripts}``, which this one has not.
    Made from the npm packages (``npm pack vega@5 vega-lite@5 vega-embed@6``, each
    BSD-3-Clause) with their ``build/*.min.js`` in order vega, vega-lite, vega-embed;
    `notice` (their LICENSE text) is kept in a comment at the top.
    """
    from pipeline.core.io import atomic_path

    scripts = []
    labels = list(labels) if labels is not None else [Path(p).name for p in js_files]
    for path, label in zip(js_files, labels, strict=True):
        code = Path(path).read_text(encoding="utf-8")
        if "{plot_divs}" in code or "{scripts}" in code:
            raise ValueError(f"{path}: contains a DVC template placeholder")
        scripts.append(
            f"<!-- {label} (BSD-3-Clause) -->\n<script>\n"
            + code.replace("</script", "<\\/script")
            + "\n</script>"
        )
    header = f"<!--\n{notice.replace('--', '- -').strip()}\n-->\n" if notice else ""
    text = (
        "<!DOCTYPE html>\n" + header + '<html>\n<head>\n<meta charset="utf-8">\n{refresh_tag}\n'
        "<title>DVC Plot</title>\n"
        + "\n".join(scripts)
        + "\n<style>table { border-spacing: 15px; }</style>\n</head>\n<body>\n{plot_divs}\n"
        "</body>\n</html>\n"
    )
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(out)
