"""PopH: the biaxial LSTM plus self-attention over time, an octave convolution and a harmony loss.

PopH, as this project's design card describes it, is DeepJ's biaxial model
(`pipeline.modeling.prv.biaxial`) with three additions. This module subclasses
`BiaxialLSTM` (in the family package `pipeline.modeling.prv`) and fills its ``mix``
and ``extra_losses`` hooks, so features, the two LSTMs, the heads, the three DeepJ
losses and sampling (`pipeline.modeling.prv.sampling.generate_poph`) are the biaxial
code itself.

1. **Self-attention over time** (``mix``, first): multi-head causal self-attention
   (``attention_heads`` heads, width ``time_hidden``) over the time-axis LSTM outputs
   of each pitch, with a residual connection and LayerNorm. The LSTM gives a strong
   recency bias; attention lets a step look back at any step of the window (a
   repeated motif, the chord four beats ago). No positional encoding: the LSTM
   outputs already carry order. Generation attends over the last ``seq_len`` steps,
   the span training windows have.
2. **Octave convolution over pitch** (``mix``, second): a ``Conv1d`` across the pitch
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
from pipeline.modeling.base import ModelSpec, register

# Tones outside the scale, index 0 = C (PopH's disharmony vectors).
C_MAJOR_DISHARMONY = (0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0)
C_MINOR_DISHARMONY = (0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1)


@dataclass(frozen=True, kw_only=True)
class Config(prv.Config):
    """The `models.poph` params section: the biaxial fields plus PopH's additions."""

    attention_heads: int  # heads of the self-attention over time (divide time_hidden)
    octave_reach: int  # octave conv sees pitches +-12k semitones away, k <= this
    harmony_weight: float  # weight of the harmony loss (0: logged only)
    harmony_keys: Literal["all", "c"]  # "c": PopH's C major/minor rows only

    def validate(self) -> None:
        super().validate()
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
    probs: torch.Tensor, pitch_class: torch.Tensor, matrix: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean over valid steps of min over rows of (disharmony row . softmax(folded probs)).

    Args:
        probs: (B, T, P) play probabilities.
        pitch_class: (P,) pitch class (0 = C) of each pitch index.
        matrix: (R, 12) disharmony rows (`disharmony_matrix`).
        mask: (B, T) 1 for steps inside the piece.
    """
    fold = F.one_hot(pitch_class, 12).to(probs.dtype)  # (P, 12); a matmul is deterministic
    folded = probs @ fold  # (B, T, 12): summed over octaves
    weights = torch.softmax(folded, dim=-1)  # (B, T, 12)
    per_row = weights @ matrix.T  # (B, T, R)
    penalty = per_row.min(dim=-1).values  # (B, T)
    return (penalty * mask).sum() / mask.sum().clamp(min=1.0)


class TimeAttention(nn.Module):
    """Causal multi-head self-attention over time with residual + LayerNorm."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> (N, T, D); step t attends to steps <= t."""
        t = h.size(1)
        future = torch.ones(t, t, dtype=torch.bool, device=h.device).triu(1)
        a, _ = self.attn(h, h, h, attn_mask=future, need_weights=False)
        return self.norm(h + a)


class OctaveConv(nn.Module):
    """Conv1d over pitch with dilation 12: pitch p sees p +- 12k (k <= reach)."""

    def __init__(self, dim: int, reach: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size=2 * reach + 1, dilation=12, padding=12 * reach)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, P, T, D) -> (B, P, T, D)."""
        b, p, t, d = h.shape
        x = h.permute(0, 2, 3, 1).reshape(b * t, d, p)  # (B*T, D, P)
        y = F.relu(self.conv(x)).reshape(b, t, d, p).permute(0, 3, 1, 2)  # (B, P, T, D)
        return self.norm(h + self.drop(y))


class PopH(prv.BiaxialLSTM):
    """BiaxialLSTM + attention over time + octave conv + harmony loss (module docstring)."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.attention = TimeAttention(config.time_hidden, config.attention_heads, config.dropout)
        self.octave = OctaveConv(config.time_hidden, config.octave_reach, config.dropout)
        pitch_class = (torch.arange(config.n_pitches) + config.min_pitch) % 12
        self.register_buffer("pitch_class", pitch_class, persistent=False)
        self.register_buffer("disharmony", disharmony_matrix(config.harmony_keys), persistent=False)

    @property
    def context_steps(self) -> int:
        return self.config.seq_len

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        """(B, P, T, H) -> attention over T per pitch, then the octave conv over P."""
        b, p, t, d = h.shape
        h = self.attention(h.reshape(b * p, t, d)).reshape(b, p, t, d)
        return self.octave(h)

    def extra_losses(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor], mask: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        probs = torch.sigmoid(logits[..., prv.PLAY])  # (B, T, P)
        harmony = harmony_loss(probs, self.pitch_class, self.disharmony, mask)
        return {"harmony": (self.config.harmony_weight * harmony, harmony)}


SPEC = register(
    ModelSpec(
        name="poph",
        representation="prv",
        config_cls=Config,
        model_cls=PopH,
        make_dataset=prv.make_dataset,
        baseline=prv.baseline,
        prepare=prv.prepare,
    )
)
