"""What the report reads: every file the other stages wrote, as plain data.

Nothing here formats or writes. Missing files come back as None (the page says
"not run yet"); unreadable ones are appended to `problems` (the page lists them), so
one broken file never stops the report. The files and their shapes:

* ``reports/evaluate/<model>.json`` (evaluate): {"objective": {"name", "kind", "unit",
  "description", "test", "train", "baseline": {"key", "name", "description", "test"}
  or null}, "test": {...}, "train": {...}, "samples": {"n", "oa_mean", "kl_mean",
  "metrics": {name: {...}}, "pitch_class_profile": {"generated", "real"},
  "oa_interval": {"oa_mean": {"low", "high"}, ...}, "fake": {"score", "control"}}}; find
  the fake's "score" and "control" are {"accuracy", "low", "high",
  "fake_probability_real", "fake_probability_fake", ...} or {"error"} (`fake_test`)
* ``reports/train/<model>/summary.json`` (train): {"steps", "best_val_loss",
  "best_step", "wall_time_s", "n_parameters"}, and DVCLive's curves under
  ``reports/train/<model>/plots/metrics/**/*.tsv`` (columns step, <metric>)
* ``reports/samples/<model>/{sample,real}-<i>.{ogg,png}`` (evaluate)
* ``reports/data/*.json`` and ``reports/validation/*.json`` (represent, validate)
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_CURVE_POINTS = 400  # per series, so that long runs keep the page small


@dataclass
class Clip:
    """One rendered clip: its audio (evaluate's WAV, or the report's Ogg copy) and image."""

    stem: str
    audio: Path | None
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


def read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
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


def read_folder(folder: Path, problems: list[str]) -> dict[str, dict[str, Any]]:
    """Every readable ``*.json`` object in `folder`, by file stem, in name order."""
    if not folder.is_dir():
        return {}
    found = {}
    for path in sorted(folder.glob("*.json")):
        data = read_json(path, problems)
        if data is not None:
            found[path.stem] = data
    return found


def natural_key(text: str) -> list[Any]:
    """Sort key that puts ``sample-2`` before ``sample-10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _read_tsv(path: Path, metric: str) -> tuple[list[float], list[float]]:
    """The finite (step, value) points of one DVCLive TSV."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
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
    return steps, values


def _thin(steps: list[float], values: list[float]) -> tuple[list[float], list[float]]:
    """At most `MAX_CURVE_POINTS` points, evenly spaced, first and last kept."""
    if len(steps) <= MAX_CURVE_POINTS:
        return steps, values
    last = len(steps) - 1
    keep = sorted({round(k * last / (MAX_CURVE_POINTS - 1)) for k in range(MAX_CURVE_POINTS)})
    return [steps[k] for k in keep], [values[k] for k in keep]


def read_curves(plots_dir: Path, problems: list[str]) -> dict[str, list[Series]]:
    """DVCLive TSVs under `plots_dir`, grouped by metric name (``train/loss`` -> ``loss``)."""
    groups: dict[str, list[Series]] = {}
    if not plots_dir.is_dir():
        return groups
    for path in sorted(plots_dir.rglob("*.tsv"), key=lambda p: natural_key(str(p))):
        try:
            steps, values = _read_tsv(path, path.stem)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            problems.append(f"{path}: unreadable TSV ({exc})")
            continue
        if not steps:
            continue
        name = path.relative_to(plots_dir).with_suffix("").as_posix()
        groups.setdefault(path.stem, []).append(Series(name, *_thin(steps, values)))
    return groups


def read_clips(samples_dir: Path) -> list[Clip]:
    """The clips in a model's samples folder, by stem (natural order)."""
    if not samples_dir.is_dir():
        return []
    stems: dict[str, Clip] = {}
    for path in samples_dir.iterdir():
        if path.suffix.lower() not in (".ogg", ".png") or not path.is_file():
            continue
        clip = stems.setdefault(path.stem, Clip(path.stem, None, None))
        if path.suffix.lower() == ".ogg":
            clip.audio = path
        else:
            clip.png = path
    return [stems[s] for s in sorted(stems, key=natural_key)]


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
                metrics=read_json(reports_dir / "evaluate" / f"{name}.json", problems),
                summary=read_json(train / "summary.json", problems),
                curves=read_curves(train / "plots" / "metrics", problems),
                clips=read_clips(reports_dir / "samples" / name),
            )
        )
    return result


