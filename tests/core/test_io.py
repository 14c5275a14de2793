"""Atomic writes and the cleanup of what killed writers leave behind."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.io import (
    atomic_dir,
    atomic_path,
    close_writers,
    disk_full_error,
    output_name,
    reap_stale,
    writing,
)


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_failed_dir_write_keeps_the_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "store"
    out.mkdir()
    (out / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "a").write_text("half")
        raise RuntimeError("disk full")
    assert (out / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_killed_writers_leftovers_are_reaped_by_the_next_write(
    tmp_path: Path, dead_pid: int
) -> None:
    out = tmp_path / "store"
    stale = tmp_path / f"store.tmp{dead_pid}"
    stale.mkdir()
    (stale / "notes.parquet").write_bytes(b"partial")
    live = tmp_path / f"store.tmp{os.getppid()}"  # a live writer's temporary stays
    live.mkdir()
    unrelated = tmp_path / "store.tmp-notes"
    unrelated.write_text("not ours")
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("new")
    assert (out / "a").read_text() == "new"
    assert not stale.exists() and live.exists() and unrelated.exists()


def test_output_moved_aside_by_a_killed_swap_is_put_back(tmp_path: Path, dead_pid: int) -> None:
    """Killed between moving the old output to `.old<pid>` and renaming the new one in."""
    out = tmp_path / "store"
    old = tmp_path / f"store.old{dead_pid}"
    old.mkdir()
    (old / "a").write_text("previous")
    assert reap_stale(out) == [old]
    assert (out / "a").read_text() == "previous" and not old.exists()


def test_a_stale_old_copy_beside_a_newer_output_is_removed(tmp_path: Path, dead_pid: int) -> None:
    out = tmp_path / "model.pt"
    out.write_text("current")
    (tmp_path / f"model.pt.old{dead_pid}").write_text("older")
    (tmp_path / f"model.pt.tmp{dead_pid}").write_text("torn")
    with atomic_path(out) as tmp:
        tmp.write_text("newest")
    assert out.read_text() == "newest"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_zombie_writers_leftover_is_reaped(tmp_path: Path) -> None:
    """A killed writer whose parent has not reaped it yet is a zombie: it writes nothing more."""
    import signal
    import time

    proc = subprocess.Popen(["sleep", "60"])
    try:
        proc.send_signal(signal.SIGKILL)
        stat = Path(f"/proc/{proc.pid}/stat")
        deadline = time.monotonic() + 10
        while stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z":  # not reaped: a zombie
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        stale = tmp_path / f"store.tmp{proc.pid}"
        stale.mkdir()
        assert reap_stale(tmp_path / "store") == [stale]
        assert not stale.exists()
    finally:
        proc.wait()


# --- a full disk ---------------------------------------------------------------------------


def _enospc(filename: str | None = None) -> OSError:
    """What pyarrow and a plain write() raise on a full disk: ENOSPC, often without a file."""
    if filename is None:
        return OSError(errno.ENOSPC, "Error writing bytes to file: No space left on device")
    return OSError(errno.ENOSPC, "No space left on device", filename)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if re.search(r"\.(tmp|old)\d+$", p.name))


def test_a_full_disk_in_a_file_write_names_the_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    out.write_bytes(b"previous")
    with pytest.raises(OSError) as info, atomic_path(out) as tmp:
        tmp.write_bytes(b"half")
        raise _enospc()
    assert info.value.errno == errno.ENOSPC
    assert output_name(info.value.filename) == str(out)
    assert out.read_bytes() == b"previous" and _leftovers(tmp_path) == []


def test_a_full_disk_in_a_folder_write_names_the_folder_unless_a_file_is_known(
    tmp_path: Path,
) -> None:
    out = tmp_path / "store"
    out.mkdir()
    (out / "a").write_text("old")
    with pytest.raises(RuntimeError) as info, atomic_dir(out) as tmp:
        (tmp / "a").write_text("half")
        raise RuntimeError("cleanup failed") from _enospc()
    assert output_name(info.value.__cause__.filename) == str(out)
    with pytest.raises(OSError) as info, atomic_dir(out) as tmp, writing(tmp / "a"):
        raise _enospc()
    assert output_name(info.value.filename) == str(out / "a")
    assert (out / "a").read_text() == "old" and _leftovers(tmp_path) == []


def test_a_file_name_the_error_already_has_is_kept(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info, atomic_path(tmp_path / "x"):
        raise _enospc("/elsewhere/y")
    assert info.value.filename == "/elsewhere/y"


def test_a_write_failing_without_errno_on_a_full_disk_is_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save to a path raises a bare RuntimeError when the disk fills."""
    out = tmp_path / "model.pt"
    out.write_bytes(b"previous")
    full = os.statvfs_result((4096, 4096, 1000, 0, 0, 100, 0, 0, 0, 255))
    monkeypatch.setattr(os, "statvfs", lambda path: full)
    with pytest.raises(OSError) as info, atomic_path(out) as tmp:
        tmp.write_bytes(b"torn")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert info.value.errno == errno.ENOSPC and isinstance(info.value.__cause__, RuntimeError)
    assert output_name(info.value.filename) == str(out)
    assert out.read_bytes() == b"previous" and _leftovers(tmp_path) == []
    monkeypatch.undo()  # with room on the disk the error is left alone
    with pytest.raises(RuntimeError), atomic_path(out):
        raise RuntimeError("a bug")


def test_cleanup_errors_never_replace_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "store"
    out.mkdir()
    (out / "a").write_text("old")

    def rmtree(path: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(OSError) as info, atomic_dir(out):
        raise _enospc()
    assert info.value.errno == errno.ENOSPC and info.value.__context__ is None
    assert (out / "a").read_text() == "old"


def test_disk_full_error_walks_causes_contexts_and_groups() -> None:
    full = _enospc()
    try:
        try:
            raise full
        except OSError:
            raise ValueError("Operation on closed file") from None
    except ValueError as exc:
        assert disk_full_error(exc) is full
    quota = OSError(errno.EDQUOT, "Disk quota exceeded")
    group = Exception("an ExceptionGroup (Python >= 3.11) has .exceptions")
    group.exceptions = (ValueError(), quota)  # type: ignore[attr-defined]
    assert disk_full_error(group) is quota
    assert disk_full_error(OSError(errno.EACCES, "Permission denied")) is None
    looped = RuntimeError("a")
    looped.__context__ = RuntimeError("b")
    looped.__context__.__context__ = looped
    assert disk_full_error(looped) is None


def test_output_name_maps_this_process_temporaries_only() -> None:
    pid = os.getpid()
    assert output_name(f"data/corpus.tmp{pid}/notes.parquet") == "data/corpus/notes.parquet"
    assert output_name(f"models/rnn/model.pt.tmp{pid}") == "models/rnn/model.pt"
    assert output_name("data/corpus.tmp1/notes.parquet") == "data/corpus.tmp1/notes.parquet"


def test_abandoned_parquet_writers_close_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = pa.table({"x": [1, 2, 3]})
    writers = [pq.ParquetWriter(tmp_path / f"{i}.parquet", table.schema) for i in range(3)]
    real_close = pq.ParquetWriter.close

    def close(self: pq.ParquetWriter) -> None:  # the footer does not fit
        if self is writers[0]:
            raise _enospc()
        real_close(self)

    monkeypatch.setattr(pq.ParquetWriter, "close", close)
    with pytest.raises(OSError):
        close_writers(writers)  # the first fails: the others are abandoned, not left open
    assert not any(w.is_open for w in writers)
    close_writers(writers, abandon=True)  # unwinding: never raises
