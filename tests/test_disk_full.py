"""A full disk ends every stage with one line naming the output, exit code 1, nothing
partial left behind and any previous output intact (issue #13).

Most tests fake the full disk at the lowest write the stage uses (pyarrow's
ParquetWriter, Path.write_text, torch.save), raising ENOSPC the way the real call does
(pyarrow and write() name no file). Where a tmpfs can be mounted (root, as in CI) the
`small_fs` tests also fill a real filesystem; they skip only when mounting is impossible.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
import yaml
from rawfolder import make_raw_source
from typer.testing import CliRunner

from pipeline import ingest
from pipeline.cli import app
from pipeline.core.params import default_params
from pipeline.core.stage_utils import (
    INTERRUPT_EXIT,
    NOTHING_KEPT,
    Interrupted,
    disk_full_message,
    user_errors,
)

REPO = Path(__file__).resolve().parent.parent
SMALL = {  # five small real files, one split each at least
    "other/symusic_1.midi": "train",
    "other/miditoolkit_1390.mid": "validation",
    "other/miditok_POP909_008.mid": "train",
    "other/miditok_POP909_010.mid": "test",
    "other/prettymidi_example.mid": "train",
}
PIECEWISE = 300  # ingest's notes row group, in rows, so the disk fills mid-stream

runner = CliRunner()


# --- helpers -------------------------------------------------------------------------------


def enospc(filename: str | None = None) -> OSError:
    """What a write on a full disk raises; pyarrow's and write()'s name no file."""
    if filename is None:
        return OSError(errno.ENOSPC, "Error writing bytes to file: No space left on device")
    return OSError(errno.ENOSPC, "No space left on device", filename)


def assert_one_line(result: Any, output: Path) -> Path:
    """Exit 1, one line `error: no space left on device while writing PATH` on stderr and
    nothing on stdout, PATH being `output` or a file in it; returns PATH."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "closed file" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines == result.stderr.splitlines(), result.output
    match = re.fullmatch(r"error: no space left on device while writing (.+)", lines[0])
    assert match, lines[0]
    named = Path(match.group(1))
    assert named == output or named.parent == output, (named, output)
    return named


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file at or below `path`, by relative name, with its bytes."""
    if path.is_file():
        return {".": path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    """Temporaries (`*.tmp<pid>`) and moved-aside outputs (`*.old<pid>`) in `folder`."""
    return sorted(p.name for p in folder.iterdir() if re.search(r"\.(tmp|old)\d+$", p.name))


def write_params(path: Path) -> Path:
    ingest_params = dataclasses.asdict(default_params("ingest", ingest.IngestParams))
    data = {"ingest": {**ingest_params, "workers": 1}, "tuples": {"sustain": True}}
    path.write_text(yaml.safe_dump(data))
    return path


def unraisable(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What `__del__` methods fail with from now on: a writer left open, closed by its
    __del__ on a full disk, prints an "Exception ignored" traceback."""
    seen: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    return seen


def fill_parquet(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    """Let `room` ParquetWriter.write_table calls succeed, then behave like pyarrow on a
    full disk: the write fails with ENOSPC (no file name), a later write to that writer
    with "Operation on closed file", and closing (the footer) with ENOSPC, once: as with
    the real pyarrow, closing again then succeeds."""
    state = {"writes": 0, "broken": set(), "closed": set()}
    real_write, real_close = pq.ParquetWriter.write_table, pq.ParquetWriter.close

    def write_table(self: pq.ParquetWriter, table: pa.Table, *args: object, **kw: object) -> None:
        if id(self) in state["broken"]:
            raise pa.ArrowInvalid("Operation on closed file")
        state["writes"] += 1
        if state["writes"] > room:
            state["broken"].add(id(self))
            raise enospc()
        real_write(self, table, *args, **kw)

    def close(self: pq.ParquetWriter) -> None:
        if state["writes"] > room and id(self) not in state["closed"]:
            state["closed"].add(id(self))
            self.writer.close()  # what the real close got done before the footer failed
            raise enospc()
        real_close(self)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)
    monkeypatch.setattr(pq.ParquetWriter, "close", close)


# --- the generic handler -----------------------------------------------------------------


def run_user_errors(exc: BaseException, *types: type[BaseException]) -> int:
    with pytest.raises(typer.Exit) as info, user_errors(*types):
        raise exc
    return info.value.exit_code


