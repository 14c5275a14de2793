"""``index.html``: what each part of ``templates/index.html.j2`` shows, as plain data.

Each function here turns what `collect` read into rows and captions; the template lays
them out. Test numbers are grouped by the objective's kind and unit (one table each),
so the page never ranks a loss or a bound beside a likelihood, or one unit beside
another.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.report import collect
from pipeline.report.charts import curve_chart
from pipeline.report.collect import Clip, ModelReport, get
from pipeline.report.templating import (
    NOT_RUN,
    Cell,
    Row,
    cell,
    duration,
    fmt,
    href,
    number,
    render,
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
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
SUMMARY_HEAD = (
    "model", "representation", "objective", "steps", "train time", "parameters",
    "samples", "find the fake ↓", "real vs real", "mean OA ↑", "mean KL ↓",
)  # fmt: skip
FAKE_TEST_NAMES = {"score": "generated against real", "control": "real against real"}


@dataclass
class Table:
    """A sortable table: its id (anchors and tests use it), header and rows."""

    id: str
    head: list[str]
    rows: list[Row]


def label(name: str) -> str:
    """A metric or objective name as prose: ``pitch_nll`` -> ``pitch nll``."""
    return name.replace("_", " ")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _model_cell(name: str) -> Cell:
    return Cell(name, name, link=f"#model-{name}")


def _objective_caption(objective: dict[str, Any]) -> str:
    return f"{label(objective['name'])} ({objective['kind']}, {objective['unit']})"


# --- the tables across models ---------------------------------------------------------


def interval_text(value: float, low: float, high: float) -> str:
    """A number with its 95% interval: ``0.92 [0.80, 0.97]``."""
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def fake_cell(model: ModelReport, key: str) -> Cell:
    """Find the fake's accuracy with its interval (sorted by the accuracy); "—" where
    evaluate could not score it (`fake_errors` says why), "not run yet" where absent."""
    found = collect.fake_test(model, key)
    if found is None:
        return cell(None, NOT_RUN, "missing")
    if "error" in found:
        return cell(None, "—", "missing")
    return cell(found["accuracy"], interval_text(found["accuracy"], found["low"], found["high"]))


def fake_errors(models: list[ModelReport]) -> list[str]:
    """Why find the fake has no number, per model and test (evaluate's one line)."""
    lines = []
    for m in models:
        for key, name in FAKE_TEST_NAMES.items():
            error = (collect.fake_test(m, key) or {}).get("error")
            if error:
                lines.append(f"{m.name} ({name}): {error}")
    return lines


def oa_cell(model: ModelReport) -> Cell:
    """Mean OA, with its bootstrap interval where evaluate wrote one."""
    mean = get(model.metrics, "samples", "oa_mean")
    interval = collect.oa_mean_interval(model)
    if number(mean) is None or interval is None:
        return cell(mean)
    return cell(mean, interval_text(mean, *interval))


def summary_table(models: list[ModelReport]) -> Table:
    """One row per model: what it reports and the numbers every model shares.

    Test numbers are not here: they are in one table per objective kind and unit
    (`objective_tables`), so that no column ranks a loss or a bound beside a
    likelihood, or nats per note beside nats per token. Find the fake and its
    real-against-real control, and mean OA, are shown with their intervals.
    """
    rows = []
    for m in models:
        objective = collect.objective(m)
        if objective is not None:
            objective_cell = cell(_objective_caption(objective))
        elif m.metrics is not None:
            objective_cell = cell(None, "not recorded (rerun evaluate)", "missing")
        else:
            objective_cell = cell(None, NOT_RUN, "missing")
        wall = get(m.summary, "wall_time_s")
        cells = [
            _model_cell(m.name),
            cell(str(get(m.metrics, "model", "representation") or "")),
            objective_cell,
            cell(get(m.summary, "steps")) if m.summary else cell(None, NOT_RUN, "missing"),
            cell(wall, duration(wall)),
            cell(collect.n_parameters(m)),
            cell(collect.n_samples(m)),
            fake_cell(m, "score"),
            fake_cell(m, "control"),
            oa_cell(m),
            cell(get(m.metrics, "samples", "kl_mean")),
        ]
        rows.append(Row(cells, m.name))
    return Table("models", list(SUMMARY_HEAD), rows)


def objective_groups(models: list[ModelReport]) -> list[tuple[str, str, list[ModelReport]]]:
    """Evaluated models grouped by (objective kind, unit): likelihoods, bounds, losses."""
    groups: dict[tuple[str, str], list[ModelReport]] = {}
    for m in models:
        objective = collect.objective(m)
        if objective is not None:
            groups.setdefault((objective["kind"], objective["unit"]), []).append(m)

    def order(key: tuple[str, str]) -> tuple[int, str]:
        kind, unit = key
        return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), unit)

    return [(kind, unit, groups[(kind, unit)]) for kind, unit in sorted(groups, key=order)]


