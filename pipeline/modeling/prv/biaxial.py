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

The network (`BiaxialLSTM`, `Config`, `prv_losses`, `prepare`) lives in the family
package `pipeline.modeling.prv`, because PopH subclasses it; sampling, pitch by pitch
and step by step, is `pipeline.modeling.prv.sampling.generate_biaxial`. This module
registers it as model ``biaxial`` on the ``prv`` store; params section
``models.biaxial``.
"""

from __future__ import annotations

from pipeline.modeling.base import Baseline, ModelSpec, Objective, register
from pipeline.modeling.prv import BiaxialLSTM, Config, baseline, make_dataset, prepare

__all__ = ["SPEC", "BiaxialLSTM", "Config"]

SPEC = register(
    ModelSpec(
        name="biaxial",
        representation="prv",
        config_cls=Config,
        model_cls=BiaxialLSTM,
        make_dataset=make_dataset,
        baseline=baseline,
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
        prepare=prepare,
    )
)
