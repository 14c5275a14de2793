"""The ``bigram`` model: the next pitch from the previous one (a 128 x 128 table of logits).

Its config, its network (which computes its own loss in ``forward``), and its registry
entry naming the dataset and the sampler: a model is this file, its family's data and
its sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import seventh_model
from pipeline.core.params import require
from pipeline.modeling.base import ModelSpec, Objective, register

N_PITCHES = 128


@dataclass(frozen=True, kw_only=True)
class BigramConfig:
    """The model's params section."""

    smoothing: float  # label smoothing of the training loss

    def validate(self) -> None:
        require(0.0 <= self.smoothing < 1.0, "smoothing must be in [0, 1)")


class PitchBigram(nn.Module):
    """Logits of the next pitch given the previous pitch."""

    def __init__(self, config: BigramConfig):
        super().__init__()
        self.config = config
        self.table = nn.Embedding(N_PITCHES, N_PITCHES)
        nn.init.zeros_(self.table.weight)  # starts as a uniform guess: log(128) nats

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.table(batch["previous"])  # (B, 128)
        nll = F.cross_entropy(logits, batch["pitch"])
        loss = F.cross_entropy(logits, batch["pitch"], label_smoothing=self.config.smoothing)
        return {"loss": loss, "nll": nll.detach()}


SPEC = register(
    ModelSpec(
        name="bigram",
        representation="tuples",
        config_cls=BigramConfig,
        model_cls=PitchBigram,
        make_dataset=seventh_model.make_dataset,
        baseline=seventh_model.baseline,
        objective=Objective(
            name="pitch_nll",
            kind="likelihood",
            unit="nats per note",
            description="cross-entropy of each note's pitch given the previous pitch",
            baseline=None,
        ),
        sampler="seventh_model.sampling:generate_bigram",
    )
)