def _baseline_cells(test: Any, baseline: Any) -> list[Cell]:
    if not isinstance(baseline, dict):
        return [cell(None, "none of this kind", "missing"), cell(None), cell(None)]
    base = baseline.get("test")
    both = number(test) is not None and number(base) is not None
    delta = number(test) - number(base) if both else None  # type: ignore[operator]
    return [
        cell(label(str(baseline.get("name", "")))),
        cell(base),
        cell(delta, None if delta is None else f"{delta:+.4g}"),
    ]


def objective_tables(models: list[ModelReport]) -> list[dict[str, Any]]:
    """One sortable table of test numbers per objective kind and unit, with its caption."""
    tables = []
    for kind, unit, members in objective_groups(models):
        with_baseline = kind != "loss"
        head = ["model", "objective", f"test ({unit})"]
        if with_baseline:
            head += ["baseline", f"baseline ({unit})", "test − baseline"]
        head.append(f"train ({unit})")
        rows = []
        for m in members:
            objective = collect.objective(m) or {}
            test = objective.get("test")
            cells = [_model_cell(m.name), cell(label(objective["name"])), cell(test)]
            if with_baseline:
                cells += _baseline_cells(test, objective.get("baseline"))
            cells.append(cell(objective.get("train")))
            rows.append(Row(cells, m.name))
        tables.append(
            {
                "title": KIND_TITLES.get(kind, kind),
                "unit": unit,
                "note": KIND_NOTES.get(kind, ""),
                "table": Table(f"objective-{slug(kind)}-{slug(unit)}", head, rows),
            }
        )
    return tables


def ordered_metrics(names: set[str]) -> list[str]:
    """Metric names in `metrics.METRICS` order, unknown ones after, sorted."""
    from pipeline.evaluation.metrics import METRICS

    return [k for k in METRICS if k in names] + sorted(names - set(METRICS))


def musical_table(models: list[ModelReport]) -> Table | None:
    """Each model's overlapping area per musical metric; None if none was evaluated."""
    names = ordered_metrics({key for m in models for key in collect.metric_stats(m)})
    if not names:
        return None
    rows = []
    for m in models:
        stats = collect.metric_stats(m)
        cells = [Cell(m.name, m.name)]
        if not stats:
            cells += [cell(None, NOT_RUN, "missing")] + [cell(None) for _ in names[1:]]
        else:
            cells += [cell(get(stats, n, "oa")) for n in names]
        rows.append(Row(cells, m.name))
    return Table("musical", ["model", *names], rows)


def max_key_share(profile: list[float]) -> float | None:
    """The largest share of notes inside one major or natural-minor scale (1 = one key)."""
    values = [number(v) for v in profile]
    if any(v is None for v in values):
        return None
    major = (0, 2, 4, 5, 7, 9, 11)
    minor = (0, 2, 3, 5, 7, 8, 10)
    return max(
        sum(values[(root + step) % 12] for step in scale)  # type: ignore[misc]
        for root in range(12)
        for scale in (major, minor)
    )


def pitch_class_table(models: list[ModelReport]) -> Table | None:
    """Pitch-class profile of each model's samples beside the real clips' profile.

    Comparing the `poph` row with the `biaxial` row shows what PopH's harmony loss
    changed; "max key share" is `max_key_share` of the profile.
    """
    rows = []
    for m in models:
        profile = get(m.metrics or {}, "samples", "pitch_class_profile")
        if not isinstance(profile, dict):
            continue
        for kind in ("generated", "real"):
            values = profile.get(kind)
            if not isinstance(values, list) or len(values) != 12:
                continue
            cells = [Cell(m.name, m.name), Cell(kind)]
            cells += [cell(number(v)) for v in values]
            cells.append(cell(max_key_share(values)))
            rows.append(Row(cells, m.name))
    if not rows:
        return None
    return Table("pitch-classes", ["model", "clips", *PITCH_CLASSES, "max key share"], rows)


