"""Atomic writes and the cleanup of what killed writers leave behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pipeline.io import atomic_dir, atomic_path, reap_stale


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
