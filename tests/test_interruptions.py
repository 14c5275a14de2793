"""SIGKILL mid-stage: a killed stage loses nothing and the next run recovers.

Each test starts a real `etude` (or `dvc repro`) command as the leader of a new
session, so that ingest's pool workers and DVC's shell share its process group,
waits until the command is visibly writing its output, and kills the whole group with
SIGKILL: no handler, `finally` or atexit runs, as when a machine loses power or the
OOM killer strikes. Then it checks what the next user finds: the previous output
byte for byte or no output at all, never a half-written one; and that rerunning the
same command succeeds and gives what an uninterrupted run gives.

Leftovers: `pipeline.core.io.atomic_dir` builds `<out>.tmp<pid>` beside `<out>`; a killed
run leaves it behind (nothing runs on SIGKILL), and the next write of `<out>` removes
it, since a partial store beside the real one would be hashed into any folder
dependency (`represent` depends on all of data/interim).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixture_stores import shipped
from rawfolder import make_raw_source

from pipeline.core.params import default_params
from pipeline.core.stores import read_store, read_table
from pipeline.ingest import IngestParams, ingest_dir
from pipeline.modeling.train import run_training

DEFAULT_PARAMS = default_params("ingest", IngestParams)

BIN = Path(sys.executable).parent  # the virtualenv's bin: etude and dvc live beside python
COPIES = 12  # copies of the 60 fixtures for ingest: 720 files, ~4M notes, ~5 s on 2 workers
TIMEOUT_S = 120  # no subprocess may outlive this
INGEST_PARAMS = {
    "ingest": {
        "workers": 2,  # a process pool, so killing the group must take its workers too
        "max_reject_rate": 0.05,
        "max_notes": 2_000_000,
        "max_duration_s": 14400.0,
        "file_timeout_s": 60,
        "validation_fraction": 0.1,
        "test_fraction": 0.1,
    }
}
REPRESENT_PARAMS = {
    "sources": ["corpus"],
    "pianoroll": {  # the slowest encoder: ~2.5 s for the 60 fixtures
        "frame_ms": 50,
        "min_pitch": 21,
        "max_pitch": 108,
        "sustain": True,
        "max_frames_per_piece": 0,
    },
}
MAX_STEPS = 120
TRAIN_PARAMS = {
    "train": {
        "seed": 0,
        "device": "cpu",
        "batch_size": 8,
        "max_steps": MAX_STEPS,
        "learning_rate": 0.003,
        "warmup_steps": 2,
        "weight_decay": 0.01,
        "grad_clip": 1.0,
        "eval_every": 10,  # = checkpoint_every: model.pt exists once last.pt does
        "eval_batches": 2,
        "patience": 0,
        "checkpoint_every": 10,
        "num_threads": 1,
        "augment": shipped("train")["augment"],
        "precision": "fp32",
        "nproc_per_node": 1,
        "nnodes": 1,
        "node_rank": 0,
        "rdzv_endpoint": "",
        "rdzv_timeout_s": 60,
    },
    "models": {"rnn": {**shipped("models.rnn"), "seq_len": 16, "hidden_size": 32, "train": {}}},
}
TRAIN_PIECES = {  # one real file per split, fixed by a manifest
    "other/symusic_1.midi": "train",
    "other/miditoolkit_1390.mid": "validation",
    "other/miditok_POP909_008.mid": "test",
}


# --- processes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    """The commands as a user runs them: `etude` and `dvc` on PATH, one thread each."""
    for tool in ("etude", "dvc"):
        if not (BIN / tool).exists():
            pytest.fail(f"{BIN / tool} is missing: install the project (pip install -e .)")
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def live_members(pgid: int) -> list[int]:
    """Processes of group `pgid` that are still running (zombies hold nothing)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(stat.parent.name))
    return pids


