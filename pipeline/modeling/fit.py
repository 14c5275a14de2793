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

The parts live beside this loop: `pipeline.modeling.resume` (model.pt, last.pt, the
resume fingerprint), `pipeline.modeling.distributed` (the process group),
`pipeline.modeling.live` (dvclive curves) and `pipeline.modeling.scoring` (forward
passes and validation means, shared with the evaluate stage).

Optional model hooks: ``set_step(step)`` is called before each training step (e.g.
the VAE's KL annealing); a forward output ``n_units`` (the number of scored cells,
notes or tokens in the batch) weights batch means so that evaluation means are per
unit, and is not logged as a term.
"""

from __future__ import annotations

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
from pipeline.modeling.base import ModelSpec, StoreData, TrainParams
from pipeline.modeling.distributed import Dist, broadcast, init_distributed, sum_over_ranks
from pipeline.modeling.live import log_live, open_live
from pipeline.modeling.resume import (
    Progress,
    checkpoint_header,
    code_digest,
    gather_rng_state,
    restore,
    resume_state,
    run_fingerprint,
    save_best,
    save_last,
)
from pipeline.modeling.scoring import (
    WEIGHT_KEY,
    FitError,
    autocast,
    evaluate_loader,
    scalar_terms,
    to_device,
    validation_loader,
)

__all__ = [
    "FitError",
    "code_digest",
    "evaluate_loader",
    "fit",
    "fit_model",
    "interrupted_message",
    "seed_everything",
    "validation_loader",
]

log = logging.getLogger(__name__)

MIN_LR_FRACTION = 0.1  # cosine decay ends at this fraction of learning_rate


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
    dist = init_distributed(train_params)
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


@dataclasses.dataclass
class _Run:
    """What every step of one training run uses; fixed for the run."""

    spec: ModelSpec
    tp: TrainParams
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    dist: Dist
    header: dict[str, Any]  # what every checkpoint starts with
    fingerprint: dict[str, Any]  # what last.pt must match to resume
    out_dir: Path
    n_val: int  # validation items (0: no validation split)
    began: float  # time.monotonic() when this session started


@dataclasses.dataclass
class _Terms:
    """Training terms summed since the last evaluation, each batch weighted by its units."""

    sums: dict[str, float] = dataclasses.field(default_factory=dict)
    weight: float = 0.0

    def add(self, out: dict[str, Any]) -> None:
        w = float(out.get(WEIGHT_KEY, 1.0))
        for key, value in scalar_terms(out).items():
            self.sums[key] = self.sums.get(key, 0.0) + value * w
        self.weight += w


def _fit(
    spec: ModelSpec,
    config: Any,
    tp: TrainParams,
    store: StoreData,
    out_dir: Path,
    live_dir: Path,
    resume: bool,
    on_step: Callable[[int], None] | None,
    dist: Dist,
) -> tuple[dict[str, Any], torch.nn.Module]:
    began = time.monotonic()
    device = _setup(tp, dist)
    config, train_data, val_data = _datasets(spec, config, tp, store)
    model = spec.model_cls(config).to(device)
    n_parameters = sum(p.numel() for p in model.parameters())
    optimizer = _optimizer(model, tp)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tp))
    header = checkpoint_header(spec, config, tp, store)
    run = _Run(
        spec=spec,
        tp=tp,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        device=device,
        dist=dist,
        header=header,
        fingerprint=run_fingerprint(spec, header, store, dist.world_size),
        out_dir=out_dir,
        n_val=len(val_data),
        began=began,
    )
    progress = _start(run, resume)
    summary = {
        "steps": progress.step,
        "best_val_loss": progress.best_val_loss,
        "best_step": progress.best_step,
        "stopped_early": progress.stopped_early,
        "resumed_from": progress.resumed_from,
        "n_parameters": n_parameters,
        "device": str(device),
    }
    if progress.finished:
        log.info("%s: last.pt says training already finished at step %d", spec.name, progress.step)
        summary["wall_time_s"] = progress.elapsed_before
        return summary, model
    _train(run, progress, train_data, val_data, live_dir, on_step)
    summary.update(
        steps=progress.step,
        best_val_loss=progress.best_val_loss,
        best_step=progress.best_step,
        stopped_early=progress.stopped_early,
        wall_time_s=progress.elapsed_before + time.monotonic() - began,
    )
    return summary, model


# --------------------------------------------------------------------------------------
# Steps of a run


def _start(run: _Run, resume: bool) -> Progress:
    """Resume from last.pt when it matches this run; otherwise start afresh, removing
    an earlier run's model.pt."""
    name, last = run.spec.name, run.out_dir / "last.pt"
    state = resume_state(last, name, run.fingerprint, run.dist) if resume else None
    progress = restore(state, run.model, run.optimizer, run.scheduler, run.dist)
    if state is not None:
        log.info("%s: resuming from %s at step %d", name, last, progress.step)
    stale = run.out_dir / "model.pt"
    if state is None and run.dist.is_main and stale.exists():
        log.info("%s: removing %s of an earlier run", name, stale)
        stale.unlink()  # a fresh run must not leave another run's best model behind
    return progress


