"""The `train` stage (a typer command).

``etude train <model>`` reads the model's representation store, trains it with
`pipeline.modeling.fit.fit` and writes ``models/<model>/{model.pt,last.pt}`` plus
``reports/train/<model>/`` (dvclive curves and ``summary.json``). Its params are the
shared ``train`` section and ``models.<model>``; an optional ``train`` mapping inside
``models.<model>`` overrides keys of the shared section for that model only (models
differ a lot in step cost, e.g. ``models.rnn.train: {max_steps: 1500}``), and an
optional ``representation`` key (read by dvc.yaml's foreach) must name the store
the model reads.

Training loads base, fit, checkpoint, this module, the model's family ``__init__``
and the model's own module, never any sampling code (``etude generate`` and
``etude interpolate`` live in `pipeline.modeling.generate`).

Torch is imported inside the command so that ``etude --help`` stays fast.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.core.config import MODELS, PARAMS_FILE, PROCESSED, REPORTS
from pipeline.core.stage_utils import user_errors

if TYPE_CHECKING:
    from pipeline.modeling.base import ModelSpec, StoreData, TrainParams

log = logging.getLogger(__name__)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read.")]
NameArg = Annotated[str, typer.Argument(help="Model name (a key of params.yaml `models`).")]


# --------------------------------------------------------------------------------------
# Params


def load_train_params(name: str, params: Path = PARAMS_FILE) -> tuple[Any, TrainParams]:
    """The model's config (``models.<name>``) and its train params (``train`` + overrides).

    Raises:
        ParamsError: unknown model, or a bad key or value in either section.
    """
    from pipeline.core.params import ParamsError, from_mapping, get_section, read_params_file
    from pipeline.modeling import base

    spec = model_spec(name)
    data = read_params_file(params)
    shared = get_section(data, "train")
    section = get_section(data, f"models.{name}")
    if not isinstance(shared, Mapping):
        raise ParamsError("params.yaml: 'train' must be a mapping")
    if not isinstance(section, Mapping):
        raise ParamsError(f"params.yaml: 'models.{name}' must be a mapping")
    section = dict(section)
    declared = section.pop("representation", None)  # dvc.yaml's foreach reads it
    if declared is not None and declared != spec.representation:
        raise ParamsError(
            f"params.yaml: 'models.{name}.representation' is {declared!r}, but model "
            f"'{name}' reads the {spec.representation!r} store"
        )
    override = section.pop("train", None) or {}
    if not isinstance(override, Mapping):
        raise ParamsError(f"params.yaml: 'models.{name}.train' must be a mapping")
    allowed = sorted(f.name for f in fields(base.TrainParams))
    unknown = sorted(set(override) - set(allowed))
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown key 'models.{name}.train.{unknown[0]}'; allowed: {allowed}"
        )
    train = from_mapping({**shared, **override}, base.TrainParams, "train")
    config = from_mapping(section, spec.config_cls, f"models.{name}")
    return config, train


def model_spec(name: str) -> ModelSpec:
    """The registered model `name`, or a ParamsError naming the known ones."""
    from pipeline.modeling import base

    return base.model_spec(name)


def load_store_for(spec: ModelSpec, store: Path) -> StoreData:
    """Load the representation store that `spec` reads."""
    from pipeline.representations import load_store

    return load_store(store, spec.representation)


# --------------------------------------------------------------------------------------
# Commands


def train_command(
    name: NameArg,
    store: Annotated[
        Path | None, typer.Option(help="Representation store (default: data/processed/<repr>).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Model folder (default: models/<name>).")] = None,
    live: Annotated[
        Path | None, typer.Option(help="Curves folder (default: reports/train/<name>).")
    ] = None,
    fresh: Annotated[bool, typer.Option(help="Ignore OUT/last.pt and start over.")] = False,
    params: ParamsOpt = PARAMS_FILE,
) -> None:
    """Train model NAME; writes OUT/model.pt (best), OUT/last.pt (resumable), LIVE/."""
    from pipeline.modeling.checkpoint import CheckpointError
    from pipeline.modeling.fit import FitError
    from pipeline.representations import RepresentError

    with user_errors(FitError, CheckpointError, RepresentError):
        summary = run_training(name, store, out, live, params, resume=not fresh)
        typer.echo(
            f"{name}: {summary['steps']} steps, best validation loss "
            f"{summary['best_val_loss']}, {summary['wall_time_s']:.0f} s"
        )


def run_training(
    name: str,
    store: Path | None,
    out: Path | None,
    live: Path | None,
    params: Path = PARAMS_FILE,
    resume: bool = True,
) -> dict[str, Any]:
    """Load params and store, fit, write ``LIVE/summary.json``; returns the summary."""
    from pipeline.core.io import write_json
    from pipeline.modeling.fit import fit

    spec = model_spec(name)
    config, train = load_train_params(name, params)
    store = store or PROCESSED / spec.representation
    out = out or MODELS / name
    live = live or REPORTS / "train" / name
    data = load_store_for(spec, store)
    summary = fit(spec, config, train, data, out, live, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(live / "summary.json", summary)
    return summary
