"""PopH: the biaxial LSTM plus self-attention over time, an octave convolution and a harmony loss.

PopH, as this project's design card describes it, is DeepJ's biaxial model
(`pipeline.modeling.prv.biaxial`) with three additions. This module subclasses
`BiaxialLSTM` (and `BiaxialConfig`) from there and fills its ``pre_time``, ``mix``
and ``extra_losses`` hooks, so features, the two LSTMs, the heads, the three DeepJ
losses and sampling (`pipeline.modeling.prv.sampling.generate_biaxial`) are the
biaxial code itself.

Order (``layer_order``): ``seed`` (default) follows the seed's slide: input features
-> octave Conv1d over pitch (projecting them to ``time_hidden``) -> self-attention
over time -> time-axis LSTM -> note-axis LSTM -> heads (both in ``pre_time``).
``after_lstm`` is the earlier Etude order: time-axis LSTM -> attention -> octave
conv (residual, in ``mix``) -> note axis.

1. **Self-attention over time**: multi-head causal self-attention
   (``attention_heads`` heads, width ``time_hidden``) over the time-axis LSTM outputs
   of each pitch, with a residual connection and LayerNorm. The LSTM gives a strong
   recency bias; attention lets a step look back at any step of the window (a
   repeated motif, the chord four beats ago). No positional encoding: the LSTM
   outputs already carry order. Generation attends over the last ``seq_len`` steps,
   the span training windows have.
2. **Octave convolution over pitch**: a ``Conv1d`` across the pitch
   axis with ``time_hidden`` channels, kernel ``2 * octave_reach + 1`` and dilation 12,
   so pitch p combines the features of p - 12k .. p + 12k (k <= ``octave_reach``):
   the same pitch class in neighbouring octaves (octave doubling, bass under chord).
   The choice: a plain kernel-12 convolution would look at the 12 *adjacent*
   semitones, which the ±``neighbour_window`` input features already cover; the
   dilated kernel adds exactly what they lack. Residual + ReLU + LayerNorm.
3. **Harmony loss** (``extra_losses``): per step, fold the predicted play
   probabilities over octaves into 12 pitch classes (sum), softmax over the 12, and
   multiply by the *disharmony matrix* whose rows mark the tones outside a scale:
   C major ``0 1 0 1 0 0 1 0 1 0 1 0`` and C natural minor ``0 1 0 0 1 0 1 0 0 1 0 1``
   (index 0 = C). Each row gives the softmax mass outside that scale; the step's
   penalty is the minimum over the rows (the best-fitting scale), averaged over the
   steps inside the piece, weighted by ``harmony_weight`` and added to the loss
   (logged as ``harmony``, unweighted).

   Bias of the seed's formula (``harmony_silence: reward``): the softmax of folded
   probabilities is uniform for a silent step, so silence scores 5/12, the same as
   all twelve pitch classes at once and the worst possible; any in-scale sound
   lowers it. The term therefore pays the model for sounding notes, and a fitted
   model's P(play), especially on in-scale pitches, rises above the data's rate.
   ``play_rate_bias`` (mean predicted P(play) minus the data's play rate, logged by
   every prv model) shows it. ``harmony_silence: neutral`` scores the share of the
   folded play mass outside the best scale instead (silence 0, unchanged when all
   probabilities are scaled), so it does not reward or punish the amount of sound.

Deviation from the source, and what this module does about it: PopH's two rows
are C major and C minor, which is meaningful only when every piece is transposed
to C (major) / C (minor) beforehand. Etude does not transpose (the prv store keeps
each piece's key, and MAESTRO/Lakh pieces are in any key), so with the two C rows
the term would push every piece toward C. ``harmony_keys: all`` (the default) makes
the term key-agnostic: the matrix has 24 rows, the two vectors rotated to each of
the 12 tonics, and the minimum picks the best-fitting major or minor key per step.
``harmony_keys: c`` is PopH's literal two-row term (use it with data transposed to C).
Note that the softmax over folded probabilities never puts all mass on scale
tones, so the penalty's floor is above 0 (e.g. 5 / (7e + 5) ~= 0.208 for one
fully played octave of the C major scale; see the tests).

Registered as model ``poph`` on the ``prv`` store; params section ``models.poph``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.params import require
from pipeline.modeling import prv
from pipeline.modeling.base import Baseline, ModelSpec, Objective, register
from pipeline.modeling.prv.biaxial import BiaxialConfig, BiaxialLSTM

# Tones outside the scale, index 0 = C (PopH's disharmony vectors).
C_MAJOR_DISHARMONY = (0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0)
C_MINOR_DISHARMONY = (0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1)
# Below this summed play probability a step counts as silent (neutral harmony form).
HARMONY_EPS = 1e-6


@dataclass(frozen=True, kw_only=True)
class PopHConfig(BiaxialConfig):
    """The `models.poph` params section: the biaxial fields plus PopH's additions."""

    attention_heads: int  # heads of the self-attention over time (divide time_hidden)
    octave_reach: int  # octave conv sees pitches +-12k semitones away, k <= this
    harmony_weight: float  # weight of the harmony loss (0: logged only)
    harmony_keys: Literal["all", "c"]  # "c": PopH's C major/minor rows only
    harmony_silence: Literal["reward", "neutral"]  # reward: the seed's softmax formula
    layer_order: Literal["seed", "after_lstm"]  # where attention + octave conv sit

    def validate(self) -> None:
        super().validate()
        require(
            self.harmony_silence in ("reward", "neutral"),
            "harmony_silence must be 'reward' or 'neutral'",
        )
        require(
            self.layer_order in ("seed", "after_lstm"), "layer_order must be 'seed' or 'after_lstm'"
        )
        require(self.attention_heads >= 1, "attention_heads must be >= 1")
        require(
            self.time_hidden % self.attention_heads == 0,
            "time_hidden must be a multiple of attention_heads",
        )
        require(self.octave_reach >= 1, "octave_reach must be >= 1")
        require(self.harmony_weight >= 0, "harmony_weight must be >= 0")


