"""Small helpers shared by the typer stage commands."""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator

import typer
from typer.exceptions import TyperException

INTERRUPT_EXIT = 130  # 128 + SIGINT, as shells report a Ctrl-C
# What a stage interrupted without saying more can truthfully claim: every stage writes
# its outputs to a temporary beside the target and renames it only when complete.
NOTHING_KEPT = (
    "no output was written (outputs are replaced only when complete, so any earlier "
    "ones are as they were); a rerun starts this stage over"
)


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C that knows what it kept: ``str(exc)`` says so and what a rerun does.

    A KeyboardInterrupt subclass, so every ``except KeyboardInterrupt`` cleanup on the
    way out still runs; `user_errors` prints its message instead of `NOTHING_KEPT`.
    """


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr; called by the CLI, never at import time."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )


@contextlib.contextmanager
def user_errors(*types: type[BaseException]) -> Iterator[None]:
    """Turn the expected error types into a one-line message and exit code 1.

    Ctrl-C gives one line, ``interrupted: ...`` saying what was kept and what a rerun
    does (an `Interrupted`'s own words, else `NOTHING_KEPT`), and exit code 130.

    A full disk (an OSError with errno ENOSPC or EDQUOT anywhere in the error's chain)
    is expected in every stage: it becomes `error: no space left on device while
    writing PATH`, PATH being the output the stage was writing, not its temporary.
    """
    from pipeline.core.params import ParamsError
    from pipeline.core.stores import StoreError

    try:
        yield
    except (typer.Exit, typer.Abort, TyperException):
        raise  # already handled, or typer's own
    except KeyboardInterrupt as exc:
        said = str(exc) if isinstance(exc, Interrupted) else ""
        typer.echo(f"interrupted: {said or NOTHING_KEPT}", err=True)
        raise typer.Exit(INTERRUPT_EXIT) from None
    except Exception as exc:
        expected = isinstance(exc, (ParamsError, StoreError, *types))
        message = disk_full_message(exc, str(exc) if expected else None)
        if message is None:
            if not expected:
                raise
            message = str(exc)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1) from None


def disk_full_message(exc: BaseException, own: str | None = None) -> str | None:
    """`no space left on device while writing PATH` for an error caused by a full disk
    (or `disk quota exceeded ...`); None for any other error.

    `own` is the message of an error the stage raised itself: where the OSError names no
    file and `own` already says that the disk is full (fetch's "PART: no space left on
    device while downloading URL"), it is the better line and is kept.
    """
    from pipeline.core.io import disk_full_error, output_name

    err = disk_full_error(exc)
    if err is None:
        return None
    what = "disk quota exceeded" if err.errno == errno.EDQUOT else "no space left on device"
    if err.filename is None:
        said = own is not None and any(w in own.lower() for w in ("no space left", "quota"))
        if own is not None and said and exc is not err:
            return " ".join(own.split())
        return what
    return " ".join(f"{what} while writing {output_name(err.filename)}".split())
