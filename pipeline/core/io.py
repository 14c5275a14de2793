"""Atomic writes: nothing half-written may ever look complete.

Every output is first written to a temporary sibling (`<name>.tmp<pid>`, a file or a
folder) and renamed into place only once complete; on failure the temporary is
removed and any previous output is left untouched. A process killed outright
(SIGKILL, power loss) cannot clean up, so the next write of the same output first
removes the temporaries of writers that are no longer alive, and puts back a previous
output it finds moved aside (`<name>.old<pid>`) by a writer killed mid-swap: a stale
partial store must not sit beside the real one, where a folder dependency would hash it.

A full disk (ENOSPC, or EDQUOT for a quota) must end a stage with one line naming the
output, so the helpers here also give such errors a path when the writing library left
it out (`writing`, `disk_full_error`, `output_name`), and their cleanup never raises
over the error that is unwinding.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
NEARLY_FULL_BYTES = 1 << 20  # less free space than this after a failed write: the disk is full


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


def _alive(pid: int) -> bool:
    """Whether `pid` is a running process; a zombie (killed, not yet reaped) is not.

    A writer killed together with its parent (SIGKILL to `dvc repro`'s process group)
    lingers as a zombie until init reaps it, and signal 0 still reaches a zombie.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs (macOS) or gone meanwhile: trust the signal
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # state follows "(comm)"


def reap_stale(path: Path) -> list[Path]:
    """Clean what killed writers of `path` left beside it; return what was removed or restored.

    Only leftovers of dead processes are touched, so a concurrent live writer keeps its
    temporary.
    """
    pattern = re.compile(re.escape(path.name) + r"\.(tmp|old)(\d+)")
    try:
        entries = [e for e in os.scandir(path.parent) if e.name.startswith(path.name + ".")]
    except FileNotFoundError:
        return []
    done = []
    for entry in sorted(entries, key=lambda e: e.name):
        match = pattern.fullmatch(entry.name)
        if not match or _alive(int(match.group(2))):
            continue
        leftover = Path(entry.path)
        if match.group(1) == "old" and not os.path.lexists(path):
            os.replace(leftover, path)  # killed between moving the old output aside and the swap
        elif leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
        done.append(leftover)
    return done


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path that replaces `path` on success.

    The caller writes to the yielded path; if the block raises, the temporary is
    deleted and `path` keeps its previous content. A write that fails on a full disk
    raises an OSError (ENOSPC) naming the file, even where the writing library hid the
    errno (torch.save to a path raises a bare RuntimeError).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reap_stale(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        hidden = _hidden_disk_full(exc, tmp)  # before removing the partial file frees space
        name_disk_full(exc, tmp)
        _discard(tmp)
        if hidden is not None:
            raise hidden from exc
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory that replaces directory `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reap_stale(path)
    tmp = _tmp_sibling(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    old = path.with_name(f"{path.name}.old{os.getpid()}")
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException as exc:
        name_disk_full(exc, tmp)
        if os.path.lexists(old) and not os.path.lexists(path):
            try:
                os.replace(old, path)
            except OSError as err:  # the next write's reap_stale puts it back
                log.debug("could not put %s back: %s", path, err)
        _discard(tmp)
        raise
    _discard(old)  # the new output is in place; a leftover is reaped by the next write


def _discard(path: Path) -> None:
    """Remove a temporary (file or folder) if present; never raise, for it runs while
    another error unwinds. What cannot be removed is reaped by the next write."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
    except OSError as exc:
        log.debug("could not remove %s: %s", path, exc)


# --- a full disk -------------------------------------------------------------------------


def disk_full_error(exc: BaseException) -> OSError | None:
    """The first OSError with errno ENOSPC or EDQUOT in `exc`, its causes and contexts
    (suppressed ones too: `raise ... from None` does not make the disk less full) and
    the members of exception groups; None if there is none."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        err = todo.pop(0)
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return err
        todo += [e for e in (err.__cause__, err.__context__) if e is not None]
        todo += list(getattr(err, "exceptions", None) or ())
    return None


def name_disk_full(exc: BaseException, path: str | os.PathLike[str]) -> None:
    """Give the disk-full error in `exc`'s chain the file name `path` if it has none."""
    err = disk_full_error(exc)
    if err is not None and err.filename is None:
        err.filename = os.fspath(path)


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Name `path` in a disk-full error raised by the block that names no file: pyarrow's,
    and a plain write()'s, never do."""
    try:
        yield
    except BaseException as exc:
        name_disk_full(exc, path)
        raise


def output_name(path: str | os.PathLike[str] | bytes) -> str:
    """The output a path of this process's temporaries stands for: `out.tmp<pid>/x` -> `out/x`."""
    suffix = f".tmp{os.getpid()}"
    parts = [
        part[: -len(suffix)] if part.endswith(suffix) and len(part) > len(suffix) else part
        for part in Path(os.fsdecode(path)).parts
    ]
    return str(Path(*parts)) if parts else os.fsdecode(path)


def _hidden_disk_full(exc: BaseException, path: Path) -> OSError | None:
    """An ENOSPC error for a write to `path` that failed with an error carrying no errno
    while its filesystem is (nearly) full; None otherwise."""
    if not isinstance(exc, Exception) or disk_full_error(exc) is not None:
        return None
    try:
        fs = os.statvfs(path.parent)
    except (OSError, AttributeError):  # gone, or no statvfs (Windows)
        return None
    blocks = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail  # root may use reserved blocks
    if blocks * fs.f_frsize >= NEARLY_FULL_BYTES:
        return None
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))


def close_writers(writers: Iterable[pq.ParquetWriter], *, abandon: bool = False) -> None:
    """Close Parquet writers. Normally the first error is raised once every other writer
    is abandoned; with `abandon` (another error is unwinding) nothing is raised."""
    pending = list(writers)
    for i, writer in enumerate(pending):
        if abandon:
            abandon_writer(writer)
            continue
        try:
            writer.close()
        except BaseException:
            for rest in pending[i:]:
                abandon_writer(rest)
            raise


def abandon_writer(writer: pq.ParquetWriter) -> None:
    """Close a Parquet writer whose file is being thrown away, without ever raising.

    After a failed write (a full disk) closing it fails again, or fails with "Operation
    on closed file"; the file handle is then closed here, and the writer marked closed
    so that its __del__ does not retry and print an "Exception ignored" traceback.
    """
    try:
        writer.close()
    except Exception as exc:
        log.debug("closing an abandoned Parquet writer: %s", exc)
    writer.is_open = False
    handle = getattr(writer, "file_handle", None)
    if handle is not None:
        with contextlib.suppress(Exception):
            handle.close()


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_parquet(table: pa.Table, path: str | os.PathLike[str], **options: Any) -> None:
    """Write a pyarrow table as Parquet (zstd unless `options` say otherwise), atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **{"compression": "zstd", **options})
