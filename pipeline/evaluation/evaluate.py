"""The `evaluate` stage: one trained model scored on the held-out test split.

For model NAME it writes ``reports/evaluate/<name>.json``::

    {"model":     {"name", "representation", "step", "n_parameters"},
     "objective": {"name", "kind", "unit", "description" (the spec's `Objective`),
                   "test", "train" (its forward "nll" term on each split),
                   "baseline": {"key", "name", "description", "test"} or null},
     "test":      {every scalar term of forward() averaged over the WHOLE test split
                   ("loss", "nll", ...), plus the spec's baseline ("baseline_nll", ...)},
     "train":   {the same terms over at most `train_batches` random train batches},
     "samples": {"n", "mean_notes", "mean_seconds", "n_real", "real_pieces",
                 + the musical metrics of `pipeline.evaluation.metrics.compare_sets`}}

its `headline` in ``reports/metrics/<name>.json`` (the DVC metrics), and
``reports/samples/<name>/`` (replaced atomically): ``sample-<i>.mid`` generated
clips and ``real-<i>.mid`` test clips cut to the same length, each with ``.ogg`` and
``.png`` beside it when `pipeline.evaluation.render` is available. Term means are
weighted by the model's ``n_units`` output when it gives one (per cell, note or
token), by batch size otherwise. Non-finite numbers are written as null.

Each model's reported number is what its spec's `Objective` says it is (a
likelihood, a bound on one, or a loss, in its unit); the headline publishes it as
``test`` beside its name, kind and unit (one schema for every model), and a
``baseline`` only where the spec names one of a comparable kind.
"""

from __future__ import annotations

import importlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.core.config import MODELS, PARAMS_FILE, PROCESSED, REPORTS
from pipeline.core.params import require
from pipeline.core.stage_utils import user_errors

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.modeling.base import ModelSpec, StoreData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateParams:
    """The `evaluate` section of params.yaml (shared by every model)."""

    n_samples: int  # generated clips per model
    seconds: float  # length of generated and real clips
    temperature: float
    top_k: int  # 0 = off
    top_p: float  # 1.0 = off
    seed: int
    n_real: int  # real test pieces (cut to `seconds`) to compare and render
    batch_size: int
    train_batches: int  # cap on train batches scored (the test split is scored whole)
    render: bool  # write .ogg/.png beside each clip when the renderer exists
    num_threads: int  # torch CPU threads; 0 = torch's default

    def validate(self) -> None:
        require(self.n_samples >= 0, "n_samples must be >= 0")
        require(self.seconds > 0, "seconds must be > 0")
        require(self.top_k >= 0, "top_k must be >= 0")
        require(0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]")
        require(self.n_real >= 0, "n_real must be >= 0")
        require(self.batch_size > 0, "batch_size must be > 0")
        require(self.train_batches >= 0, "train_batches must be >= 0")
        require(self.num_threads >= 0, "num_threads must be >= 0")


def evaluate(
    spec: ModelSpec,
    model: Any,
    store: StoreData,
    eval_params: EvaluateParams,
    samples_dir: Path | None = None,
) -> dict[str, Any]:
    """Score `model` (built from `spec`) on `store`'s test and train splits and sample it.

    Args:
        spec: the registered model.
        model: the trained module (its ``config`` as stored in the checkpoint).
        store: the representation store.
        eval_params: the ``evaluate`` params section.
        samples_dir: when given, ``sample-<i>.mid`` and ``real-<i>.mid`` (and their
            renders) are written there.

    Returns:
        {"objective": {...}, "test": {...}, "train": {...}, "samples": {...}} (see the
        module docstring).
    """
    import torch
    from torch.utils.data import DataLoader

    from pipeline.modeling.scoring import evaluate_loader

    ep = eval_params
    config = model.config
    device = next(model.parameters()).device
    torch.manual_seed(ep.seed)  # datasets with random crops seed from torch.initial_seed()
    test_data = spec.make_dataset(store, config, "test")
    train_data = spec.make_dataset(store, config, "train")
    test_loader = DataLoader(test_data, batch_size=ep.batch_size, shuffle=False)
    train_loader = DataLoader(
        train_data,
        batch_size=ep.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(ep.seed),
    )
    test = evaluate_loader(model, test_loader, None, device, ep.seed) if len(test_data) else {}
    if not test:
        log.warning("%s: empty test split; test terms are missing", spec.name)
    test.update(spec.baseline(store, config))
    train = (
        evaluate_loader(model, train_loader, ep.train_batches, device, ep.seed)
        if len(train_data) and ep.train_batches
        else {}
    )
    samples = sample_and_compare(spec, model, store, ep, samples_dir)
    return _finite(
        {
            "objective": objective_numbers(spec, test, train),
            "test": test,
            "train": train,
            "samples": samples,
        }
    )


