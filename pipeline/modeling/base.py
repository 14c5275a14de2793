"""The shared model interface, the model registry and the `train` params section.

Models are grouped in families by the representation store they read, one package
each (``pianoroll``, ``tuples``, ``events``, ``prv``): the family's ``__init__``
holds what its models share (datasets over the store, baselines, shared layers),
each model is one module of the family that registers a `ModelSpec`, and the
family's ``sampling`` module generates from its trained models. Training never
imports sampling code, so a `train@<model>` stage depends only on base, fit,
checkpoint, train, the family ``__init__`` and the model's own module.

Contract every model module fulfils (nanoGPT-style: the model computes its own loss,
so `fit()` stays generic), all named in the `ModelSpec` it registers, class by class and
function by function:

* ``config_cls``: a frozen dataclass config named for its model (``TransformerConfig``;
  params section ``models.<name>``);
* ``model_cls``: an ``nn.Module`` built as ``model_cls(config)`` whose
  ``forward(batch)`` takes a dict of tensors (one collated batch of its dataset) and
  returns a dict with ``"loss"`` (scalar training objective; fit selects the checkpoint
  with the lowest validation ``"loss"``), ``"nll"`` (the scalar its `Objective` names:
  what evaluate reports, in the objective's unit) and any other scalar terms to log
  (e.g. ``"kl"``, ``"play"``);
* ``objective``: what the ``"nll"`` term is (a likelihood, a bound on one, or a loss),
  its unit, and which baseline number it may be compared with;
* ``make_dataset(store, config, split)``: a ``torch.utils.data.Dataset`` of dicts of
  tensors over one split of the representation's store;
* ``baseline(store, config)``: trivial-baseline numbers on the test split (e.g.
  ``{"baseline_nll": ...}``); the objective's `Baseline` names the one that is of a
  kind and unit its ``"nll"`` may be compared with, if any;
* ``sampler``: ``"<module>:<function>"`` of its sampler, a
  `pipeline.modeling.sampling.Sampler` (``generate_<name>(model, n, options,
  generator)``, the options a `pipeline.modeling.sampling.SampleOptions`), usually in
  ``pipeline/modeling/<representation>/sampling.py``; optionally ``interpolator``, the
  same for ``interpolate_<name>(model, a_rows, b_rows, steps)`` (``etude
  interpolate``). They are named by reference, not imported, because training never
  loads sampling code: `pipeline.modeling.sampling.sampler` imports the one module a
  trained model needs.

Optional, honoured by `pipeline.modeling.fit` and `pipeline.evaluation.evaluate`:

* ``prepare(store, config)`` returns the config to build the model with (e.g.
  ``dataclasses.replace(config, n_pitches=...)`` from the store's params); fit saves
  that prepared config in checkpoints, so sampling needs no store;
* a forward output ``"n_units"``: how many cells, notes or tokens the batch's means
  cover; split means are then weighted by it (exact per-unit means), and it is not
  logged as a term;
* ``model.set_step(step)``: called before each training step (e.g. KL annealing);
* ``check_train(config, train_params)`` (a spec field): raises `ParamsError` when the
  model's params and the run's train params disagree (e.g. a KL annealing longer
  than the run); fit calls it before training;
* ``dataset.set_epoch(epoch)``: called at each epoch; random crops should be a pure
  function of (seed from ``torch.initial_seed()`` at construction, epoch, index), so
  that resuming from a checkpoint replays the same batches (`WindowIndex` does this).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from pipeline.core.params import ParamsError, require
from pipeline.registry import Registry
from pipeline.representations import StoreData

__all__ = [
    "Baseline",
    "CHECKPOINT_VERSION",
    "REGISTRY",
    "GenerateError",
    "GenerativeModel",
    "ModelSpec",
    "Objective",
    "StoreData",
    "TrainParams",
    "WindowIndex",
    "get",
    "model_spec",
    "names",
    "network_model",
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
        """(semitones, time factor) of training window `index` in `epoch`.

        A splitmix64 hash of (seed, epoch, index), not a numpy Generator per window:
        the same uniform, reproducible draw at about a tenth of the cost (measured
        17.8 us per draw with `np.random.default_rng`), which mattered for the rnn's
        cheap windows.
        """
        h = _mix64(_mix64(_mix64(seed) ^ epoch) ^ int(index))
        semitones = self.transpositions[h % len(self.transpositions)]
        factor = self.stretches[(h >> 32) % len(self.stretches)]
        return int(semitones), float(factor)


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """The splitmix64 finaliser: a well-mixed 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


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
    eval_batches: int  # validation batches per evaluation; 0 = the whole split
    patience: int  # evaluations without validation improvement before stopping; 0 = off
    checkpoint_every: int
    num_threads: int  # torch CPU threads; 0 = torch's default
    augment: Augment  # train-time transpositions and time stretches
    precision: Literal["fp32", "bf16"]  # bf16: autocast of forward and loss; fp32 weights
    # torch.distributed.run launch (`pipeline.modeling.train`): processes per machine,
    # machines, this machine's index, and the machine-0 "host:port" all machines meet at
    # ("" with one machine: a free local port)
    nproc_per_node: int
    nnodes: int
    node_rank: int
    rdzv_endpoint: str
    # seconds the machines may take to meet at rdzv_endpoint before the run fails
    rdzv_timeout_s: int

    @property
    def n_processes(self) -> int:
        """Processes the run asks for over all machines (the DDP world size)."""
        return self.nproc_per_node * self.nnodes

    def validate(self) -> None:
        require(self.batch_size > 0, "batch_size must be > 0")
        require(self.max_steps > 0, "max_steps must be > 0")
        require(self.learning_rate > 0, "learning_rate must be > 0")
        require(self.eval_every > 0, "eval_every must be > 0")
        require(self.eval_batches >= 0, "eval_batches must be >= 0 (0 = the whole split)")
        require(self.checkpoint_every > 0, "checkpoint_every must be > 0")
        require(self.nproc_per_node >= 1, "nproc_per_node must be >= 1")
        require(self.nnodes >= 1, "nnodes must be >= 1")
        require(
            0 <= self.node_rank < self.nnodes,
            f"node_rank must be in 0..nnodes-1 (nnodes is {self.nnodes}), got {self.node_rank}",
        )
        endpoint = self.rdzv_endpoint
        host, _, port = endpoint.rpartition(":")
        require(
            endpoint == "" or (bool(host) and port.isdigit()),
            f"rdzv_endpoint must be 'host:port' or empty, got {endpoint!r}",
        )
        require(
            endpoint == "" or 1 <= int(port) <= 65535,
            f"rdzv_endpoint {endpoint!r}: the port must be in 1..65535",
        )
        require(self.rdzv_timeout_s > 0, "rdzv_timeout_s must be > 0 (seconds)")
        require(
            self.nnodes == 1 or bool(endpoint),
            "rdzv_endpoint is required when nnodes > 1: 'host:port' of machine node_rank 0, "
            "reachable from every machine",
        )


