"""Sampling from the pianoroll models: the autoencoder's chain, the VAE's prior and
latent walk.

`generate_autoencoder` runs the generalized-denoising-autoencoder Markov chain
described in `pipeline.modeling.pianoroll.autoencoder`; `generate_vae` decodes codes
drawn from the VAE's prior (or from the posterior of a primer's last window) and
`interpolate_vae` decodes points on the slerp path between the codes of two windows
(`pipeline.modeling.pianoroll.vae`). Both models turn probabilities into cells with
`binarize`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.modeling.pianoroll import roll_to_rows, rows_to_roll
from pipeline.modeling.sampling import SampleOptions

__all__ = ["binarize", "generate_autoencoder", "generate_vae", "interpolate_vae", "slerp"]


def binarize(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """0/1 cells from probabilities (..., T, P).

    ``threshold > 0``: cells whose probability exceeds it. ``threshold == 0``: in each
    frame, the ``round(sum of its probabilities)`` most probable cells - as many notes
    as the model expects, which still works while a young decoder's probabilities
    are too blurry to pass any fixed threshold.
    """
    if threshold > 0:
        return (probs > threshold).to(probs.dtype)
    count = probs.sum(dim=-1).round()  # (..., T)
    rank = probs.argsort(dim=-1, descending=True).argsort(dim=-1)  # 0 = most probable
    return (rank < count[..., None]).to(probs.dtype)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between codes `a` and `b` (lerp when nearly parallel)."""
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp(min=1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if float(torch.sin(omega)) < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


# --------------------------------------------------------------------------------------
# Autoencoder


@torch.no_grad()
def generate_autoencoder(
    model: Any, n: int, options: SampleOptions, generator: torch.Generator | None = None
) -> list[pd.DataFrame]:
    """Sample `n` piano rolls of a `PianorollAutoencoder` with its denoising chain.

    The chain is described in the autoencoder's module docstring. Of the
    `SampleOptions`: ``temperature`` divides the logits inside the chain (> 1:
    busier, < 1: sparser); the ``primer``'s frames (from frame 0) open every sample
    and the chain continues them; ``length`` counts frames; ``top_k``, ``top_p`` and
    ``style`` are ignored (cells are independent Bernoullis; no styles).

    Returns:
        n DataFrames of pianoroll rows (piece_id "sample-i"), primer included.
    """
    cfg = model.config
    device = model.density.device
    prime = _primer_roll(model, options.primer, device)  # (F, P)
    length, seconds = options.length, options.seconds
    new_frames = length if length is not None else round(seconds * 1000.0 / cfg.frame_ms)
    total = prime.size(0) + max(0, int(new_frames))
    roll = torch.zeros(n, total, cfg.n_pitches, device=device)
    roll[:, : prime.size(0)] = prime
    was_training = model.training
    model.eval()
    try:
        position = prime.size(0)
        window, context = cfg.window_frames, cfg.window_frames // 2
        while position < total:
            start = max(0, position - context)
            known = position - start
            x = torch.zeros(n, window, cfg.n_pitches, device=device)
            chunk = roll[:, start : start + window]
            x[:, : chunk.size(1)] = chunk
            x[:, known:] = _noise(model, n, window - known, generator, device)
            x = _chain(model, x, known, generator, max(options.temperature, 1e-3))
            end = min(total, start + window)
            roll[:, position:end] = x[:, known : end - start]
            position = end
    finally:
        model.train(was_training)
    return [
        roll_to_rows(roll[i].cpu().numpy(), f"sample-{i}", cfg.min_pitch, cfg.velocity)
        for i in range(n)
    ]


def _noise(
    model: Any, n: int, frames: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    u = torch.rand(n, frames, model.config.n_pitches, generator=generator, device=device)
    return (u < model.density.clamp(1e-4, 0.5)).float()


def _chain(
    model: Any,
    x: torch.Tensor,
    known: int,
    generator: torch.Generator | None,
    temperature: float,
) -> torch.Tensor:
    """Corrupt/reconstruct/sample `gen_iterations` times; frames < known stay clamped."""
    for it in range(model.config.gen_iterations):
        noisy = model.corrupt(x, generator, add=False)
        probs = torch.sigmoid(model.logits(noisy) / temperature)
        if it + 1 < model.config.gen_iterations:
            u = torch.rand(probs.shape, generator=generator, device=probs.device)
            sample = (u < probs).float()
        else:
            sample = binarize(probs, model.config.threshold)
        x = torch.cat([x[:, :known], sample[:, known:]], dim=1)
    return x


def _primer_roll(model: Any, primer: pd.DataFrame | None, device: torch.device) -> torch.Tensor:
    cfg = model.config
    if primer is None or len(primer) == 0:
        return torch.zeros(0, cfg.n_pitches, device=device)
    roll = rows_to_roll(primer, cfg.min_pitch, cfg.n_pitches)
    return torch.from_numpy(roll).to(device)


# --------------------------------------------------------------------------------------
# VAE


@torch.no_grad()
def generate_vae(
    model: Any, n: int, options: SampleOptions, generator: torch.Generator | None = None
) -> list[pd.DataFrame]:
    """Decode independent windows of a `PianorollVAE` from its prior.

    Of the `SampleOptions`: ``temperature`` scales the standard deviation of the codes
    drawn; a ``primer``'s frames open every sample and the codes of the following
    windows are drawn from the posterior of the primer's last window (std scaled by
    temperature): variations on it; ``length`` counts frames after the primer;
    ``top_k``, ``top_p`` and ``style`` are ignored (no token distribution; no styles).

    Returns:
        n DataFrames of pianoroll rows (piece_id "sample-i"), primer included.
    """
    cfg = model.config
    primer, length, seconds = options.primer, options.length, options.seconds
    device = model.from_latent.weight.device
    was_training = model.training
    model.eval()
    try:
        prime = np.zeros((0, cfg.n_pitches), np.float32)
        mu = torch.zeros(cfg.latent_dim, device=device)
        sigma = torch.ones(cfg.latent_dim, device=device)
        if primer is not None and len(primer):
            prime = rows_to_roll(primer, cfg.min_pitch, cfg.n_pitches)
            last = torch.zeros(1, cfg.window_frames, cfg.n_pitches, device=device)
            tail = torch.from_numpy(prime[-cfg.window_frames :]).to(device)
            last[0, : tail.size(0)] = tail
            mean, logvar = model.encode(last)
            mu, sigma = mean[0], torch.exp(0.5 * logvar[0])
        new_frames = length if length is not None else round(seconds * 1000.0 / cfg.frame_ms)
        n_windows = max(0, math.ceil(int(new_frames) / cfg.window_frames))
        eps = torch.randn(n, n_windows, cfg.latent_dim, generator=generator, device=device)
        z = mu + options.temperature * sigma * eps  # (n, windows, latent)
        if n_windows:
            probs = torch.sigmoid(model.decode(z.reshape(n * n_windows, -1)))  # (n*w, T, P)
            cells = binarize(probs, cfg.threshold).reshape(n, -1, cfg.n_pitches)
            cells = cells[:, : int(new_frames)].cpu().numpy()
        else:
            cells = np.zeros((n, 0, cfg.n_pitches), np.float32)
    finally:
        model.train(was_training)
    out = []
    for i in range(n):
        roll = np.concatenate([prime, cells[i]], axis=0)
        out.append(roll_to_rows(roll, f"sample-{i}", cfg.min_pitch, cfg.velocity))
    return out


@torch.no_grad()
def interpolate_vae(model: Any, a: pd.DataFrame, b: pd.DataFrame, steps: int) -> list[pd.DataFrame]:
    """Decode `steps` points on the slerp path between the codes of two windows.

    Args:
        model: a `PianorollVAE`.
        a, b: pianoroll rows; the first ``window_frames`` frames of each are
            encoded to their posterior means.
        steps: number of windows, from `a`'s code (t = 0) to `b`'s (t = 1).

    Returns:
        `steps` DataFrames of pianoroll rows ("interp-0", ...), one window each.
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    cfg = model.config
    device = model.from_latent.weight.device
    was_training = model.training
    model.eval()
    try:
        codes = []
        for rows in (a, b):
            roll = rows_to_roll(rows, cfg.min_pitch, cfg.n_pitches)[: cfg.window_frames]
            window = torch.zeros(1, cfg.window_frames, cfg.n_pitches, device=device)
            window[0, : len(roll)] = torch.from_numpy(roll).to(device)
            codes.append(model.encode(window)[0][0])
        z = torch.stack([slerp(codes[0], codes[1], float(t)) for t in np.linspace(0.0, 1.0, steps)])
        cells = binarize(torch.sigmoid(model.decode(z)), cfg.threshold).cpu().numpy()
    finally:
        model.train(was_training)
    return [
        roll_to_rows(cells[i], f"interp-{i}", cfg.min_pitch, cfg.velocity) for i in range(steps)
    ]
