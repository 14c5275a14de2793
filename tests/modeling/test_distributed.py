"""Several training processes from params: `etude train` launches itself.

`train.nproc_per_node: 2` makes `etude train` (the train stage's command, unchanged)
run its two ranks through torch.distributed.run; these tests check, on CPU with gloo
and a tiny rnn, that this is the same training as two ranks a person launches by hand
with ``python -m torch.distributed.run`` (the same weights, tensor for tensor), that a
SIGKILL of the launcher takes its ranks with it and a rerun resumes to the weights of
the uninterrupted run (as a single process does: tests/modeling/test_fit.py and
tests/test_interruptions.py), that a failed rank fails the command with a clear error,
and that two machines (two launchers here, `nnodes: 2`) meet at `rdzv_endpoint` and
train the same as one machine with two processes.

Each launch costs a few seconds of process start (torch imports in the launcher and in
each rank); the runs are shared through module fixtures.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from fixture_stores import FIXTURES, shipped
from rawfolder import processed_stores
from typer.testing import CliRunner

from pipeline.core.params import ParamsError
from pipeline.modeling.train import LAUNCHER_PID_ENV, load_train_params, train_command

BIN = Path(sys.executable).parent  # the virtualenv's bin: etude lives beside python
TIMEOUT_S = 180  # no command may outlive this
MAX_STEPS = 200  # ~3 s of two-rank training: a kill after the first checkpoint is mid-run
CHECKPOINT_EVERY = 20
PIECES = {
    FIXTURES
    / "maestro"
    / "giantmidi_eval_MIDI-Unprocessed_11_R1_2011_MID--AUDIO_R1-D4_07_Track07_wav.mid": "train",
    FIXTURES / "other" / "symusic_1.midi": "validation",
    FIXTURES / "other" / "miditoolkit_1390.mid": "test",
}


def params(**train: object) -> dict:
    """The shipped params with a tiny rnn on CPU; `train` replaces train keys."""
    return {
        "train": {
            **shipped("train"),
            "device": "cpu",
            "batch_size": 4,
            "max_steps": MAX_STEPS,
            "warmup_steps": 2,
            "eval_every": CHECKPOINT_EVERY,  # = checkpoint_every: model.pt is there with last.pt
            "eval_batches": 2,
            "checkpoint_every": CHECKPOINT_EVERY,
            "num_threads": 1,
            **train,
        },
        "models": {"rnn": {**shipped("models.rnn"), "seq_len": 8, "hidden_size": 16, "train": {}}},
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tuples store (real ingest and represent code) and the params files."""
    root = processed_stores(tmp_path_factory.mktemp("dist"), PIECES).parent
    for name, data in {
        "two.yaml": params(nproc_per_node=2),
        "one.yaml": params(nproc_per_node=1),  # for the ranks a person launches by hand
    }.items():
        (root / name).write_text(yaml.safe_dump(data))
    return root


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
    }


def train_cmd(setup: Path, work: Path, params_file: str, out: str = "m") -> list[str]:
    """The train stage's command (`etude train rnn ...`) writing into `work`."""
    return [
        str(BIN / "etude"),
        *stage_args(setup, work, params_file, out),
    ]


def stage_args(setup: Path, work: Path, params_file: str, out: str = "m") -> list[str]:
    return [
        "train",
        "rnn",
        "--store",
        str(setup / "processed" / "tuples"),
        "--out",
        str(work / out / "models"),
        "--live",
        str(work / out / "live"),
        "--params",
        str(setup / params_file),
    ]


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args} failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    return done.stdout


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(got: Path, want: Path) -> None:
    """models/{last,model}.pt of two runs: same step, tensor-equal weights."""
    for name in ("last.pt", "model.pt"):
        a, b = load(got / name), load(want / name)
        assert a["step"] == b["step"], name
        assert a["state_dict"].keys() == b["state_dict"].keys()
        for key, tensor in b["state_dict"].items():
            assert torch.equal(a["state_dict"][key], tensor), f"{name}: {key} differs"


