"""The `train` stage and the `generate` / `interpolate` tools (typer commands).

``etude train <model>`` reads the model's representation store, trains it with
`pipeline.modeling.fit.fit` and writes ``models/<model>/{model.pt,last.pt}`` plus
``reports/train/<model>/`` (dvclive curves and ``summary.json``). Its params are the
shared ``train`` section and ``models.<model>``; an optional ``train`` mapping inside
``models.<model>`` overrides keys of the shared section for that model only (models
differ a lot in step cost, e.g. ``models.rnn.train: {max_steps: 1500}``), and an
optional ``representation`` key (read by dvc.yaml's foreach) must name the store
the model reads.

``etude generate <model>`` and ``etude interpolate vae`` need only the checkpoint:
the model is rebuilt from the config stored in it, and samples are decoded through
the representation's ``decode`` with the representation params stored beside it.

Torch is imported inside the commands so that ``etude --help`` stays fast.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.config import MODELS, PARAMS_FILE, PROCESSED, REPORTS
from pipeline.stage_utils import user_errors

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.modeling.base import ModelSpec, StoreData, TrainParams

log = logging.getLogger(__name__)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read.")]
NameArg = Annotated[str, typer.Argument(help="Model name (a key of params.yaml `models`).")]


class GenerateError(RuntimeError):
    """A generation request that cannot be served (e.g. no interpolation in this model)."""


# --------------------------------------------------------------------------------------
# Params


def load_train_params(name: str, params: Path = PARAMS_FILE) -> tuple[Any, TrainParams]:
    """The model's config (``models.<name>``) and its train params (``train`` + overrides).

    Raises:
        ParamsError: unknown model, or a bad key or value in either section.
    """
    from pipeline.modeling import base
    from pipeline.params import ParamsError, from_mapping, get_section, read_params_file

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
    from pipeline.params import ParamsError

    try:
        return base.get(name)
    except KeyError:
        raise ParamsError(f"unknown model {name!r}; known: {base.names()}") from None


def load_store_for(spec: ModelSpec, store: Path) -> StoreData:
    """Load the representation store that `spec` reads."""
    from pipeline.representations.stage import load_store

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
    from pipeline.representations.stage import RepresentError

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
    from pipeline.io import write_json
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


def generate_command(
    name: NameArg,
    out: Annotated[Path, typer.Option(help="Folder for sample-<i>.mid.")],
    model_dir: Annotated[
        Path | None, typer.Option(help="Folder of model.pt (default: models/<name>).")
    ] = None,
    n: Annotated[int, typer.Option(min=1, help="Number of samples.")] = 4,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    top_k: Annotated[int, typer.Option(min=0, help="Top-k filter (0 = off).")] = 0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Top-p filter.")] = 1.0,
    seconds: Annotated[float, typer.Option(min=0.0, help="Length to generate.")] = 30.0,
    primer: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="MIDI file to continue.")
    ] = None,
    style: Annotated[str | None, typer.Option(help="Style label (conditioned models).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
) -> None:
    """Sample N pieces from a trained model NAME and write them as MIDI files."""
    from pipeline.midi import MidiError
    from pipeline.modeling.checkpoint import CheckpointError

    with user_errors(CheckpointError, MidiError, GenerateError, ValueError, OSError):
        paths = generate_files(
            name,
            model_dir or MODELS / name,
            out,
            n=n,
            seed=seed,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seconds=seconds,
            primer=primer,
            style=style,
            device=device,
        )
        typer.echo(f"{len(paths)} samples -> {out}")


def interpolate_command(
    name: NameArg,
    a: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="First MIDI file.")],
    b: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Second MIDI file.")],
    out: Annotated[Path, typer.Option(help="Folder for interp-<i>.mid.")],
    steps: Annotated[int, typer.Option(min=2, help="Points from A to B, ends included.")] = 5,
    model_dir: Annotated[
        Path | None, typer.Option(help="Folder of model.pt (default: models/<name>).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
) -> None:
    """Walk the latent space of model NAME (vae) from the opening of A to that of B."""
    from pipeline.midi import MidiError
    from pipeline.modeling.checkpoint import CheckpointError

    with user_errors(CheckpointError, MidiError, GenerateError, ValueError, OSError):
        paths = interpolate_files(name, model_dir or MODELS / name, a, b, out, steps, device)
        typer.echo(f"{len(paths)} interpolation steps -> {out}")


# --------------------------------------------------------------------------------------
# Functions behind the commands


def pick_device(device: str) -> str:
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise GenerateError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise GenerateError("--device cuda: torch sees no CUDA device")
    return device


def encode_midi(path: Path, representation: str, repr_params: Any) -> pd.DataFrame:
    """Parse a MIDI file and encode it as store rows of `representation` (one piece)."""
    from pipeline import representations
    from pipeline.midi import parse_midi

    parsed = parse_midi(path)
    piece_id = f"primer:{path.name}"
    notes = parsed.notes.assign(piece_id=piece_id)
    pedals = parsed.pedals.assign(piece_id=piece_id)
    return representations.get(representation).encode(notes, pedals, repr_params)


def decode_rows(representation: str, rows: pd.DataFrame, repr_params: Any) -> pd.DataFrame:
    """One sample's store rows -> notes; no rows (a silent sample) -> no notes."""
    import pandas as pd

    from pipeline import representations

    if len(rows) == 0:
        return pd.DataFrame(
            {
                "pitch": pd.Series(dtype="int16"),
                "velocity": pd.Series(dtype="int16"),
                "start": pd.Series(dtype="float64"),
                "end": pd.Series(dtype="float64"),
            }
        )
    return representations.get(representation).decode(rows, repr_params)


