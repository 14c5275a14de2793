"""The `train` stage (a typer command).

``etude train <model>`` reads the model's representation store, trains it with
`pipeline.modeling.fit.fit` and writes ``models/<model>/{model.pt,last.pt}`` plus
``reports/train/<model>/`` (dvclive curves and ``summary.json``). Its params are the
shared ``train`` section and ``models.<model>``; an optional ``train`` mapping inside
``models.<model>`` overrides keys of the shared section for that model only (models
differ a lot in step cost, e.g. ``models.rnn.train: {max_steps: 1500}``), and an
optional ``representation`` key (read by dvc.yaml's foreach) must name the store
the model reads, and an optional ``network`` key (read for the stages' deps) the model
whose module holds the network class it trains or extends (`base.network_model`).

Several processes: when ``train.nproc_per_node * train.nnodes > 1`` and this process
is not already a launched rank (no ``WORLD_SIZE`` in the environment), the command
launches itself, the same arguments, once per rank through torch's own launcher
(``torch.distributed.run``, the engine of ``torchrun``, run in this process) and waits;
rank 0 writes the outputs (`pipeline.modeling.fit`). So dvc.yaml's command stays
``etude train <model> ...`` and ``dvc exp run -S train.nproc_per_node=8`` trains on
eight GPUs. A person may still wrap the command in ``torchrun`` by hand (then the
environment decides the world size and the launch keys are not read).

Training loads base, checkpoint, the loop (fit and its parts: resume, distributed,
live, scoring), this module, the model's family ``__init__`` and the model's own
module, never any sampling code (``etude generate`` and ``etude interpolate`` live in
`pipeline.modeling.generate`).

Torch is imported inside the command so that ``etude --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.core.config import MODELS, PARAMS_FILE, PROCESSED, REPORTS
from pipeline.core.stage_utils import INTERRUPT_EXIT, Interrupted, user_errors

if TYPE_CHECKING:
    from pipeline.modeling.base import ModelSpec, StoreData, TrainParams

log = logging.getLogger(__name__)

# set by the launcher for its ranks: the pid they must not outlive
LAUNCHER_PID_ENV = "ETUDE_LAUNCHER_PID"

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read.")]
NameArg = Annotated[str, typer.Argument(help="Model name (a key of params.yaml `models`).")]


# --------------------------------------------------------------------------------------
# Params


def load_train_params(name: str, params: Path = PARAMS_FILE) -> tuple[Any, TrainParams]:
    """The model's config (``models.<name>``) and its train params (``train`` + overrides).

    Raises:
        ParamsError: unknown model, or a bad key or value in either section.
    """
    from pipeline.core.params import params_errors, read_params_file

    spec = model_spec(name)
    data = read_params_file(params)
    with params_errors(params):  # the messages name the file read, not "params.yaml"
        return _train_sections(name, spec, data)


def _train_sections(name: str, spec: ModelSpec, data: dict[str, Any]) -> tuple[Any, TrainParams]:
    """`load_train_params` on the parsed file: its messages say "params.yaml:"."""
    from pipeline.core.params import ParamsError, from_mapping, get_section
    from pipeline.modeling import base

    shared = get_section(data, "train")
    section = get_section(data, f"models.{name}")
    if not isinstance(shared, Mapping):
        raise ParamsError("params.yaml: 'train' must be a mapping")
    if not isinstance(section, Mapping):
        raise ParamsError(f"params.yaml: 'models.{name}' must be a mapping")
    section = dict(section)
    declared = section.pop("representation", None)  # dvc.yaml's foreach reads it
    if declared is not None and declared != spec.representation:
        raise ParamsError(
            f"params.yaml: 'models.{name}.representation' is {declared!r}, but model "
            f"'{name}' reads the {spec.representation!r} store"
        )
    network = section.pop("network", None)  # dvc.yaml's foreach reads it for the deps
    if network is not None and network != base.network_model(spec):
        raise ParamsError(
            f"params.yaml: 'models.{name}.network' is {network!r}, but model '{name}' "
            f"trains the network of {base.network_model(spec)!r}"
        )
    override = section.pop("train", None) or {}
    if not isinstance(override, Mapping):
        raise ParamsError(f"params.yaml: 'models.{name}.train' must be a mapping")
    allowed = sorted(f.name for f in fields(base.TrainParams))
    unknown = sorted(set(override) - set(allowed))
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown key 'models.{name}.train.{unknown[0]}'; allowed: {allowed}"
        )
    train = from_mapping({**shared, **override}, base.TrainParams, "train")
    config = from_mapping(section, spec.config_cls, f"models.{name}")
    return config, train


def model_spec(name: str) -> ModelSpec:
    """The registered model `name`, or a ParamsError naming the known ones."""
    from pipeline.modeling import base

    return base.model_spec(name)


def load_store_for(spec: ModelSpec, store: Path) -> StoreData:
    """Load the representation store that `spec` reads."""
    from pipeline.representations import load_store

    return load_store(store, spec.representation)


# --------------------------------------------------------------------------------------
# Commands


def train_command(
    name: NameArg,
    store: Annotated[
        Path | None, typer.Option(help="Representation store (default: data/processed/<repr>).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Model folder (default: models/<name>).")] = None,
    live: Annotated[
        Path | None, typer.Option(help="Curves folder (default: reports/train/<name>).")
    ] = None,
    fresh: Annotated[bool, typer.Option(help="Ignore OUT/last.pt and start over.")] = False,
    seed: Annotated[
        int | None,
        typer.Option(help="Replaces train.seed (several seeds of one model: one OUT each)."),
    ] = None,
    params: ParamsOpt = PARAMS_FILE,
) -> None:
    """Train model NAME; writes OUT/model.pt (best), OUT/last.pt (resumable), LIVE/."""
    from pipeline.modeling.checkpoint import CheckpointError
    from pipeline.modeling.scoring import FitError
    from pipeline.representations import RepresentError

    with user_errors(FitError, CheckpointError, RepresentError):
        summary = run_training(name, store, out, live, params, resume=not fresh, seed=seed)
        if summary is None:
            typer.echo(f"{name}: this machine's ranks finished; node 0 wrote the outputs")
            return
        if os.environ.get("RANK", "0") != "0" or LAUNCHER_PID_ENV in os.environ:
            return  # one line per run: the launcher's, or rank 0's under a hand-run torchrun
        typer.echo(
            f"{name}: {summary['steps']} steps, best validation loss "
            f"{summary['best_val_loss']}, {summary['wall_time_s']:.0f} s"
        )


def run_training(
    name: str,
    store: Path | None,
    out: Path | None,
    live: Path | None,
    params: Path = PARAMS_FILE,
    resume: bool = True,
    seed: int | None = None,
) -> dict[str, Any] | None:
    """Load params and store, fit, write ``LIVE/summary.json``; returns the summary.

    ``seed`` replaces ``train.seed`` (benchmarks train one model under several seeds,
    each into its own OUT; the seed is in the stage's command, so DVC tracks it).
    When the train params ask for several processes, `launch` runs them; the summary
    is then rank 0's, and None on the other machines (they write nothing).
    """
    from pipeline.core.io import write_json
    from pipeline.modeling.fit import fit

    spec = model_spec(name)
    config, train = load_train_params(name, params)
    if seed is not None:
        train = dataclasses.replace(train, seed=seed)
    store = store or PROCESSED / spec.representation
    out = out or MODELS / name
    live = live or REPORTS / "train" / name
    if train.n_processes > 1 and "WORLD_SIZE" not in os.environ:
        argv = ["train", name, "--store", store, "--out", out, "--live", live, "--params", params]
        argv += [*(["--seed", seed] if seed is not None else []), *([] if resume else ["--fresh"])]
        launch(name, train, [str(a) for a in argv], out)
        return json.loads((live / "summary.json").read_text()) if train.node_rank == 0 else None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if train.n_processes > 1 and world != train.n_processes:
        log.warning(
            "train.nproc_per_node * nnodes asks for %d processes; this is one of %d ranks "
            "that a launcher started, which the run follows",
            train.n_processes,
            world,
        )
    exit_with_launcher()
    data = load_store_for(spec, store)
    summary = fit(spec, config, train, data, out, live, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(live / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------------------
# Launching several processes


def launch(name: str, train: TrainParams, argv: list[str], out: Path) -> None:
    """Run ``python -m pipeline <argv>`` as this machine's ranks and wait for them.

    The launcher is torch.distributed.run itself (``torchrun``'s engine), called in
    this process with the arguments a person would give ``torchrun`` (`torchrun_args`).
    No restarts: a failed rank ends the run, and a rerun resumes from OUT/last.pt.
    Ctrl-C ends every rank within seconds (`_interruptible`), with one line saying
    what `out` kept.

    Raises:
        FitError: a rank failed (its own error is printed above), a signal other than
            SIGINT stopped the run, or the machines did not meet.
        Interrupted: Ctrl-C (SIGINT); its message says what was kept.
    """
    from torch.distributed import DistError
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError

    check_launch(name, train)
    since = time.time()
    args = torchrun_args(train, argv)
    if train.rdzv_endpoint:
        log.info(
            "%s: waiting for %d machines at %s (timeout %d s, train.rdzv_timeout_s)",
            name,
            train.nnodes,
            train.rdzv_endpoint,
            train.rdzv_timeout_s,
        )
    log.info("%s: launching %d processes: torchrun %s", name, train.nproc_per_node, " ".join(args))
    # the ranks inherit this environment: the pid to die with, and train.num_threads as
    # OMP_NUM_THREADS (torchrun would set 1 with a warning banner)
    env = {LAUNCHER_PID_ENV: str(os.getpid())}
    if train.num_threads > 0 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(train.num_threads)
    os.environ.update(env)
    failures = (ChildFailedError, KeyboardInterrupt, SignalException, RendezvousError, DistError)
    try:
        with _interruptible(lambda: kept_message(name, out, since)), _quiet_torch_logs():
            torchrun.run(torchrun.parse_args(args))
    except failures as exc:
        raise launch_error(exc, name, train, lambda: kept_message(name, out, since)) from None
    finally:
        for key in env:
            os.environ.pop(key, None)


def torchrun_args(train: TrainParams, argv: list[str]) -> list[str]:
    """``torchrun``'s arguments for this machine's ranks of ``python -m pipeline <argv>``.

    One machine without an endpoint gets ``--standalone`` (a rendezvous on a free local
    port, so several runs never collide); several machines meet at
    ``train.rdzv_endpoint`` (static rendezvous: ``train.node_rank`` is the machine's
    index, and node 0, which hosts the endpoint, holds global rank 0 and so the
    outputs) within ``train.rdzv_timeout_s``.
    """
    args = ["--nproc-per-node", str(train.nproc_per_node), "--nnodes", str(train.nnodes)]
    args += ["--node-rank", str(train.node_rank), "--max-restarts", "0"]
    if train.rdzv_endpoint:
        args += ["--rdzv-backend", "static", "--rdzv-endpoint", train.rdzv_endpoint]
        args += ["--rdzv-conf", f"timeout={train.rdzv_timeout_s}"]
    else:
        args.append("--standalone")
    return [*args, "--module", "pipeline", *argv]


def launch_error(
    exc: BaseException, name: str, train: TrainParams, kept: Callable[[], str]
) -> Exception:
    """The error a failed launch raises, in the user's words: Interrupted for Ctrl-C,
    FitError otherwise; `kept` says what OUT kept.

    `exc` is what torch's launcher raised: ChildFailedError (a rank failed, or a Ctrl-C
    reached the ranks first), KeyboardInterrupt (Ctrl-C before torch took over the
    signal handlers), SignalException (SIGINT, SIGTERM, ...: torch stopped the ranks),
    or RendezvousError / DistError (DistNetworkError: the endpoint is unreachable).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from pipeline.modeling.scoring import FitError

    if isinstance(exc, ChildFailedError):
        rank, failure = exc.get_first_failure()
        if failure.exitcode == INTERRUPT_EXIT:  # a Ctrl-C that reached the ranks first
            return Interrupted(kept())
        how = (
            f"was killed by signal {-failure.exitcode}"
            if failure.exitcode < 0
            else f"exited with code {failure.exitcode}"
        )
        return FitError(
            f"{name}: rank {rank} of {train.n_processes} {how} (its error is above); "
            f"every rank was stopped; {kept()}"
        )
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted(kept())
    if isinstance(exc, SignalException):
        if exc.sigval == signal.SIGINT:
            return Interrupted(kept())
        return FitError(
            f"{name}: stopped by {signal.Signals(exc.sigval).name} with every rank; {kept()}"
        )
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return FitError(
        f"{name}: the {train.nnodes} machines did not meet at train.rdzv_endpoint "
        f"{train.rdzv_endpoint!r} within train.rdzv_timeout_s = {train.rdzv_timeout_s} s "
        f"({first}); nothing was trained"
    )


def check_launch(name: str, train: TrainParams) -> None:
    """Refuse an endpoint that cannot work, and warn (one line) of more processes than
    this machine has GPUs (``device`` cuda or auto with CUDA) or CPU cores.

    Raises:
        FitError: ``train.rdzv_endpoint``'s host does not resolve.
    """
    import socket

    import torch

    from pipeline.modeling.scoring import FitError

    if train.rdzv_endpoint:
        host, _, port = train.rdzv_endpoint.rpartition(":")
        try:
            socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise FitError(
                f"train.rdzv_endpoint {train.rdzv_endpoint!r}: host {host!r} does not "
                f"resolve ({exc}); give machine 0's name or address"
            ) from None
    on_gpu = train.device != "cpu" and torch.cuda.is_available()
    have = torch.cuda.device_count() if on_gpu else (os.cpu_count() or 1)
    what = "GPUs" if on_gpu else "CPU cores"
    if train.nproc_per_node > have:
        log.warning(
            "%s: train.nproc_per_node is %d, more than this machine's %d %s: the ranks "
            "will share them and run slower than fewer would",
            name,
            train.nproc_per_node,
            have,
            what,
        )


def kept_message(name: str, out: Path, since: float) -> str:
    """What an interrupted launch leaves in `out` and what a rerun does with it."""
    from pipeline.modeling.checkpoint import CheckpointError, load_checkpoint

    last = Path(out) / "last.pt"
    try:
        step = int(load_checkpoint(last, name).get("step", 0)) if last.exists() else None
    except CheckpointError:
        step = None
    if step is None:
        return f"{name}: no checkpoint was written; a rerun starts training over"
    fresh = "" if last.stat().st_mtime >= since else " (from before this launch)"
    return f"{name}: kept {last} at step {step}{fresh}; `dvc repro` resumes from it"


@contextlib.contextmanager
def _interruptible(kept: Callable[[], str], grace_s: float = 5.0) -> Iterator[None]:
    """Make Ctrl-C end a launch within `grace_s` seconds, whatever the launcher is doing.

    torch handles SIGINT by stopping the ranks and raising SignalException, but only
    when the main thread runs Python: while it waits in C++ for other machines at the
    rendezvous (TCPStore) a Ctrl-C would wait for the timeout. The C-level signal
    handler writes to a wakeup fd at once, whatever the main thread does; a watcher
    thread reads it and, if the launch is still running `grace_s` later, prints the one
    line and ends the process (the ranks die with it: `exit_with_launcher`).
    """
    import select
    import socket

    if threading.current_thread() is not threading.main_thread():
        yield  # set_wakeup_fd works in the main thread only; torch's handling remains
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            ready, _, _ = select.select([reader], [], [], 0.2)
            if not ready or signal.SIGINT not in reader.recv(64):
                continue
            if done.wait(grace_s):
                return
            sys.stderr.write(f"interrupted: {kept()}\n")
            sys.stderr.flush()
            os._exit(INTERRUPT_EXIT)

    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="launch-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous)
        watcher.join()
        reader.close()
        writer.close()


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """torch's launcher logs a warning per rank when it stops them (64 ranks, 130+
    lines for one Ctrl-C); Etude says what happened in one line of its own."""
    logger = logging.getLogger("torch.distributed.elastic")
    children = [
        logging.getLogger(n)
        for n in list(logging.root.manager.loggerDict)
        if n.startswith(logger.name)
    ]
    saved = [(lg, lg.level) for lg in [logger, *children]]
    for lg, _ in saved:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def exit_with_launcher() -> None:
    """Make a rank of `launch` die with the launcher, however the launcher ends.

    torch.distributed.run starts each rank in a session of its own, so a SIGKILL of
    the launcher (or of `dvc repro`'s process group) would leave the ranks training,
    and writing OUT, beside a rerun. Linux: the kernel sends SIGKILL when the parent
    dies (``PR_SET_PDEATHSIG``); elsewhere a thread checks the parent every second.
    """
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if not launcher:
        return
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    else:

        def watch() -> None:
            while os.getppid() == int(launcher):
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="exit-with-launcher", daemon=True).start()
    if os.getppid() != int(launcher):  # it died before the kernel was told
        os._exit(1)