def curves(live: Path) -> dict[str, str]:
    base = live / "plots" / "metrics"
    return {p.relative_to(base).as_posix(): p.read_text() for p in base.rglob("*.tsv")}


@pytest.fixture(scope="module")
def from_params(setup: Path, env: dict[str, str]) -> Path:
    """An uninterrupted `etude train` with train.nproc_per_node 2."""
    work = setup / "from-params"
    out = ok(run(train_cmd(setup, work, "two.yaml"), work, env))
    assert out.count(f"rnn: {MAX_STEPS} steps") == 1, out  # one line, the launcher's
    return work / "m"


def test_params_launch_two_ranks_like_a_hand_run_torchrun(
    setup: Path, env: dict[str, str], from_params: Path
) -> None:
    """The same weights, model.pt, curves and summary as `python -m torch.distributed.run
    --nproc-per-node 2 -m pipeline train ...` with nproc_per_node 1 in the params."""
    last = load(from_params / "models" / "last.pt")
    assert last["step"] == MAX_STEPS and last["finished"]
    assert len(last["rng"]) == 2  # one RNG state per rank: two processes trained
    assert sorted(p.name for p in (from_params / "models").iterdir()) == ["last.pt", "model.pt"]
    summary = json.loads((from_params / "live" / "summary.json").read_text())
    assert summary["steps"] == MAX_STEPS and summary["resumed_from"] is None

    work = setup / "by-hand"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    ranks = ["--nproc-per-node", "2", "-m", "pipeline", *stage_args(setup, work, "one.yaml")]
    ok(run([*launcher, *ranks], work, env))
    assert_same_weights(work / "m" / "models", from_params / "models")
    assert curves(work / "m" / "live") == curves(from_params / "live")
    by_hand = json.loads((work / "m" / "live" / "summary.json").read_text())
    assert {k: v for k, v in by_hand.items() if k != "wall_time_s"} == {
        k: v for k, v in summary.items() if k != "wall_time_s"
    }
    # the launch keys only request processes: either run resumes the other's last.pt
    assert load(work / "m" / "models" / "last.pt")["fingerprint"] == last["fingerprint"]