# --- reading the shapes the stages wrote ---------------------------------------------


def get(data: dict[str, Any] | None, *keys: str) -> Any:
    """``data[k0][k1]...``, or None where a level is missing or not a mapping."""
    node: Any = data
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def objective(model: ModelReport) -> dict[str, Any] | None:
    """The model's objective as evaluate recorded it (name, kind, unit, values)."""
    found = get(model.metrics, "objective")
    if not isinstance(found, dict):
        return None
    if not all(isinstance(found.get(k), str) for k in ("name", "kind", "unit")):
        return None
    return found


def metric_stats(model: ModelReport) -> dict[str, dict[str, Any]]:
    """Per musical metric, its generated/real statistics, OA and KL."""
    samples = get(model.metrics, "samples")
    if not isinstance(samples, dict):
        return {}
    table = samples.get("metrics")
    if isinstance(table, dict):
        return {k: v for k, v in table.items() if isinstance(v, dict)}
    return {k: v for k, v in samples.items() if isinstance(v, dict) and "oa" in v}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def n_samples(model: ModelReport) -> Any:
    """How many clips the model generated: evaluate's count, else the clips found."""
    samples = get(model.metrics, "samples")
    if isinstance(samples, dict):
        for key in ("n", "n_generated"):
            if _is_number(samples.get(key)):
                return samples[key]
    generated = [c for c in model.clips if not c.real]
    return len(generated) if generated else None


def n_parameters(model: ModelReport) -> Any:
    """Parameter count: the training summary's, else the one evaluate recorded."""
    value = get(model.summary, "n_parameters")
    return value if value is not None else get(model.metrics, "model", "n_parameters")


# --- find the fake and the intervals (evaluate's ``samples``) -------------------------

FAKE_TESTS = ("score", "control")  # generated vs real; real (train split) vs real (test)
_CLIP_STEM = re.compile(r"(sample|real)-(\d+)")


def oa_mean_interval(model: ModelReport) -> tuple[float, float] | None:
    """The bootstrap interval (low, high) of the mean OA; None if evaluate wrote none."""
    found = get(model.metrics, "samples", "oa_interval", "oa_mean")
    low, high = get(found, "low"), get(found, "high")
    return (float(low), float(high)) if _is_number(low) and _is_number(high) else None


def fake_test(model: ModelReport, key: str = "score") -> dict[str, Any] | None:
    """Find the fake's `key` ("score": generated against real test clips; "control":
    train-split real clips against them): evaluate's mapping, with a numeric accuracy,
    low and high, or an "error" line; None where evaluate has not run it."""
    found = get(model.metrics, "samples", "fake", key)
    if not isinstance(found, dict):
        return None
    if all(_is_number(found.get(k)) for k in ("accuracy", "low", "high")):
        return found
    error = found.get("error")
    return {"error": str(error) if error else "no accuracy recorded"}


def fake_probability(model: ModelReport, stem: str) -> float | None:
    """The classifier's out-of-fold probability that clip `stem` (``sample-<i>`` or
    ``real-<i>``: index i of evaluate's lists) is generated; None if unknown."""
    match = _CLIP_STEM.fullmatch(stem)
    score = fake_test(model, "score")
    if match is None or score is None:
        return None
    side = "fake_probability_real" if match[1] == "real" else "fake_probability_fake"
    values, i = score.get(side), int(match[2])
    if not isinstance(values, list) or i >= len(values) or not _is_number(values[i]):
        return None
    return float(values[i])
