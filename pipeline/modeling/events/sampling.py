"""Sampling from the events model (`transformer`): autoregressive, with a key/value cache.

`generate_transformer` draws tokens with `sample_next` (temperature, then top-k and
top-p filters; PAD and BOS never drawn), feeding each back through a `ContextWindow`:
`MusicTransformer.logits` with the per-layer key/value cache, re-encoded from scratch
whenever the context would outgrow the training window (see `ContextWindow` for why).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.modeling.sampling import SampleOptions, filter_logits
from pipeline.representations.events import (
    BOS,
    EOS,
    MAX_SHIFT_STEPS,
    PAD,
    STEP_S,
    TIME_SHIFT,
    VOCAB_SIZE,
)

__all__ = [
    "ContextWindow",
    "filter_logits",
    "generate_transformer",
    "reencode_chunk",
    "sample_next",
    "time_shift_seconds",
]

# TIME_SHIFT tokens TIME_SHIFT + k (k = 1..MAX_SHIFT_STEPS) advance time by k * STEP_S.
TIME_SHIFT_FIRST = TIME_SHIFT + 1
TIME_SHIFT_LAST = TIME_SHIFT + MAX_SHIFT_STEPS
# Without `length`, generation stops after seconds * this many tokens even if the model
# never emits enough TIME_SHIFTs (dense piano music has ~30-100 events per second).
MAX_TOKENS_PER_SECOND = 200


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


def reencode_chunk(seq_len: int) -> int:
    """Tokens generated between two re-encodes of the context: a quarter window (>= 1)."""
    return max(1, seq_len // 4)


class ContextWindow:
    """The model's context while sampling: exactly what a training window shows it.

    Training runs the model on windows of at most `seq_len` tokens at positions
    0 .. seq_len-1, with every key and value computed inside the window. A sliding
    key/value cache breaks both past seq_len: sine positions grow beyond any trained
    one, and cached keys of layer 2 and up were computed while attending to tokens
    that have since left the window (a receptive field of up to n_layers * seq_len
    tokens), which no training window produces; relative positions alone fix the
    first but not the second. (Random-init default model, the first 620 tokens of a
    test piece: the sliding cache's next-token distribution is 0.058 nats (KL, mean
    over the 492 positions past seq_len) from a fresh pass over the same window.)

    So the window grows with the cache up to `seq_len` tokens; the token that would
    exceed it triggers a fresh forward pass over the last ``seq_len - k + 1`` tokens
    (k = `reencode_chunk`, a quarter window) at positions 0.., and the cache grows
    again from there: one re-encode per k sampled tokens. Every next-token
    distribution is then that of a fresh forward pass over the current window
    (`window`) of ``seq_len - k + 1 .. seq_len`` tokens, lengths training windows
    have. k trades context for speed: k = 1 re-encodes the full window for every
    token (a seq_len-token forward per token); a quarter window re-encodes
    ``(seq_len - k + 1) / k`` (about 3) tokens per sampled token, in one batched
    pass far cheaper than as many cached steps, and keeps at least 3/4 of the
    trained context (default model, CPU, 1 thread, 512 tokens: 189 tokens/s against
    204 for the sliding cache, `benchmarks/bench_transformer.py`).
    """

    def __init__(self, model: Any, prime: torch.Tensor):
        """Encode `prime` (B, P); the model sees its last seq_len tokens."""
        self.model = model
        self.seq_len = int(model.config.seq_len)
        self.keep = self.seq_len - reencode_chunk(self.seq_len) + 1  # tokens re-encoded
        self.window = prime[:, -self.seq_len :]  # (B, W)
        logits, self.past = model.logits(self.window)
        self.logits = logits[:, -1]  # (B, V) next-token logits
        self.reencodes = 0

    def push(self, token: torch.Tensor) -> torch.Tensor:
        """Append `token` (B,) to the window; returns the next-token logits (B, V)."""
        n = self.window.size(1)
        self.window = torch.cat([self.window, token[:, None]], dim=1)  # (B, W+1)
        if n + 1 > self.seq_len:  # re-encode the last `keep` tokens at positions 0..
            self.window = self.window[:, -self.keep :]
            logits, self.past = self.model.logits(self.window)
            self.reencodes += 1
        else:
            logits, self.past = self.model.logits(token[:, None], self.past, start_pos=n)
        self.logits = logits[:, -1]
        return self.logits


def time_shift_seconds(tokens: np.ndarray | torch.Tensor) -> Any:
    """Seconds that TIME_SHIFT `tokens` advance (0 for other tokens), elementwise."""
    is_shift = (tokens >= TIME_SHIFT_FIRST) & (tokens <= TIME_SHIFT_LAST)
    return (tokens - TIME_SHIFT) * is_shift * STEP_S


@torch.no_grad()
def generate_transformer(
    model: Any, n: int, options: SampleOptions, generator: torch.Generator | None = None
) -> list[pd.DataFrame]:
    """Sample `n` event sequences of a `MusicTransformer` with a key/value cache.

    Of the `SampleOptions`: tokens are drawn with ``temperature`` (<= 0: greedy),
    then the ``top_k`` and ``top_p`` filters; PAD and BOS are never drawn. A sample
    stops at EOS, after ``length`` new tokens when given, otherwise once its
    TIME_SHIFTs add up to ``seconds`` (capped at ``seconds * MAX_TOKENS_PER_SECOND``
    tokens). With a ``primer`` (events rows, a ``tokens`` column) sample i continues
    row ``i % len(primer)`` after removing its trailing EOS/PAD, and the returned
    tokens are primer + continuation; the model sees at most the last `seq_len`
    primer tokens; without one samples start from BOS. ``style`` is ignored (the
    transformer is unconditioned).

    A sample that did not end with EOS gets one appended, so rows always end with
    EOS. Past `seq_len` tokens the cache keeps the last ``seq_len - 1`` positions, so
    attention spans stay those of training and relative distances stay exact (with
    `sine_positions`, absolute positions past seq_len were never seen in training).

    Returns:
        n DataFrames with columns piece_id ("sample-i") and tokens (np.uint16).
    """
    length, seconds = options.length, options.seconds
    primers = _primers(n, options.primer)
    limit = length if length is not None else max(1, int(seconds * MAX_TOKENS_PER_SECOND))
    was_training = model.training
    model.eval()
    try:
        results: list[np.ndarray | None] = [None] * n
        groups: dict[bytes, list[int]] = {}
        for i, p in enumerate(primers):  # samples sharing a primer are one batch
            groups.setdefault(p.tobytes(), []).append(i)
        for members in groups.values():
            prime = primers[members[0]]
            continuations = _sample_batch(
                model,
                prime,
                len(members),
                generator,
                options.temperature,
                options.top_k,
                options.top_p,
                limit,
                None if length is not None else seconds,
            )
            for i, cont in zip(members, continuations, strict=True):
                results[i] = np.concatenate([prime, cont]).astype(np.uint16)
    finally:
        model.train(was_training)
    return [
        pd.DataFrame({"piece_id": [f"sample-{i}"], "tokens": [tokens]})
        for i, tokens in enumerate(results)
    ]


def _primers(n: int, primer: pd.DataFrame | None) -> list[np.ndarray]:
    if primer is None or len(primer) == 0:
        return [np.array([BOS], dtype=np.int64) for _ in range(n)]
    if "tokens" not in primer:
        raise ValueError(f"primer: no 'tokens' column (columns: {list(primer.columns)})")
    rows = [np.asarray(t, dtype=np.int64) for t in primer["tokens"]]
    out = []
    for i in range(n):
        tokens = rows[i % len(rows)]
        if tokens.size and (tokens.min() < 0 or tokens.max() >= VOCAB_SIZE):
            raise ValueError(f"primer row {i % len(rows)}: token ids outside 0..{VOCAB_SIZE - 1}")
        end = len(tokens)
        while end > 0 and tokens[end - 1] in (EOS, PAD):
            end -= 1
        out.append(tokens[:end] if end else np.array([BOS], dtype=np.int64))
    return out


def _sample_batch(
    model: Any,
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
    device = next(model.parameters()).device
    window = torch.as_tensor(prime, device=device).repeat(batch, 1)  # (B, P)
    context = ContextWindow(model, window)
    drawn: list[torch.Tensor] = []
    n_drawn = torch.full((batch,), limit, dtype=torch.long)
    elapsed = torch.zeros(batch, dtype=torch.float64)
    done = torch.zeros(batch, dtype=torch.bool)
    for step in range(limit):
        token = sample_next(context.logits, generator, temperature, top_k, top_p)  # (B,)
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
        context.push(token)
    tokens = torch.stack(drawn, dim=1).cpu().numpy() if drawn else np.zeros((batch, 0), int)
    out = []
    for i in range(batch):
        cont = tokens[i, : int(n_drawn[i])]
        if cont.size == 0 or cont[-1] != EOS:
            cont = np.append(cont, EOS)
        out.append(cont.astype(np.int64))
    return out
