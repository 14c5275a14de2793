"""`fit`: the one training loop, generic over registered models.

Each model computes its own loss in ``forward(batch)`` (see `pipeline.modeling.base`),
so this loop only moves batches, steps the optimizer, evaluates, logs and saves:

* deterministic: python, numpy and torch are seeded from ``train.seed`` and torch
  runs with ``use_deterministic_algorithms(True, warn_only=True)``; an epoch's order
  is a pure function of (seed, epoch) and datasets that draw random crops get the
  epoch through ``set_epoch``; evaluation runs under a forked, fixed-seed RNG so it
  never shifts the training stream;
* AdamW (weight decay on weight matrices and kernels only, as nanoGPT), linear
  warmup over ``warmup_steps`` then cosine decay to 10% of the rate at
  ``max_steps``, gradient-norm clipping at ``grad_clip`` (0 = off);
* every ``eval_every`` steps the mean validation terms over the whole validation
  split (``eval_batches: 0``, the default) or over a fixed sample of ``eval_batches``
  batches drawn once, spread over the split (`validation_loader`); the checkpoint
  with the best validation ``loss`` so far is saved to ``out_dir/model.pt`` (models
  whose training loss differs from what they report make their evaluation ``loss``
  the reported objective, e.g. the VAE's negative ELBO); training stops early after
  ``patience`` evaluations without improvement;
* every ``checkpoint_every`` steps (and at the end) ``out_dir/last.pt`` holds model,
  optimizer, scheduler, step, RNG states and best-so-far, written atomically; a
  later ``fit`` with the same model config, representation params and train params
  resumes from it and ends with the same weights as an uninterrupted run;
* dvclive curves under ``live_dir`` (train terms averaged since the last
  evaluation, validation terms, learning rate), never touching git or dvc.yaml;
* ``train.precision: bf16``: the forward pass (which computes the loss) of training
  and validation steps runs under ``torch.autocast(dtype=bfloat16)``; weights,
  gradients, optimizer state and checkpoints stay fp32, and bf16 needs no loss scaling;
* under ``torch.distributed.run`` (``WORLD_SIZE > 1``; `pipeline.modeling.train`
  launches it from ``train.nproc_per_node``/``nnodes``, or a person runs ``torchrun``)
  DistributedDataParallel with gloo on CPU or nccl on CUDA: each rank reads its
  DistributedSampler shard of every epoch; rank 0 reads last.pt and hands it to every
  rank, and only rank 0 evaluates, logs and writes files (decisions are broadcast, the
  logged training terms are means over all ranks).

Optional model hooks: ``set_step(step)`` is called before each training step (e.g.
the VAE's KL annealing); a forward output ``n_units`` (the number of scored cells,
notes or tokens in the batch) weights batch means so that evaluation means are per
unit, and is not logged as a term.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from pipeline.core.stage_utils import Interrupted
from pipeline.modeling.base import CHECKPOINT_VERSION, ModelSpec, StoreData, TrainParams
from pipeline.modeling.checkpoint import (
    CheckpointError,
    describe,
    load_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)

MIN_LR_FRACTION = 0.1  # cosine decay ends at this fraction of learning_rate
WEIGHT_KEY = "n_units"  # optional forward output: batch weight, not a logged term
# Train params that do not change the result: a checkpoint resumes across them. The
# launch keys only request processes: the world size they give is fingerprinted itself
# (it sets the global batch), and node_rank and rdzv_endpoint differ between machines
# and restarts of one run. precision is not here: bf16 and fp32 steps differ.
RESUME_INDEPENDENT = (
    "checkpoint_every",
    "num_threads",
    "device",
    "nproc_per_node",
    "nnodes",
    "node_rank",
    "rdzv_endpoint",
    "rdzv_timeout_s",
)


class FitError(RuntimeError):
    """Training cannot run or went wrong (empty split, non-finite loss, no CUDA)."""


@dataclasses.dataclass
class _Dist:
    """Distributed context: world size 1 means a plain single process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def fit(
    spec: ModelSpec,
    config: Any,
    train_params: TrainParams,
    store: StoreData,
    out_dir: Path,
    live_dir: Path,
    resume: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train `spec`'s model on `store` and write ``model.pt`` and ``last.pt`` in `out_dir`.

    Args:
        spec: the registered model.
        config: its config dataclass (``spec.prepare`` fills store-derived fields).
        train_params: the ``train`` params section.
        store: the representation store, with train and validation rows.
        out_dir: ``models/<name>``; gets ``model.pt`` (best validation loss) and
            ``last.pt`` (resumable state).
        live_dir: ``reports/train/<name>``; dvclive metrics and plots.
        resume: continue from ``out_dir/last.pt`` when it matches this run.
        on_step: called after every optimizer step with the step number (tests use it
            to interrupt a run; a progress hook otherwise).

    Returns:
        Summary: steps, best_val_loss, best_step, stopped_early, resumed_from,
        wall_time_s (all sessions of this run), n_parameters, device.

    Raises:
        FitError: empty train split, non-finite loss, or CUDA requested but absent.
    """
    summary, _ = fit_model(
        spec, config, train_params, store, out_dir, live_dir, resume=resume, on_step=on_step
    )
    return summary


def fit_model(
    spec: ModelSpec,
    config: Any,
    train_params: TrainParams,
    store: StoreData,
    out_dir: Path,
    live_dir: Path,
    resume: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], torch.nn.Module]:
    """`fit`, also returning this process's final model (for callers that keep using it)."""
    out_dir, live_dir = Path(out_dir), Path(live_dir)
    dist = _init_distributed(train_params)
    # process-wide torch settings that fit changes, restored on the way out
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        return _fit(spec, config, train_params, store, out_dir, live_dir, resume, on_step, dist)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        if dist.initialised_here:
            torch.distributed.destroy_process_group()


def _fit(
    spec: ModelSpec,
    config: Any,
    tp: TrainParams,
    store: StoreData,
    out_dir: Path,
    live_dir: Path,
    resume: bool,
    on_step: Callable[[int], None] | None,
    dist: _Dist,
) -> tuple[dict[str, Any], torch.nn.Module]:
    began = time.monotonic()
    device = _device(tp, dist)
    if tp.num_threads > 0:
        torch.set_num_threads(tp.num_threads)
    seed_everything(tp.seed)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    if spec.check_train is not None:
        spec.check_train(config, tp)
    if spec.prepare is not None:
        config = spec.prepare(store, config)
    train_data = spec.make_dataset(store, config, "train")
    val_data = spec.make_dataset(store, config, "validation")
    if tp.augment.active:  # train windows only: validation and test stay as recorded
        set_augment = getattr(train_data, "set_augment", None)
        if not callable(set_augment):
            raise FitError(
                f"{spec.name}: its dataset cannot augment; set train.augment "
                f"(or models.{spec.name}.train.augment) to transpositions [0], stretches [1.0]"
            )
        set_augment(tp.augment)
    if len(train_data) == 0:
        raise FitError(f"{spec.name}: the train split of {store.path or 'the store'} is empty")
    if len(val_data) == 0:
        log.warning("%s: empty validation split; model.pt will be the last weights", spec.name)

    model = spec.model_cls(config).to(device)
    n_parameters = sum(p.numel() for p in model.parameters())
    optimizer = _optimizer(model, tp)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tp))
    header = {
        "name": spec.name,
        "representation": spec.representation,
        "checkpoint_version": CHECKPOINT_VERSION,
        "config": describe(config),
        "repr_params": describe(store.params),
        "train_params": dataclasses.asdict(tp),
    }
    fingerprint = {
        **_fingerprint(header),
        "code": code_digest(spec),
        "data": store_digest(store),
        "world_size": dist.world_size,
    }

    state = _resume_state(out_dir / "last.pt", spec.name, fingerprint, dist) if resume else None
    step, best, best_step, bad_evals, elapsed_before, finished = 0, math.inf, 0, 0, 0.0, False
    stopped_early = False
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"], dist)
        step = int(state["step"])
        best = float(state["best_val_loss"])
        best_step = int(state["best_step"])
        bad_evals = int(state["bad_evals"])
        elapsed_before = float(state["wall_time_s"])
        finished = bool(state["finished"])
        stopped_early = bool(state.get("stopped_early", False))
        log.info("%s: resuming from %s at step %d", spec.name, out_dir / "last.pt", step)
    resumed_from = step if state is not None else None
    stale = out_dir / "model.pt"
    if state is None and dist.is_main and stale.exists():
        log.info("%s: removing %s of an earlier run", spec.name, stale)
        stale.unlink()  # a fresh run must not leave another run's best model behind

    summary = {
        "steps": step,
        "best_val_loss": None if math.isinf(best) else best,
        "best_step": best_step,
        "stopped_early": stopped_early,
        "resumed_from": resumed_from,
        "n_parameters": n_parameters,
        "device": str(device),
    }
    if finished:
        log.info("%s: last.pt says training already finished at step %d", spec.name, step)
        summary["wall_time_s"] = elapsed_before
        return summary, model

    live = _open_live(live_dir, resume_step=step if state is not None else None, dist=dist)
    net: torch.nn.Module = model
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)

    val_loader = validation_loader(val_data, tp)
    batches = _batches(train_data, tp, step, dist)
    sums: dict[str, float] = {}
    weight_sum = 0.0
    set_step = getattr(model, "set_step", None)
    saved_step = step if state is not None else None  # the step last.pt holds on disk
    try:
        while step < tp.max_steps and not stopped_early:
            batch = _to_device(next(batches), device)
            net.train()
            if callable(set_step):
                set_step(step)
            with autocast(tp.precision, device):
                out = net(batch)
            loss = out["loss"]
            if not torch.isfinite(loss.detach()).all():
                raise FitError(
                    f"{spec.name}: loss is {float(loss.detach())} at step {step + 1}; "
                    "lower train.learning_rate or check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tp.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            w = float(out.get(WEIGHT_KEY, 1.0))
            for key, value in scalar_terms(out).items():
                sums[key] = sums.get(key, 0.0) + value * w
            weight_sum += w

            last_step = step >= tp.max_steps
            if step % tp.eval_every == 0 or last_step:
                val = (
                    evaluate_loader(model, val_loader, None, device, tp.seed, tp.precision)
                    if dist.is_main and len(val_data)
                    else {}
                )
                sums, weight_sum = _sum_over_ranks(sums, weight_sum, dist, device)
                val_loss = _broadcast(val.get("loss", math.nan), dist, device)
                improved = len(val_data) > 0 and val_loss < best
                if improved:
                    best, best_step, bad_evals = val_loss, step, 0
                    if dist.is_main:
                        save_checkpoint(
                            {
                                **header,
                                "step": step,
                                "val_loss": val_loss,
                                "state_dict": model.state_dict(),
                            },
                            out_dir / "model.pt",
                        )
                elif len(val_data):
                    bad_evals += 1
                    if tp.patience and bad_evals >= tp.patience:
                        stopped_early = True
                        log.info(
                            "%s: no validation improvement in %d evaluations; stopping at step %d",
                            spec.name,
                            bad_evals,
                            step,
                        )
                if live is not None:
                    _log_live(live, step, sums, weight_sum, val, scheduler.get_last_lr()[0])
                (log.info if dist.is_main else log.debug)(
                    "%s step %d: train loss %.4f, val loss %.4f",
                    spec.name,
                    step,
                    sums.get("loss", math.nan) / max(weight_sum, 1e-12),
                    val_loss,
                )
                sums, weight_sum = {}, 0.0

            done = last_step or stopped_early
            if step % tp.checkpoint_every == 0 or done:
                elapsed = elapsed_before + time.monotonic() - began
                rng = _gather_rng_state(dist)
                if done and len(val_data) == 0 and dist.is_main:
                    save_checkpoint(
                        {
                            **header,
                            "step": step,
                            "val_loss": None,
                            "state_dict": model.state_dict(),
                        },
                        out_dir / "model.pt",
                    )
                if dist.is_main:
                    save_checkpoint(
                        {
                            **header,
                            "fingerprint": fingerprint,
                            "step": step,
                            "state_dict": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "rng": rng,
                            "best_val_loss": best,
                            "best_step": best_step,
                            "bad_evals": bad_evals,
                            "wall_time_s": elapsed,
                            "finished": done,
                            "stopped_early": stopped_early,
                        },
                        out_dir / "last.pt",
                    )
                saved_step = step
            if on_step is not None:
                on_step(step)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(spec.name, out_dir, step, saved_step, tp)) from None
    finally:
        if live is not None:
            live.end()
    summary.update(
        steps=step,
        best_val_loss=None if math.isinf(best) else best,
        best_step=best_step,
        stopped_early=stopped_early,
        wall_time_s=elapsed_before + time.monotonic() - began,
    )
    return summary, model


