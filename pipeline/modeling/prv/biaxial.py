"""Biaxial LSTM with style conditioning (DeepJ) on play/replay/volume steps.

DeepJ (H. H. Mao, T. Shin, G. W. Cottrell, "DeepJ: Style-Specific Music Generation",
ICSC 2018, arXiv:1801.00887) extends D. Johnson's biaxial LSTM with a replay channel,
a dynamics (volume) output and a learned style embedding. The input of step t is the
prv tensor of step t - 1 (`pipeline.modeling.prv`: channels play, replay, volume per
pitch):

1. **Features per (t, pitch)**: play and replay of the pitches within
   ``±neighbour_window`` semitones at t - 1 (Johnson's vicinity; 0 = the pitch's
   own only), the pitch's own volume at t - 1, its position (pitch index scaled to
   [0, 1]) and pitch class one-hot (12; from the store's ``min_pitch``), and as in
   DeepJ: a ``Conv1d`` over the pitch axis of step t - 1's play/replay/volume
   (``vicinity_filters`` x ``vicinity_kernel``, tanh; DeepJ: 64 x 24), the
   pitch-class context (how many pitches of the pitch's class sounded at t - 1;
   ``pitch_class_context``), a one-hot of the predicted step's index mod
   ``beat_period`` (DeepJ's bar position, 16 steps; on the prv grid of seconds it is
   a bar only for pieces at a fixed tempo, such as the corpus's 120 qpm scores at 8
   steps/s, and a steady phase otherwise), and the style embedding.
2. **Time axis**: an LSTM (``n_layers`` x ``time_hidden``) shared by all pitches runs
   over time for each pitch (batch B x P).
3. Hooks ``pre_time`` (before the time axis) and ``mix`` (after it): identity here;
   `pipeline.modeling.prv.poph` puts its octave convolution and attention there.
4. **Note axis**: an LSTM (``n_layers`` x ``note_hidden``) runs across pitches, low to
   high, at each step (batch B x T). Its input is the time-axis output, the previous
   (lower) pitch's *ground-truth* play, replay and volume at this step (teacher
   forcing, as DeepJ; zeros below the lowest pitch) and the style embedding.
5. **Heads** per (t, pitch): play logit, replay logit, dynamics (sigmoid of a logit).

Losses (nats or squared volume): ``play`` = BCE of play over every pitch-step inside
the piece; ``replay`` = BCE of replay and ``dynamics`` = MSE of volume, each logged
per truly played cell (comparable with the baseline). In the loss they are weighted
by ``aux_loss_cells``: ``all`` (DeepJ) averages them over every pitch-step with
unplayed cells contributing zero, i.e. the per-played-cell terms times the played
share (about 1/8 - 1/12 here); ``played`` averages over played cells only, weighting
them 8-12x more against play. ``nll`` is the play BCE (nats per pitch-step).
``play_rate_bias`` is the mean predicted P(play) minus the data's play rate.

Measured on the default corpus (params.yaml defaults otherwise; test play NLL,
nats per pitch-step; one seed): see MEASURED below.

Style: DeepJ feeds a one-hot composer through a linear layer; ``nn.Embedding`` is the
same thing. With probability ``style_dropout`` a training window's style is replaced
by ``<unk>`` (index 0), so ``<unk>`` learns "any style": it is what test pieces by
unseen composers get, and what ``generate_biaxial(style=None)`` uses.

This module holds the network (`BiaxialLSTM`, its `BiaxialConfig` and the losses
`prv_losses`), which PopH extends (`pipeline.modeling.prv.poph`), and registers it as
model ``biaxial`` on the ``prv`` store (params section ``models.biaxial``). Its data
(windows, styles, baseline, `prepare`) is the family's, in `pipeline.modeling.prv`;
sampling, pitch by pitch and step by step, is
`pipeline.modeling.prv.sampling.generate_biaxial`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from pipeline.core.params import require
from pipeline.modeling import prv
from pipeline.modeling.base import Baseline, ModelSpec, Objective, register
from pipeline.modeling.prv import (
    INITIAL_PLAY_LOGIT,
    PLAY,
    UNKNOWN_STYLE,
    check_prepared,
    prv_losses,
)

__all__ = ["SPEC", "BiaxialConfig", "BiaxialLSTM", "prv_losses"]


@dataclass(frozen=True, kw_only=True)
class BiaxialConfig:
    """The `models.biaxial` params section.

    Defaults beat the baseline after about a minute on two CPU cores (learning rate
    1e-2). Scale toward DeepJ: ``time_hidden: 256``, ``note_hidden: 128``,
    ``n_layers: 2``, ``style_dim: 64``, ``seq_len: 128``, ``dropout: 0.5``.
    ``styles``, ``min_pitch``, ``n_pitches`` and ``steps_per_second`` are filled in
    from the prv store by the spec's ``prepare`` (leave them empty/0); checkpoints
    keep the filled-in values, so ``--style NAME`` works from the checkpoint alone.
    """

    time_hidden: int  # time-axis LSTM units
    note_hidden: int  # note-axis LSTM units
    n_layers: int  # layers of each LSTM
    style_dim: int  # style embedding size (0: no style conditioning)
    neighbour_window: int  # semitones each side whose previous play/replay is input (0: none)
    vicinity_filters: int  # DeepJ's Conv1D over pitch of the previous step (0: none)
    vicinity_kernel: int  # its kernel in semitones (DeepJ: 24)
    pitch_class_context: bool  # input: how many pitches of each pitch class sounded
    beat_period: int  # input: one-hot of the step's position mod this (0: none)
    aux_loss_cells: Literal["all", "played"]  # replay/dynamics averaged over these cells
    seq_len: int  # steps per training window (32 x 1/8 s = 4 s)
    dropout: float  # on the time- and note-axis outputs (and between layers)
    style_dropout: float  # P(a training window's style is replaced by <unk>)
    styles: tuple[str, ...]  # style vocabulary, "<unk>" first (prepare)
    min_pitch: int = 0  # MIDI pitch of index 0 (prepare)
    n_pitches: int = 0  # pitch axis size (prepare)
    steps_per_second: float = 0.0  # prv grid (prepare)

    def validate(self) -> None:
        require(self.time_hidden > 0 and self.note_hidden > 0, "hidden sizes must be > 0")
        require(self.n_layers >= 1, "n_layers must be >= 1")
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
        require(0.0 <= self.style_dropout <= 1.0, "style_dropout must be in [0, 1]")
        require(
            not self.styles or self.styles[0] == UNKNOWN_STYLE,
            f"styles must start with {UNKNOWN_STYLE!r}",
        )
        require(len(set(self.styles)) == len(self.styles), "styles must be distinct")
        require(self.min_pitch >= 0 and self.n_pitches >= 0, "pitch range must be >= 0")
        require(self.min_pitch + self.n_pitches <= 128, "pitch range must end at <= 127")
        require(self.steps_per_second >= 0, "steps_per_second must be >= 0")


# --------------------------------------------------------------------------------------
# The model


class BiaxialLSTM(prv.StepFeatures):
    """Time-axis then note-axis LSTM over prv steps (DeepJ); see the module docstring.

    Its inputs (`time_inputs`, `note_inputs`, `style_vectors`) are the family's
    (`pipeline.modeling.prv.StepFeatures`, shared with the frame transformer).
    Subclasses change the architecture through hooks: ``pre_time`` (per-pitch input
    features -> time-axis LSTM input, with ``pre_time_out``/``pre_time_steps``),
    ``mix`` (time-axis features -> note-axis features, with ``mix_out``/
    ``context_steps``) and ``extra_losses`` (terms added to the loss).
    """

    def __init__(self, config: BiaxialConfig):
        super().__init__()
        check_prepared(config)
        self.config = config
        self.init_features(config)
        between = config.dropout if config.n_layers > 1 else 0.0
        self.time_lstm = nn.LSTM(
            self.pre_time_out, config.time_hidden, config.n_layers, batch_first=True,
            dropout=between,
        )  # fmt: skip
        note_in = self.mix_out + 3 + config.style_dim
        self.note_lstm = nn.LSTM(
            note_in, config.note_hidden, config.n_layers, batch_first=True, dropout=between
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.note_hidden, 3)
        with torch.no_grad():  # start near the data's sparsity, not at P(play) = 0.5
            self.head.bias[PLAY] = INITIAL_PLAY_LOGIT

    # -- hooks --------------------------------------------------------------------------

    @property
    def pre_time_out(self) -> int:
        """Feature size ``pre_time`` returns (the time-axis LSTM's input size)."""
        return self.n_features

    @property
    def pre_time_steps(self) -> int:
        """Input steps ``pre_time`` needs to see when generating (1: only the current)."""
        return 1

    def pre_time(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P, T, n_features) inputs -> (B, P, T, pre_time_out); causal in T."""
        return x

    @property
    def mix_out(self) -> int:
        """Feature size ``mix`` returns (the note axis's input size)."""
        return self.config.time_hidden

    @property
    def context_steps(self) -> int:
        """Time-axis steps ``mix`` needs to see when generating (1: only the current)."""
        return 1

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        """(B, P, T, time_hidden) time-axis outputs -> (B, P, T, mix_out); causal in T."""
        return h

    def extra_losses(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor], mask: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Extra loss terms: name -> (weighted term added to the loss, value to log)."""
        return {}

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
        inputs = self.time_inputs(prev, style_vec, step).permute(0, 2, 1, 3)  # (B, P, T, F)
        inputs = self.pre_time(inputs).reshape(b * p, t, -1)  # (B*P, T, F')
        h, _ = self.time_lstm(inputs)  # (B*P, T, Ht)
        h = self.mix(self.drop(h).reshape(b, p, t, -1))  # (B, P, T, H)
        h = h.permute(0, 2, 1, 3)  # (B, T, P, H)
        note_in = self.note_inputs(h, current, style_vec).reshape(b * t, p, -1)
        out, _ = self.note_lstm(note_in)  # (B*T, P, Hn)
        return self.head(self.drop(out)).reshape(b, t, p, 3)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x, mask, style = batch["x"], batch["mask"], batch["style"]  # (B,T+1,P,3) (B,T) (B,)
        if self.training and self.config.style_dropout > 0:
            drop = torch.rand(style.shape, device=style.device) < self.config.style_dropout
            style = torch.where(drop, torch.zeros_like(style), style)
        logits = self.logits(x, style, batch.get("start"))
        terms = prv_losses(logits, x[:, 1:], mask)
        aux = terms["replay"] + terms["dynamics"]
        if self.config.aux_loss_cells == "all":  # DeepJ: a mean over every pitch-step
            aux = aux * (terms["played"] / terms["cells"])
        loss = terms["play"] + aux
        out = {
            "nll": terms["play"].detach(),
            "play": terms["play"].detach(),
            "replay": terms["replay"].detach(),
            "dynamics": terms["dynamics"].detach(),
            "play_rate_bias": terms["play_rate_bias"].detach(),
            "n_units": terms["cells"].detach(),
        }
        for name, (weighted, value) in self.extra_losses(logits, batch, mask).items():
            loss = loss + weighted
            out[name] = value.detach()
        out["loss"] = loss
        return out


SPEC = register(
    ModelSpec(
        name="biaxial",
        representation="prv",
        config_cls=BiaxialConfig,
        model_cls=BiaxialLSTM,
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
