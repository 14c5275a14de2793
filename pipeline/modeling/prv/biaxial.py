"""Biaxial LSTM with style conditioning (DeepJ) on play/replay/volume steps.

DeepJ (H. H. Mao, T. Shin, G. W. Cottrell, "DeepJ: Style-Specific Music Generation",
ICSC 2018, arXiv:1801.00887) extends D. Johnson's biaxial LSTM with a replay channel,
a dynamics (volume) output and a learned style embedding. The input of step t is the
prv tensor of step t - 1 (`pipeline.modeling.prv`: channels play, replay, volume per
pitch):

1. **Features per (t, pitch)**: play and replay of the pitches within
   ``±neighbour_window`` semitones at t - 1 (the pitch's own included, zeros beyond
   the range), the pitch's own volume at t - 1, its position (pitch index scaled to
   [0, 1]), its pitch class one-hot (12; from the store's ``min_pitch``) and the
   style embedding. DeepJ's beat (bar position) feature is left out: the prv grid is
   in seconds, not beats, so there is no bar position to give.
2. **Time axis**: an LSTM (``n_layers`` x ``time_hidden``) shared by all pitches runs
   over time for each pitch (batch B x P).
3. ``mix`` hook: identity here; `pipeline.modeling.prv.poph` puts attention over time and
   an octave convolution over pitch here.
4. **Note axis**: an LSTM (``n_layers`` x ``note_hidden``) runs across pitches, low to
   high, at each step (batch B x T). Its input is the time-axis output, the previous
   (lower) pitch's *ground-truth* play and replay at this step (teacher forcing;
   zeros below the lowest pitch) and the style embedding.
5. **Heads** per (t, pitch): play logit, replay logit, dynamics (sigmoid of a logit).

Losses (all in nats or squared volume, per cell): ``play`` = BCE of play over every
pitch-step inside the piece; ``replay`` = BCE of replay over the truly played cells
only; ``dynamics`` = MSE of volume over the truly played cells only (replay and
volume are undefined where nothing sounds); ``loss`` = their sum. ``nll`` is the
play BCE (nats per pitch-step), comparable with the per-pitch baseline.

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

from pipeline.modeling.base import ModelSpec, register
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
        prepare=prepare,
    )
)
