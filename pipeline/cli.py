"""`etude`: one command per pipeline stage, plus tools to use outside DVC.

Each command lives beside its code; this module holds only the table of them and
imports a command's module when that command runs. A stage therefore loads its own
code and nothing else, which is what its deps in dvc.yaml list (a test traces it).
A command whose module fails to import says so, naming the module and the error,
instead of disappearing from the CLI.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from pipeline.core.stage_utils import setup_logging

# command -> (module, function); the module is imported only when the command runs
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch": ("pipeline.sources", "fetch_command"),
    "ingest": ("pipeline.ingest", "ingest_command"),
    "represent": ("pipeline.representations.stage", "represent_command"),
    "decode": ("pipeline.representations.stage", "decode_command"),
    "validate": ("pipeline.validation.stage", "validate_command"),
    "train": ("pipeline.modeling.train", "train_command"),
    "generate": ("pipeline.modeling.generate", "generate_command"),
    "interpolate": ("pipeline.modeling.generate", "interpolate_command"),
    "evaluate": ("pipeline.evaluation.evaluate", "evaluate_command"),
    "frames": ("pipeline.evaluation.frames", "frames_command"),
    "report": ("pipeline.report.stage", "report_command"),
    "table": ("pipeline.report.table", "table_command"),
    "tables": ("pipeline.report.tables", "tables_command"),
    "quality": ("pipeline.report.quality", "quality_command"),
}


class LazyGroup(TyperGroup):
    """A typer group whose commands are built from `COMMANDS` on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.commands[cmd_name] = load_command(cmd_name)
        return self.commands.get(cmd_name)


def load_command(name: str) -> Any:
    """The click command `name`, or one that reports why its module cannot load."""
    module, function = COMMANDS[name]
    try:
        callback = getattr(importlib.import_module(module), function)
    except Exception as exc:  # any import-time failure: report it, don't hide the command
        return _broken_command(name, module, exc)
    info = typer.models.CommandInfo(name=name, callback=callback)
    return typer.main.get_command_from_info(
        info, pretty_exceptions_short=True, rich_markup_mode=app.rich_markup_mode
    )


def _broken_command(name: str, module: str, exc: Exception) -> Any:
    reason = f"{module} failed to import: {type(exc).__name__}: {exc}"

    def broken(args: Any = None) -> None:
        typer.echo(f"error: `etude {name}` is unavailable: {reason}", err=True)
        raise typer.Exit(1)

    command = typer.main.get_command_from_info(
        typer.models.CommandInfo(name=name, callback=broken, help=f"UNAVAILABLE: {reason}"),
        pretty_exceptions_short=True,
        rich_markup_mode=None,
    )
    command.ignore_unknown_options = True
    command.allow_extra_args = True
    return command


app = typer.Typer(
    name="etude",
    cls=LazyGroup,
    help="Etude: reproducible symbolic music generation. Stages run under `dvc repro`; "
    "each is also a command here.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    setup_logging(verbose)
