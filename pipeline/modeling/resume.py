"""What the training loop keeps on disk: ``model.pt``, ``last.pt`` and when to resume.

``model.pt`` holds the best weights so far (or the last, without a validation split);
``last.pt`` holds model, optimizer, scheduler, step, every rank's RNG states and the
best-so-far, written atomically. A later run resumes from last.pt only when its
fingerprint matches: the model config, representation params and train params (less
`RESUME_INDEPENDENT`), the code that trains the model (`code_digest`), the store's row
counts (`store_digest`) and the world size. A resumed run ends with the same weights as
an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.modeling.base import CHECKPOINT_VERSION, ModelSpec, StoreData, TrainParams
from pipeline.modeling.checkpoint import (
    CheckpointError,
    describe,
    load_checkpoint,
    save_checkpoint,
)
from pipeline.modeling.distributed import Dist, broadcast_object, gather_objects
from pipeline.modeling.scoring import FitError

log = logging.getLogger(__name__)

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
# The modules of the training loop itself: every model's code digest hashes them.
LOOP_MODULES = (
    "pipeline.modeling.base",
    "pipeline.modeling.checkpoint",
    "pipeline.modeling.distributed",
    "pipeline.modeling.fit",
    "pipeline.modeling.live",
    "pipeline.modeling.resume",
    "pipeline.modeling.scoring",
)


@dataclasses.dataclass
class Progress:
    """Where a run stands: what last.pt carries besides the weights and RNG states."""

    step: int = 0
    best: float = math.inf  # best validation loss so far
    best_step: int = 0
    bad_evals: int = 0  # evaluations since the last improvement
    elapsed_before: float = 0.0  # wall time of the earlier sessions of this run
    finished: bool = False
    stopped_early: bool = False
    resumed_from: int | None = None  # the step this session started from, if resumed
    saved_step: int | None = None  # the step last.pt holds on disk

    @property
    def best_val_loss(self) -> float | None:
        return None if math.isinf(self.best) else self.best


# --------------------------------------------------------------------------------------
# Fingerprint


def checkpoint_header(
    spec: ModelSpec, config: Any, tp: TrainParams, store: StoreData
) -> dict[str, Any]:
    """What every checkpoint of this run starts with (enough to rebuild the model)."""
    return {
        "name": spec.name,
        "representation": spec.representation,
        "checkpoint_version": CHECKPOINT_VERSION,
        "config": describe(config),
        "repr_params": describe(store.params),
        "train_params": dataclasses.asdict(tp),
    }


def run_fingerprint(
    spec: ModelSpec, header: dict[str, Any], store: StoreData, world_size: int
) -> dict[str, Any]:
    """What must match for last.pt to continue this run."""
    train = {k: v for k, v in header["train_params"].items() if k not in RESUME_INDEPENDENT}
    return {
        "name": header["name"],
        "representation": header["representation"],
        "config": header["config"],
        "repr_params": header["repr_params"],
        "train_params": train,
        "code": code_digest(spec),
        "data": store_digest(store),
        "world_size": world_size,
    }


def code_digest(spec: ModelSpec) -> str:
    """SHA-1 of the code that trains `spec`'s model.

    The files are the loop's own (`LOOP_MODULES`), the model's family package
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

    names = set(LOOP_MODULES)
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


# --------------------------------------------------------------------------------------
# Resume


def resume_state(
    path: Path, name: str, fingerprint: dict[str, Any], dist: Dist
) -> dict[str, Any] | None:
    """What `_resumable` finds in rank 0's last.pt, on every rank.

    Only rank 0 writes last.pt, so only its machine is sure to have it (the others need
    no shared disk), and every rank must resume from the same step or the collectives
    of the ranks that run more steps would wait forever.
    """
    state = _resumable(path, name, fingerprint) if dist.is_main else None
    return broadcast_object(state, dist)  # type: ignore[return-value]


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


def restore(
    state: dict[str, Any] | None,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    dist: Dist,
) -> Progress:
    """Load `state` (last.pt, or None for a fresh run) into the run; where it stands."""
    if state is None:
        return Progress()
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"], dist)
    step = int(state["step"])
    return Progress(
        step=step,
        best=float(state["best_val_loss"]),
        best_step=int(state["best_step"]),
        bad_evals=int(state["bad_evals"]),
        elapsed_before=float(state["wall_time_s"]),
        finished=bool(state["finished"]),
        stopped_early=bool(state.get("stopped_early", False)),
        resumed_from=step,
        saved_step=step,
    )


# --------------------------------------------------------------------------------------
# Save


def save_best(
    header: dict[str, Any], step: int, val_loss: float | None, model: torch.nn.Module, path: Path
) -> None:
    """``model.pt``: the weights to keep, with their step and validation loss."""
    save_checkpoint(
        {**header, "step": step, "val_loss": val_loss, "state_dict": model.state_dict()}, path
    )


def save_last(
    path: Path,
    header: dict[str, Any],
    fingerprint: dict[str, Any],
    progress: Progress,
    training: tuple[torch.nn.Module, torch.optim.Optimizer, Any],
    rng: list[dict[str, Any]],
    elapsed: float,
) -> None:
    """``last.pt``: everything a later run needs to continue this one exactly."""
    model, optimizer, scheduler = training
    p = progress
    save_checkpoint(
        {
            **header,
            "fingerprint": fingerprint,
            "step": p.step,
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng,
            "best_val_loss": p.best,
            "best_step": p.best_step,
            "bad_evals": p.bad_evals,
            "wall_time_s": elapsed,
            "finished": p.finished,
            "stopped_early": p.stopped_early,
        },
        path,
    )


# --------------------------------------------------------------------------------------
# RNG states


def gather_rng_state(dist: Dist) -> list[dict[str, Any]]:
    """RNG states of every rank (rank order), so each rank resumes its own stream."""
    return gather_objects(_rng_state(), dist)  # type: ignore[return-value]


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


def _set_rng_state(states: list[dict[str, Any]], dist: Dist) -> None:
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
