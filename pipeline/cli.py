"""`etude`: one command per pipeline stage, plus tools to use outside DVC.

Each command lives beside its code (e.g. `pipeline.ingest`); this module only
collects them. Heavy libraries are imported inside the commands, so `etude --help`
stays fast.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

from pipeline.config import PARAMS_FILE
from pipeline.stage_utils import setup_logging, user_errors

app = typer.Typer(
    name="etude",
    help="Etude: reproducible symbolic music generation. Stages run under `dvc repro`; "
    "each is also a command here.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read.")]


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    setup_logging(verbose)


@app.command()
def fetch(
    source: Annotated[str, typer.Argument(help="Source name: corpus, maestro or lakh.")],
    out: Annotated[Path, typer.Option(help="Folder to fill (replaced atomically).")],
    params: ParamsOpt = PARAMS_FILE,
) -> None:
    """Download (or export) one source's MIDI files into OUT, with manifest.csv."""
    from pipeline import sources
    from pipeline.download import DownloadError
    from pipeline.params import ParamsError, load_params

    with user_errors(DownloadError, OSError):
        if source not in sources.names():
            raise ParamsError(
                f"params.yaml: 'sources' has unknown entry {source!r}; allowed: {sources.names()}"
            )
        spec = sources.get(source)
        spec.fetch(load_params(source, spec.params_cls, params), out)


@app.command()
def ingest(
    in_dir: Annotated[
        Path, typer.Argument(help="Folder of .mid/.midi files (searched recursively).")
    ],
    out: Annotated[Path, typer.Option(help="Output folder for the notes store.")],
    source: Annotated[str, typer.Option(help="Source name recorded in the store.")] = "",
    shard: Annotated[str, typer.Option(help="Only shard I of N, as I/N (stable hash).")] = "",
    params: ParamsOpt = PARAMS_FILE,
) -> None:
    """Parse MIDI files to OUT/{notes,pieces,rejects,pedals}.parquet."""
    from pipeline.ingest import DEFAULT_PARAMS, IngestError, IngestParams, ingest_dir
    from pipeline.params import load_params

    with user_errors(IngestError):
        settings = (
            load_params("ingest", IngestParams, params) if params.exists() else DEFAULT_PARAMS
        )
        summary = ingest_dir(
            in_dir, out, source=source or in_dir.name, params=settings, shard=_parse_shard(shard)
        )
        typer.echo(
            f"{summary.pieces} pieces, {summary.rejects} rejected, {summary.notes} notes -> {out}"
        )


def _parse_shard(text: str) -> tuple[int, int] | None:
    from pipeline.params import ParamsError

    if not text:
        return None
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ParamsError(f"--shard must look like I/N, got {text!r}") from None
    if not 0 <= index < count:
        raise ParamsError(f"--shard {text}: need 0 <= I < N")
    return index, count


# Commands defined beside their code: (command name, module, function).
_COMMANDS = (
    ("represent", "pipeline.representations.stage", "represent_command"),
    ("decode", "pipeline.representations.stage", "decode_command"),
    ("validate", "pipeline.validation.stage", "validate_command"),
    ("train", "pipeline.modeling.train", "train_command"),
    ("generate", "pipeline.modeling.train", "generate_command"),
    ("interpolate", "pipeline.modeling.train", "interpolate_command"),
    ("evaluate", "pipeline.evaluation.evaluate", "evaluate_command"),
    ("report", "pipeline.evaluation.report", "report_command"),
)

for _name, _module, _function in _COMMANDS:
    try:
        _fn = getattr(importlib.import_module(_module), _function)
    except (ModuleNotFoundError, AttributeError):
        continue
    app.command(_name)(_fn)
