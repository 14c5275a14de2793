"""The evaluate stage's params: ``evaluate`` (every model) and ``sample.<model>`` (how
each model writes the clips it is judged by)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.params import (
    ParamsError,
    from_mapping,
    get_section,
    params_errors,
    read_params_file,
    require,
)


@dataclass(frozen=True)
class EvaluateParams:
    """The `evaluate` section of params.yaml (shared by every model; how each model
    samples is its own ``sample.<model>`` section, `pipeline.evaluation.samples`)."""

    n_samples: int  # generated clips per model
    seconds: float  # length of every generated and real clip
    seed: int
    n_real: int  # real test clips (windows of `seconds`) to compare and render
    batch_size: int
    train_batches: int  # cap on train batches scored (the test split is scored whole)
    render: bool  # write .ogg/.png beside each clip when the renderer exists
    num_threads: int  # torch CPU threads; 0 = torch's default
    fake_folds: int  # find the fake: stratified k-fold cross-validation
    oa_boot: int  # bootstrap resamples for the overlapping areas' intervals

    def validate(self) -> None:
        require(self.n_samples >= 0, "n_samples must be >= 0")
        require(self.seconds > 0, "seconds must be > 0")
        require(self.n_real >= 0, "n_real must be >= 0")
        require(self.batch_size > 0, "batch_size must be > 0")
        require(self.train_batches >= 0, "train_batches must be >= 0")
        require(self.num_threads >= 0, "num_threads must be >= 0")
        require(self.fake_folds >= 2, "fake_folds must be >= 2")
        require(self.oa_boot >= 0, "oa_boot must be >= 0")


@dataclass(frozen=True)
class SampleParams:
    """``sample.<model>`` in params.yaml: how the model writes the clips it is judged by.

    Keys other than these are the model's own settings (`SampleOptions.settings`; its
    sampler's docstring lists them and refuses others).
    """

    temperature: float = 1.0  # divides the logits drawn from; <= 0: greedy
    top_k: int = 0  # token models: keep the k most likely tokens (0 = off)
    top_p: float = 1.0  # token models: keep the smallest nucleus of this mass (1.0 = off)
    primer_seconds: float = 0.0  # a real opening (validation split) continued; 0 = none

    def validate(self) -> None:
        require(self.top_k >= 0, "top_k must be >= 0")
        require(0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]")
        require(self.primer_seconds >= 0, "primer_seconds must be >= 0")


SHARED_KEYS = frozenset(f.name for f in dataclasses.fields(SampleParams))


def load_sample_params(name: str, path: str | Path) -> tuple[SampleParams, dict[str, Any]]:
    """``sample.<name>``: the shared keys as `SampleParams`, the rest as the model's own.

    A model without a ``sample`` entry samples with the defaults.
    """
    with params_errors(path):
        data = read_params_file(path)
        try:
            raw = get_section(data, f"sample.{name}")
        except ParamsError:
            return SampleParams(), {}
        if raw is None:
            return SampleParams(), {}
        if not isinstance(raw, Mapping):
            raise ParamsError(f"params.yaml: 'sample.{name}' must be a mapping")
        shared = {k: v for k, v in raw.items() if k in SHARED_KEYS}
        own = {k: v for k, v in raw.items() if k not in SHARED_KEYS}
        return from_mapping(shared, SampleParams, f"sample.{name}"), own
