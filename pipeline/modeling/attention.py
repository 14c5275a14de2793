"""Causal relative self-attention of the Music Transformer, and the layers built on it.

Shared by both transformers: `RelativeTransformer` (a stack of pre-LN `Block`s with
`RelativeSelfAttention`) is the trunk that the event-token `MusicTransformer`
(``events/transformer.py``) and the frame transformer (``prv/frame_transformer.py``)
extend; each adds its own input embedding and output head.

The logits of query i and key j are ``(q_i . k_j + q_i . r_{i-j}) / sqrt(D_h)``, with
one learned embedding ``r_d`` per distance d (clipped at ``max_relative_position``)
and head. Shaw et al. (2018) gathered an ``(L, L, D_h)`` tensor of embeddings; Huang et
al. (2018) multiply Q by the ``(L, D_h)`` matrix ``E_r`` of embeddings ordered from
distance L-1 down to 0 and *skew* the ``(L, L)`` product into place (`skew`), O(L D)
extra memory instead of O(L^2 D).

Two ways to compute the attention, equal to float rounding:

* `relative_attention_reference`: the skewed ``S_rel`` as a float mask of torch's
  ``scaled_dot_product_attention``. It materialises several ``(L, L)`` tensors per
  head (``Q E_r^T``, the masked bias, the math kernel's weights) and autograd keeps
  them for the backward pass: peak memory grows with L^2 per layer. It serves the
  key/value-cached generation steps (a few queries against the cache) and windows of
  at most `REFERENCE_MAX_QUERIES` tokens, which therefore compute exactly what they
  computed before the blocked path existed (the shipped 128-token windows included).
* `blocked_relative_attention`: flash-attention's block algorithm in plain torch.
  Queries are taken `BLOCK_SIZE` at a time; a block of Tb queries sees only the keys
  up to its last one and the relative embeddings of the distances between, so its
  logits are one ``(Tb, keys)`` content product plus one skewed ``(Tb, keys + 1)``
  relative product (the skew of a query block, as in a cached generation step),
  masked and soft-maxed, then multiplied by the values. Nothing above the diagonal
  block is computed, and autograd keeps nothing per block: a custom
  `torch.autograd.Function` saves q, k, v, ``E_r`` and the output, and its backward
  pass recomputes each block's weights. Memory per layer is O(L D) plus one block's
  ``(Tb, L)`` workspaces, like torch's fused attention; the arithmetic is that of
  flash attention plus the relative term's products (11 matrix products per block
  for forward and backward against flash attention's 7).

Attention dropout (on the weights, as ``scaled_dot_product_attention``'s
``dropout_p``): the blocked path draws one seed from torch's global generator per
call and seeds each block's Bernoulli mask from it, so the backward pass regenerates
exactly the masks the forward pass used. The masks are not those the reference path
would draw (another random stream) but have the same distribution.

Precision: the blocked path computes in float32 (float64 for float64 inputs) with
autocast off inside: bf16 inputs from an autocast region are upcast, as torch's CPU
math kernel does for the reference path, and the output has the inputs' dtype.

Threads: on CPU the blocks are shared out among torch's threads, each running its
ops single-threaded (`_for_blocks`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Queries per block of the blocked path. On the 2-core development machine (default
# model, d_model 128 in 4 heads of 32, batch 1, forward + backward, 1,024-4,096
# tokens) blocks of 64 and 128 queries are equally fast, 32, 96 and 256 slower; 64
# halves the workspaces (two of 64 x (L+1) floats per head and thread, three with
# dropout) and gives threads more blocks to share.
BLOCK_SIZE = 64
# Windows of at most this many queries take the reference path (cached generation
# steps; the shipped 128-token training windows, which thus train exactly as before).
REFERENCE_MAX_QUERIES = 128


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
    """`skew` of an already left-padded (..., Tq, Tk+1) product; a view, no copy.

    Causal entries ``[i, j]`` read ``padded[i, Tq + j - i]``, never column 0: what the
    pad column holds reaches only entries that are masked.
    """
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


# --------------------------------------------------------------------------------------
# The two computations


def relative_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel: torch.Tensor,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Causal relative attention of queries `q`, the last Tq of the Tk key positions.

    Blocked (`blocked_relative_attention`) when there are more than
    `REFERENCE_MAX_QUERIES` queries, otherwise the reference computation (cached
    generation steps, short windows).

    Args:
        q: (B, H, Tq, Dh) queries (unscaled).
        k, v: (B, H, Tk, Dh) keys and values, Tk >= Tq (cached positions first).
        rel: (H, M+1, Dh) relative embeddings.
        dropout_p: attention-weight dropout probability (0 outside training).

    Returns:
        (B, H, Tq, Dh) attention outputs.
    """
    if q.size(2) > REFERENCE_MAX_QUERIES:
        return blocked_relative_attention(q, k, v, rel, dropout_p)
    return relative_attention_reference(q, k, v, rel, dropout_p)


