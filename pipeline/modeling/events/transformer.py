"""Music Transformer (Huang et al. 2018) on performance-event tokens.

A decoder-only transformer whose self-attention adds a learned *relative* position
term to the content term: ``logits = (Q K^T + S_rel) / sqrt(D_h)``. Shaw et al.
(2018) computed ``S_rel`` by gathering an ``(L, L, D_h)`` tensor of relative
embeddings (O(L^2 D) memory); Huang et al. instead multiply ``Q`` by the ``(L, D_h)``
matrix ``E_r`` of embeddings ordered from distance ``-(L-1)`` to ``0`` and *skew* the
``(L, L)`` product into place (pad one column on the left, reshape, drop a row), which
needs O(L D) extra memory. Distances beyond ``max_relative_position`` share one
clipped embedding, and each head of each layer learns its own embeddings, as in the
paper. Blocks are pre-LayerNorm (more stable for small, quickly trained models).

The attention and the blocks are `pipeline.modeling.attention` (shared with the frame
transformer): windows longer than 128
tokens are computed a block of queries at a time and recomputed in the backward pass
(flash attention's algorithm with the skew applied per block), so memory grows like
torch's fused attention rather than with several (L, L) tensors per head; shorter
windows and cached generation steps compute the skewed logits as one SDPA mask.

Paper: C.-Z. A. Huang et al., "Music Transformer: Generating Music with Long-Term
Structure", ICLR 2019 (arXiv:1809.04281), section 3.4.1.

Windows and baselines are in `pipeline.modeling.events`, sampling (with the key/value
cache of `MusicTransformer.logits`) in `pipeline.modeling.events.sampling`.

Registered as model ``transformer`` on the ``events`` store; params section
``models.transformer``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.params import require
from pipeline.modeling import events
from pipeline.modeling.attention import KVCache, RelativeTransformer, sine_positions
from pipeline.modeling.base import Baseline, ModelSpec, Objective, register
from pipeline.representations.events import PAD, VOCAB_SIZE


@dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """The `models.transformer` params section.

    Defaults are a small model (0.7 M parameters) that beats the bigram baseline on
    the Bach chorales after ~100 steps of 16 windows and trains 200 steps in about
    1-2 minutes on two CPU cores; the paper's Piano-e-Competition model is about
    d_model=512, n_layers=6, n_heads=8, d_ff=2048, seq_len=2048,
    max_relative_position=2048.
    """

    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    dropout: float
    max_relative_position: int  # distances beyond this share one embedding
    seq_len: int  # tokens per training window (2048 at full scale)
    sine_positions: bool  # add sinusoidal absolute positions to the embeddings
    tie_embeddings: bool  # output projection shares the input embedding matrix
    bos_window_share: float  # share of training windows anchored at a piece's BOS

    def validate(self) -> None:
        require(self.d_model > 0, "d_model must be > 0")
        require(self.n_layers > 0, "n_layers must be > 0")
        require(self.n_heads > 0, "n_heads must be > 0")
        require(self.d_model % self.n_heads == 0, "d_model must be divisible by n_heads")
        require(self.d_ff > 0, "d_ff must be > 0")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        require(self.max_relative_position > 0, "max_relative_position must be > 0")
        require(self.seq_len > 1, "seq_len must be > 1")
        require(0.0 <= self.bos_window_share <= 1.0, "bos_window_share must be in [0, 1]")


# --------------------------------------------------------------------------------------
# The model


class MusicTransformer(RelativeTransformer):
    """Decoder-only Music Transformer over event tokens (vocabulary of VOCAB_SIZE)."""

    def __init__(self, config: TransformerConfig):
        super().__init__(
            config.d_model,
            config.n_layers,
            config.n_heads,
            config.d_ff,
            config.max_relative_position,
            config.dropout,
        )
        self.config = config
        self.embed = nn.Embedding(VOCAB_SIZE, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.d_model, VOCAB_SIZE, bias=False)
        self.init_trunk()
        if config.tie_embeddings:
            self.head.weight = self.embed.weight

    def logits(
        self,
        tokens: torch.Tensor,
        past: Sequence[KVCache] | None = None,
        start_pos: int = 0,
    ) -> tuple[torch.Tensor, list[KVCache]]:
        """Next-token logits for `tokens` (B, T) following `past` (one cache per layer).

        Args:
            tokens: (B, T) token ids at absolute positions start_pos .. start_pos+T-1.
            past: per-layer key/value caches of the previous positions, or None.
            start_pos: absolute position of tokens[:, 0] (for the sine encoding).

        Returns:
            (B, T, V) logits and the per-layer caches including these positions.
        """
        x = self.embed(tokens) * math.sqrt(self.config.d_model)  # (B, T, D)
        if self.config.sine_positions:
            positions = torch.arange(start_pos, start_pos + tokens.size(1), device=tokens.device)
            x = x + sine_positions(positions, self.config.d_model).to(x.dtype)  # (B, T, D)
        x, presents = self.trunk(self.drop(x), past)  # (B, T, D)
        return self.head(x), presents  # (B, T, V)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Masked next-token cross-entropy of windows ``batch["tokens"]`` (B, T+1).

        Targets equal to PAD are ignored, so padding never contributes to the loss.
        Returns ``loss`` (= ``nll``, mean nats per non-PAD target), ``accuracy`` and
        ``n_units`` (the number of scored targets, which the training loop uses to
        weight batch means so evaluation means are per token).
        """
        tokens = batch["tokens"].long()  # (B, T+1)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T) each
        logits, _ = self.logits(inputs)  # (B, T, V)
        valid = targets != PAD  # (B, T)
        n_valid = valid.sum()
        flat_logits = logits.reshape(-1, logits.size(-1)).float()
        if int(n_valid) == 0:  # an all-padding batch: a zero loss that keeps the graph
            loss = flat_logits.sum() * 0.0
            accuracy = loss.detach()
        else:
            loss = F.cross_entropy(flat_logits, targets.reshape(-1), ignore_index=PAD)
            hits = (logits.argmax(dim=-1) == targets) & valid
            accuracy = hits.sum().float() / n_valid
        return {
            "loss": loss,
            "nll": loss.detach(),
            "accuracy": accuracy.detach(),
            "n_units": n_valid.detach(),
        }


SPEC = register(
    ModelSpec(
        name="transformer",
        representation="events",
        config_cls=TransformerConfig,
        model_cls=MusicTransformer,
        make_dataset=events.make_dataset,
        baseline=events.baseline,
        objective=Objective(
            name="nll",
            kind="likelihood",
            unit="nats per token",
            description="next-event-token cross-entropy over every non-padding target",
            baseline=Baseline(
                key="baseline_nll",
                name="nll",
                description="the better of a unigram and a smoothed bigram over train tokens",
            ),
        ),
        sampler="pipeline.modeling.events.sampling:generate_transformer",
    )
)
