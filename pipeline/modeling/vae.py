"""Convolutional variational autoencoder on piano-roll windows.

Same convolutional encoder and decoder as the autoencoder (`autoencoder.ConvEncoder`
/ `ConvDecoder`: 3x3 convolutions with 32 then 64 filters, ReLU, 2x2 pooling,
transposed-convolution upsampling) but *without* the skip connections: samples from
the prior have no encoder feature maps to pass across, and skips would let the
decoder ignore the latent. The bottleneck is flattened into the mean and log-variance
of a diagonal Gaussian posterior q(z|x) over ``latent_dim`` dimensions; z is drawn
with the reparameterisation trick ``z = mu + sigma * eps`` (in evaluation too, so
the reported bound is the usual one-sample ELBO estimate) and decoded back into cell
logits.

Loss (per cell, padding past a piece's end excluded)::

    recon = sum BCE(cells) / n_cells                   (nats per cell)
    kl    = sum_windows KL(q(z|x) || N(0, I)) / n_cells   (nats per cell)
    loss  = recon + beta_t * kl,  beta_t = beta * min(1, step / kl_anneal_steps)

beta_t grows linearly during training (KL annealing, Bowman et al. 2016); in
evaluation the full ``beta`` is used so validation losses are comparable over time.
``nll = recon + kl`` is the negative ELBO per cell: an *upper bound* on the true
negative log-likelihood per cell (whatever beta is), comparable with the per-pitch
Bernoulli baseline's exact NLL.

Generation samples ``z ~ N(0, temperature^2 I)`` for every window and turns the
decoder's probabilities into notes with `autoencoder.binarize`: by default (``threshold
0``) each frame plays as many of its most probable cells as the probabilities add up
to, since a briefly trained VAE's blurry probabilities rarely pass a fixed threshold
(measured on the Bach corpus after 150 steps: no cell above 0.3); windows are
independent. Interpolation
(`PianorollVAE.interpolate`) encodes two windows to their posterior means and
decodes points along the *spherical* interpolation (slerp) between them: under a
Gaussian prior in many dimensions almost all mass lies near a sphere, and the
straight line between two codes passes through atypically small-norm codes
(White, "Sampling Generative Networks", 2016); nearly parallel codes fall back to
linear interpolation.

Registered as model ``vae`` on the ``pianoroll`` store; params section ``models.vae``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.modeling import pianoroll_data as prd
from pipeline.modeling.autoencoder import (
    ConvDecoder,
    ConvEncoder,
    baseline,
    binarize,
    check_prepared,
    make_dataset,
    masked_bce,
    pad_pitches,
    padded_pitches,
    prepare,
    validate_backbone,
)
from pipeline.modeling.base import ModelSpec, register
from pipeline.params import require


@dataclass(frozen=True)
class Config:
    """The `models.vae` params section.

    Defaults train in about a minute on two CPU cores. Scale: ``window_frames: 128``,
    ``filters: [64, 128, 256]``, ``latent_dim: 256``, more ``train.max_steps`` and
    ``kl_anneal_steps``. ``min_pitch``, ``n_pitches`` and ``frame_ms`` come from the
    pianoroll store (spec ``prepare``); leave them 0.
    """

    window_frames: int = 64  # frames per window (64 x 50 ms = 3.2 s)
    filters: tuple[int, ...] = (32, 64)  # conv filters per level (one 2x2 pooling each)
    latent_dim: int = 32
    beta: float = 1.0  # KL weight once annealed
    kl_anneal_steps: int = 200  # KL weight rises linearly from 0 to beta over these steps
    threshold: float = 0.0  # generation: play cells above it (0: expected count, `binarize`)
    velocity: int = 80  # velocity of generated notes (the model ignores dynamics)
    min_pitch: int = 0  # from the store params (prepare)
    n_pitches: int = 0  # from the store params (prepare)
    frame_ms: float = 0.0  # from the store params (prepare)

    def validate(self) -> None:
        validate_backbone(self)
        require(self.latent_dim > 0, "latent_dim must be > 0")
        require(self.beta >= 0, "beta must be >= 0")
        require(self.kl_anneal_steps >= 0, "kl_anneal_steps must be >= 0")


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between codes `a` and `b` (lerp when nearly parallel)."""
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp(min=1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if float(torch.sin(omega)) < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


class PianorollVAE(nn.Module):
    """Conv VAE over piano-roll windows; see the module docstring."""

    def __init__(self, config: Config):
        super().__init__()
        check_prepared(config)
        self.config = config
        self.width = padded_pitches(config)
        scale = 2 ** len(config.filters)
        self.code_shape = (config.filters[-1], config.window_frames // scale, self.width // scale)
        flat = math.prod(self.code_shape)
        self.encoder = ConvEncoder(config.filters)
        self.to_stats = nn.Linear(flat, 2 * config.latent_dim)
        self.from_latent = nn.Linear(config.latent_dim, flat)
        self.decoder = ConvDecoder(config.filters)
        self.pitch_bias = nn.Parameter(torch.zeros(config.n_pitches))  # register, learnt fast
        self.step: int | None = None  # set by fit for KL annealing; None = full beta

    def set_step(self, step: int) -> None:
        """Training step for the KL annealing schedule (called by `fit`)."""
        self.step = step

    def kl_weight(self) -> float:
        cfg = self.config
        if not self.training or self.step is None or cfg.kl_anneal_steps == 0:
            return cfg.beta
        return cfg.beta * min(1.0, self.step / cfg.kl_anneal_steps)

    def encode(self, roll: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, P) cells -> posterior mean and log-variance, each (B, latent_dim)."""
        x = pad_pitches(roll, self.width)[:, None]  # (B, 1, T, W)
        h, _ = self.encoder(x)  # (B, F, T/2^L, W/2^L)
        mu, logvar = self.to_stats(h.flatten(1)).chunk(2, dim=-1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, T, P) cell logits."""
        h = F.relu(self.from_latent(z)).view(z.size(0), *self.code_shape)
        return self.decoder(h)[:, 0, :, : self.config.n_pitches] + self.pitch_bias

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        roll, mask = batch["roll"], batch["mask"]  # (B, T, P), (B, T)
        mu, logvar = self.encode(roll * mask[..., None])
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        recon_sum, cells = masked_bce(self.decode(z), roll, mask)
        kl_sum = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum()
        recon, kl = recon_sum / cells, kl_sum / cells
        weight = self.kl_weight()
        out = {
            "loss": recon + weight * kl,
            "nll": (recon + kl).detach(),
            "recon": recon.detach(),
            "kl": kl.detach(),
            "n_units": cells.detach(),
        }
        if self.training:
            out["kl_weight"] = torch.tensor(weight)
        return out

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
        """Decode independent windows from the prior.

        Args:
            n: number of samples.
            generator: torch random generator (seeded by the caller).
            temperature: scales the standard deviation of the codes drawn.
            top_k, top_p, style: ignored (no token distribution; no styles).
            primer: pianoroll rows; when given its frames open every sample and the
                codes of the following windows are drawn from the posterior of the
                primer's last window (std scaled by temperature): variations on it.
            seconds: length after the primer; ``length`` (frames) overrides it.

        Returns:
            n DataFrames of pianoroll rows (piece_id "sample-i"), primer included.
        """
        del top_k, top_p, style
        cfg = self.config
        device = self.from_latent.weight.device
        was_training = self.training
        self.eval()
        try:
            prime = np.zeros((0, cfg.n_pitches), np.float32)
            mu = torch.zeros(cfg.latent_dim, device=device)
            sigma = torch.ones(cfg.latent_dim, device=device)
            if primer is not None and len(primer):
                prime = prd.rows_to_roll(primer, cfg.min_pitch, cfg.n_pitches)
                last = torch.zeros(1, cfg.window_frames, cfg.n_pitches, device=device)
                tail = torch.from_numpy(prime[-cfg.window_frames :]).to(device)
                last[0, : tail.size(0)] = tail
                mean, logvar = self.encode(last)
                mu, sigma = mean[0], torch.exp(0.5 * logvar[0])
            new_frames = length if length is not None else round(seconds * 1000.0 / cfg.frame_ms)
            n_windows = max(0, math.ceil(int(new_frames) / cfg.window_frames))
            eps = torch.randn(n, n_windows, cfg.latent_dim, generator=generator, device=device)
            z = mu + temperature * sigma * eps  # (n, windows, latent)
            if n_windows:
                probs = torch.sigmoid(self.decode(z.reshape(n * n_windows, -1)))  # (n*w, T, P)
                cells = binarize(probs, cfg.threshold).reshape(n, -1, cfg.n_pitches)
                cells = cells[:, : int(new_frames)].cpu().numpy()
            else:
                cells = np.zeros((n, 0, cfg.n_pitches), np.float32)
        finally:
            self.train(was_training)
        out = []
        for i in range(n):
            roll = np.concatenate([prime, cells[i]], axis=0)
            out.append(prd.roll_to_rows(roll, f"sample-{i}", cfg.min_pitch, cfg.velocity))
        return out

    @torch.no_grad()
    def interpolate(self, a: pd.DataFrame, b: pd.DataFrame, steps: int) -> list[pd.DataFrame]:
        """Decode `steps` points on the slerp path between the codes of two windows.

        Args:
            a, b: pianoroll rows; the first ``window_frames`` frames of each are
                encoded to their posterior means.
            steps: number of windows, from `a`'s code (t = 0) to `b`'s (t = 1).

        Returns:
            `steps` DataFrames of pianoroll rows ("interp-0", ...), one window each.
        """
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        cfg = self.config
        device = self.from_latent.weight.device
        was_training = self.training
        self.eval()
        try:
            codes = []
            for rows in (a, b):
                roll = prd.rows_to_roll(rows, cfg.min_pitch, cfg.n_pitches)[: cfg.window_frames]
                window = torch.zeros(1, cfg.window_frames, cfg.n_pitches, device=device)
                window[0, : len(roll)] = torch.from_numpy(roll).to(device)
                codes.append(self.encode(window)[0][0])
            z = torch.stack(
                [slerp(codes[0], codes[1], float(t)) for t in np.linspace(0.0, 1.0, steps)]
            )
            cells = binarize(torch.sigmoid(self.decode(z)), cfg.threshold).cpu().numpy()
        finally:
            self.train(was_training)
        return [
            prd.roll_to_rows(cells[i], f"interp-{i}", cfg.min_pitch, cfg.velocity)
            for i in range(steps)
        ]


SPEC = register(
    ModelSpec(
        name="vae",
        representation="pianoroll",
        config_cls=Config,
        model_cls=PianorollVAE,
        make_dataset=make_dataset,
        baseline=baseline,
        prepare=prepare,
    )
)