def interrupted_message(
    name: str, out_dir: Path, step: int, saved_step: int | None, tp: TrainParams
) -> str:
    """What a Ctrl-C at `step` kept and what a rerun does (last.pt is written whole)."""
    if saved_step is None:
        return (
            f"{name}: stopped at step {step}, before the first checkpoint "
            f"(train.checkpoint_every = {tp.checkpoint_every}); a rerun starts training over"
        )
    best = " and model.pt (the best so far)" if (out_dir / "model.pt").exists() else ""
    return (
        f"{name}: stopped at step {step}; kept {out_dir / 'last.pt'} at step {saved_step}"
        f"{best}; `dvc repro` (or this command) resumes from it"
    )


# --------------------------------------------------------------------------------------
# Evaluation helpers (also used by pipeline.evaluation.evaluate)


def scalar_terms(out: dict[str, Any]) -> dict[str, float]:
    """The scalar entries of a forward output as floats (the weight key excluded)."""
    terms = {}
    for key, value in out.items():
        if key == WEIGHT_KEY:
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            terms[key] = float(value.detach())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            terms[key] = float(value)
    return terms


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context of a forward pass in `precision` (``train.precision``) on `device`.

    ``bf16``: ``torch.autocast`` with bfloat16, on CPU as on CUDA: matmuls, linear
    layers, convolutions and LSTMs run in bf16, log-softmax and the losses in fp32
    (tests/modeling/test_precision.py says what each model runs in which). On a CPU
    whose oneDNN has no bf16 kernels (`cpu_bf16_kernels`; e.g. AVX2 without AVX-512),
    oneDNN's LSTM refuses bf16, so the forward runs with oneDNN off: torch's own CPU
    kernels serve every op (LSTMs then compute in fp32, the rest stays bf16), and a
    warning says so once. A CUDA device without bf16 is refused. ``fp32``: no context
    at all, so the default run computes exactly what it computed before.

    Raises:
        FitError: an unknown precision, or bf16 on a GPU without it.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise FitError(f"train.precision must be fp32 or bf16, got {precision!r}")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise FitError(
            f"train.precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 "
            "support; set train.precision: fp32"
        )
    bf16 = torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if device.type != "cpu" or cpu_bf16_kernels():
        return bf16
    _warn_once(
        "train.precision bf16: this CPU's oneDNN has no bfloat16 kernels; running bf16 on "
        "torch's own CPU kernels (oneDNN off: LSTMs in fp32, slower than on a bf16 CPU)"
    )
    stack = contextlib.ExitStack()
    stack.enter_context(_onednn_off())
    stack.enter_context(bf16)
    return stack