def children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def output(proc: subprocess.Popen[bytes]) -> str:
    return proc.log.read_text(errors="replace")  # type: ignore[attr-defined]


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@contextlib.contextmanager
def started(cmd: list[str], cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`cmd` as a new session's leader; whatever of it still runs is killed at the end."""
    cwd.mkdir(parents=True, exist_ok=True)
    log = cwd / f"launcher-{time.monotonic_ns()}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    proc.log = log  # type: ignore[attr-defined]
    ranks: list[int] = []
    try:
        yield proc
    finally:
        if proc.poll() is None:
            ranks = children(proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for pid in ranks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_launcher_takes_its_ranks_and_a_rerun_resumes(
    setup: Path, env: dict[str, str], from_params: Path
) -> None:
    """SIGKILL of the launcher's process group after the first checkpoint (what a lost
    terminal or a killed `dvc repro` does): the ranks, which torch starts in sessions
    of their own, die too; the outputs are whole files; the rerun resumes from
    last.pt and ends with the uninterrupted run's weights and curves."""
    work = setup / "killed"
    models = work / "m" / "models"
    with started(train_cmd(setup, work, "two.yaml"), work, env) as proc:
        deadline = time.monotonic() + TIMEOUT_S
        while not (models / "last.pt").exists():
            assert proc.poll() is None, output(proc)
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.005)
        ranks = children(proc.pid)
        assert len(ranks) == 2, ranks
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the run ended before the kill"
        deadline = time.monotonic() + 10
        while alive := [pid for pid in ranks if running(pid)]:
            assert time.monotonic() < deadline, f"ranks {alive} outlived their launcher"
            time.sleep(0.01)

    killed = load(models / "last.pt")  # weights_only: a truncated file would raise here
    assert 0 < killed["step"] < MAX_STEPS and not killed["finished"], "not killed mid-run"
    assert load(models / "model.pt")["state_dict"], "model.pt has no weights"
    leftovers = sorted(p.name for p in models.iterdir() if p.name not in ("last.pt", "model.pt"))
    assert all(n.rsplit(".tmp", 1)[-1] in {str(r) for r in ranks} for n in leftovers), leftovers

    ok(run(train_cmd(setup, work, "two.yaml"), work, env))
    summary = json.loads((work / "m" / "live" / "summary.json").read_text())
    assert summary["resumed_from"] == killed["step"] and summary["steps"] == MAX_STEPS
    assert_same_weights(models, from_params / "models")
    assert curves(work / "m" / "live") == curves(from_params / "live")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_machines_meet_at_the_endpoint_and_node_0_writes(
    setup: Path, env: dict[str, str], from_params: Path
) -> None:
    """nnodes 2 (two launchers here, one process each): the node_rank 0 machine holds
    rank 0 and writes what one machine with two processes writes; node 1 writes
    nothing and says so."""
    endpoint = f"127.0.0.1:{free_port()}"
    for rank in (0, 1):
        data = params(nnodes=2, node_rank=rank, rdzv_endpoint=endpoint)
        (setup / f"node{rank}.yaml").write_text(yaml.safe_dump(data))
    work = setup / "nodes"
    logs = {}
    with contextlib.ExitStack() as stack:
        procs = {
            rank: stack.enter_context(
                started(train_cmd(setup, work, f"node{rank}.yaml", f"n{rank}"), work, env)
            )
            for rank in (0, 1)
        }
        for rank, proc in procs.items():
            code = proc.wait(timeout=TIMEOUT_S)
            logs[rank] = output(proc)
            assert code == 0, logs[rank]
    assert "node 0 wrote the outputs" in logs[1]
    assert not (work / "n1").exists()  # no folder, no file on node 1
    assert_same_weights(work / "n0" / "models", from_params / "models")


def test_a_failed_rank_fails_the_command_with_a_clear_error(
    setup: Path, env: dict[str, str]
) -> None:
    work = setup / "failing"
    cmd = train_cmd(setup, work, "two.yaml")
    cmd[cmd.index("--store") + 1] = str(setup / "nowhere")
    done = run(cmd, work, env)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: rnn: rank ") and "of 2 exited with code 1" in last, last
    assert "nowhere" in done.stderr  # the rank's own error is shown too
    assert "Traceback" not in done.stderr
    assert not (work / "m").exists()


def test_launch_keys_are_checked_and_overridable_per_model(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"

    def load_with(**train: object) -> object:
        path.write_text(yaml.safe_dump(params(**train)))
        return load_train_params("rnn", path)[1]

    with pytest.raises(ParamsError, match="rdzv_endpoint is required when nnodes > 1"):
        load_with(nnodes=2)
    with pytest.raises(ParamsError, match="rdzv_endpoint must be 'host:port'"):
        load_with(nnodes=2, rdzv_endpoint="node0")
    with pytest.raises(ParamsError, match="node_rank must be in 0..nnodes-1"):
        load_with(nnodes=2, node_rank=2, rdzv_endpoint="node0:29500")
    with pytest.raises(ParamsError, match=r"port must be in 1\.\.65535"):
        load_with(nnodes=2, rdzv_endpoint="127.0.0.1:99999")
    with pytest.raises(ParamsError, match="rdzv_timeout_s must be > 0"):
        load_with(rdzv_timeout_s=0)
    with pytest.raises(ParamsError, match="nproc_per_node must be >= 1"):
        load_with(nproc_per_node=0)
    with pytest.raises(ParamsError, match="'train.nproc_per_node' must be an integer"):
        load_with(nproc_per_node="2")
    missing = params()
    del missing["train"]["nnodes"]
    path.write_text(yaml.safe_dump(missing))
    with pytest.raises(ParamsError, match="missing key 'train.nnodes'"):
        load_train_params("rnn", path)
    data = params()
    data["models"]["rnn"]["train"] = {"nproc_per_node": 4}
    path.write_text(yaml.safe_dump(data))
    assert load_train_params("rnn", path)[1].n_processes == 4


def test_launch_asks_torchrun_for_the_params_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the command hands torch.distributed.run (not run here): one machine, a free
    local port; several machines, a static rendezvous at the endpoint with this node's
    rank; the ranks run `-m pipeline` with the command's own arguments."""
    from torch.distributed import run as torchrun

    seen: list[tuple[object, str | None]] = []
    monkeypatch.setattr(
        torchrun, "run", lambda args: seen.append((args, os.environ.get(LAUNCHER_PID_ENV)))
    )
    monkeypatch.chdir(tmp_path)
    live = tmp_path / "live"
    live.mkdir()
    summary = {"steps": 1, "best_val_loss": 1.0, "wall_time_s": 1.0}
    (live / "summary.json").write_text(json.dumps(summary))  # what rank 0 would write
    for name, train in {
        "one.yaml": {"nproc_per_node": 2},
        "node1.yaml": {"nnodes": 3, "node_rank": 1, "rdzv_endpoint": "localhost:29500"},
    }.items():
        (tmp_path / name).write_text(yaml.safe_dump(params(**train)))
        args = ["rnn", "--store", "s", "--out", "o", "--live", live, "--params", name]
        result = CliRunner().invoke(typer_app(), [*map(str, args), "--seed", "3", "--fresh"])
        assert result.exit_code == 0, result.output
    (one, pid_one), (node1, _) = seen
    assert pid_one == str(os.getpid()) and LAUNCHER_PID_ENV not in os.environ
    assert (one.standalone, one.nproc_per_node, one.nnodes) == (True, "2", "1")
    assert (one.module, one.training_script) == (True, "pipeline")
    args = ["rnn", "--store", "s", "--out", "o", "--live", str(live), "--params", "one.yaml"]
    assert one.training_script_args == ["train", *args, "--seed", "3", "--fresh"]
    assert node1.standalone is False
    assert (node1.rdzv_backend, node1.rdzv_endpoint) == ("static", "localhost:29500")
    assert node1.rdzv_conf == f"timeout={params()['train']['rdzv_timeout_s']}"
    launched = (node1.nproc_per_node, node1.nnodes, node1.node_rank, node1.max_restarts)
    assert launched == ("1", "3", 1, 0)


def typer_app():  # noqa: ANN201
    import typer

    app = typer.Typer()
    app.command()(train_command)
    return app


def launch_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **train: object) -> Any:
    """`etude train` with these train keys, torch.distributed.run replaced by a stub
    that records its call: what the command checks and says before launching."""
    from torch.distributed import run as torchrun

    calls: list[object] = []
    monkeypatch.setattr(torchrun, "run", calls.append)
    monkeypatch.chdir(tmp_path)
    live = tmp_path / "live"
    live.mkdir(exist_ok=True)
    (live / "summary.json").write_text(
        json.dumps({"steps": 1, "best_val_loss": 1.0, "wall_time_s": 1})
    )
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params(**train)))
    args = ["rnn", "--store", "s", "--out", "o", "--live", str(live), "--params", "p.yaml"]
    result = CliRunner().invoke(typer_app(), args)
    return result, calls


