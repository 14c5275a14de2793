"""The `generate` and `interpolate` tools (typer commands).

``etude generate <model>`` and ``etude interpolate vae`` need only the checkpoint:
the model is rebuilt from the config stored in it, sampled by the sampler its spec
names (`pipeline.modeling.sampling.sampler`), and samples are decoded through the
representation's ``decode`` with the representation params stored beside it.

Torch is imported inside the commands so that ``etude --help`` stays fast.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.core.config import MODELS
from pipeline.core.stage_utils import user_errors
from pipeline.modeling.base import GenerateError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "GenerateError",
    "encode_midi",
    "generate_command",
    "generate_files",
    "interpolate_command",
    "interpolate_files",
    "write_samples",
]

log = logging.getLogger(__name__)

NameArg = Annotated[str, typer.Argument(help="Model name (a key of params.yaml `models`).")]


# --------------------------------------------------------------------------------------
# Commands


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


def encode_midi(path: Path, representation: str, repr_params: Any) -> pd.DataFrame:
    """Parse a MIDI file and encode it as store rows of `representation` (one piece)."""
    from pipeline import representations
    from pipeline.midi import parse_midi

    parsed = parse_midi(path)
    piece_id = f"primer:{path.name}"
    notes = parsed.notes.assign(piece_id=piece_id)
    pedals = parsed.pedals.assign(piece_id=piece_id)
    return representations.get(representation).encode(notes, pedals, repr_params)


def write_samples(
    rows: list[pd.DataFrame], representation: str, repr_params: Any, out: Path, stem: str
) -> list[Path]:
    """Decode each sample's rows and write ``out/<stem>-<i>.mid``."""
    from pipeline.midi import notes_to_midi
    from pipeline.representations import decode_rows

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

    from pipeline.modeling.checkpoint import load_model, pick_device, repr_params_from_checkpoint
    from pipeline.modeling.sampling import SampleOptions, sampler

    path = Path(model_dir) / "model.pt"
    device = pick_device(device)
    model, spec, ckpt = load_model(path, name, device)
    generate = sampler(spec)
    repr_params = repr_params_from_checkpoint(ckpt, path)
    primer_rows = encode_midi(primer, spec.representation, repr_params) if primer else None
    generator = torch.Generator(device=device).manual_seed(seed)
    options = SampleOptions(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        primer=primer_rows,
        seconds=seconds,
        style=style,
    )
    samples = generate(model, n, options, generator=generator)
    return write_samples(samples, spec.representation, repr_params, Path(out), "sample")


def interpolate_files(
    name: str, model_dir: Path, a: Path, b: Path, out: Path, steps: int = 5, device: str = "cpu"
) -> list[Path]:
    """Encode the openings of MIDI files A and B, interpolate, write ``interp-<i>.mid``."""
    from pipeline.modeling.checkpoint import load_model, pick_device, repr_params_from_checkpoint
    from pipeline.modeling.sampling import interpolator

    path = Path(model_dir) / "model.pt"
    model, spec, ckpt = load_model(path, name, pick_device(device))
    interpolate = interpolator(spec)
    if interpolate is None:
        raise GenerateError(f"model '{name}' has no latent space to interpolate (try vae)")
    repr_params = repr_params_from_checkpoint(ckpt, path)
    rows_a = encode_midi(a, spec.representation, repr_params)
    rows_b = encode_midi(b, spec.representation, repr_params)
    samples = interpolate(model, rows_a, rows_b, steps)
    return write_samples(samples, spec.representation, repr_params, Path(out), "interp")