def test_user_errors_turns_a_full_disk_anywhere_in_the_chain_into_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tmp = f"data/interim/corpus.tmp{os.getpid()}/notes.parquet"
    try:
        try:
            raise enospc(tmp)
        except OSError:
            raise pa.ArrowInvalid("Operation on closed file") from None  # a cleanup's error
    except pa.ArrowInvalid as exc:
        chained = exc
    assert run_user_errors(chained) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "error: no space left on device while writing data/interim/corpus/notes.parquet\n"
    )

    quota = RuntimeError("checkpoint failed")
    quota.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded", "models/rnn/model.pt")
    assert run_user_errors(quota) == 1
    assert capsys.readouterr().err == (
        "error: disk quota exceeded while writing models/rnn/model.pt\n"
    )
    assert run_user_errors(enospc(), OSError) == 1  # no file known: still one line
    assert capsys.readouterr().err == "error: no space left on device\n"


def test_a_stages_own_disk_full_message_is_kept_when_no_file_is_known(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """fetch says which download filled the disk; that beats a bare "no space left"."""

    class FetchError(RuntimeError):
        pass

    own = "raw/x.zip.part: no space left on device while downloading http://h/x.zip"
    try:
        try:
            raise enospc()
        except OSError:
            raise FetchError(own) from None
    except FetchError as exc:
        fetch_error = exc
    assert run_user_errors(fetch_error, FetchError) == 1
    assert capsys.readouterr().err == f"error: {own}\n"


def test_user_errors_leaves_other_errors_as_they_were(capsys: pytest.CaptureFixture[str]) -> None:
    denied = OSError(errno.EACCES, "Permission denied", "x")
    with pytest.raises(OSError) as info, user_errors(ValueError):
        raise denied
    assert info.value is denied
    assert run_user_errors(denied, OSError) == 1
    assert capsys.readouterr().err == "error: [Errno 13] Permission denied: 'x'\n"
    with pytest.raises(typer.Exit) as exit_info, user_errors(OSError):
        raise typer.Exit(3)
    assert exit_info.value.exit_code == 3
    assert disk_full_message(ValueError("no")) is None


# --- stages, on a faked full disk --------------------------------------------------------


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> Path:
    return make_raw_source(tmp_path_factory.mktemp("raw") / "small", fixtures_dir, SMALL)


@pytest.fixture(scope="module")
def interim(tmp_path_factory: pytest.TempPathFactory, small_raw: Path) -> Path:
    out = tmp_path_factory.mktemp("interim") / "small"
    params = dataclasses.replace(default_params("ingest", ingest.IngestParams), workers=1)
    ingest.ingest_dir(small_raw, out, source="small", params=params, progress=False)
    return out


def test_ingest_on_a_full_disk(
    tmp_path: Path, small_raw: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reported case: the notes flush fails mid-stream; the cleanup used to write
    the same rows again ("Operation on closed file") and print two tracebacks."""
    params = write_params(tmp_path / "params.yaml")
    out = tmp_path / "interim" / "corpus"
    argv = ["ingest", str(small_raw), "--out", str(out), "--source", "x", "--params", str(params)]
    assert runner.invoke(app, argv).exit_code == 0
    before = snapshot(out)
    monkeypatch.setattr(ingest, "ROW_GROUP_ROWS", PIECEWISE)
    fill_parquet(monkeypatch, room=1)
    argv[1] = str(fixtures_dir / "other")  # another input: a new output would differ
    named = assert_one_line(runner.invoke(app, argv), out)
    assert named.name in ("notes.parquet", "pedals.parquet")  # the file that was flushing
    assert snapshot(out) == before and leftovers(out.parent) == []


def test_ingest_into_a_full_disk_from_the_first_byte(
    tmp_path: Path, small_raw: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing fits: opening the writers already fails."""
    params = write_params(tmp_path / "params.yaml")
    out = tmp_path / "corpus"
    real_init = pq.ParquetWriter.__init__
    opened: list[pq.ParquetWriter] = []

    def init(self: pq.ParquetWriter, where: object, *args: object, **kw: object) -> None:
        if len(opened) == 2:  # the pieces table's "PAR1" header does not fit
            raise enospc()
        real_init(self, where, *args, **kw)
        opened.append(self)

    monkeypatch.setattr(pq.ParquetWriter, "__init__", init)
    argv = ["ingest", str(small_raw), "--out", str(out), "--source", "x", "--params", str(params)]
    # pieces stream to pieces.unsplit.parquet until ingest has drawn the splits by work
    assert assert_one_line(runner.invoke(app, argv), out) == out / "pieces.unsplit.parquet"
    assert not out.exists() and leftovers(tmp_path) == []
    assert not any(w.is_open for w in opened)  # closed, so their __del__ writes nothing


def test_represent_on_a_full_disk(
    tmp_path: Path, interim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = write_params(tmp_path / "params.yaml")
    out = tmp_path / "processed" / "tuples"
    argv = ["represent", "tuples", "--in", str(interim), "--out", str(out), "--params", str(params)]
    assert runner.invoke(app, argv).exit_code == 0
    before = snapshot(out)
    fill_parquet(monkeypatch, room=1)
    assert_one_line(runner.invoke(app, argv), out)  # the split is unknown: the folder
    assert snapshot(out) == before and leftovers(out.parent) == []


def test_report_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    out = tmp_path / "site" / "index.html"
    argv = ["report", "--reports", str(reports), "--out", str(out)]
    params = tmp_path / "params.yaml"
    params.write_text("report: {fake_pairs: 0, seed: 0, benchmarks: []}\n")
    argv += ["--params", str(params)]
    assert runner.invoke(app, argv).exit_code == 0
    before = snapshot(out.parent)
    real_write_text = Path.write_text

    def write_text(self: Path, data: str, *args: object, **kw: object) -> int:
        if self.name.startswith("index.html.tmp"):
            real_write_text(self, data[: len(data) // 2], *args, **kw)  # half of it fits
            raise enospc()
        return real_write_text(self, data, *args, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)
    assert assert_one_line(runner.invoke(app, argv), out.parent) == out
    assert snapshot(out.parent)["index.html"] == before["index.html"]
    assert leftovers(out.parent) == []


def test_train_checkpoint_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save to a path fails with a RuntimeError and no errno; atomic_path sees the
    full filesystem and reports ENOSPC naming the checkpoint."""
    torch = pytest.importorskip("torch")
    from pipeline.modeling.checkpoint import save_checkpoint

    out = tmp_path / "models" / "rnn" / "model.pt"
    save_checkpoint({"w": torch.zeros(3)}, out)
    before = out.read_bytes()
    real_save = torch.save
    full = os.statvfs_result((4096, 4096, 1000, 0, 0, 100, 0, 0, 0, 255))

    def save(obj: object, f: Path, *args: object, **kw: object) -> None:
        real_save(obj, f, *args, **kw)
        Path(f).write_bytes(Path(f).read_bytes()[:100])  # torn
        monkeypatch.setattr(os, "statvfs", lambda path: full)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", save)

    def stage() -> None:  # what train's command does around its checkpoints
        with user_errors():
            save_checkpoint({"w": torch.zeros(100)}, out)

    cli = typer.Typer()
    cli.command()(stage)
    result = runner.invoke(cli, [])
    assert assert_one_line(result, out.parent) == out
    assert out.read_bytes() == before and leftovers(out.parent) == []


# --- stages, on a real full filesystem ---------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mount a tmpfs of a given size in KiB; skip where mounting is impossible."""
    mounts: list[Path] = []

    def mount(kib: int) -> Path:
        where = tmp_path / f"fs{len(mounts)}"
        where.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(folder: Path, leave: int) -> None:
    """Fill the filesystem of `folder` until about `leave` bytes are free."""
    fs = os.statvfs(folder)
    size = max(0, fs.f_bavail * fs.f_frsize - leave)
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while size > 0:
            size -= os.write(fd, b"\0" * min(size, 1 << 16))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_ingest_into_a_real_full_filesystem(
    tmp_path: Path,
    small_raw: Path,
    fixtures_dir: Path,
    small_fs: Callable[[int], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fs = small_fs(2048)
    params = write_params(tmp_path / "params.yaml")
    out = fs / "corpus"
    argv = ["ingest", str(small_raw), "--out", str(out), "--source", "x", "--params", str(params)]
    assert runner.invoke(app, argv).exit_code == 0
    before = snapshot(out)
    fill(fs, leave=64 << 10)
    monkeypatch.setattr(ingest, "ROW_GROUP_ROWS", PIECEWISE)  # fail mid-stream
    argv[1] = str(fixtures_dir / "maestro")  # ~190k notes: far more than 64 KiB
    assert_one_line(runner.invoke(app, argv), out)
    assert snapshot(out) == before and leftovers(fs) == []


def test_represent_into_a_real_full_filesystem(
    tmp_path: Path, interim: Path, small_fs: Callable[[int], Path]
) -> None:
    fs = small_fs(2048)
    params = write_params(tmp_path / "params.yaml")
    out = fs / "tuples"
    argv = ["represent", "tuples", "--in", str(interim), "--out", str(out), "--params", str(params)]
    assert runner.invoke(app, argv).exit_code == 0
    before = snapshot(out)
    fill(fs, leave=sum(len(b) for b in before.values()) // 3)
    assert_one_line(runner.invoke(app, argv), out)
    assert snapshot(out) == before and leftovers(fs) == []


def test_a_real_checkpoint_on_a_real_full_filesystem(small_fs: Callable[[int], Path]) -> None:
    torch = pytest.importorskip("torch")
    from pipeline.modeling.checkpoint import save_checkpoint

    fs = small_fs(512)
    out = fs / "model.pt"
    save_checkpoint({"w": torch.zeros(10)}, out)
    before = out.read_bytes()
    with pytest.raises(OSError) as info:
        save_checkpoint({"w": torch.zeros(1 << 18)}, out)  # 1 MiB
    assert disk_full_message(info.value) == f"no space left on device while writing {out}"
    assert out.read_bytes() == before and leftovers(fs) == []


def test_the_whole_process_prints_one_line(
    tmp_path: Path, fixtures_dir: Path, small_fs: Callable[[int], Path]
) -> None:
    """Run as `etude` runs: also nothing at exit (no "Exception ignored" from a writer)."""
    fs = small_fs(256)
    params = write_params(tmp_path / "params.yaml")
    out = fs / "corpus"
    done = subprocess.run(
        [sys.executable, "-c", "from pipeline.cli import app; app()", "ingest",
         str(fixtures_dir / "maestro"), "--out", str(out), "--params", str(params)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert re.fullmatch(
        rf"error: no space left on device while writing {re.escape(str(out))}/\w+\.parquet\n",
        done.stderr,
    ), done.stderr
    assert list(fs.iterdir()) == []


def test_ingest_cleanup_never_chains_onto_the_error(
    tmp_path: Path, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error that escapes is the write's own: no "Operation on closed file" from
    writing the failed rows again, no footer error, each file closed exactly once."""
    failed_del = unraisable(monkeypatch)
    monkeypatch.setattr(ingest, "ROW_GROUP_ROWS", PIECEWISE)
    fill_parquet(monkeypatch, room=1)  # notes are written, then pedals fail
    params = dataclasses.replace(default_params("ingest", ingest.IngestParams), workers=1)
    with pytest.raises(OSError) as info:
        ingest.ingest_dir(fixtures_dir / "other", tmp_path / "out", source="x", params=params)
    assert info.value.errno == errno.ENOSPC
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert leftovers(tmp_path) == [] and not (tmp_path / "out").exists()
    del info
    gc.collect()
    assert failed_del == []


def test_represent_cleanup_never_chains_onto_the_error(
    tmp_path: Path, interim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import representations
    from pipeline.representations.stage import build_store

    params = representations.get("tuples").params_cls(sustain=True)
    failed_del = unraisable(monkeypatch)
    fill_parquet(monkeypatch, room=1)
    with pytest.raises(OSError) as info:
        build_store("tuples", [interim], tmp_path / "tuples", params, progress=False)
    assert info.value.errno == errno.ENOSPC
    assert info.value.__context__ is None and info.value.__cause__ is None
    assert leftovers(tmp_path) == [] and not (tmp_path / "tuples").exists()
    del info
    gc.collect()
    assert failed_del == []


def test_ctrl_c_says_what_was_kept_and_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    """A plain Ctrl-C: the stage's atomic writes kept every earlier output; a stage that
    kept something (an `Interrupted`) says what, in its own words."""
    assert run_user_errors(KeyboardInterrupt()) == INTERRUPT_EXIT == 130
    assert capsys.readouterr().err == f"interrupted: {NOTHING_KEPT}\n"
    kept = "rnn: kept models/rnn/last.pt at step 50; `dvc repro` resumes from it"
    assert run_user_errors(Interrupted(kept)) == 130
    assert capsys.readouterr().err == f"interrupted: {kept}\n"