@contextlib.contextmanager
def _onednn_off() -> Iterator[None]:
    """oneDNN off for the forward (torch's ``mkldnn.flags`` would also warn about TF32)."""
    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


def cpu_bf16_kernels() -> bool:
    """Whether oneDNN (torch's CPU kernel library) runs bfloat16 on this CPU.

    Asked of torch, never inferred from the CPU's name: its own check
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``, what decides whether oneDNN
    takes bf16) and a probe of the op that failed without it, a tiny LSTM under bf16
    autocast (oneDNN: "could not create a primitive descriptor for the LSTM forward
    propagation primitive"). The answer is cached per process.
    """
    global _CPU_BF16
    if _CPU_BF16 is None:
        _CPU_BF16 = _probe_cpu_bf16()
    return _CPU_BF16


_CPU_BF16: bool | None = None


def _probe_cpu_bf16() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is not None and not check():
        return False
    try:  # a forked RNG: the probe's weight init must not shift the training stream
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            lstm = torch.nn.LSTM(4, 4, batch_first=True)
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                lstm(torch.zeros(1, 2, 4))
    except RuntimeError:
        return False
    return True


@torch.no_grad()
def evaluate_loader(
    model: torch.nn.Module,
    loader: Any,
    max_batches: int | None,
    device: torch.device,
    seed: int,
    precision: str = "fp32",
) -> dict[str, float]:
    """Weighted mean of every scalar forward term over `max_batches` batches (None: all).

    Runs in eval mode under a forked RNG seeded with `seed`, so stochastic terms (the
    VAE's sampled code, the autoencoder's corruption) are the same at every call and
    the caller's random stream is untouched. `precision` is the training run's (its
    validation steps run as its training steps do); the evaluate stage scores in fp32.
    """
    was_training = model.training
    model.eval()
    devices = [device.index or 0] if device.type == "cuda" else []
    sums: dict[str, float] = {}
    total = 0.0
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                with autocast(precision, device):
                    out = model(_to_device(batch, device))
                w = float(out.get(WEIGHT_KEY, _batch_size(batch)))
                for key, value in scalar_terms(out).items():
                    sums[key] = sums.get(key, 0.0) + value * w
                total += w
    finally:
        model.train(was_training)
    return {k: v / total for k, v in sums.items()} if total else {}


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return int(value.size(0))
    return 1