class GenerateError(RuntimeError):
    """A generation request that cannot be served (e.g. no interpolation in this model)."""


class GenerativeModel(Protocol):
    """What fit and evaluate call on a model (sampling: ``<family>/sampling.py``)."""

    config: Any

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]: ...


ObjectiveKind = Literal["likelihood", "bound", "loss"]
OBJECTIVE_KINDS: tuple[ObjectiveKind, ...] = ("likelihood", "bound", "loss")


@dataclass(frozen=True)
class Baseline:
    """The trivial-baseline number a model's objective may be compared with.

    For a likelihood or a bound: an exact negative log-likelihood of a trivial model
    of the data (it sees no context), scored on the same test units in the objective's
    unit; a likelihood objective below it beats it, and so does a bound (the model's
    true NLL is at most its bound), never the other way round. For a loss: the same
    loss, computed exactly for a trivial model of that task (same name required).
    """

    key: str  # its key in the spec's ``baseline(store, config)`` result
    name: str  # published as ``baseline_<name>`` (e.g. "pitch_nll")
    description: str  # what trivial model it is

    def __post_init__(self) -> None:
        _check_name(self.name, "baseline name")


@dataclass(frozen=True)
class Objective:
    """What a model's reported test number (its forward ``"nll"`` term) is.

    Published as ``test_<name>`` in the headline metrics. ``kind`` says what may be
    ranked beside what: a "likelihood" (an exact negative log-likelihood of the data
    or of a named part of it), a "bound" (an upper bound on one, e.g. a negative
    ELBO) or a "loss" (neither, e.g. a denoising cross-entropy on corrupted input).
    Numbers are comparable only within one kind and unit (and on the same data).
    """

    name: str  # short metric name, e.g. "pitch_nll", "neg_elbo", "denoising_bce"
    kind: ObjectiveKind
    unit: str  # e.g. "nats per note"
    description: str  # one sentence: what exactly is measured
    baseline: Baseline | None  # None: the spec's baseline is of another kind

    def __post_init__(self) -> None:
        _check_name(self.name, "objective name")
        if self.kind not in OBJECTIVE_KINDS:
            raise ValueError(f"objective kind {self.kind!r}; known: {list(OBJECTIVE_KINDS)}")
        if not self.unit.strip():
            raise ValueError(f"objective {self.name!r}: empty unit")
        if self.kind == "loss" and self.baseline is not None and self.baseline.name != self.name:
            raise ValueError(
                f"objective {self.name!r} is a loss: it compares only with a baseline of the "
                f"same loss, not {self.baseline.name!r}"
            )

    @property
    def label(self) -> str:
        """``name (unit)``, the caption of its numbers."""
        return f"{self.name.replace('_', ' ')} ({self.unit})"

    def describe(self) -> dict[str, Any]:
        """JSON-ready fields (evaluate writes them beside the numbers)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "unit": self.unit,
            "description": self.description,
            "baseline": None if self.baseline is None else dict(vars(self.baseline)),
        }


def _check_name(name: str, what: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"{what} {name!r}: use lower-case letters, digits and _")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: everything the stages need to train, evaluate and sample it.

    Every field names its class or function itself (one hop from a model's params to
    its code). The sampler and interpolator are ``"<module>:<function>"`` references,
    resolved by `pipeline.modeling.sampling.sampler` and ``interpolator``, so that
    registering (and training) a model never imports sampling code.
    """

    name: str
    representation: str
    config_cls: type
    model_cls: Callable[..., Any]
    make_dataset: Callable[[StoreData, Any, str], Any]
    baseline: Callable[[StoreData, Any], dict[str, float]]
    objective: Objective  # what the forward "nll" term (the reported number) is
    sampler: str  # "<module>:<function>" of its `Sampler`
    # optional: "<module>:<function>" of its latent walk (`etude interpolate`)
    interpolator: str | None = None
    # optional: build the config-dependent extras from the store (e.g. style vocabulary)
    prepare: Callable[[StoreData, Any], Any] | None = None
    # optional: ParamsError when the config and the run's train params disagree
    check_train: Callable[[Any, TrainParams], None] | None = None

    def __post_init__(self) -> None:
        for field, reference in (("sampler", self.sampler), ("interpolator", self.interpolator)):
            if reference is not None and not re.fullmatch(r"[\w.]+:\w+", reference):
                raise ValueError(
                    f"model {self.name!r}: {field} {reference!r} is not '<module>:<function>'"
                )


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
        "frame_transformer": "pipeline.modeling.prv.frame_transformer",
    },
)
register = REGISTRY.register
get = REGISTRY.get
names = REGISTRY.names


def network_model(spec: ModelSpec) -> str:
    """The module (a path under ``pipeline/modeling``, no ``.py``) of the network class
    that `spec`'s network extends, else of its own: the code training it loads.

    poph's `PopH` is biaxial's `BiaxialLSTM` (``prv/biaxial``); both transformers extend
    `RelativeTransformer` (``attention``). params.yaml says so in
    ``models.<name>.network``, which dvc.yaml's train and evaluate stages read for
    their deps.
    """
    own = spec.model_cls.__module__
    for cls in spec.model_cls.__mro__:
        module = cls.__module__
        family = hasattr(sys.modules.get(module), "__path__")  # a representation's package
        if module.startswith(_MODELING) and module not in (own, __name__) and not family:
            return module.removeprefix(_MODELING).replace(".", "/")
    return own.removeprefix(_MODELING).replace(".", "/")


_MODELING = "pipeline.modeling."


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
