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
# Relative attention


def relative_embeddings(rel: torch.Tensor, n_keys: int) -> torch.Tensor:
    """Return ``E_r`` for `n_keys` keys: rows ordered from distance n_keys-1 down to 0.

    Args:
        rel: (H, M+1, Dh) learned embeddings, ``rel[:, d]`` for a key ``d`` steps
            before the query; distances above M use ``rel[:, M]`` (clipping).
        n_keys: number of keys L.

    Returns:
        (H, L, Dh); row k holds the embedding of distance ``min(L-1-k, M)``, i.e. the
        paper's order of relative positions ``-(L-1) .. 0``.
    """
    max_distance = rel.size(1) - 1
    distance = torch.arange(n_keys - 1, -1, -1, device=rel.device).clamp(max=max_distance)
    return rel[:, distance]  # (H, L, Dh)


def skew(qe: torch.Tensor) -> torch.Tensor:
    """Move ``Q E_r^T`` entries to their (query, key) places: the skewing procedure.

    For queries that are the last Tq of Tk positions, ``qe[..., i, k]`` is query i
    against the embedding of distance ``Tk-1-k``; the result's ``[..., i, j]`` is query
    i against the embedding of its distance to key j, valid for causal pairs
    (``j <= Tk-Tq+i``); other entries are leftovers to be masked. Pad a zero column
    on the left, flatten each (Tq, Tk+1) matrix, drop its first Tq entries and
    reshape to (Tq, Tk). With Tq == Tk == L this is the paper's pad, reshape to
    (L+1, L) and drop the first row.

    Args:
        qe: (..., Tq, Tk) with Tq <= Tk.

    Returns:
        (..., Tq, Tk) relative logits ``S_rel``.
    """
    return _skew_padded(F.pad(qe, (1, 0)))  # pad: (..., Tq, Tk+1)


def _skew_padded(padded: torch.Tensor) -> torch.Tensor:
    """`skew` of an already left-padded (..., Tq, Tk+1) product; a view, no copy."""
    *lead, n_q, n_k1 = padded.shape
    flat = padded.reshape(*lead, n_q * n_k1)
    return flat[..., n_q:].reshape(*lead, n_q, n_k1 - 1)  # (..., Tq, Tk)


def relative_logits(q: torch.Tensor, rel: torch.Tensor, n_keys: int) -> torch.Tensor:
    """``S_rel`` for queries `q` (the last Tq of `n_keys` positions), in O(L D) memory.

    Equals ``skew(Q E_r^T)``; the zero pad column comes from a zero row prepended to
    ``E_r`` instead, so only one (Tq, Tk+1) product is ever allocated.

    Args:
        q: (B, H, Tq, Dh) queries.
        rel: (H, M+1, Dh) relative embeddings (see `relative_embeddings`).
        n_keys: Tk, number of keys (cache plus new positions).

    Returns:
        (B, H, Tq, Tk); entries for future keys are meaningless (mask them).
    """
    er = F.pad(relative_embeddings(rel, n_keys), (0, 0, 1, 0))  # (H, Tk+1, Dh), row 0 zero
    qe = torch.einsum("bhqd,hkd->bhqk", q, er)  # (B, H, Tq, Tk+1), column 0 zero
    return _skew_padded(qe)  # (B, H, Tq, Tk)


def causal_mask(n_queries: int, n_keys: int, device: torch.device) -> torch.Tensor:
    """(Tq, Tk) bool, True where query i (position Tk-Tq+i) may attend to key j."""
    offset = n_keys - n_queries
    rows = torch.arange(n_queries, device=device)[:, None]
    cols = torch.arange(n_keys, device=device)[None, :]
    return cols <= rows + offset


KVCache = tuple[torch.Tensor, torch.Tensor]


class RelativeSelfAttention(nn.Module):
    """Causal multi-head self-attention with clipped relative position logits."""

    def __init__(self, d_model: int, n_heads: int, max_relative_position: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        # one embedding per head and distance 0..M (keys at or before the query)
        self.rel = nn.Parameter(
            torch.randn(n_heads, max_relative_position + 1, self.d_head) * self.d_head**-0.5
        )

    def forward(self, x: torch.Tensor, past: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """Attend over `past` keys/values plus `x`; returns the output and the new cache.

        Args:
            x: (B, T, D) inputs at the positions following the cached ones.
            past: keys and values (B, H, P, Dh) of the P previous positions, or None.
        """
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)  # 3 x (B, T, D)
        q = q.view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, Dh)
        v = v.view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, Dh)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, H, P+T, Dh)
            v = torch.cat([past[1], v], dim=2)  # (B, H, P+T, Dh)
        n_keys = k.size(2)
        # SDPA scales Q K^T by 1/sqrt(Dh) and adds the float mask, so S_rel is computed
        # from the scaled queries (one (T, P+T) temporary fewer than scaling S_rel)
        s_rel = relative_logits(q * self.d_head**-0.5, self.rel, n_keys)  # (B, H, T, P+T)
        allowed = causal_mask(t, n_keys, x.device)  # (T, P+T)
        bias = s_rel.masked_fill(~allowed, float("-inf"))  # (B, H, T, P+T)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, Dh)
        y = y.transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return self.proj(y), (k, v)


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + FF(LN(x))."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = RelativeSelfAttention(
            config.d_model, config.n_heads, config.max_relative_position, config.dropout
        )
        self.ln2 = nn.LayerNorm(config.d_model)
        self.ff = nn.Sequential(
            nn.Linear(config.d_model, config.d_ff),
            nn.ReLU(),
            nn.Linear(config.d_ff, config.d_model),
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, past: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        a, present = self.attn(self.ln1(x), past)
        x = x + self.drop(a)  # (B, T, D)
        x = x + self.drop(self.ff(self.ln2(x)))  # (B, T, D)
        return x, present


def sine_positions(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """Sinusoidal position encoding (Vaswani et al. 2017) for integer `positions` (T,)."""
    half = d_model // 2
    freq = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half
    )  # (D/2,)
    angle = positions.float()[:, None] * freq[None, :]  # (T, D/2)
    pe = torch.zeros(positions.numel(), d_model, device=positions.device)
    pe[:, 0 : 2 * half : 2] = torch.sin(angle)
    pe[:, 1 : 2 * half : 2] = torch.cos(angle)
    return pe  # (T, D)


# --------------------------------------------------------------------------------------
# The model


class MusicTransformer(nn.Module):
    """Decoder-only Music Transformer over event tokens (vocabulary of VOCAB_SIZE)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(VOCAB_SIZE, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, VOCAB_SIZE, bias=False)
        self.apply(self._init_weights)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        # GPT-2: scale residual-branch outputs so the residual stream's variance stays ~1
        for block in self.blocks:
            for layer in (block.attn.proj, block.ff[2]):
                std = layer.in_features**-0.5 / math.sqrt(2 * config.n_layers)
                nn.init.normal_(layer.weight, std=std)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            # unit-variance outputs for unit-variance inputs: the residual stream carries
            # sqrt(d_model)-scaled embeddings, so blocks must not start near zero
            nn.init.normal_(module.weight, std=module.in_features**-0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            # unit-variance rows after the sqrt(d_model) input scaling; ~unit logits if tied
            nn.init.normal_(module.weight, std=self.config.d_model**-0.5)

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
        x = self.drop(x)
        presents: list[KVCache] = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, None if past is None else past[i])  # (B, T, D)
            presents.append(present)
        return self.head(self.ln_f(x)), presents  # (B, T, V)

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
