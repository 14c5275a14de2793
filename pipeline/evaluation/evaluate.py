"""The `evaluate` stage: one trained model scored on the held-out test split.

For model NAME it writes ``reports/evaluate/<name>.json``::

    {"model":     {"name", "representation", "step", "n_parameters"},
     "objective": {"name", "kind", "unit", "description" (the spec's `Objective`),
                   "test", "train" (its forward "nll" term on each split),
                   "baseline": {"key", "name", "description", "test"} or null},
     "test":      {every scalar term of forward() averaged over the WHOLE test split
                   ("loss", "nll", ...), plus the spec's baseline ("baseline_nll", ...)},
     "train":   {the same terms over at most `train_batches` random train batches},
     "samples": {"n", "mean_notes", "mean_seconds", "seconds", "offset_seconds",
                 "n_real", "real_clips" ("<piece>@<start>s"), "primers" (when primed),
                 + the musical metrics of `pipeline.evaluation.metrics.compare_sets`,
                 "oa_interval" (bootstrap), and "fake": {"score", "control"} (find
                 the fake, `pipeline.evaluation.samples.find_the_fake`)}}

its `headline` in ``reports/metrics/<name>.json`` (the DVC metrics), and
``reports/samples/<name>/`` (replaced atomically): ``sample-<i>.mid`` generated
clips (what the model wrote: a primer is cut away) and ``real-<i>.mid`` test clips
of the same length from the same place in a piece, each with ``.ogg`` and
``.png`` beside it when `pipeline.evaluation.render` is available. Term means are
weighted by the model's ``n_units`` output when it gives one (per cell, note or
token), by batch size otherwise. Non-finite numbers are written as null.

Each model's reported number is what its spec's `Objective` says it is (a
likelihood, a bound on one, or a loss, in its unit); the headline publishes it as
``test`` beside its name, kind and unit (one schema for every model), and a
``baseline`` only where the spec names one of a comparable kind.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.core.config import MODELS, PARAMS_FILE, PROCESSED, REPORTS
from pipeline.core.stage_utils import user_errors
from pipeline.evaluation.params import EvaluateParams, SampleParams

if TYPE_CHECKING:
    from pipeline.modeling.base import ModelSpec, StoreData

log = logging.getLogger(__name__)


def evaluate(
    spec: ModelSpec,
    model: Any,
    store: StoreData,
    eval_params: EvaluateParams,
    samples_dir: Path | None = None,
    sample_params: SampleParams | None = None,
    own_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score `model` (built from `spec`) on `store`'s test and train splits and sample it.

    Args:
        spec: the registered model.
        model: the trained module (its ``config`` as stored in the checkpoint).
        store: the representation store.
        eval_params: the ``evaluate`` params section.
        samples_dir: when given, ``sample-<i>.mid`` and ``real-<i>.mid`` (and their
            renders) are written there.
        sample_params: the model's ``sample.<model>`` shared keys (None: defaults).
        own_settings: the rest of ``sample.<model>`` (the sampler's own settings).

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
    from pipeline.evaluation.samples import generate_clips, judge, write_clips

    sp = sample_params or SampleParams()
    generated, primed_by = generate_clips(spec, model, store, ep, sp, own_settings or {})
    samples, real = judge(generated, store, spec.representation, ep, sp.primer_seconds)
    if sp.primer_seconds:
        samples["primers"] = primed_by
    if samples_dir is not None:
        write_clips(samples_dir, generated, real, ep.seconds, ep.render)
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
    sample_params: SampleParams | None = None,
    own_settings: Mapping[str, Any] | None = None,
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
        result = evaluate(spec, model, data, eval_params, tmp, sample_params, own_settings)
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

HEADLINE_KEYS = (
    "objective", "kind", "unit", "test", "baseline", "fake", "oa_mean", *HEADLINE_MUSICAL
)  # fmt: skip
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
         "fake": 0.92,               # find the fake: a classifier's accuracy at telling
                                     # generated from real test clips (0.5: it cannot
                                     # tell; interval and control in the details)
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
        "fake": ((samples.get("fake") or {}).get("score") or {}).get("accuracy"),
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
    from pipeline.evaluation.params import load_sample_params
    from pipeline.midi import MidiError
    from pipeline.modeling.base import GenerateError, model_spec
    from pipeline.modeling.checkpoint import CheckpointError
    from pipeline.representations import RepresentError

    with user_errors(CheckpointError, GenerateError, MidiError, RepresentError):
        spec = model_spec(name)
        eval_params = load_params("evaluate", EvaluateParams, params)
        sample_params, own_settings = load_sample_params(name, params)
        result = evaluate_model_dir(
            name,
            store or PROCESSED / spec.representation,
            model_dir or MODELS / name,
            metrics or REPORTS / "metrics" / f"{name}.json",
            samples or REPORTS / "samples" / name,
            eval_params,
            device,
            details or REPORTS / "evaluate" / f"{name}.json",
            sample_params,
            own_settings,
        )
        objective = result["objective"]
        baseline = objective["baseline"]
        against = (
            f" (baseline {baseline['name']} {baseline['test']})" if baseline is not None else ""
        )
        typer.echo(
            f"{name}: test {objective['name']} {objective['test']} {objective['unit']} "
            f"({objective['kind']}){against}, {result['samples']['n']} samples"
            f"{fake_line(result['samples'])}"
        )


def fake_line(samples: dict[str, Any]) -> str:
    """The last line's find-the-fake part: ", find the fake 0.92 [0.84, 0.96] (...)"."""
    fake = samples.get("fake") or {}
    score, control = fake.get("score") or {}, fake.get("control") or {}
    if score.get("accuracy") is None:
        return ""
    text = f", find the fake {score['accuracy']:.2f} [{score['low']:.2f}, {score['high']:.2f}]"
    if control.get("accuracy") is not None:
        text += f" (real against real {control['accuracy']:.2f})"
    return text