@contextlib.contextmanager
def started(cmd: list[str], cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run `cmd` as a new session's leader (output to cwd/<name>.log); on the way out
    the group is killed if anything of it still runs, so no test leaves a process."""
    log = cwd / f"{Path(cmd[0]).name}-{time.monotonic_ns()}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    proc.log = log  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        # the group id is ours while its leader is unreaped or any member lives
        if proc.poll() is None or live_members(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def output(proc: subprocess.Popen[bytes]) -> str:
    return proc.log.read_text(errors="replace")  # type: ignore[attr-defined]


def wait_for(
    condition: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, timeout: float = 60
) -> None:
    """Poll `condition` while `proc` runs; fail if it ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(
                f"the command ended (rc {proc.returncode}) before {what}; it was meant to be "
                f"killed mid-run (make its input bigger):\n{output(proc)}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"no sign of {what} after {timeout} s:\n{output(proc)}")
        time.sleep(0.005)


def kill_group(proc: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL the whole process group, reap the leader, wait until no member runs;
    returns the pids that were killed."""
    members = live_members(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the command finished before the kill"
    deadline = time.monotonic() + 15
    while survivors := live_members(proc.pid):
        assert time.monotonic() < deadline, f"processes {survivors} survived SIGKILL"
        time.sleep(0.01)
    return members


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run `cmd` to completion (bounded) and return its output; it must succeed."""
    done = subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=TIMEOUT_S,
        check=False,
    )
    text = done.stdout.decode(errors="replace")
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{text}"
    return text


# --- outputs ------------------------------------------------------------------------


def temp_siblings(out: Path) -> list[Path]:
    """Everything a run put beside `out` (temporaries named `<out>.<suffix>`)."""
    if not out.parent.exists():
        return []
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(f"{out.name}."))


def writing(out: Path, min_bytes: int = 0) -> Callable[[], bool]:
    """True once a temporary folder of `out` exists holding > `min_bytes` of files."""

    def check() -> bool:
        for tmp in temp_siblings(out):
            with contextlib.suppress(OSError):  # renamed or removed while we look
                files = [f for f in tmp.iterdir() if f.is_file()]
                if files and sum(f.stat().st_size for f in files) > min_bytes:
                    return True
        return False

    return check


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def assert_leftovers_are_the_killed_runs(out: Path, killed: list[int]) -> None:
    """Whatever remains beside `out` is the temporary of a killed run: a successful run
    leaves nothing of its own there (no temporary, no `.old` copy)."""
    names = {f"{out.name}.tmp{pid}" for pid in killed}
    strays = [p.name for p in temp_siblings(out) if p.name not in names]
    assert not strays, f"{strays} beside {out}: not the temporaries of killed pids {killed}"


def assert_same_store(got: Path, want: Path, kinds: dict[str, str]) -> None:
    """Folder `got` holds the files of `want`, each readable through the store reader
    (kind and schema version checked) with the same rows. `kinds`: file stem -> kind."""
    assert sorted(os.listdir(got)) == sorted(os.listdir(want))
    for stem, kind in kinds.items():
        a, b = read_table(got / f"{stem}.parquet", kind), read_table(want / f"{stem}.parquet", kind)
        assert a.num_rows == b.num_rows and a.equals(b), f"{stem}.parquet differs"


def link_tree(src: Path, dst: Path) -> None:
    """Copy a folder as hard links (copies across file systems)."""

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


# --- 1. etude ingest ------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_many(tmp_path_factory: pytest.TempPathFactory, midi_files: list[Path]) -> Path:
    """COPIES hard-linked copies of the 60 fixtures: c0/..., c1/..., ..."""
    root = tmp_path_factory.mktemp("raw")
    raw = root / "many"
    first = raw / "c0"
    first.mkdir(parents=True)
    for path in midi_files:
        shutil.copy(path, first / path.name)
    for i in range(1, COPIES):
        link_tree(first, raw / f"c{i}")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(INGEST_PARAMS))
    return raw


