"""Atomic writes: nothing half-written may ever look complete.

Every output is first written to a temporary sibling (`<name>.tmp<pid>`, a file or a
folder) and renamed into place only once complete; on failure the temporary is
removed and any previous output is left untouched. A process killed outright
(SIGKILL, power loss) cannot clean up, so the next write of the same output first
removes the temporaries of writers that are no longer alive, and puts back a previous
output it finds moved aside (`<name>.old<pid>`) by a writer killed mid-swap: a stale
partial store must not sit beside the real one, where a folder dependency would hash it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


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
    deleted and `path` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reap_stale(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


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