def relative_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """`relative_attention` with ``S_rel`` as the float mask of torch's SDPA (see module)."""
    t, n_keys = q.size(2), k.size(2)
    # SDPA scales Q K^T by 1/sqrt(Dh) and adds the float mask, so S_rel is computed
    # from the scaled queries (one (T, P+T) temporary fewer than scaling S_rel)
    s_rel = relative_logits(q * q.size(-1) ** -0.5, rel, n_keys)  # (B, H, T, P+T)
    allowed = causal_mask(t, n_keys, q.device)  # (T, P+T)
    bias = s_rel.masked_fill(~allowed, float("-inf"))  # (B, H, T, P+T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)


def blocked_relative_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel: torch.Tensor,
    dropout_p: float = 0.0,
    block_size: int | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """`relative_attention` a block of queries at a time, recomputed in backward.

    Args: as `relative_attention`; `block_size` queries per block (None:
    `BLOCK_SIZE`) and the `seed` of the dropout masks (None: drawn from torch's global
    generator when ``dropout_p > 0``).
    """
    b, h, n_q, d_head = q.shape
    n_keys = k.size(2)
    dtype = torch.promote_types(q.dtype, torch.float32)  # bf16/fp16 -> fp32
    if dropout_p > 0.0 and seed is None:
        seed = int(torch.randint(0, 2**62, ()))
    with torch.autocast(q.device.type, enabled=False):
        er = relative_embeddings(rel.to(dtype), n_keys + 1)  # (H, Tk+1, Dh): Tk .. 0
        out = _BlockedRelativeAttention.apply(
            (q.to(dtype) * d_head**-0.5).reshape(b * h, n_q, d_head),  # (BH, Tq, Dh)
            k.to(dtype).reshape(b * h, n_keys, d_head),  # (BH, Tk, Dh)
            v.to(dtype).reshape(b * h, n_keys, d_head),  # (BH, Tk, Dh)
            er.expand(b, -1, -1, -1).reshape(b * h, n_keys + 1, d_head),  # (BH, Tk+1, Dh)
            block_size or BLOCK_SIZE,
            dropout_p,
            seed,
        )
    return out.view(b, h, n_q, d_head).to(q.dtype)


# --------------------------------------------------------------------------------------
# The blocked computation