# --- one section per model --------------------------------------------------------------


def term_names(objective: dict[str, Any] | None) -> dict[str, str]:
    """Captions of the forward terms that the objective names: ``nll`` and its baseline."""
    if objective is None:
        return {}
    unit = objective["unit"]
    names = {"nll": f"nll = {label(objective['name'])} ({objective['kind']}, {unit})"}
    baseline = objective.get("baseline")
    if isinstance(baseline, dict) and isinstance(baseline.get("key"), str):
        names[baseline["key"]] = (
            f"{baseline['key']} = baseline {label(str(baseline.get('name', '')))} "
            f"(likelihood, {unit})"
        )
    return names


def _reported(objective: dict[str, Any] | None) -> dict[str, str] | None:
    """The "Reported: ..." line: the objective's name, kind, unit and its baseline."""
    if objective is None:
        return None
    baseline = objective.get("baseline")
    against = (
        f" Baseline: {baseline.get('description', '')}."
        if isinstance(baseline, dict)
        else " No baseline of this kind."
    )
    return {
        "name": label(objective["name"]),
        "kind": objective["kind"],
        "unit": objective["unit"],
        "description": str(objective.get("description", "")),
        "against": against,
    }


def _shown(value: Any) -> bool:
    """Numbers and nulls ("—") are shown; nested mappings and text are not."""
    return value is None or number(value) is not None


def model_evaluation(model: ModelReport) -> dict[str, Any]:
    """The model's own numbers: objective line, test/train terms, musical metrics."""
    objective = collect.objective(model)
    names = term_names(objective)
    splits = []
    for split in ("test", "train"):
        terms = get(model.metrics, split)
        if isinstance(terms, dict) and terms:
            shown = [(names.get(k, k), fmt(v)) for k, v in terms.items() if _shown(v)]
            splits.append((split, shown))
    stats = collect.metric_stats(model)
    musical = [
        (
            name,
            f"{fmt(s.get('generated_mean'))} ± {fmt(s.get('generated_std'))}",
            f"{fmt(s.get('real_mean'))} ± {fmt(s.get('real_std'))}",
            fmt(s.get("oa")),
            fmt(s.get("kl")),
        )
        for name, s in ((n, stats[n]) for n in ordered_metrics(set(stats)))
    ]
    return {
        "reported": _reported(objective),
        "splits": splits,
        "musical": musical,
        "fake": fake_summary(model),
    }


def fake_summary(model: ModelReport) -> dict[str, str] | None:
    """The model section's find-the-fake line: each test's result or why it has none,
    by test name; None where evaluate has run neither."""
    shown = {}
    for key, name in FAKE_TEST_NAMES.items():
        found = collect.fake_test(model, key)
        if found is None:
            continue
        if "error" in found:
            shown[name] = f"not scored ({found['error']})"
        else:
            counts = f"{fmt(found.get('n_fake'))} vs {fmt(found.get('n_real'))} clips"
            text = interval_text(found["accuracy"], found["low"], found["high"])
            shown[name] = f"{text} ({counts}, {fmt(found.get('folds'))}-fold)"
    return shown or None


def training_line(model: ModelReport) -> dict[str, str] | None:
    """Steps, time and the selected checkpoint's validation loss (the model's own units)."""
    if model.summary is None:
        return None
    step = get(model.summary, "best_step")
    return {
        "steps": fmt(get(model.summary, "steps")),
        "time": duration(get(model.summary, "wall_time_s")),
        "best": fmt(get(model.summary, "best_val_loss")),
        "at": f" at step {fmt(step)}" if number(step) is not None else "",
    }


def curve_charts(model: ModelReport) -> list[str]:
    """One matplotlib chart (SVG) per metric, train and validation curves together."""
    return [
        curve_chart(metric, series, f"chart-{slug(model.name)}-{slug(metric)}")
        for metric, series in sorted(model.curves.items())
    ]


def clip_view(
    clip: Clip, page_dir: Path, caption: str, p_fake: float | None = None
) -> dict[str, str]:
    """A clip's piano roll, audio and caption (with the classifier's out-of-fold
    probability that it is generated, where known), linked relative to the page."""
    said = "" if p_fake is None else f" (classifier: {p_fake:.2f} fake)"
    return {
        "stem": clip.stem,
        "png": href(clip.png, page_dir) if clip.png is not None else "",
        "audio": href(clip.audio, page_dir) if clip.audio is not None else "",
        "caption": f"{caption}: {clip.stem}{said}",
    }


