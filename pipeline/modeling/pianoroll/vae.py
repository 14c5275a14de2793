"""Convolutional variational autoencoder on piano-roll windows.

Same convolutional encoder and decoder as the autoencoder (`pipeline.modeling.pianoroll`
``ConvEncoder`` / ``ConvDecoder``: 3x3 convolutions with 32 then 64 filters, ReLU, 2x2 pooling,
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
    loss  = recon + beta_k * kl,  beta_k = beta * min(1, k / kl_anneal_steps)

for the k-th optimizer step (k = 1 .. max_steps): beta_k grows linearly (KL
annealing, Bowman et al. 2016) and the ``kl_anneal_steps``-th step is the first at
the full ``beta``. A run shorter than the annealing would end having trained another
objective than the one it reports, so `check_train` makes ``kl_anneal_steps`` above
the run's ``max_steps`` an error naming both keys. ``nll = recon + kl`` is the
negative ELBO per cell: an *upper bound* on the true negative log-likelihood per
cell (whatever beta is), comparable one way with the per-pitch Bernoulli baseline's
exact NLL (a bound below it beats it). In evaluation ``loss`` is that negative ELBO
(KL weight 1, whatever ``beta`` and the step), so fit selects the checkpoint on the
bound that evaluate reports, and validation losses are comparable over time.

Generation draws each window's code from the prior, ``z ~ N(0, temperature^2 I)``,
the codes of one clip correlated (``window_correlation``: independent windows jump
between keys and registers every window, measured as an 85-semitone range against the
chorales' 34), and turns the decoder's probabilities into notes by the sampler's
``draw`` (params ``sample.vae``; see the sampler). Interpolation encodes two windows to their posterior means and
decodes points along the *spherical* interpolation (slerp) between them: under a
Gaussian prior in many dimensions almost all mass lies near a sphere, and the
straight line between two codes passes through atypically small-norm codes
(White, "Sampling Generative Networks", 2016); nearly parallel codes fall back to
linear interpolation. Both are in `pipeline.modeling.pianoroll.sampling`
(``generate_vae``, ``interpolate_vae``, ``binarize``, ``slerp``).

Registered as model ``vae`` on the ``pianoroll`` store; params section ``models.vae``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.params import ParamsError, require
from pipeline.modeling import pianoroll
from pipeline.modeling.base import Baseline, ModelSpec, Objective, TrainParams, register
from pipeline.modeling.pianoroll import (
    ConvDecoder,
    ConvEncoder,
    check_prepared,
    masked_bce,
    pad_pitches,
    padded_pitches,
    validate_backbone,
)


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """The `models.vae` params section.

    Defaults train in about a minute on two CPU cores. Scale: ``window_frames: 128``,
    ``filters: [64, 128, 256]``, ``latent_dim: 256``, more ``train.max_steps`` and
    ``kl_anneal_steps`` (at most the run's ``max_steps``). ``min_pitch``, ``n_pitches``
    and ``frame_ms`` come from the pianoroll store (spec ``prepare``); leave them 0.
    """

    window_frames: int  # frames per window (64 x 50 ms = 3.2 s)
    filters: tuple[int, ...]  # conv filters per level (one 2x2 pooling each)
    latent_dim: int
    beta: float  # KL weight once annealed
    kl_anneal_steps: int  # KL weight reaches beta at this step; at most the run's max_steps
    min_pitch: int = 0  # from the store params (prepare)
    n_pitches: int = 0  # from the store params (prepare)
    frame_ms: float = 0.0  # from the store params (prepare)

    def validate(self) -> None:
        validate_backbone(self)
        require(self.latent_dim > 0, "latent_dim must be > 0")
        require(self.beta >= 0, "beta must be >= 0")
        require(self.kl_anneal_steps >= 0, "kl_anneal_steps must be >= 0")


class PianorollVAE(nn.Module):
    """Conv VAE over piano-roll windows; see the module docstring."""

    def __init__(self, config: VAEConfig):
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
        """The KL weight of the loss: annealed in training, 1 (the ELBO) in evaluation."""
        cfg = self.config
        if not self.training:
            return 1.0
        if self.step is None or cfg.kl_anneal_steps == 0:
            return cfg.beta
        return cfg.beta * min(1.0, (self.step + 1) / cfg.kl_anneal_steps)

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


def check_train(config: VAEConfig, train: TrainParams) -> None:
    """The KL weight must reach ``beta`` within the run (`ModelSpec.check_train`)."""
    if config.kl_anneal_steps > train.max_steps:
        final = config.beta * train.max_steps / config.kl_anneal_steps
        raise ParamsError(
            f"models.vae.kl_anneal_steps ({config.kl_anneal_steps}) exceeds the run's "
            f"max_steps ({train.max_steps}: models.vae.train.max_steps, else "
            f"train.max_steps): the KL weight would end at {final:.3g}, not beta "
            f"{config.beta:g}, and the model would train another objective than the ELBO "
            "it reports; lower kl_anneal_steps or raise max_steps"
        )


SPEC = register(
    ModelSpec(
        name="vae",
        representation="pianoroll",
        config_cls=VAEConfig,
        model_cls=PianorollVAE,
        make_dataset=pianoroll.make_dataset,
        baseline=pianoroll.baseline,
        objective=Objective(
            name="neg_elbo",
            kind="bound",
            unit="nats per cell",
            description=(
                "negative ELBO (reconstruction BCE + KL to the prior, one sample of z): an "
                "upper bound on the negative log-likelihood of each window's cells"
            ),
            baseline=Baseline(
                key="baseline_nll",
                name="nll",
                description="per-pitch Bernoulli with the train split's activation rates",
            ),
        ),
        sampler="pipeline.modeling.pianoroll.sampling:generate_vae",
        interpolator="pipeline.modeling.pianoroll.sampling:interpolate_vae",
        prepare=pianoroll.prepare,
        check_train=check_train,
    )
)