class _Blocks:
    """The query blocks of one blocked attention call: logits, weights, dropout masks.

    Tensors are (BH, positions, Dh) with batch and heads merged, contiguous; the block
    of queries i0:i1 sees keys 0:n (n = i1 plus the cached positions). Each block's
    (Tb, n) temporaries live in workspaces allocated once per call and thread
    (`buffer`): fresh multi-megabyte CPU allocations per block would each be
    page-faulted in anew.
    """

    def __init__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        er: torch.Tensor,
        block: int,
        dropout: float,
        seed: int | None,
    ):
        self.q, self.k, self.er = q, k, er
        self.n_q, self.n_k = q.size(1), k.size(1)
        self.starts = range(0, self.n_q, block)
        self.block = min(block, self.n_q)
        self.future = torch.ones(block, block, dtype=torch.bool, device=q.device).triu(1)
        self.dropout, self.seed = dropout, seed
        self.generator = torch.Generator(device=q.device) if dropout > 0.0 else None
        # workspaces of the largest (Tb, n+1), allocated by the caller's thread (a pool
        # thread's own allocations would sit in its own malloc arena, unused by others)
        size = q.size(0) * self.block * (self.n_k + 1)
        names = ("a", "s", "keep") if dropout > 0.0 else ("a", "s")
        self._buffers = {name: q.new_empty(size) for name in names}
        self.grads: list[torch.Tensor] = []  # backward: this share's dk, dv, dE_r

    def span(self, i0: int) -> tuple[int, int]:
        """The end i1 of the block of queries from i0, and n, the keys it sees."""
        i1 = min(i0 + self.block, self.n_q)
        return i1, self.n_k - self.n_q + i1

    def buffer(self, name: str, tb: int, n: int) -> torch.Tensor:
        """Workspace `name` as a contiguous (BH, tb, n) tensor (contents undefined)."""
        bh = self.q.size(0)
        return self._buffers[name][: bh * tb * n].view(bh, tb, n)

    def weights(self, i0: int) -> torch.Tensor:
        """(BH, Tb, n) attention weights of queries i0:i1 (before dropout), in "s"."""
        i1, n = self.span(i0)
        tb = i1 - i0
        qb = self.q[:, i0:i1]  # (BH, Tb, Dh)
        qe = torch.bmm(
            qb, self.er[:, self.n_k - n :].transpose(1, 2), out=self.buffer("a", tb, n + 1)
        )
        s = self.buffer("s", tb, n)
        torch.baddbmm(_skew_padded(qe), qb, self.k[:, :n].transpose(1, 2), out=s)
        s[:, :, n - tb :].masked_fill_(self.future[:tb, :tb], float("-inf"))
        return _softmax_(s)

    def keep(self, i0: int, like: torch.Tensor) -> torch.Tensor | None:
        """Block i0's dropout mask, scaled by 1/(1-p): the same in forward and backward."""
        if self.generator is None:
            return None
        self.generator.manual_seed(int(self.seed or 0) + i0)
        mask = self.buffer("keep", *like.shape[1:])
        return mask.bernoulli_(1.0 - self.dropout, generator=self.generator).div_(
            1.0 - self.dropout
        )