def disharmony_matrix(keys: str = "all") -> torch.Tensor:
    """(R, 12) rows of out-of-scale tones: R = 2 (C major, C minor) or 24 (every key).

    For ``"all"`` row 2k is major with tonic k, row 2k + 1 minor with tonic k.
    """
    major, minor = np.array(C_MAJOR_DISHARMONY), np.array(C_MINOR_DISHARMONY)
    if keys == "c":
        rows = [major, minor]
    elif keys == "all":
        rows = [r for k in range(12) for r in (np.roll(major, k), np.roll(minor, k))]
    else:
        raise ValueError(f"harmony_keys must be 'all' or 'c', got {keys!r}")
    return torch.tensor(np.stack(rows), dtype=torch.float32)


def harmony_loss(
    probs: torch.Tensor,
    pitch_class: torch.Tensor,
    matrix: torch.Tensor,
    mask: torch.Tensor,
    silence: str = "reward",
) -> torch.Tensor:
    """Mean over valid steps of min over rows of (disharmony row . pitch-class weights).

    ``silence="reward"`` (the seed's formula): weights = softmax of the play
    probabilities folded over octaves. ``"neutral"``: weights = the folded
    probabilities divided by their sum (the expected share of sounding notes outside
    the scale), which does not change when every probability is scaled, so the term
    no longer pays for sound; a silent step scores 0.

    Args:
        probs: (B, T, P) play probabilities.
        pitch_class: (P,) pitch class (0 = C) of each pitch index.
        matrix: (R, 12) disharmony rows (`disharmony_matrix`).
        mask: (B, T) 1 for steps inside the piece.
        silence: "reward" or "neutral" (above).
    """
    fold = F.one_hot(pitch_class, 12).to(probs.dtype)  # (P, 12); a matmul is deterministic
    folded = probs @ fold  # (B, T, 12): summed over octaves
    if silence == "reward":
        weights = torch.softmax(folded, dim=-1)  # (B, T, 12)
    elif silence == "neutral":
        weights = folded / folded.sum(dim=-1, keepdim=True).clamp(min=HARMONY_EPS)
    else:
        raise ValueError(f"harmony_silence must be 'reward' or 'neutral', got {silence!r}")
    per_row = weights @ matrix.T  # (B, T, R)
    penalty = per_row.min(dim=-1).values  # (B, T)
    return (penalty * mask).sum() / mask.sum().clamp(min=1.0)