def objective_numbers(
    spec: ModelSpec, test: dict[str, float], train: dict[str, float]
) -> dict[str, Any]:
    """The spec's objective with its test and train values and its baseline's test value.

    The value is the forward ``"nll"`` term; the baseline is the spec's `Baseline`
    key of the test terms, or null when the spec has no baseline of a kind the
    objective may be compared with.
    """
    objective = spec.objective
    described = objective.describe()
    baseline = described.pop("baseline")
    if baseline is not None:
        baseline["test"] = test.get(baseline["key"])
    return {**described, "test": test.get("nll"), "train": train.get("nll"), "baseline": baseline}


def sample_and_compare(
    spec: ModelSpec,
    model: Any,
    store: StoreData,
    ep: EvaluateParams,
    samples_dir: Path | None,
) -> dict[str, Any]:
    """Generate clips, decode them, compare them with real test clips; optionally write."""
    import torch

    from pipeline.midi import notes_to_midi
    from pipeline.modeling.sampling import SampleOptions, sampler
    from pipeline.representations import decode_rows

    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(ep.seed)
    options = SampleOptions(
        temperature=ep.temperature, top_k=ep.top_k, top_p=ep.top_p, seconds=ep.seconds
    )
    rows = sampler(spec)(model, ep.n_samples, options, generator) if ep.n_samples else []
    generated = [decode_rows(spec.representation, r, store.params) for r in rows]
    real_ids = real_piece_ids(store, ep.n_real, ep.seed)
    test_rows = store.rows.get("test")
    real = [
        cut(
            decode_rows(spec.representation, test_rows[test_rows["piece_id"] == pid], store.params),
            ep.seconds,
        )
        for pid in real_ids
    ]
    summary: dict[str, Any] = {
        "n": len(generated),
        "mean_notes": _mean([len(n) for n in generated]),
        "mean_seconds": _mean([_duration(n) for n in generated]),
        "n_real": len(real),
        "real_pieces": real_ids,
    }
    metrics = _optional("pipeline.evaluation.metrics")
    if metrics is not None and generated and real:
        summary.update(metrics.compare_sets(generated, real))
        summary["pitch_class_profile"] = {
            "generated": metrics.pitch_class_profile(generated),
            "real": metrics.pitch_class_profile(real),
        }
    elif metrics is None:
        log.info("pipeline.evaluation.metrics not available: no musical metrics")
    if samples_dir is not None:
        samples_dir.mkdir(parents=True, exist_ok=True)
        render = _optional("pipeline.evaluation.render") if ep.render else None
        clips = [(f"sample-{i}", n) for i, n in enumerate(generated)]
        clips += [(f"real-{i}", n) for i, n in enumerate(real)]
        for stem, notes in clips:
            notes_to_midi(notes, samples_dir / f"{stem}.mid")
            if render is not None:
                render.render_clip(notes, samples_dir / stem, seconds=ep.seconds)
    return summary


def real_piece_ids(store: StoreData, n: int, seed: int) -> list[str]:
    """`n` test piece ids drawn reproducibly (sorted ids, numpy generator with `seed`)."""
    import numpy as np

    rows = store.rows.get("test")
    if rows is None or rows.empty or n == 0:
        return []
    ids = sorted(str(p) for p in rows["piece_id"].unique())
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(ids), size=min(n, len(ids)), replace=False)
    return [ids[i] for i in sorted(chosen)]


def cut(notes: pd.DataFrame, seconds: float) -> pd.DataFrame:
    """Notes starting before `seconds`, their ends clipped to it (a real clip)."""
    if notes.empty:
        return notes
    kept = notes[notes["start"] < seconds].copy()
    kept["end"] = kept["end"].clip(upper=seconds)
    return kept[kept["end"] > kept["start"]].reset_index(drop=True)


def _duration(notes: pd.DataFrame) -> float:
    return float(notes["end"].max()) if len(notes) else 0.0


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def _optional(module: str) -> Any:
    """Import a sibling module that may not be written yet (None if absent)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return None


def _finite(value: Any) -> Any:
    """Replace NaN/inf floats by None, recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            return value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate_model_dir(
    name: str,
    store: Path,
    model_dir: Path,
    metrics_path: Path,
    samples: Path,
    eval_params: EvaluateParams,
    device: str = "auto",
    details_path: Path | None = None,
) -> dict[str, Any]:
    """Load ``model_dir/model.pt`` and the store, evaluate, write metrics and samples.

    ``details_path`` gets the whole result (every term and musical metric, which the
    report reads); ``metrics_path`` only its `headline` (the DVC metrics, in git).
    """
    import torch

    from pipeline.core.io import atomic_dir, write_json
    from pipeline.modeling.checkpoint import load_model, pick_device
    from pipeline.representations import load_store

    if eval_params.num_threads > 0:
        torch.set_num_threads(eval_params.num_threads)
    path = Path(model_dir) / "model.pt"
    model, spec, ckpt = load_model(path, name, pick_device(device))
    data = load_store(store, spec.representation)
    with atomic_dir(samples) as tmp:
        result = evaluate(spec, model, data, eval_params, samples_dir=tmp)
    result = {
        "model": {
            "name": spec.name,
            "representation": spec.representation,
            "step": int(ckpt.get("step", 0)),
            "n_parameters": int(sum(p.numel() for p in model.parameters())),
        },
        **result,
    }  # key order: model, objective, test, train, samples
    if details_path is not None:
        write_json(details_path, result)
    write_json(metrics_path, headline(result))
    return result


