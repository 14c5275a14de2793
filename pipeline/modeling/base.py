"""The shared model interface, the model registry and the `train` params section.

Contract every model module fulfils (nanoGPT-style: the model computes its own loss,
so `fit()` stays generic):

* a frozen dataclass config (params section ``models.<name>``);
* an ``nn.Module`` built as ``model_cls(config)`` whose ``forward(batch)`` takes a
  dict of tensors (one collated batch of its dataset) and returns a dict with
  ``"loss"`` (scalar training objective), ``"nll"`` (scalar reported as test NLL)
  and any other scalar terms to log (e.g. ``"kl"``, ``"play"``);
* ``generate(n, *, generator, temperature, top_k, top_p, primer, seconds, length,
  style)`` on the module returning ``n`` DataFrames of store rows (the
  representation's schema, ``piece_id`` set to e.g. "sample-0"), which the
  representation's ``decode`` turns into notes. ``seconds`` is the target length;
  ``length`` (model units: tokens, frames, steps) overrides it when given; models
  that ignore an option (top_p for a piano-roll) say so in their docstring;
* ``make_dataset(store, config, split)``: a ``torch.utils.data.Dataset`` of dicts of
  tensors over one split of the representation's store;
* ``baseline(store, config)``: trivial-baseline numbers on the test split, at least
  ``{"baseline_nll": ...}`` in the same units as ``"nll"``.

Optional, honoured by `pipeline.modeling.fit` and `pipeline.evaluation.evaluate`:

* ``prepare(store, config)`` returns the config to build the model with (e.g.
  ``dataclasses.replace(config, n_pitches=...)`` from the store's params); fit saves
  that prepared config in checkpoints, so sampling needs no store;
* a forward output ``"n_units"``: how many cells, notes or tokens the batch's means
  cover; split means are then weighted by it (exact per-unit means), and it is not
  logged as a term;
* ``model.set_step(step)``: called before each training step (e.g. KL annealing);
* ``dataset.set_epoch(epoch)``: called at each epoch; random crops should be a pure
  function of (seed from ``torch.initial_seed()`` at construction, epoch, index), so
  that resuming from a checkpoint replays the same batches;
* ``model.interpolate(a_rows, b_rows, steps)``: store rows of a latent walk
  (``etude interpolate``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import pandas as pd

from pipeline.params import require

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainParams:
    """The shared `train` section: one training loop for every model."""

    seed: int
    device: Literal["auto", "cpu", "cuda"]
    batch_size: int
    max_steps: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    eval_every: int
    eval_batches: int
    patience: int  # evaluations without validation improvement before stopping; 0 = off
    checkpoint_every: int
    num_threads: int  # torch CPU threads; 0 = torch's default

    def validate(self) -> None:
        require(self.batch_size > 0, "batch_size must be > 0")
        require(self.max_steps > 0, "max_steps must be > 0")
        require(self.learning_rate > 0, "learning_rate must be > 0")
        require(self.eval_every > 0, "eval_every must be > 0")
        require(self.checkpoint_every > 0, "checkpoint_every must be > 0")


@dataclass
class StoreData:
    """One representation store loaded for a model: rows per split, pieces and params.

    Attributes:
        rows: split name -> DataFrame of store rows (the representation's schema).
        pieces: piece metadata (piece_id, split, style, composer, title, source, ...).
        params: the representation's params dataclass (e.g. frame_ms).
        path: the store folder.
    """

    rows: dict[str, pd.DataFrame]
    pieces: pd.DataFrame
    params: Any
    path: Path | None = None


class GenerativeModel(Protocol):
    config: Any

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]: ...

    def generate(
        self,
        n: int,
        *,
        generator: Any,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        primer: pd.DataFrame | None = None,
        seconds: float = 30.0,
        length: int | None = None,
        style: str | None = None,
    ) -> list[pd.DataFrame]: ...


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: everything the stages need to train, evaluate and sample it."""

    name: str
    representation: str
    config_cls: type
    model_cls: Callable[..., Any]
    make_dataset: Callable[[StoreData, Any, str], Any]
    baseline: Callable[[StoreData, Any], dict[str, float]]
    # optional: build the config-dependent extras from the store (e.g. style vocabulary)
    prepare: Callable[[StoreData, Any], Any] | None = None


_REGISTRY: dict[str, ModelSpec] = {}
_MODULES = ("autoencoder", "vae", "rnn", "transformer", "biaxial", "poph")


def register(spec: ModelSpec) -> ModelSpec:
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> ModelSpec:
    """Return the spec of model `name`, importing its module on first use."""
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def _load_all() -> None:
    import importlib

    for module in _MODULES:
        try:
            importlib.import_module(f"pipeline.modeling.{module}")
        except ModuleNotFoundError as exc:  # tolerated only while a module is unwritten
            if exc.name != f"pipeline.modeling.{module}":
                raise