def _softmax_(s: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim; in place on CPU (the kernel reads each element
    before it writes it), a new tensor elsewhere (CUDA's caching allocator makes that
    free)."""
    if s.device.type == "cpu":
        return torch.ops.aten._softmax.out(s, -1, False, out=s)
    return s.softmax(dim=-1)


class _BlockedRelativeAttention(torch.autograd.Function):
    """softmax(Q K^T + skew(Q E_r^T), causal) V by query blocks; Q pre-scaled.

    Saves only its inputs and output; the backward pass recomputes each block's
    weights (one softmax, bit for bit those of the forward pass). Blocks are shared
    out among the CPU threads (`_for_blocks`).
    """

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        er: torch.Tensor,
        block: int,
        dropout: float,
        seed: int | None,
    ) -> torch.Tensor:
        out = torch.empty_like(q)  # (BH, Tq, Dh)

        def step(blocks: _Blocks, i0: int) -> None:
            i1, n = blocks.span(i0)
            p = blocks.weights(i0)  # (BH, Tb, n)
            keep = blocks.keep(i0, p)
            if keep is not None:
                p.mul_(keep)
            torch.bmm(p, v[:, :n], out=out[:, i0:i1])

        _for_blocks(lambda: _Blocks(q, k, er, block, dropout, seed), step)
        ctx.save_for_backward(q, k, v, er, out)
        ctx.block, ctx.dropout, ctx.seed = block, dropout, seed
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # a CPU backward runs on the caller's thread, inside its autocast if any
        with torch.autocast(grad_out.device.type, enabled=False):
            return _backward(ctx, grad_out)


def _backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    q, k, v, er, out = ctx.saved_tensors
    grad_out = grad_out.to(q.dtype).contiguous()  # (BH, Tq, Dh)
    # sum_j P_ij dP_ij = dO_i . O_i (dropout included): softmax's backward term
    delta = (grad_out * out).sum(dim=-1, keepdim=True)  # (BH, Tq, 1)
    dq = torch.empty_like(q)  # every block writes its rows

    def make() -> _Blocks:
        blocks = _Blocks(q, k, er, ctx.block, ctx.dropout, ctx.seed)
        # this thread's share of dK, dV, dE_r, transposed: (BH, Dh, positions), the
        # layout in which their products run fastest ((Dh, Tb) @ (Tb, n): both rows long)
        blocks.grads = [x.new_zeros(x.size(0), x.size(2), x.size(1)) for x in (k, v, er)]
        return blocks

    def step(blocks: _Blocks, i0: int) -> None:
        i1, n = blocks.span(i0)
        tb = i1 - i0
        dob = grad_out[:, i0:i1]  # (BH, Tb, Dh)
        qt, dot = q[:, i0:i1].transpose(1, 2), dob.transpose(1, 2)  # (BH, Dh, Tb)
        dkt, dvt, dert = blocks.grads
        p = blocks.weights(i0)  # (BH, Tb, n), in "s"
        # dP, then d logits, where skew reads Q E_r^T: the padded buffer is d(Q E_r^T)
        dqe = blocks.buffer("a", tb, n + 1)  # (BH, Tb, n+1)
        dqe.view(-1, tb * (n + 1))[:, :tb].zero_()  # what skew drops
        ds = torch.bmm(dob, v[:, :n].transpose(1, 2), out=_skew_padded(dqe))  # dP
        keep = blocks.keep(i0, p)
        if keep is None:
            dvt[:, :, :n].baddbmm_(dot, p)
        else:  # dP of the kept weights only; dV from the dropped weights
            ds.mul_(keep)
            dvt[:, :, :n].baddbmm_(dot, keep.mul_(p))
        ds.sub_(delta[:, i0:i1]).mul_(p)  # (BH, Tb, n)
        er_b = er[:, blocks.n_k - n :]  # (BH, n+1, Dh)
        torch.bmm(ds, k[:, :n], out=dq[:, i0:i1])
        dq[:, i0:i1].baddbmm_(dqe, er_b)
        dkt[:, :, :n].baddbmm_(qt, ds)
        dert[:, :, blocks.n_k - n :].baddbmm_(qt, dqe)

    shares = _for_blocks(make, step)
    for other in shares[1:]:  # in a fixed order: the sums do not depend on timing
        for total, part in zip(shares[0].grads, other.grads, strict=True):
            total += part
    dk, dv, der = (g.transpose(1, 2) for g in shares[0].grads)
    return dq, dk, dv, der, None, None, None


# --------------------------------------------------------------------------------------
# Threads

_POOL: tuple[tuple[int, int], ThreadPoolExecutor] | None = None


def _pool(n_threads: int) -> ThreadPoolExecutor:
    """A pool of `n_threads` threads, made anew in a forked child."""
    global _POOL
    key = (os.getpid(), n_threads)
    if _POOL is None or _POOL[0] != key:
        if _POOL is not None and _POOL[0][0] == key[0]:
            _POOL[1].shutdown(wait=False)  # another thread count, same process
        _POOL = (key, ThreadPoolExecutor(n_threads, thread_name_prefix="relative-attention"))
    return _POOL[1]


def _for_blocks(make: Callable[[], _Blocks], step: Callable[[_Blocks, int], None]) -> list[_Blocks]:
    """Run ``step(blocks, i0)`` for every block, sharing the blocks out among threads.

    On CPU with N > 1 torch threads, each of N threads (the caller and N-1 pool
    threads) takes a fixed share of the blocks, balanced by their key counts, and
    runs its ops single-threaded: one parallel region per call instead of one per op
    (on a busy machine every op's region waits for a descheduled thread), like the
    fused kernels' own parallel loop. Elsewhere (one thread, CUDA) the caller runs
    every block. torch's thread count is 1 process-wide while the blocks run and is
    restored after. Returns each thread's `_Blocks` (from `make`), in share order.
    """
    first = make()
    threads = torch.get_num_threads() if first.q.device.type == "cpu" else 1
    starts = list(first.starts)
    shares = _shares(starts, [first.span(i0)[1] for i0 in starts], threads)
    if len(shares) == 1:
        for i0 in shares[0]:
            step(first, i0)
        return [first]
    states = [first] + [make() for _ in shares[1:]]

    def run(w: int) -> None:
        torch.set_num_threads(1)  # also sets this thread's OpenMP team size
        with torch.no_grad():  # grad mode is per thread
            for i0 in shares[w]:
                step(states[w], i0)

    futures = []
    torch.set_num_threads(1)
    try:
        pool = _pool(len(shares) - 1)
        futures = [pool.submit(run, w) for w in range(1, len(shares))]
        run(0)
    finally:
        wait(futures)  # a worker still running uses this call's tensors
        torch.set_num_threads(threads)
    for future in futures:
        future.result()  # raise a worker's exception here
    return states


def _shares(starts: list[int], costs: list[int], n_threads: int) -> list[list[int]]:
    """Block `starts` per thread: each block, costliest first, to the least loaded
    thread (ties: the first), so the shares depend on the sizes only."""
    n = max(1, min(n_threads, len(starts)))
    shares: list[list[int]] = [[] for _ in range(n)]
    loads = [0] * n
    for i in sorted(range(len(starts)), key=lambda i: -costs[i]):
        w = loads.index(min(loads))
        shares[w].append(starts[i])
        loads[w] += costs[i]
    return shares


# --------------------------------------------------------------------------------------
# The layers

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
        dropout = self.dropout if self.training else 0.0
        y = relative_attention(q, k, v, self.rel, dropout)  # (B, H, T, Dh)
        y = y.transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return self.proj(y), (k, v)


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + FF(LN(x))."""

    def __init__(
        self, d_model: int, n_heads: int, d_ff: int, max_relative_position: int,
        dropout: float, attention_dropout: float,
    ):  # fmt: skip
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = RelativeSelfAttention(
            d_model, n_heads, max_relative_position, attention_dropout
        )
        self.ln2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))
        self.drop = nn.Dropout(dropout)

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


