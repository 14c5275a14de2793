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

Registered as model ``transformer`` on the ``events`` store; params section
``models.transformer``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pipeline.modeling.base import ModelSpec, StoreData, register
from pipeline.params import require
from pipeline.representations.events import (
    BOS,
    EOS,
    MAX_SHIFT_STEPS,
    PAD,
    STEP_S,
    TIME_SHIFT,
    VOCAB_SIZE,
)

log = logging.getLogger(__name__)

# TIME_SHIFT tokens TIME_SHIFT + k (k = 1..MAX_SHIFT_STEPS) advance time by k * STEP_S.
TIME_SHIFT_FIRST = TIME_SHIFT + 1
TIME_SHIFT_LAST = TIME_SHIFT + MAX_SHIFT_STEPS
# Without `length`, generation stops after seconds * this many tokens even if the model
# never emits enough TIME_SHIFTs (dense piano music has ~30-100 events per second).
MAX_TOKENS_PER_SECOND = 200
# Bigram baseline: pseudo-counts added to each row, spread like the unigram (additive
# smoothing toward the unigram, a Dirichlet prior of this total mass).
BIGRAM_PRIOR_COUNT = 10.0


@dataclass(frozen=True)
class Config:
    """The `models.transformer` params section.

    Defaults are a small model (0.7 M parameters) that beats the bigram baseline on
    the Bach chorales after ~100 steps of 16 windows and trains 200 steps in about
    1-2 minutes on two CPU cores; the paper's Piano-e-Competition model is about
    d_model=512, n_layers=6, n_heads=8, d_ff=2048, seq_len=2048,
    max_relative_position=2048.
    """

    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 4
    d_ff: int = 512
    dropout: float = 0.1
    max_relative_position: int = 128  # distances beyond this share one embedding
    seq_len: int = 128  # tokens per training window (2048 at full scale)
    sine_positions: bool = True  # add sinusoidal absolute positions to the embeddings
    tie_embeddings: bool = True  # output projection shares the input embedding matrix

    def validate(self) -> None:
        require(self.d_model > 0, "d_model must be > 0")
        require(self.n_layers > 0, "n_layers must be > 0")
        require(self.n_heads > 0, "n_heads must be > 0")
        require(self.d_model % self.n_heads == 0, "d_model must be divisible by n_heads")
        require(self.d_ff > 0, "d_ff must be > 0")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        require(self.max_relative_position > 0, "max_relative_position must be > 0")
        require(self.seq_len > 1, "seq_len must be > 1")


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

    def __init__(self, config: Config):
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
# Sampling helpers


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the `top_k` largest logits and then the smallest nucleus of mass >= `top_p`.

    Removed entries become -inf. ``top_k <= 0`` and ``top_p >= 1`` disable the filters.
    The nucleus is minimal: sorted by probability, a token is kept only while the mass
    of the tokens before it is still below `top_p` (Holtzman et al. 2020); the most
    likely token is always kept.

    Args:
        logits: (..., V).
    """
    if top_k > 0 and top_k < logits.size(-1):
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep.scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (..., V)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    generator: torch.Generator | None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """Draw one token per row of `logits` (B, V); temperature <= 0 means greedy."""
    logits = logits.float().clone()
    logits[:, PAD] = float("-inf")  # never part of a sequence
    logits[:, BOS] = float("-inf")  # only ever the first token
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = logits.softmax(dim=-1)  # (B, V)
    if generator is not None and probs.device != generator.device:
        probs = probs.to(generator.device)
    # inverse-CDF draw: one uniform per row (several times cheaper than multinomial
    # for one draw); a zero-probability token never owns an interval of the CDF
    cdf = probs.double().cumsum(dim=-1)  # (B, V)
    u = torch.rand(probs.size(0), 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    drawn = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1)  # (B,)
    return drawn.clamp(max=probs.size(-1) - 1).to(logits.device)


def time_shift_seconds(tokens: np.ndarray | torch.Tensor) -> Any:
    """Seconds that TIME_SHIFT `tokens` advance (0 for other tokens), elementwise."""
    is_shift = (tokens >= TIME_SHIFT_FIRST) & (tokens <= TIME_SHIFT_LAST)
    return (tokens - TIME_SHIFT) * is_shift * STEP_S


# --------------------------------------------------------------------------------------
# The model


class MusicTransformer(nn.Module):
    """Decoder-only Music Transformer over event tokens (vocabulary of VOCAB_SIZE)."""

    def __init__(self, config: Config):
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

    @torch.no_grad()
    def generate(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        primer: pd.DataFrame | None = None,
        seconds: float = 30.0,
        length: int | None = None,
        style: str | None = None,
    ) -> list[pd.DataFrame]:
        """Sample `n` event sequences autoregressively with a key/value cache.

        Sampling uses `temperature` (<= 0: greedy), then top-k and top-p filters; PAD
        and BOS are never drawn. A sample stops at EOS, after `length` new tokens
        when given, otherwise once its TIME_SHIFTs add up to `seconds` (capped at
        ``seconds * MAX_TOKENS_PER_SECOND`` tokens). A sample that did not end with
        EOS gets one appended, so rows always end with EOS. Past `seq_len` tokens the
        cache keeps the last ``seq_len - 1`` positions, so attention spans stay those
        of training and relative distances stay exact (with `sine_positions`, absolute
        positions past seq_len were never seen in training).

        Args:
            n: number of samples.
            generator: torch random generator (seeded by the caller).
            primer: events store rows (a ``tokens`` column); sample i continues row
                ``i % len(primer)`` after removing its trailing EOS/PAD, and the returned
                tokens are primer + continuation. The model sees at most the last
                `seq_len` primer tokens. Without a primer samples start from BOS.
            seconds: length of the continuation in seconds of TIME_SHIFTs.
            length: number of new tokens; overrides `seconds`.
            style: ignored (the transformer is unconditioned).

        Returns:
            n DataFrames with columns piece_id ("sample-i") and tokens (np.uint16).
        """
        del style
        primers = self._primers(n, primer)
        limit = length if length is not None else max(1, int(seconds * MAX_TOKENS_PER_SECOND))
        was_training = self.training
        self.eval()
        try:
            results: list[np.ndarray | None] = [None] * n
            groups: dict[bytes, list[int]] = {}
            for i, p in enumerate(primers):  # samples sharing a primer are one batch
                groups.setdefault(p.tobytes(), []).append(i)
            for members in groups.values():
                prime = primers[members[0]]
                continuations = self._sample_batch(
                    prime,
                    len(members),
                    generator,
                    temperature,
                    top_k,
                    top_p,
                    limit,
                    None if length is not None else seconds,
                )
                for i, cont in zip(members, continuations, strict=True):
                    results[i] = np.concatenate([prime, cont]).astype(np.uint16)
        finally:
            self.train(was_training)
        return [
            pd.DataFrame({"piece_id": [f"sample-{i}"], "tokens": [tokens]})
            for i, tokens in enumerate(results)
        ]

    def _primers(self, n: int, primer: pd.DataFrame | None) -> list[np.ndarray]:
        if primer is None or len(primer) == 0:
            return [np.array([BOS], dtype=np.int64) for _ in range(n)]
        if "tokens" not in primer:
            raise ValueError(f"primer: no 'tokens' column (columns: {list(primer.columns)})")
        rows = [np.asarray(t, dtype=np.int64) for t in primer["tokens"]]
        out = []
        for i in range(n):
            tokens = rows[i % len(rows)]
            if tokens.size and (tokens.min() < 0 or tokens.max() >= VOCAB_SIZE):
                raise ValueError(
                    f"primer row {i % len(rows)}: token ids outside 0..{VOCAB_SIZE - 1}"
                )
            end = len(tokens)
            while end > 0 and tokens[end - 1] in (EOS, PAD):
                end -= 1
            out.append(tokens[:end] if end else np.array([BOS], dtype=np.int64))
        return out

    def _sample_batch(
        self,
        prime: np.ndarray,
        batch: int,
        generator: torch.Generator | None,
        temperature: float,
        top_k: int,
        top_p: float,
        limit: int,
        seconds: float | None,
    ) -> list[np.ndarray]:
        """Continue `prime` `batch` times; returns each continuation (ending with EOS)."""
        device = next(self.parameters()).device
        context = self.config.seq_len
        window = torch.as_tensor(prime[-context:], device=device).repeat(batch, 1)  # (B, P)
        logits, past = self.logits(window)
        position = window.size(1)
        drawn: list[torch.Tensor] = []
        n_drawn = torch.full((batch,), limit, dtype=torch.long)
        elapsed = torch.zeros(batch, dtype=torch.float64)
        done = torch.zeros(batch, dtype=torch.bool)
        for step in range(limit):
            token = sample_next(logits[:, -1], generator, temperature, top_k, top_p)  # (B,)
            drawn.append(token)
            token_cpu = token.cpu()
            elapsed += time_shift_seconds(token_cpu).double()
            stop = token_cpu == EOS
            if seconds is not None:
                stop |= elapsed >= seconds
            newly = stop & ~done
            n_drawn[newly] = step + 1
            done |= stop
            if bool(done.all()) or step + 1 == limit:
                break
            # keep at most seq_len - 1 cached positions: relative distances stay exact
            past = [(k[:, :, -(context - 1) :], v[:, :, -(context - 1) :]) for k, v in past]
            logits, past = self.logits(token[:, None], past, start_pos=position)
            position += 1
        tokens = torch.stack(drawn, dim=1).cpu().numpy() if drawn else np.zeros((batch, 0), int)
        out = []
        for i in range(batch):
            cont = tokens[i, : int(n_drawn[i])]
            if cont.size == 0 or cont[-1] != EOS:
                cont = np.append(cont, EOS)
            out.append(cont.astype(np.int64))
        return out


# --------------------------------------------------------------------------------------
# Data


def _piece_tokens(store: StoreData, split: str) -> list[np.ndarray]:
    """Token arrays (int64) of one split's pieces, checked against the vocabulary."""
    if split not in store.rows:
        raise KeyError(f"events store {store.path or ''}: no '{split}' split")
    rows = store.rows[split]
    if "tokens" not in rows:
        raise ValueError(f"events store {store.path or ''}: {split} rows have no 'tokens' column")
    out = []
    for piece_id, tokens in zip(rows["piece_id"], rows["tokens"], strict=True):
        arr = np.asarray(tokens, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= VOCAB_SIZE):
            raise ValueError(
                f"events store {store.path or ''}: piece {piece_id!r} ({split}) has token "
                f"ids outside 0..{VOCAB_SIZE - 1}"
            )
        if arr.size >= 2:  # a piece needs a context token and a target
            out.append(arr)
    return out


