"""LSTM over (pitch, step, duration) note tuples: TensorFlow's music-generation model.

The model of the TensorFlow tutorial "Generate music with an RNN"
(https://www.tensorflow.org/tutorials/audio/music_generation): each note is a tuple
(pitch / 128, step in s, duration in s); one LSTM (128 units) reads ``seq_len`` = 25
notes and three heads predict the next note: 128 pitch logits, the step and the
duration. Loss::

    loss = 0.05 * CE(pitch) + 1.0 * (MSE(step) + pp(step)) + 1.0 * (MSE(dur) + pp(dur))
    pp(y_hat) = 10 * mean(max(-y_hat, 0))     # "positive pressure": times are >= 0

(weights and the pressure factor are params). ``nll`` is the pitch cross-entropy in
nats per note; ``step_mse`` and ``duration_mse`` are the plain squared errors (s^2).

Two documented departures from the tutorial, both so that the model can start a
piece without borrowing a training window: every piece is preceded by an all-zero
*start* tuple (pitch 0 never sounds in the data), and the loss is applied at every
position of a window, not only after its last note (the last position is exactly
the tutorial's objective; earlier ones add the shorter contexts that generation from
scratch needs). Training windows start at every note (stride 1, as in the
tutorial); evaluation windows tile each piece so that every note is predicted once.

Generation (`pipeline.modeling.tuples.sampling.generate_rnn`) feeds the last
``seq_len`` tuples (starting from the start tuple, or from a primer's notes), samples
the pitch from ``softmax(logits / temperature)`` (top-k / top-p filters apply) and
takes step and duration as predicted, clipped to >= 0 (the duration to >=
MIN_DURATION_S so every note ends after it starts). Windows and the baseline are in
`pipeline.modeling.tuples`.

Registered as model ``rnn`` on the ``tuples`` store; params section ``models.rnn``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.params import require
from pipeline.modeling import tuples
from pipeline.modeling.base import Baseline, ModelSpec, Objective, register
from pipeline.modeling.tuples import N_PITCHES


@dataclass(frozen=True, kw_only=True)
class RNNConfig:
    """The `models.rnn` params section (defaults: the tutorial's model).

    Scale: ``hidden_size: 512``, ``num_layers: 2``, ``dropout: 0.2``, ``seq_len: 100``.
    """

    seq_len: int  # notes of context
    hidden_size: int
    num_layers: int
    dropout: float  # between LSTM layers (num_layers > 1)
    pitch_weight: float
    step_weight: float
    duration_weight: float
    positive_pressure: float  # weight of mean(max(-prediction, 0)) on step/duration
    velocity: int  # velocity of generated notes (the model ignores dynamics)

    def validate(self) -> None:
        require(self.seq_len > 0, "seq_len must be > 0")
        require(self.hidden_size > 0, "hidden_size must be > 0")
        require(self.num_layers > 0, "num_layers must be > 0")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        require(
            min(self.pitch_weight, self.step_weight, self.duration_weight) >= 0,
            "loss weights must be >= 0",
        )
        require(self.positive_pressure >= 0, "positive_pressure must be >= 0")
        require(1 <= self.velocity <= 127, "velocity must be in 1..127")


def positive_pressure(pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of max(-pred, 0): pushes predicted times to be non-negative."""
    return (F.relu(-pred) * mask).sum() / mask.sum().clamp(min=1.0)


class NoteLSTM(nn.Module):
    """LSTM with pitch, step and duration heads; see the module docstring."""

    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = config
        self.lstm = nn.LSTM(
            3,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.pitch = nn.Linear(config.hidden_size, N_PITCHES)
        self.step = nn.Linear(config.hidden_size, 1)
        self.duration = nn.Linear(config.hidden_size, 1)

    def heads(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, 3) -> pitch logits (B, L, 128), step (B, L), duration (B, L)."""
        h, _ = self.lstm(inputs)  # (B, L, H)
        return self.pitch(h), self.step(h)[..., 0], self.duration(h)[..., 0]

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.config
        mask = batch["mask"]  # (B, L): 1 where the target is a real note
        logits, step, duration = self.heads(batch["inputs"])
        n = mask.sum().clamp(min=1.0)
        ce = F.cross_entropy(logits.flatten(0, 1), batch["pitch"].flatten(), reduction="none")
        pitch_ce = (ce * mask.flatten()).sum() / n
        step_mse = ((step - batch["step"]) ** 2 * mask).sum() / n
        duration_mse = ((duration - batch["duration"]) ** 2 * mask).sum() / n
        step_loss = step_mse + cfg.positive_pressure * positive_pressure(step, mask)
        duration_loss = duration_mse + cfg.positive_pressure * positive_pressure(duration, mask)
        loss = (
            cfg.pitch_weight * pitch_ce
            + cfg.step_weight * step_loss
            + cfg.duration_weight * duration_loss
        )
        return {
            "loss": loss,
            "nll": pitch_ce.detach(),
            "step_mse": step_mse.detach(),
            "duration_mse": duration_mse.detach(),
            "n_units": n.detach(),
        }


SPEC = register(
    ModelSpec(
        name="rnn",
        representation="tuples",
        config_cls=RNNConfig,
        model_cls=NoteLSTM,
        make_dataset=tuples.make_dataset,
        baseline=tuples.baseline,
        objective=Objective(
            name="pitch_nll",
            kind="likelihood",
            unit="nats per note",
            description=(
                "cross-entropy of each note's pitch given the previous notes (pitch, step, "
                "duration); step and duration are regressed and not part of it"
            ),
            baseline=Baseline(
                key="baseline_nll",
                name="pitch_nll",
                description="unigram pitch distribution of the train split (add-one)",
            ),
        ),
        sampler="pipeline.modeling.tuples.sampling:generate_rnn",
    )
)