def write_samples(
    rows: list[pd.DataFrame], representation: str, repr_params: Any, out: Path, stem: str
) -> list[Path]:
    """Decode each sample's rows and write ``out/<stem>-<i>.mid``."""
    from pipeline.midi import notes_to_midi

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sample in enumerate(rows):
        notes = decode_rows(representation, sample, repr_params)
        if len(notes) == 0:
            log.warning("%s-%d: the model generated no notes", stem, i)
        paths.append(notes_to_midi(notes, out / f"{stem}-{i}.mid"))
    return paths


def generate_files(
    name: str,
    model_dir: Path,
    out: Path,
    *,
    n: int = 4,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seconds: float = 30.0,
    primer: Path | None = None,
    style: str | None = None,
    device: str = "cpu",
) -> list[Path]:
    """Rebuild model NAME from ``model_dir/model.pt``, sample and write MIDI files."""
    import torch

    from pipeline.modeling.checkpoint import load_model, repr_params_from_checkpoint

    path = Path(model_dir) / "model.pt"
    device = pick_device(device)
    model, spec, ckpt = load_model(path, name, device)
    repr_params = repr_params_from_checkpoint(ckpt, path)
    primer_rows = encode_midi(primer, spec.representation, repr_params) if primer else None
    generator = torch.Generator(device=device).manual_seed(seed)
    samples = model.generate(
        n,
        generator=generator,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        primer=primer_rows,
        seconds=seconds,
        style=style,
    )
    return write_samples(samples, spec.representation, repr_params, Path(out), "sample")


def interpolate_files(
    name: str, model_dir: Path, a: Path, b: Path, out: Path, steps: int = 5, device: str = "cpu"
) -> list[Path]:
    """Encode the openings of MIDI files A and B, interpolate, write ``interp-<i>.mid``."""
    from pipeline.modeling.checkpoint import load_model, repr_params_from_checkpoint

    path = Path(model_dir) / "model.pt"
    model, spec, ckpt = load_model(path, name, pick_device(device))
    if not callable(getattr(model, "interpolate", None)):
        raise GenerateError(f"model '{name}' has no latent space to interpolate (try vae)")
    repr_params = repr_params_from_checkpoint(ckpt, path)
    rows_a = encode_midi(a, spec.representation, repr_params)
    rows_b = encode_midi(b, spec.representation, repr_params)
    samples = model.interpolate(rows_a, rows_b, steps)
    return write_samples(samples, spec.representation, repr_params, Path(out), "interp")