def _train(
    run: _Run,
    p: Progress,
    train_data: Any,
    val_data: Any,
    live_dir: Path,
    on_step: Callable[[int], None] | None,
) -> None:
    """Step from `p.step` to ``max_steps`` (or an early stop), evaluating, logging and
    checkpointing on the way; `p` follows along."""
    tp = run.tp
    live = open_live(live_dir, resume_step=p.resumed_from, dist=run.dist)
    net = _parallel(run.model, run.device, run.dist)
    val_loader = validation_loader(val_data, tp)
    batches = _batches(train_data, tp, p.step, run.dist)
    terms = _Terms()
    try:
        while p.step < tp.max_steps and not p.stopped_early:
            out = _train_step(run, net, next(batches), p.step)
            p.step += 1
            terms.add(out)
            last_step = p.step >= tp.max_steps
            if p.step % tp.eval_every == 0 or last_step:
                _evaluate(run, p, val_loader, terms, live)
                terms = _Terms()
            done = last_step or p.stopped_early
            if p.step % tp.checkpoint_every == 0 or done:
                _checkpoint(run, p, done)
            if on_step is not None:
                on_step(p.step)
    except KeyboardInterrupt:
        message = interrupted_message(run.spec.name, run.out_dir, p.step, p.saved_step, tp)
        raise Interrupted(message) from None
    finally:
        if live is not None:
            live.end()


def _train_step(run: _Run, net: torch.nn.Module, batch: Any, step: int) -> dict[str, Any]:
    """One optimizer step on `batch` (the run's `step`-th); the forward output."""
    batch = to_device(batch, run.device)
    net.train()
    set_step = getattr(run.model, "set_step", None)
    if callable(set_step):
        set_step(step)
    with autocast(run.tp.precision, run.device):
        out = net(batch)
    loss = out["loss"]
    if not torch.isfinite(loss.detach()).all():
        raise FitError(
            f"{run.spec.name}: loss is {float(loss.detach())} at step {step + 1}; "
            "lower train.learning_rate or check the data"
        )
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.tp.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.tp.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    return out


def _evaluate(run: _Run, p: Progress, val_loader: DataLoader, terms: _Terms, live: Any) -> None:
    """Validate (rank 0), keep the best model, count toward patience, log the curves."""
    tp, dist, device = run.tp, run.dist, run.device
    val = (
        evaluate_loader(run.model, val_loader, None, device, tp.seed, tp.precision)
        if dist.is_main and run.n_val
        else {}
    )
    sums, weight = sum_over_ranks(terms.sums, terms.weight, dist, device)
    val_loss = broadcast(val.get("loss", math.nan), dist, device)
    _judge(run, p, val_loss)
    if live is not None:
        log_live(live, p.step, sums, weight, val, run.scheduler.get_last_lr()[0])
    (log.info if dist.is_main else log.debug)(
        "%s step %d: train loss %.4f, val loss %.4f",
        run.spec.name,
        p.step,
        sums.get("loss", math.nan) / max(weight, 1e-12),
        val_loss,
    )


def _judge(run: _Run, p: Progress, val_loss: float) -> None:
    """An improvement saves model.pt; ``patience`` evaluations without one stop the run."""
    if run.n_val > 0 and val_loss < p.best:
        p.best, p.best_step, p.bad_evals = val_loss, p.step, 0
        if run.dist.is_main:
            save_best(run.header, p.step, val_loss, run.model, run.out_dir / "model.pt")
    elif run.n_val:
        p.bad_evals += 1
        if run.tp.patience and p.bad_evals >= run.tp.patience:
            p.stopped_early = True
            log.info(
                "%s: no validation improvement in %d evaluations; stopping at step %d",
                run.spec.name,
                p.bad_evals,
                p.step,
            )


def _checkpoint(run: _Run, p: Progress, done: bool) -> None:
    """Write last.pt (rank 0; every rank's RNG state), and model.pt at the end of a run
    without a validation split."""
    elapsed = p.elapsed_before + time.monotonic() - run.began
    rng = gather_rng_state(run.dist)
    if done and run.n_val == 0 and run.dist.is_main:
        save_best(run.header, p.step, None, run.model, run.out_dir / "model.pt")
    p.finished = done
    if run.dist.is_main:
        training = (run.model, run.optimizer, run.scheduler)
        save_last(run.out_dir / "last.pt", run.header, run.fingerprint, p, training, rng, elapsed)
    p.saved_step = p.step


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
# Setup


def _setup(tp: TrainParams, dist: Dist) -> torch.device:
    """This rank's device, with torch seeded, deterministic and on its thread count."""
    device = _device(tp, dist)
    if tp.num_threads > 0:
        torch.set_num_threads(tp.num_threads)
    seed_everything(tp.seed)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _device(tp: TrainParams, dist: Dist) -> torch.device:
    if tp.device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if tp.device == "cuda":
            raise FitError("train.device is 'cuda' but torch sees no CUDA device")
        return torch.device("cpu")
    index = dist.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _datasets(
    spec: ModelSpec, config: Any, tp: TrainParams, store: StoreData
) -> tuple[Any, Any, Any]:
    """The prepared config and the train and validation datasets (train augmented).

    Raises:
        FitError: train.augment asked of a dataset that cannot augment, or an empty
            train split.
    """
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
    return config, train_data, val_data


def _parallel(model: torch.nn.Module, device: torch.device, dist: Dist) -> torch.nn.Module:
    """`model` itself, or wrapped in DistributedDataParallel under several processes."""
    if dist.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


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
# Data order


def _batches(data: Any, tp: TrainParams, start_step: int, dist: Dist) -> Iterator[Any]:
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