HEADLINE_MUSICAL = {
    "polyphony": "polyphony",
    "scale": "scale_consistency",
    "pce": "pitch_class_entropy",
}
"""Headline key -> musical metric of `pipeline.evaluation.metrics` whose generated-clip
mean goes to the DVC metrics (short keys keep `dvc metrics show` within 160 columns)."""

HEADLINE_KEYS = ("objective", "kind", "unit", "test", "baseline", "oa_mean", *HEADLINE_MUSICAL)
"""Every model's headline file has exactly these keys (null where a number is missing)."""


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a person compares across models and runs: one flat schema.

    Every model's ``reports/metrics/<model>.json`` has the same keys (`HEADLINE_KEYS`),
    so `dvc metrics show` prints one row per model with one column per key::

        {"objective": "pitch_nll",   # the spec's Objective.name (what "test" is)
         "kind": "likelihood",       # Objective.kind: likelihood, bound or loss
         "unit": "nats/note",        # Objective.unit, " per " written "/"
         "test": 3.21,               # the objective on the whole test split
         "baseline": 3.54,           # the spec's baseline on the test split, or null
         "oa_mean": 0.37,            # mean overlapping area of generated vs real
                                     # musical-metric distributions (higher: closer;
                                     # Yang & Lerch 2018)
         "polyphony": 3.14, "scale": 0.82, "pce": 3.18}
                                     # generated-clip means of polyphony,
                                     # scale_consistency, pitch_class_entropy

    "test" numbers rank only within one kind and unit (the report's tables do that);
    "baseline" is null when the spec names no baseline of a comparable kind (which
    baseline it is, and the KL divergences, are in ``reports/evaluate/<model>.json``).
    Non-finite numbers are null (DVC shows ``-``, and drops a column null in every
    row). Keys and strings are short: the six rows are 139 characters wide, within a
    160-column terminal (tests/test_dag.py checks). In `dvc exp show` (one row per
    run, every file's keys as columns) a key needs its file:
    ``--sort-by reports/metrics/rnn.json:test``.
    The find-the-fake score (a classifier's accuracy at telling generated from real
    test clips, 0.5 = indistinguishable) will join as one more key, the same for every
    model, once it is measured.
    """
    objective = result.get("objective") or {}
    samples = result.get("samples") or {}
    per_metric = samples.get("metrics") or {}
    baseline = objective.get("baseline")
    unit = objective.get("unit")
    numbers: dict[str, Any] = {
        "objective": objective.get("name"),
        "kind": objective.get("kind"),
        "unit": unit.replace(" per ", "/") if isinstance(unit, str) else None,
        "test": objective.get("test"),
        "baseline": baseline.get("test") if isinstance(baseline, dict) else None,
        "oa_mean": samples.get("oa_mean"),
    }
    for key, name in HEADLINE_MUSICAL.items():
        numbers[key] = (per_metric.get(name) or {}).get("generated_mean")
    return _finite(numbers)


def evaluate_command(
    name: Annotated[str, typer.Argument(help="Model name (a key of params.yaml `models`).")],
    store: Annotated[
        Path | None, typer.Option(help="Representation store (default: data/processed/<repr>).")
    ] = None,
    model_dir: Annotated[
        Path | None, typer.Option(help="Folder of model.pt (default: models/<name>).")
    ] = None,
    metrics: Annotated[
        Path | None,
        typer.Option(help="Headline metrics JSON (default: reports/metrics/<name>.json)."),
    ] = None,
    details: Annotated[
        Path | None,
        typer.Option(help="Full results JSON (default: reports/evaluate/<name>.json)."),
    ] = None,
    samples: Annotated[
        Path | None, typer.Option(help="Samples folder (default: reports/samples/<name>).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    params: Annotated[Path, typer.Option("--params", help="params.yaml to read.")] = PARAMS_FILE,
) -> None:
    """Score trained model NAME on the test split; write metrics JSON and sample clips."""
    from pipeline.core.params import load_params
    from pipeline.midi import MidiError
    from pipeline.modeling.base import GenerateError, model_spec
    from pipeline.modeling.checkpoint import CheckpointError
    from pipeline.representations import RepresentError

    with user_errors(CheckpointError, GenerateError, MidiError, RepresentError):
        spec = model_spec(name)
        eval_params = load_params("evaluate", EvaluateParams, params)
        result = evaluate_model_dir(
            name,
            store or PROCESSED / spec.representation,
            model_dir or MODELS / name,
            metrics or REPORTS / "metrics" / f"{name}.json",
            samples or REPORTS / "samples" / name,
            eval_params,
            device,
            details or REPORTS / "evaluate" / f"{name}.json",
        )
        objective = result["objective"]
        baseline = objective["baseline"]
        against = (
            f" (baseline {baseline['name']} {baseline['test']})" if baseline is not None else ""
        )
        typer.echo(
            f"{name}: test {objective['name']} {objective['test']} {objective['unit']} "
            f"({objective['kind']}){against}, {result['samples']['n']} samples"
        )
