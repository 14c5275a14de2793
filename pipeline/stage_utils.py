"""Small helpers shared by the typer stage commands."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import typer


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr; called by the CLI, never at import time."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )


@contextlib.contextmanager
def user_errors(*types: type[BaseException]) -> Iterator[None]:
    """Turn the expected error types into a one-line message and exit code 1."""
    from pipeline.params import ParamsError
    from pipeline.stores import StoreError

    try:
        yield
    except (ParamsError, StoreError, *types) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: no output was written", err=True)
        raise typer.Exit(130) from None