def validation_loader(data: Any, tp: TrainParams) -> DataLoader:
    """The validation batches of every evaluation (the same ones each time).

    ``train.eval_batches: 0`` (the default): the whole split, in order. ``N > 0``: a
    fixed sample of ``N * batch_size`` items drawn once without replacement (numpy
    generator seeded with ``train.seed``) from the whole split, in index order, so a
    cap on a large corpus still sees every part of it, not only the first pieces.
    """
    items: Any = data
    size = tp.eval_batches * tp.batch_size
    if tp.eval_batches > 0 and size < len(data):
        rng = np.random.default_rng([tp.seed, 0xE7A1])
        chosen = np.sort(rng.choice(len(data), size=size, replace=False))
        items = torch.utils.data.Subset(data, chosen.tolist())
    return DataLoader(items, batch_size=tp.batch_size, shuffle=False, num_workers=0)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return batch


# --------------------------------------------------------------------------------------
# Data order


def _batches(data: Any, tp: TrainParams, start_step: int, dist: _Dist) -> Iterator[Any]:
    """Batches forever, epoch after epoch, starting at batch `start_step` of the stream.

    Epoch e's order is DistributedSampler's shuffle with (train.seed, e) on every
    world size (1 included), so skipping the first `start_step` batches of the
    stream only needs the epoch lengths, never the data.
    """
    sampler = DistributedSampler(
        data,
        num_replicas=dist.world_size,
        rank=dist.rank,
        shuffle=True,
        seed=tp.seed,
        drop_last=False,
    )
    per_epoch = math.ceil(len(sampler) / tp.batch_size)
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        set_epoch = getattr(data, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        indices = list(sampler)[skip * tp.batch_size :]
        generator = torch.Generator().manual_seed(tp.seed + epoch)
        loader = DataLoader(
            data,
            batch_size=tp.batch_size,
            sampler=indices,
            num_workers=0,
            generator=generator,
        )
        yield from loader
        epoch, skip = epoch + 1, 0


# --------------------------------------------------------------------------------------
# Setup


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _device(tp: TrainParams, dist: _Dist) -> torch.device:
    if tp.device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if tp.device == "cuda":
            raise FitError("train.device is 'cuda' but torch sees no CUDA device")
        return torch.device("cpu")
    index = dist.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _init_distributed(tp: TrainParams) -> _Dist:
    """Join the process group that torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Dist()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dist = _Dist(rank=rank, local_rank=local_rank, world_size=world_size)
    if not torch.distributed.is_initialized():
        use_cuda = tp.device != "cpu" and torch.cuda.is_available()
        torch.distributed.init_process_group(
            backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size
        )
        dist.initialised_here = True
    log.info("distributed: rank %d of %d", rank, world_size)
    return dist


def _sum_over_ranks(
    sums: dict[str, float], weight: float, dist: _Dist, device: torch.device
) -> tuple[dict[str, float], float]:
    """`sums` and `weight` added over every rank, so that rank 0 logs the training terms
    of the whole global batch stream, not of its own shard alone."""
    if dist.world_size == 1:
        return sums, weight
    keys = sorted(sums)  # every rank runs the same model: the same terms
    target = device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    values = [sums[k] for k in keys] + [weight]
    tensor = torch.tensor(values, dtype=torch.float64, device=target)
    torch.distributed.all_reduce(tensor)
    total = tensor.tolist()
    return dict(zip(keys, total[:-1], strict=True)), total[-1]


def _broadcast(value: float, dist: _Dist, device: torch.device) -> float:
    """Rank 0's value on every rank (so that all ranks stop at the same step)."""
    if dist.world_size == 1:
        return value
    target = device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([value], dtype=torch.float64, device=target)
    torch.distributed.broadcast(tensor, src=0)
    return float(tensor.item())


def _optimizer(model: torch.nn.Module, tp: TrainParams) -> torch.optim.Optimizer:
    """AdamW; weight decay only on parameters with >= 2 dimensions (not biases)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": tp.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=tp.learning_rate)


def _lr_lambda(tp: TrainParams) -> Callable[[int], float]:
    """Multiplier of learning_rate at scheduler step s: warmup, then cosine decay."""
    warmup, total = tp.warmup_steps, tp.max_steps

    def factor(s: int) -> float:
        if warmup > 0 and s < warmup:
            return (s + 1) / warmup
        span = max(1, total - warmup)
        progress = min(1.0, (s - warmup) / span)
        return MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# --------------------------------------------------------------------------------------
# Resume


def _fingerprint(header: dict[str, Any]) -> dict[str, Any]:
    """What must match for last.pt to continue this run."""
    train = {k: v for k, v in header["train_params"].items() if k not in RESUME_INDEPENDENT}
    return {
        "name": header["name"],
        "representation": header["representation"],
        "config": header["config"],
        "repr_params": header["repr_params"],
        "train_params": train,
    }


def code_digest(spec: ModelSpec) -> str:
    """SHA-1 of the code that trains `spec`'s model.

    The files are base, fit and checkpoint, the model's family package
    (``pipeline/modeling/<representation>/__init__.py``) and its own module, plus any
    other `pipeline.modeling` module its spec's functions and classes come from; each
    is hashed with its module name, in sorted order. last.pt persists across
    `dvc repro` runs so that a killed run resumes; a change of this code (which makes
    DVC rerun the stage) must train from scratch instead of reusing a checkpoint that
    the old code produced, while an edit of another model's files (or of sampling)
    keeps this model's last.pt usable.
    """
    import hashlib

    digest = hashlib.sha1()
    for name in _training_modules(spec):
        digest.update(name.encode())
        digest.update(Path(_source_file(name)).read_bytes())
    return digest.hexdigest()


def _training_modules(spec: ModelSpec) -> list[str]:
    """Sorted names of the `pipeline.modeling` modules whose code trains `spec`."""
    from pipeline.modeling import base

    names = {base.__name__, __name__, save_checkpoint.__module__}
    module = base.REGISTRY.modules.get(spec.name)
    if module is not None:
        names.update((module, module.rpartition(".")[0]))
    parts = (
        spec.config_cls,
        spec.model_cls,
        spec.make_dataset,
        spec.baseline,
        spec.prepare,
        spec.check_train,
    )
    for part in parts:
        for cls in getattr(part, "__mro__", (part,)):
            owner = getattr(cls, "__module__", None) or ""
            if owner.startswith("pipeline.modeling."):
                names.add(owner)
    return sorted(names)


def _source_file(module: str) -> str:
    """The source file of an imported (or importable) module."""
    import importlib
    import inspect
    import sys

    loaded = sys.modules.get(module) or importlib.import_module(module)
    path = inspect.getsourcefile(loaded)
    if path is None:
        raise FitError(f"no source file for module {module} (code digest)")
    return path


def store_digest(store: StoreData) -> dict[str, int]:
    """Row counts per split: new data under unchanged params must not resume."""
    return {split: int(len(rows)) for split, rows in sorted(store.rows.items())}


def _resume_state(
    path: Path, name: str, fingerprint: dict[str, Any], dist: _Dist
) -> dict[str, Any] | None:
    """What `_resumable` finds in rank 0's last.pt, on every rank.

    Only rank 0 writes last.pt, so only its machine is sure to have it (the others need
    no shared disk), and every rank must resume from the same step or the collectives
    of the ranks that run more steps would wait forever.
    """
    state = _resumable(path, name, fingerprint) if dist.is_main else None
    if dist.world_size == 1:
        return state
    box = [state]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _resumable(path: Path, name: str, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state = load_checkpoint(path, name)
    except CheckpointError as exc:
        log.warning("%s; training from scratch", exc)
        return None
    if state.get("fingerprint") != fingerprint:
        log.info("%s: made with other params, code or data; training from scratch", path)
        return None
    return state


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _gather_rng_state(dist: _Dist) -> list[dict[str, Any]]:
    """RNG states of every rank (rank order), so each rank resumes its own stream."""
    state = _rng_state()
    if dist.world_size == 1:
        return [state]
    gathered: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, state)
    return gathered


def _set_rng_state(states: list[dict[str, Any]], dist: _Dist) -> None:
    if len(states) != dist.world_size:
        log.warning(
            "last.pt has RNG states of %d ranks, this run has %d; reseeding",
            len(states),
            dist.world_size,
        )
        return
    state = states[dist.rank]
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy["bit_generator"],
            "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
            "has_gauss": numpy["has_gauss"],
            "gauss": numpy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


# --------------------------------------------------------------------------------------
# Logging


def _open_live(live_dir: Path, resume_step: int | None, dist: _Dist) -> Any:
    """dvclive on rank 0, writing files only: no git, no DVC repo, no dvc.yaml, no
    experiment. Resumed curves are cut back to the checkpoint's step so that the
    replayed steps are not logged twice."""
    if not dist.is_main:
        return None
    from dvclive import Live

    class FilesOnlyLive(Live):
        """Live without its repository hook: stock dvclive opens (or even
        ``dvc init``s) the enclosing repository and fails in a git repository with
        no commits; the stage needs none of that, DVC tracks the files itself."""

        def _init_dvc(self) -> None:
            self._save_dvc_exp = False

    live_dir.mkdir(parents=True, exist_ok=True)
    if resume_step is not None:
        _truncate_curves(live_dir, resume_step)
    return FilesOnlyLive(
        dir=str(live_dir),
        resume=resume_step is not None,
        save_dvc_exp=False,
        dvcyaml=None,
        report=None,
    )


def _truncate_curves(live_dir: Path, step: int) -> None:
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        header, rows = lines[0], lines[1:]
        columns = header.split("\t")
        if "step" not in columns:
            continue
        at = columns.index("step")
        kept = [r for r in rows if int(float(r.split("\t")[at])) <= step]
        tsv.write_text("\n".join([header, *kept]) + "\n")


def _log_live(
    live: Any,
    step: int,
    sums: dict[str, float],
    weight: float,
    val: dict[str, float],
    lr: float,
) -> None:
    live.step = step
    for key, value in sums.items():
        live.log_metric(f"train/{key}", value / max(weight, 1e-12))
    for key, value in val.items():
        live.log_metric(f"val/{key}", value)
    live.log_metric("lr", lr)
    live.make_summary()