def test_an_endpoint_whose_host_does_not_resolve_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    endpoint = "no-such-host.invalid:29500"
    result, calls = launch_output(
        monkeypatch, tmp_path, nnodes=2, node_rank=1, rdzv_endpoint=endpoint
    )
    assert result.exit_code == 1 and not calls, result.output
    assert f"train.rdzv_endpoint '{endpoint}': host 'no-such-host.invalid' does not resolve" in (
        result.output
    )


def test_more_processes_than_cores_get_one_warning_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cores = os.cpu_count() or 1
    caplog.set_level("WARNING", logger="pipeline.modeling.train")
    result, calls = launch_output(monkeypatch, tmp_path, nproc_per_node=cores + 1)
    assert result.exit_code == 0 and len(calls) == 1, result.output
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [
        f"rnn: train.nproc_per_node is {cores + 1}, more than this machine's {cores} CPU "
        "cores: the ranks will share them and run slower than fewer would"
    ]
    caplog.clear()
    launch_output(monkeypatch, tmp_path, nproc_per_node=cores)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def wait_in_log(proc: subprocess.Popen[bytes], text: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while text not in output(proc):
        assert proc.poll() is None, output(proc)
        assert time.monotonic() < deadline, f"no {text!r} in time"
        time.sleep(0.02)


def interrupt(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Ctrl-C as a terminal sends it (SIGINT to the foreground process group): the exit
    code and the seconds the command took to end."""
    ranks = children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    began = time.monotonic()
    code = proc.wait(timeout=30)
    took = time.monotonic() - began
    deadline = time.monotonic() + 5
    while alive := [pid for pid in ranks if running(pid)]:
        assert time.monotonic() < deadline, f"ranks {alive} outlived the interrupt"
        time.sleep(0.01)
    return code, took


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_under_ddp_says_once_what_was_kept_and_exits_130(
    setup: Path, env: dict[str, str]
) -> None:
    """One line from the launcher, none from the ranks, and a true one: last.pt holds
    the step it names, and the command ends within seconds."""
    work = setup / "ctrl-c"
    models = work / "m" / "models"
    # long enough that the run cannot end on its own before the Ctrl-C
    (setup / "long.yaml").write_text(yaml.safe_dump(params(nproc_per_node=2, max_steps=20_000)))
    with started(train_cmd(setup, work, "long.yaml"), work, env) as proc:
        wait_in_log(proc, "step 20: train loss")
        while not (models / "last.pt").exists():
            time.sleep(0.005)
        code, took = interrupt(proc)
        said = output(proc)
    assert code == 130, said
    assert took < 10, f"{took:.1f} s to stop"
    lines = [line for line in said.splitlines() if "interrupted" in line]
    step = load(models / "last.pt")["step"]
    assert lines == [
        f"interrupted: rnn: kept {models / 'last.pt'} at step {step}; `dvc repro` resumes from it"
    ], said
    assert "Traceback" not in said and "rank" not in said.split("interrupted")[-1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_machine_waiting_for_the_others_says_so_and_ctrl_c_ends_the_wait(
    setup: Path, env: dict[str, str]
) -> None:
    """nnodes 2 and the other machine never starts: node 0 says what it waits for and
    how long, and Ctrl-C ends the wait in seconds, though torch waits in C++."""
    endpoint = f"127.0.0.1:{free_port()}"
    (setup / "alone.yaml").write_text(
        yaml.safe_dump(params(nnodes=2, node_rank=0, rdzv_endpoint=endpoint, rdzv_timeout_s=120))
    )
    work = setup / "alone"
    with started(train_cmd(setup, work, "alone.yaml"), work, env) as proc:
        wait_in_log(proc, f"rnn: waiting for 2 machines at {endpoint} (timeout 120 s")
        time.sleep(1.0)  # inside torch's rendezvous by now
        code, took = interrupt(proc)
        said = output(proc)
    assert code == 130, said
    assert took < 10, f"{took:.1f} s to stop"
    assert said.strip().splitlines()[-1] == (
        "interrupted: rnn: no checkpoint was written; a rerun starts training over"
    )
    assert not (work / "m").exists()


def test_machines_that_never_meet_fail_after_the_params_timeout(
    setup: Path, env: dict[str, str]
) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    (setup / "late.yaml").write_text(
        yaml.safe_dump(params(nnodes=2, node_rank=1, rdzv_endpoint=endpoint, rdzv_timeout_s=3))
    )
    work = setup / "late"
    began = time.monotonic()
    done = run(train_cmd(setup, work, "late.yaml"), work, env)
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - began < 60
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: rnn: the 2 machines did not meet at train.rdzv_endpoint '{endpoint}' "
        "within train.rdzv_timeout_s = 3 s ("
    ), last
    assert last.endswith("); nothing was trained"), last
