"""The shared model interface, the model registry and the `train` params section.

Models are grouped in families by the representation store they read, one package
each (``pianoroll``, ``tuples``, ``events``, ``prv``): the family's ``__init__``
holds what its models share (datasets over the store, baselines, shared layers),
each model is one module of the family that registers a `ModelSpec`, and the
family's ``sampling`` module generates from its trained models. Training never
imports sampling code, so a `train@<model>` stage depends only on base, fit,
checkpoint, train, the family ``__init__`` and the model's own module.

Contract every model module fulfils (nanoGPT-style: the model computes its own loss,
so `fit()` stays generic):

* a frozen dataclass config (params section ``models.<name>``);
* an ``nn.Module`` built as ``model_cls(config)`` whose ``forward(batch)`` takes a
  dict of tensors (one collated batch of its dataset) and returns a dict with
  ``"loss"`` (scalar training objective), ``"nll"`` (scalar reported as test NLL)
  and any other scalar terms to log (e.g. ``"kl"``, ``"play"``);
* ``make_dataset(store, config, split)``: a ``torch.utils.data.Dataset`` of dicts of
  tensors over one split of the representation's store;
* ``baseline(store, config)``: trivial-baseline numbers on the test split, at least
  ``{"baseline_nll": ...}`` in the same units as ``"nll"``.

Generation lives in ``pipeline/modeling/<representation>/sampling.py``, found by
`pipeline.modeling.sampling.sampler`:

* ``generate_<name>(model, n, *, generator, temperature, top_k, top_p, primer,
  seconds, length, style)`` returns ``n`` DataFrames of store rows (the
  representation's schema, ``piece_id`` set to e.g. "sample-0"), which the
  representation's ``decode`` turns into notes. ``seconds`` is the target length;
  ``length`` (model units: tokens, frames, steps) overrides it when given; samplers
  that ignore an option (top_p for a piano-roll) say so in their docstring;
* optionally ``interpolate_<name>(model, a_rows, b_rows, steps)``: store rows of a
  latent walk (``etude interpolate``).

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
  that resuming from a checkpoint replays the same batches (`WindowIndex` does this).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from pipeline.core.params import ParamsError, require
from pipeline.registry import Registry
from pipeline.representations import StoreData

__all__ = [
    "CHECKPOINT_VERSION",
    "REGISTRY",
    "GenerateError",
    "GenerativeModel",
    "ModelSpec",
    "StoreData",
    "TrainParams",
    "WindowIndex",
    "get",
    "model_spec",
    "names",
    "register",
]

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class Augment:
    """Train-time data augmentation (`train.augment`), drawn per training window.

    Each window is transposed by a number of semitones and stretched in time by a
    factor, each drawn uniformly from its list (Huang et al. 2018 train the Music
    Transformer on MAESTRO with transpositions in -3..3 and stretches of 0.95, 0.975,
    1, 1.025 and 1.05). ``[0]`` and ``[1.0]`` turn it off. The draw is a pure function
    of (seed, epoch, window index), so a resumed run replays the same augmentations;
    datasets apply it through ``set_augment`` and never grow the stores.
    """

    transpositions: tuple[int, ...]  # semitones
    stretches: tuple[float, ...]  # time factors (> 1: slower)

    def validate(self) -> None:
        require(len(self.transpositions) > 0, "augment.transpositions: list at least 0")
        require(len(self.stretches) > 0, "augment.stretches: list at least 1.0")
        require(all(-12 <= t <= 12 for t in self.transpositions), "transpositions: -12..12")
        require(all(0.5 <= s <= 2.0 for s in self.stretches), "stretches: 0.5..2.0")

    @property
    def active(self) -> bool:
        return set(self.transpositions) != {0} or set(self.stretches) != {1.0}

    def draw(self, seed: int, epoch: int, index: int) -> tuple[int, float]:
        """(semitones, time factor) of training window `index` in `epoch`."""
        rng = np.random.default_rng([seed, epoch, int(index), 0xA06])
        semitones = self.transpositions[int(rng.integers(len(self.transpositions)))]
        factor = self.stretches[int(rng.integers(len(self.stretches)))]
        return int(semitones), float(factor)


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
    augment: Augment  # train-time transpositions and time stretches

    def validate(self) -> None:
        require(self.batch_size > 0, "batch_size must be > 0")
        require(self.max_steps > 0, "max_steps must be > 0")
        require(self.learning_rate > 0, "learning_rate must be > 0")
        require(self.eval_every > 0, "eval_every must be > 0")
        require(self.checkpoint_every > 0, "checkpoint_every must be > 0")


class GenerateError(RuntimeError):
    """A generation request that cannot be served (e.g. no interpolation in this model)."""


class GenerativeModel(Protocol):
    """What fit and evaluate call on a model (sampling: ``<family>/sampling.py``)."""

    config: Any

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: everything the stages need to train and evaluate it.

    Its sampler is ``generate_<name>`` in ``pipeline.modeling.<representation>.sampling``
    (`pipeline.modeling.sampling.sampler`), kept out of the spec so that training never
    loads sampling code.
    """

    name: str
    representation: str
    config_cls: type
    model_cls: Callable[..., Any]
    make_dataset: Callable[[StoreData, Any, str], Any]
    baseline: Callable[[StoreData, Any], dict[str, float]]
    # optional: build the config-dependent extras from the store (e.g. style vocabulary)
    prepare: Callable[[StoreData, Any], Any] | None = None


# model name -> the module that registers it (pipeline.modeling.<representation>.<name>)
REGISTRY: Registry[ModelSpec] = Registry(
    "model",
    {
        "autoencoder": "pipeline.modeling.pianoroll.autoencoder",
        "vae": "pipeline.modeling.pianoroll.vae",
        "rnn": "pipeline.modeling.tuples.rnn",
        "transformer": "pipeline.modeling.events.transformer",
        "biaxial": "pipeline.modeling.prv.biaxial",
        "poph": "pipeline.modeling.prv.poph",
    },
)
register = REGISTRY.register
get = REGISTRY.get
names = REGISTRY.names


def model_spec(name: str) -> ModelSpec:
    """The registered model `name`, or a ParamsError naming the known ones."""
    try:
        return get(name)
    except KeyError:
        raise ParamsError(f"unknown model {name!r}; known: {names()}") from None


class WindowIndex:
    """Where the fixed-length training and evaluation windows of a dataset fall.

    Maps a dataset index to (piece, start) for windows of `window` units. Shared by
    the window datasets (piano-roll frames, prv steps): random offsets on train,
    seeded by (seed, epoch, index) so a resumed run sees the same windows;
    consecutive windows covering each piece once on validation/test.
    """

    def __init__(self, lengths: Sequence[int], window: int, random_offsets: bool, seed: int = 0):
        self.lengths = [int(n) for n in lengths]
        self.window = window
        self.random_offsets = random_offsets
        self.seed = seed
        self.epoch = 0
        per_piece = np.array([max(1, math.ceil(n / window)) for n in self.lengths], dtype=np.int64)
        self._ends = np.cumsum(per_piece)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random offsets (fit calls this at each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def locate(self, index: int) -> tuple[int, int]:
        """(piece, first unit of the window) for dataset item `index`."""
        piece = int(np.searchsorted(self._ends, index, side="right"))
        length = self.lengths[piece]
        if self.random_offsets:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            return piece, int(rng.integers(0, max(0, length - self.window) + 1))
        first = int(self._ends[piece - 1]) if piece else 0
        return piece, (int(index) - first) * self.window