class EventWindows(Dataset):
    """Windows of ``seq_len + 1`` tokens (inputs + shifted targets), PAD-filled at the end.

    Training (``random_offsets=True``): an epoch has ``ceil((n-1)/seq_len)`` items per
    piece of n tokens (so pieces count by length); item i of epoch e is a window at
    a random offset drawn from a generator seeded by (seed, e, i), so windows depend
    only on the epoch (set by the training loop through `set_epoch`) and the index,
    never on fetch order, and a resumed run sees the same windows. Evaluation: consecutive windows
    starting every ``seq_len`` tokens; window w's targets are tokens
    ``w*seq_len+1 .. (w+1)*seq_len``, so every token after the first is predicted
    exactly once.
    """

    def __init__(self, pieces: list[np.ndarray], seq_len: int, random_offsets: bool, seed: int = 0):
        self.pieces = pieces
        self.seq_len = seq_len
        self.random_offsets = random_offsets
        self.seed = seed
        self.epoch = 0
        per_piece = np.array(
            [max(1, math.ceil((len(p) - 1) / seq_len)) for p in pieces], dtype=np.int64
        )
        if random_offsets:
            self._ends = np.cumsum(per_piece)
        else:
            self._windows = [
                (i, w * seq_len) for i, count in enumerate(per_piece) for w in range(int(count))
            ]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random offsets the training windows use."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.random_offsets:
            return int(self._ends[-1]) if len(self._ends) else 0
        return len(self._windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.random_offsets:
            piece_index = int(np.searchsorted(self._ends, index, side="right"))
            tokens = self.pieces[piece_index]
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            start = int(rng.integers(0, max(0, len(tokens) - self.seq_len - 1) + 1))
        else:
            piece_index, start = self._windows[index]
            tokens = self.pieces[piece_index]
        window = np.full(self.seq_len + 1, PAD, dtype=np.int64)
        chunk = tokens[start : start + self.seq_len + 1]
        window[: len(chunk)] = chunk
        return {"tokens": torch.from_numpy(window)}


def make_dataset(store: StoreData, config: Config, split: str) -> EventWindows:
    """Windows over one split: random offsets for train, covering windows otherwise.

    The training offsets are seeded from ``torch.initial_seed()`` at construction, so
    the loop's seed (``train.seed``) fixes them.
    """
    pieces = _piece_tokens(store, split)
    if split == "train":
        seed = int(torch.initial_seed() % (2**63))
        return EventWindows(pieces, config.seq_len, random_offsets=True, seed=seed)
    return EventWindows(pieces, config.seq_len, random_offsets=False)


def _targets_with_context(
    store: StoreData, config: Config, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """(previous token, target) pairs of every non-PAD target in the evaluation windows."""
    data = make_dataset(store, config, split)
    if len(data) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    windows = np.stack([data[i]["tokens"].numpy() for i in range(len(data))])  # (W, T+1)
    prev, target = windows[:, :-1].ravel(), windows[:, 1:].ravel()
    valid = target != PAD
    return prev[valid], target[valid]


def baseline(store: StoreData, config: Config) -> dict[str, float]:
    """Unigram and bigram token models fitted on train, mean NLL (nats) on test targets.

    The unigram uses add-one smoothing. The bigram adds BIGRAM_PRIOR_COUNT
    pseudo-counts to each context, spread in proportion to the unigram (additive
    smoothing toward the unigram), so unseen pairs fall back gracefully. Both are
    scored on exactly the targets the model is scored on (the test windows of
    `make_dataset`), and ``baseline_nll`` is the better of the two.
    """
    train = _piece_tokens(store, "train")
    prev, target = _targets_with_context(store, config, "test")
    if target.size == 0 or not train:
        log.warning("transformer baseline: empty train or test split; returning NaN")
        nan = float("nan")
        return {"baseline_nll": nan, "unigram_nll": nan, "bigram_nll": nan}
    unigram_counts = np.zeros(VOCAB_SIZE, dtype=np.float64)
    bigram_counts = np.zeros((VOCAB_SIZE, VOCAB_SIZE), dtype=np.float64)
    for tokens in train:
        np.add.at(unigram_counts, tokens[1:], 1.0)
        np.add.at(bigram_counts, (tokens[:-1], tokens[1:]), 1.0)
    unigram = (unigram_counts + 1.0) / (unigram_counts.sum() + VOCAB_SIZE)  # (V,)
    bigram = (bigram_counts + BIGRAM_PRIOR_COUNT * unigram[None, :]) / (
        bigram_counts.sum(axis=1, keepdims=True) + BIGRAM_PRIOR_COUNT
    )  # (V, V), rows sum to 1
    unigram_nll = float(-np.log(unigram[target]).mean())
    bigram_nll = float(-np.log(bigram[prev, target]).mean())
    return {
        "baseline_nll": min(unigram_nll, bigram_nll),
        "unigram_nll": unigram_nll,
        "bigram_nll": bigram_nll,
    }


SPEC = register(
    ModelSpec(
        name="transformer",
        representation="events",
        config_cls=Config,
        model_cls=MusicTransformer,
        make_dataset=make_dataset,
        baseline=baseline,
    )
)