class RelativeTransformer(nn.Module):
    """The trunk both transformers extend: `n_layers` `Block`s and a final LayerNorm.

    Subclasses add an input embedding and a head, call `init_trunk` after building them,
    and run `trunk` on (B, T, d_model) inputs. ``dropout`` acts on the residual
    branches, ``attention_dropout`` (default: the same) on the attention weights.
    Initialisation: unit-variance linear outputs for unit-variance inputs, and (GPT-2)
    residual-branch outputs scaled by 1/sqrt(2 n_layers) so the residual stream's
    variance stays about 1.
    """

    def __init__(
        self, d_model: int, n_layers: int, n_heads: int, d_ff: int, max_relative_position: int,
        dropout: float, attention_dropout: float | None = None,
    ):  # fmt: skip
        super().__init__()
        self.d_model = d_model
        attention_dropout = dropout if attention_dropout is None else attention_dropout
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_ff, max_relative_position, dropout, attention_dropout)
            for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)

    def init_trunk(self) -> None:
        """Initialise every linear and embedding layer (see the class docstring)."""
        self.apply(self._init_weights)
        for block in self.blocks:
            for layer in (block.attn.proj, block.ff[2]):
                std = layer.in_features**-0.5 / math.sqrt(2 * len(self.blocks))
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
            nn.init.normal_(module.weight, std=self.d_model**-0.5)

    def trunk(
        self, x: torch.Tensor, past: Sequence[KVCache] | None = None
    ) -> tuple[torch.Tensor, list[KVCache]]:
        """The blocks and the final LayerNorm over `x` (B, T, D) after `past` caches."""
        presents: list[KVCache] = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, None if past is None else past[i])  # (B, T, D)
            presents.append(present)
        return self.ln_f(x), presents