def model_section(model: ModelReport, page_dir: Path) -> dict[str, Any]:
    """Everything the model's own section shows."""
    groups = []
    for title, real, caption in (("Generated", False, model.name), ("Real", True, "real")):
        clips = [
            clip_view(c, page_dir, caption, collect.fake_probability(model, c.stem))
            for c in model.clips
            if c.real == real
        ]
        groups.append((title, clips))
    return {
        "name": model.name,
        "evaluation": model_evaluation(model) if model.metrics is not None else None,
        "training": training_line(model),
        "charts": curve_charts(model),
        "clips": groups if model.clips else None,
    }


# --- benchmarks and data --------------------------------------------------------------


def benchmark_links(pages: Sequence[str], page_dir: Path) -> list[dict[str, str]]:
    """Each benchmark's table page (`etude table --html`), to frame and link.

    The page is framed, not read: a benchmark's table is an output of its own pipeline
    (e.g. benchmarks/jsb/dvc.yaml), and a DVC dependency on it would make the main
    `dvc repro` reproduce the whole benchmark first. The committed page is shown as it is.
    """
    links = []
    for page in pages:
        path = Path(page)
        found = path.is_file()
        links.append(
            {
                "page": page,
                "folder": path.parent.as_posix(),
                "href": href(path, page_dir) if found else "",
            }
        )
    return links


def _store_rows(counts: Any) -> str:
    if not isinstance(counts, dict):
        return fmt(counts)
    keys = [k for k in ("train", "validation", "test") if k in counts]
    keys += sorted(k for k in counts if k not in keys)
    return ", ".join(f"{k}: {fmt(counts[k])}" for k in keys)


def stores_table(stores: dict[str, dict[str, Any]]) -> Table | None:
    """Pieces, rows per split and size of each store (reports/data/*.json)."""
    rows = []
    for name, info in stores.items():
        size = number(info.get("size_bytes"))
        cells = [
            Cell(name),
            cell(info.get("pieces")),
            Cell(_store_rows(info.get("rows"))),
            cell(size, "—" if size is None else f"{size / 1e6:.2f} MB"),
        ]
        rows.append(Row(cells))
    return Table("stores", ["store", "pieces", "rows", "size"], rows) if rows else None


def validation_table(
    suites: dict[str, dict[str, Any]],
) -> tuple[Table | None, list[tuple[str, str]]]:
    """Each store's validation result, and every failed check (store, JSON)."""
    rows, failures = [], []
    for name, info in suites.items():
        checks = info.get("checks") if isinstance(info.get("checks"), list) else []
        failed = [c for c in checks if isinstance(c, dict) and c.get("success") is False]
        ok = info.get("success") is True
        status = Cell("passed", cls="pass") if ok else Cell("FAILED", cls="fail")
        rows.append(Row([Cell(name), status, cell(len(checks)), cell(len(failed))]))
        for check in failed:
            failures.append((name, json.dumps(check, sort_keys=True, default=str)[:400]))
    head = ["store", "result", "checks", "failed"]
    return (Table("validation", head, rows) if rows else None), failures


# --- the page ---------------------------------------------------------------------------


def index_page(
    models: list[ModelReport],
    reports_dir: Path,
    page_dir: Path,
    *,
    fake_href: str,
    n_pairs: int,
    benchmarks: Sequence[str],
    problems: list[str],
) -> str:
    """The report page: tables across models, a section per model, benchmarks, data."""
    stores = collect.read_folder(reports_dir / "data", problems)
    suites = collect.read_folder(reports_dir / "validation", problems)
    validation, failures = validation_table(suites)
    unrecorded = [m.name for m in models if m.metrics is not None and not collect.objective(m)]
    return render(
        "index.html.j2",
        scripts=["report.js"],
        title="Etude report",
        fake_href=fake_href,
        n_pairs=n_pairs,
        summary=summary_table(models) if models else None,
        fake_errors=fake_errors(models),
        objective_tables=objective_tables(models),
        unrecorded=unrecorded,
        musical=musical_table(models),
        pitch_classes=pitch_class_table(models),
        sections=[model_section(m, page_dir) for m in models],
        benchmarks=benchmark_links(benchmarks, page_dir),
        stores=stores_table(stores),
        validation=validation,
        failures=failures,
        problems=problems,
    )
