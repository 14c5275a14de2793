"""Frame transformer: relative self-attention along time, a note axis within each step.

The Music Transformer (`pipeline.modeling.events.transformer`) predicts event tokens,
so on a frame benchmark it has only a bound: its probability of a frame is spread
over every token sequence that draws it. This model predicts the prv steps themselves,
with an exact factorisation, so its frame NLL is a likelihood of the same kind as the
biaxial LSTM's and the 2012 benchmark's:

1. **Inputs per (t, pitch)**: the family's (`pipeline.modeling.prv.StepFeatures`, as
   the biaxial LSTM): step t - 1's play/replay around the pitch, its volume, the pitch's
   position and class, DeepJ's vicinity convolution, the pitch-class context, the beat
   one-hot and the style, projected to ``d_model``.
2. **Time axis**: a `RelativeTransformer` (`pipeline.modeling.attention`: pre-LN blocks
   of causal relative self-attention, Huang et al.'s skewed relative logits) runs over
   time for each pitch, its weights shared by all pitches, like the biaxial LSTM's
   time axis (the relative positions count steps, so a model trained on ``seq_len``
   windows scores a whole piece; distances beyond ``max_relative_position`` share one
   embedding).
3. **Note axis**: an LSTM (``note_hidden``) runs across the pitches of each step, low
   to high, fed the time axis's output, the lower pitch's play/replay/volume at this
   step (ground truth in training, the draws in sampling) and the style; a linear head
   gives play, replay and dynamics logits. P(step t) is the product of its pitches'
   play probabilities, each given earlier steps and lower pitches: exact.

Losses are the biaxial LSTM's (`pipeline.modeling.prv.prv_losses`): ``nll`` is the play
BCE in nats per pitch-step; the frames stage sums it over the 88 keys of a frame.
Sampling is the biaxial sampler's note axis after a cached time axis
(`pipeline.modeling.prv.sampling`).

Registered as model ``frame_transformer`` on the ``prv`` store; params section
``models.frame_transformer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from pipeline.core.params import require
from pipeline.modeling import prv
from pipeline.modeling.attention import KVCache, RelativeTransformer
from pipeline.modeling.base import Baseline, ModelSpec, Objective, register
from pipeline.modeling.prv import INITIAL_PLAY_LOGIT, PLAY, UNKNOWN_STYLE, check_prepared

__all__ = ["SPEC", "FrameTransformer", "FrameTransformerConfig"]


@dataclass(frozen=True, kw_only=True)
class FrameTransformerConfig:
    """The `models.frame_transformer` params section.

    The input keys are the biaxial LSTM's (`pipeline.modeling.prv.biaxial.BiaxialConfig`
    documents them); ``styles``, ``min_pitch``, ``n_pitches`` and ``steps_per_second``
    are filled in from the store (leave them empty/0).
    """

    d_model: int  # time-axis width
    n_layers: int  # transformer blocks
    n_heads: int
    d_ff: int  # feed-forward width of each block
    max_relative_position: int  # steps; longer distances share one embedding
    note_hidden: int  # note-axis LSTM units
    style_dim: int
    neighbour_window: int
    vicinity_filters: int
    vicinity_kernel: int
    pitch_class_context: bool
    beat_period: int
    aux_loss_cells: Literal["all", "played"]
    seq_len: int  # steps per training window
    dropout: float  # residual branches, note-axis input and output
    attention_dropout: float  # on the attention weights (a Bernoulli per weight: costly)
    style_dropout: float
    styles: tuple[str, ...]
    min_pitch: int = 0
    n_pitches: int = 0
    steps_per_second: float = 0.0

    def validate(self) -> None:
        require(self.d_model > 0 and self.d_ff > 0, "d_model and d_ff must be > 0")
        require(self.n_layers >= 1, "n_layers must be >= 1")
        require(self.n_heads >= 1, "n_heads must be >= 1")
        require(self.d_model % self.n_heads == 0, "d_model must be divisible by n_heads")
        require(self.max_relative_position >= 1, "max_relative_position must be >= 1")
        require(self.note_hidden > 0, "note_hidden must be > 0")
        require(self.style_dim >= 0, "style_dim must be >= 0")
        require(self.neighbour_window >= 0, "neighbour_window must be >= 0")
        require(self.vicinity_filters >= 0, "vicinity_filters must be >= 0")
        require(self.vicinity_kernel >= 1, "vicinity_kernel must be >= 1")
        require(self.beat_period >= 0, "beat_period must be >= 0 (0 = no beat feature)")
        require(
            self.aux_loss_cells in ("all", "played"), "aux_loss_cells must be 'all' or 'played'"
        )
        require(self.seq_len >= 1, "seq_len must be >= 1")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        require(0.0 <= self.attention_dropout < 1.0, "attention_dropout must be in [0, 1)")
        require(0.0 <= self.style_dropout <= 1.0, "style_dropout must be in [0, 1]")
        require(
            not self.styles or self.styles[0] == UNKNOWN_STYLE,
            f"styles must start with {UNKNOWN_STYLE!r}",
        )
        require(self.min_pitch + self.n_pitches <= 128, "pitch range must end at <= 127")


class FrameTransformer(RelativeTransformer, prv.StepFeatures):
    """Relative transformer over time per pitch, LSTM over pitches per step (module doc)."""

    def __init__(self, config: FrameTransformerConfig):
        check_prepared(config)
        super().__init__(
            config.d_model,
            config.n_layers,
            config.n_heads,
            config.d_ff,
            config.max_relative_position,
            config.dropout,
            config.attention_dropout,
        )
        self.config = config
        self.init_features(config)
        self.embed = nn.Linear(self.n_features, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.note_lstm = nn.LSTM(
            config.d_model + 3 + config.style_dim, config.note_hidden, batch_first=True
        )
        self.head = nn.Linear(config.note_hidden, 3)
        self.init_trunk()
        with torch.no_grad():  # start near the data's sparsity, not at P(play) = 0.5
            self.head.bias[PLAY] = INITIAL_PLAY_LOGIT

    def time_axis(
        self, features: torch.Tensor, past: list[KVCache] | None = None
    ) -> tuple[torch.Tensor, list[KVCache]]:
        """(B, T, P, n_features) inputs -> (B, T, P, d_model) outputs and the caches.

        Each pitch is one sequence (batch B x P); `past` holds the per-layer keys and
        values of earlier steps (sampling), whose batch is B x P too.
        """
        b, t, p, _ = features.shape
        x = self.embed(features.permute(0, 2, 1, 3).reshape(b * p, t, -1))  # (B*P, T, D)
        h, presents = self.trunk(self.drop(x), past)  # (B*P, T, D)
        return h.reshape(b, p, t, -1).permute(0, 2, 1, 3), presents

    def logits(
        self, x: torch.Tensor, style: torch.Tensor, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T + 1, P, 3) steps, (B,) styles -> (B, T, P, 3) logits for steps 1..T.

        ``start`` (B,): the step index of ``x[:, 1]`` in its piece (zeros if None).
        """
        prev, current = x[:, :-1], x[:, 1:]  # (B, T, P, 3) each
        b, t, p, _ = prev.shape
        if start is None:
            start = torch.zeros(b, dtype=torch.long, device=x.device)
        step = start[:, None] + torch.arange(t, device=x.device)  # (B, T)
        style_vec = self.style_vectors(style)  # (B, S)
        h, _ = self.time_axis(self.time_inputs(prev, style_vec, step))  # (B, T, P, D)
        note_in = self.note_inputs(self.drop(h), current, style_vec).reshape(b * t, p, -1)
        out, _ = self.note_lstm(note_in)  # (B*T, P, Hn)
        return self.head(self.drop(out)).reshape(b, t, p, 3)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The biaxial LSTM's loss: play BCE plus replay/dynamics (``aux_loss_cells``)."""
        x, mask, style = batch["x"], batch["mask"], batch["style"]  # (B,T+1,P,3) (B,T) (B,)
        if self.training and self.config.style_dropout > 0:
            drop = torch.rand(style.shape, device=style.device) < self.config.style_dropout
            style = torch.where(drop, torch.zeros_like(style), style)
        terms = prv.prv_losses(self.logits(x, style, batch.get("start")), x[:, 1:], mask)
        aux = terms["replay"] + terms["dynamics"]
        if self.config.aux_loss_cells == "all":
            aux = aux * (terms["played"] / terms["cells"])
        out = {k: terms[k].detach() for k in ("play", "replay", "dynamics", "play_rate_bias")}
        return {
            **out,
            "loss": terms["play"] + aux,
            "nll": terms["play"].detach(),
            "n_units": terms["cells"].detach(),
        }


SPEC = register(
    ModelSpec(
        name="frame_transformer",
        representation="prv",
        config_cls=FrameTransformerConfig,
        model_cls=FrameTransformer,
        make_dataset=prv.make_dataset,
        baseline=prv.baseline,
        objective=Objective(
            name="play_nll",
            kind="likelihood",
            unit="nats per pitch-step",
            description=(
                "cross-entropy of the play channel (is each pitch sounding at each step), "
                "given earlier steps and lower pitches; replay and dynamics not included"
            ),
            baseline=Baseline(
                key="baseline_nll",
                name="play_nll",
                description="per-pitch play rates of the train split",
            ),
        ),
        sampler="pipeline.modeling.prv.sampling:generate_biaxial",
        prepare=prv.prepare,
    )
)