class TimeAttention(nn.Module):
    """Causal multi-head self-attention over time with residual + LayerNorm.

    Step t attends to the last ``span`` steps (t - span + 1 .. t): the span training
    windows have. Within a training window that is every earlier step; on a longer
    input (a whole piece scored at once, `pipeline.modeling.prv.frames`) attention
    keeps the span it was trained on, as generation does.
    """

    def __init__(self, dim: int, heads: int, dropout: float, span: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.span = span

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> (N, T, D); step t attends to steps t - span + 1 .. t."""
        t = h.size(1)
        ones = torch.ones(t, t, dtype=torch.bool, device=h.device)
        hidden = ones.triu(1) | ones.tril(-self.span)  # the future, and beyond the span
        a, _ = self.attn(h, h, h, attn_mask=hidden, need_weights=False)
        return self.norm(h + a)


class OctaveConv(nn.Module):
    """Conv1d over pitch with dilation 12: pitch p sees p +- 12k (k <= reach).

    With ``in_dim == out_dim`` the result is residual; otherwise (the seed order,
    on the raw input features) it is a projection.
    """

    def __init__(self, in_dim: int, out_dim: int, reach: int, dropout: float):
        super().__init__()
        self.residual = in_dim == out_dim
        self.conv = nn.Conv1d(
            in_dim, out_dim, kernel_size=2 * reach + 1, dilation=12, padding=12 * reach
        )
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, P, T, D_in) -> (B, P, T, D_out)."""
        b, p, t, d = h.shape
        x = h.permute(0, 2, 3, 1).reshape(b * t, d, p)  # (B*T, D, P)
        y = F.relu(self.conv(x)).reshape(b, t, -1, p).permute(0, 3, 1, 2)  # (B, P, T, D')
        return self.norm(h + self.drop(y) if self.residual else self.drop(y))


class PopH(BiaxialLSTM):
    """BiaxialLSTM + octave conv + attention over time + harmony loss (module docstring)."""

    def __init__(self, config: PopHConfig):
        super().__init__(config)
        d = config.time_hidden
        in_dim = self.n_features if config.layer_order == "seed" else d
        self.octave = OctaveConv(in_dim, d, config.octave_reach, config.dropout)
        self.attention = TimeAttention(d, config.attention_heads, config.dropout, config.seq_len)
        pitch_class = (torch.arange(config.n_pitches) + config.min_pitch) % 12
        self.register_buffer("pitch_class", pitch_class, persistent=False)
        self.register_buffer("disharmony", disharmony_matrix(config.harmony_keys), persistent=False)

    @property
    def _seed_order(self) -> bool:
        return self.config.layer_order == "seed"

    @property
    def pre_time_out(self) -> int:
        return self.config.time_hidden if self._seed_order else self.n_features

    @property
    def pre_time_steps(self) -> int:
        return self.config.seq_len if self._seed_order else 1

    @property
    def context_steps(self) -> int:
        return 1 if self._seed_order else self.config.seq_len

    def _attend(self, h: torch.Tensor) -> torch.Tensor:
        """(B, P, T, D) -> attention over T per pitch."""
        b, p, t, d = h.shape
        return self.attention(h.reshape(b * p, t, d)).reshape(b, p, t, d)

    def pre_time(self, x: torch.Tensor) -> torch.Tensor:
        """Seed order: input features -> octave conv -> attention -> the time-axis LSTM."""
        return self._attend(self.octave(x)) if self._seed_order else x

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        """``after_lstm`` order (the earlier Etude one): LSTM -> attention -> octave conv."""
        return h if self._seed_order else self.octave(self._attend(h))

    def extra_losses(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor], mask: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        probs = torch.sigmoid(logits[..., prv.PLAY])  # (B, T, P)
        cfg = self.config
        harmony = harmony_loss(probs, self.pitch_class, self.disharmony, mask, cfg.harmony_silence)
        return {"harmony": (cfg.harmony_weight * harmony, harmony)}


SPEC = register(
    ModelSpec(
        name="poph",
        representation="prv",
        config_cls=PopHConfig,
        model_cls=PopH,
        make_dataset=prv.make_dataset,
        baseline=prv.baseline,
        objective=Objective(
            name="play_nll",
            kind="likelihood",
            unit="nats per pitch-step",
            description=(
                "cross-entropy of the play channel (is each pitch sounding at each step), "
                "given earlier steps and lower pitches; replay, dynamics and the harmony "
                "loss not included"
            ),
            baseline=Baseline(
                key="baseline_nll",
                name="play_nll",
                description="per-pitch play rates of the train split",
            ),
        ),
        sampler="pipeline.modeling.prv.sampling:generate_biaxial",  # PopH's hooks do the rest
        prepare=prv.prepare,
    )
)