def ingest_cmd(raw: Path, out: Path) -> list[str]:
    return [
        str(BIN / "etude"),
        "ingest",
        str(raw),
        "--out",
        str(out),
        "--source",
        "x",
        "--params",
        str(raw.parent / "params.yaml"),
    ]


INTERIM_KINDS = {k: k for k in ("notes", "pieces", "rejects", "pedals")}


@pytest.fixture(scope="module")
def ingest_reference(
    raw_many: Path, tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]
) -> Path:
    """The store of an uninterrupted `etude ingest`."""
    out = tmp_path_factory.mktemp("reference") / "x"
    run(ingest_cmd(raw_many, out), out.parent, env)
    assert temp_siblings(out) == []
    return out


@pytest.mark.parametrize(
    ("previous", "min_bytes"),
    [
        ("none", 0),  # killed as soon as it opens its temporary store
        ("complete", 4096),  # killed after its first row group reached the disk
    ],
)
def test_ingest_killed_mid_run_keeps_or_leaves_no_store_and_rerun_recovers(
    previous: str,
    min_bytes: int,
    raw_many: Path,
    ingest_reference: Path,
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    """A SIGKILLed ingest (parent and pool workers) must leave either no store or the
    previous one byte for byte; rerunning it gives the uninterrupted store."""
    out = tmp_path / "interim" / "x"
    if previous == "complete":
        shutil.copytree(ingest_reference, out)
    before = snapshot(out) if out.exists() else None

    with started(ingest_cmd(raw_many, out), tmp_path, env) as proc:
        wait_for(writing(out, min_bytes), proc, f"a temporary store of > {min_bytes} bytes")
        kill_group(proc)

    if before is None:
        assert not out.exists(), f"a killed ingest left {sorted(os.listdir(out))} in {out}"
    else:
        assert snapshot(out) == before, "a killed ingest changed the previous store"
    assert temp_siblings(out), "expected the killed run's temporary store beside the output"
    assert_leftovers_are_the_killed_runs(out, [proc.pid])

    run(ingest_cmd(raw_many, out), tmp_path, env)
    assert_same_store(out, ingest_reference, INTERIM_KINDS)
    assert len(read_store(out / "pieces.parquet", "pieces")) == 60 * COPIES
    assert not temp_siblings(out), "the rerun left the killed run's temporary in place"


# --- 2. etude represent -----------------------------------------------------------------


@pytest.fixture(scope="module")
def interim(tmp_path_factory: pytest.TempPathFactory, raw_many: Path) -> Path:
    """`--interim` folder with one source, corpus: the 60 fixtures, ingested in-process."""
    root = tmp_path_factory.mktemp("represent")
    ingest_dir(
        raw_many / "c0",
        root / "interim" / "corpus",
        source="corpus",
        params=DEFAULT_PARAMS,
        progress=False,
    )
    (root / "params.yaml").write_text(yaml.safe_dump(REPRESENT_PARAMS))
    return root / "interim"


def represent_cmd(interim: Path, out: Path) -> list[str]:
    """As in dvc.yaml: etude represent NAME --interim data/interim --out data/processed/NAME."""
    return [
        str(BIN / "etude"),
        "represent",
        "pianoroll",
        "--interim",
        str(interim),
        "--out",
        str(out),
        "--params",
        str(interim.parent / "params.yaml"),
    ]


@pytest.fixture(scope="module")
def represent_reference(interim: Path, env: dict[str, str]) -> Path:
    out = interim.parent / "reference" / "pianoroll"
    run(represent_cmd(interim, out), interim.parent, env)
    return out


PROCESSED_KINDS = {
    "train": "pianoroll",
    "validation": "pianoroll",
    "test": "pianoroll",
    "pieces": "pieces",
}


@pytest.mark.parametrize("previous", ["none", "complete"])
def test_represent_killed_mid_write_keeps_or_leaves_no_store_and_rerun_recovers(
    previous: str, interim: Path, represent_reference: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """A SIGKILLed represent, killed while its split files are open, must leave no
    processed store or the previous one intact; rerunning it gives the full store."""
    out = tmp_path / "processed" / "pianoroll"
    if previous == "complete":
        shutil.copytree(represent_reference, out)
    before = snapshot(out) if out.exists() else None

    with started(represent_cmd(interim, out), tmp_path, env) as proc:
        wait_for(writing(out), proc, "the temporary processed store")
        kill_group(proc)

    if before is None:
        assert not out.exists(), f"a killed represent left {sorted(os.listdir(out))}"
    else:
        assert snapshot(out) == before, "a killed represent changed the previous store"
    assert temp_siblings(out), "expected the killed run's temporary store beside the output"
    assert_leftovers_are_the_killed_runs(out, [proc.pid])

    run(represent_cmd(interim, out), tmp_path, env)
    assert_same_store(out, represent_reference, PROCESSED_KINDS)
    assert (out / "params.json").read_text() == (represent_reference / "params.json").read_text()
    assert not temp_siblings(out), "the rerun left the killed run's temporary in place"


# --- 3. etude train ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_setup(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> Path:
    """A tiny tuples store (three real pieces) and a params.yaml with a tiny budget."""
    from pipeline.representations import get as get_representation
    from pipeline.representations.stage import build_store

    root = tmp_path_factory.mktemp("train")
    raw = make_raw_source(root / "raw", fixtures_dir, TRAIN_PIECES)
    ingest_dir(raw, root / "interim", source="corpus", params=DEFAULT_PARAMS, progress=False)
    params = default_params("tuples", get_representation("tuples").params_cls)
    build_store("tuples", [root / "interim"], root / "tuples", params, progress=False)
    (root / "params.yaml").write_text(yaml.safe_dump(TRAIN_PARAMS))
    return root


def train_cmd(setup: Path, run_dir: Path) -> list[str]:
    """As in dvc.yaml: etude train rnn --store ... --out models/rnn --live reports/train/rnn."""
    return [
        str(BIN / "etude"),
        "train",
        "rnn",
        "--store",
        str(setup / "tuples"),
        "--out",
        str(run_dir / "models" / "rnn"),
        "--live",
        str(run_dir / "reports" / "train" / "rnn"),
        "--params",
        str(setup / "params.yaml"),
    ]


@contextlib.contextmanager
def random_state_kept() -> Iterator[None]:
    """Leave the test process's random streams as they were (fit seeds them all)."""
    py, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(numpy_state)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def curves(run_dir: Path) -> dict[str, str]:
    live = run_dir / "reports" / "train" / "rnn" / "plots" / "metrics"
    return {p.relative_to(live).as_posix(): p.read_text() for p in live.rglob("*.tsv")}


@pytest.mark.parametrize("how", ["SIGKILL", "Ctrl-C"])
def test_train_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(
    train_setup: Path, tmp_path: Path, env: dict[str, str], how: str
) -> None:
    """SIGKILL or Ctrl-C after the first checkpoint: last.pt and model.pt are whole
    files, and the rerun resumes from last.pt and ends with the weights and curves of a
    run never interrupted (replayed steps are neither lost nor logged twice). Ctrl-C
    says so in one true line (the step last.pt holds) and exits 130."""
    reference = tmp_path / "reference"  # in this process: the same code, without ~4 s of imports
    with random_state_kept():
        run_training(
            "rnn",
            train_setup / "tuples",
            reference / "models" / "rnn",
            reference / "reports" / "train" / "rnn",
            train_setup / "params.yaml",
            resume=False,
        )

    work = tmp_path / "work"
    work.mkdir()
    models = work / "models" / "rnn"
    with started(train_cmd(train_setup, work), work, env) as proc:
        wait_for((models / "last.pt").exists, proc, "the first checkpoint")
        if how == "SIGKILL":
            kill_group(proc)
        else:
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=30) == 130, output(proc)

    killed = load(models / "last.pt")  # weights_only: a truncated file would raise here
    assert 0 < killed["step"] < MAX_STEPS and not killed["finished"], "not killed mid-run"
    assert load(models / "model.pt")["state_dict"], "model.pt has no weights"
    stray = sorted(p.name for p in models.iterdir() if p.name not in ("last.pt", "model.pt"))
    if how == "SIGKILL":
        assert all(n.endswith(f".tmp{proc.pid}") for n in stray), stray
    else:
        assert not stray, stray  # Ctrl-C unwinds: no temporary is left behind
        said = output(proc).strip().splitlines()
        assert [line for line in said if "interrupted" in line] == said[-1:], said
        kept = (
            f"; kept {models / 'last.pt'} at step {killed['step']} and model.pt (the best "
            "so far); `dvc repro` (or this command) resumes from it"
        )
        assert said[-1].startswith("interrupted: rnn: stopped at step "), said[-1]
        assert said[-1].endswith(kept), said[-1]

    run(train_cmd(train_setup, work), work, env)
    summary = json.loads((work / "reports" / "train" / "rnn" / "summary.json").read_text())
    assert summary["resumed_from"] == killed["step"] and summary["steps"] == MAX_STEPS

    ref_models = reference / "models" / "rnn"
    for name in ("last.pt", "model.pt"):
        got, want = load(models / name), load(ref_models / name)
        assert got["step"] == want["step"], name
        assert got["state_dict"].keys() == want["state_dict"].keys()
        for key, tensor in want["state_dict"].items():
            assert torch.equal(got["state_dict"][key], tensor), f"{name}: {key} differs"
    assert load(models / "last.pt")["finished"]
    assert curves(work) == curves(reference)


# --- 4. dvc repro -------------------------------------------------------------------------

DVC_YAML = """\
stages:
  ingest:
    cmd: etude ingest data/raw/x --out data/interim/x --source x --params params.yaml
    deps:
      - data/raw/x
    params:
      - ingest
    outs:
      - data/interim/x
"""


def test_dvc_repro_killed_mid_ingest_recovers_with_a_plain_rerun(
    raw_many: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """SIGKILL the whole `dvc repro` (dvc, its shell, etude and the pool) mid-ingest: the
    stale entries of the dead dvc in .dvc/tmp/rwlock must not block the next
    `dvc repro`, which must rebuild the stage and leave `dvc status` clean."""
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = [str(BIN / "dvc")]
    run([*dvc, "init", "--no-scm", "-q"], repo, env)
    (repo / ".dvc" / "config").write_text(  # offline: no analytics, no update check
        "[core]\n    no_scm = True\n    analytics = false\n    check_update = false\n"
    )
    for i in range(3):  # 180 files: a few seconds of ingest
        link_tree(raw_many / f"c{i}", repo / "data" / "raw" / "x" / f"c{i}")
    (repo / "params.yaml").write_text(yaml.safe_dump(INGEST_PARAMS))
    (repo / "dvc.yaml").write_text(DVC_YAML)
    out = repo / "data" / "interim" / "x"

    with started([*dvc, "repro"], repo, env) as proc:
        wait_for(writing(out), proc, "ingest's temporary store")
        killed = kill_group(proc)
    assert not out.exists() and not (repo / "dvc.lock").exists()
    assert temp_siblings(out), "expected the killed ingest's temporary store"
    rwlock = json.loads((repo / ".dvc" / "tmp" / "rwlock").read_text())
    stale = [info["pid"] for info in rwlock.get("write", {}).values()]
    assert stale and set(stale) <= set(killed), f"expected the dead dvc's write lock: {rwlock}"

    text = run([*dvc, "repro"], repo, env)
    assert "Running stage 'ingest'" in text, text
    status = run([*dvc, "status", "--json"], repo, env)
    assert json.loads(status) == {}, status
    assert not json.loads((repo / ".dvc" / "tmp" / "rwlock").read_text()).get("write")
    assert len(read_store(out / "pieces.parquet", "pieces")) == 180
    assert not temp_siblings(out), "the rerun left the killed run's temporary in place"
