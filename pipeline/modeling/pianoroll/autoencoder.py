"""Convolutional denoising autoencoder on piano-roll windows (U-Net style skips).

The network sees a window of ``window_frames`` frames x ``n_pitches`` pitches (0/1
cells) as a one-channel image. Encoder: per level a 3x3 convolution + ReLU (32, then
64 filters by default) and 2x2 max pooling, then a 3x3 bottleneck convolution.
Decoder: per level a 2x2 transposed convolution (upsampling), plus the encoder's
feature map of the same level (the skip connection; added rather than concatenated,
which halves the decoder's cost), then a 3x3 convolution + ReLU; a 1x1 convolution
gives one logit per cell and a sigmoid its probability of being active.

With skip connections an autoencoder could learn to copy its input, so this one is a
*denoising* autoencoder: in training and in evaluation each active input cell is
deleted with probability ``drop_prob`` and each silent cell switched on with
probability ``add_prob``, and the target is the clean window. ``nll`` is the
denoising reconstruction binary cross-entropy of the clean window, in nats per cell
(padding past a piece's end excluded). It is not a likelihood of the data: the
model sees most of the answer, so beating the per-pitch Bernoulli baseline (which
sees nothing) is expected; the number measures denoising skill and tracks training.

Generation runs the generalized-denoising-autoencoder Markov chain (Bengio et al.,
"Generalized Denoising Auto-Encoders as Generative Models", NeurIPS 2013): start
from random cells at the data's per-pitch density (a running mean over the training
windows, kept in the checkpoint), then ``iterations`` times corrupt, reconstruct
and sample each cell from the reconstruction (logits divided by the temperature),
each step shifted to expect the data's notes per frame (``density``); the last
reconstruction becomes notes by the sampler's ``draw`` (params ``sample.autoencoder``;
see the sampler). The chain's corruption only deletes cells: the
cells that training corruption switches on are, once in the chain, mostly kept by
the model and pile up as stray notes across the keyboard (measured on the Bach
corpus: a pitch range of ~80 semitones instead of ~26; real chorales span ~37).
Without the density shift the chain drifts toward silence (measured: 4.1 notes per
frame in the data, 1.8 after one step, 0.6 after twelve).
Long outputs are made window by window, each window's first half clamped to the
frames already generated (or to the primer), so the music continues rather than
restarting every window.

The chain is `pipeline.modeling.pianoroll.sampling.generate_autoencoder`. Registered as
model ``autoencoder`` on the ``pianoroll`` store; params section ``models.autoencoder``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.core.params import require
from pipeline.modeling import pianoroll
from pipeline.modeling.base import Baseline, ModelSpec, Objective, StoreData, register
from pipeline.modeling.pianoroll import (
    BASELINE_EPS,
    INITIAL_DENSITY,
    ConvDecoder,
    ConvEncoder,
    bernoulli_numbers,
    cell_counts,
    check_prepared,
    masked_bce,
    pad_pitches,
    padded_pitches,
    store_pitch_range,
    validate_backbone,
)

log = logging.getLogger(__name__)

# Running mean of each pitch's activation rate in training windows (start: INITIAL_DENSITY).
DENSITY_MOMENTUM = 0.01


@dataclass(frozen=True, kw_only=True)
class AutoencoderConfig:
    """The `models.autoencoder` params section.

    Defaults train in about a minute on two CPU cores. Scale: ``window_frames: 128``,
    ``filters: [64, 128, 256]``, more ``train.max_steps``.
    ``min_pitch``, ``n_pitches`` and ``frame_ms`` are taken from the pianoroll store
    by the spec's ``prepare`` (leave them 0); checkpoints keep the filled-in values.
    """

    window_frames: int  # frames per window (64 x 50 ms = 3.2 s)
    filters: tuple[int, ...]  # conv filters per level (one 2x2 pooling each)
    drop_prob: float  # corruption: P(an active input cell is deleted)
    add_prob: float  # corruption: P(a silent input cell is switched on)
    min_pitch: int = 0  # from the store params (prepare)
    n_pitches: int = 0  # from the store params (prepare)
    frame_ms: float = 0.0  # from the store params (prepare)

    def validate(self) -> None:
        validate_backbone(self)
        require(0.0 <= self.drop_prob < 1.0, "drop_prob must be in [0, 1)")
        require(0.0 <= self.add_prob < 1.0, "add_prob must be in [0, 1)")


# --------------------------------------------------------------------------------------
# The model (backbone, loss helpers, dataset and baseline: `pipeline.modeling.pianoroll`)


class PianorollAutoencoder(nn.Module):
    """Denoising conv autoencoder with skip connections; see the module docstring."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        check_prepared(config)
        self.config = config
        self.width = padded_pitches(config)
        self.encoder = ConvEncoder(config.filters)
        self.decoder = ConvDecoder(config.filters)
        self.pitch_bias = nn.Parameter(torch.zeros(config.n_pitches))  # register, learnt fast
        # running per-pitch activation rate of training windows: where the chain starts
        self.register_buffer("density", torch.full((config.n_pitches,), INITIAL_DENSITY))

    def logits(self, roll: torch.Tensor) -> torch.Tensor:
        """(B, T, P) 0/1 cells -> (B, T, P) logits of the clean cells."""
        n_pitches = roll.size(-1)
        x = pad_pitches(roll, self.width)[:, None]  # (B, 1, T, W)
        h, skips = self.encoder(x)
        return self.decoder(h, skips)[:, 0, :, :n_pitches] + self.pitch_bias  # (B, T, P)

    def corrupt(
        self, roll: torch.Tensor, generator: torch.Generator | None = None, add: bool = True
    ) -> torch.Tensor:
        """Delete active cells with drop_prob; with `add`, switch silent ones on (add_prob)."""
        u = torch.rand(roll.shape, generator=generator, device=roll.device)
        keep = (roll > 0.5) & (u >= self.config.drop_prob)
        if not add:
            return keep.to(roll.dtype)
        spurious = (roll <= 0.5) & (u < self.config.add_prob)
        return (keep | spurious).to(roll.dtype)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        roll, mask = batch["roll"], batch["mask"]  # (B, T, P), (B, T)
        if self.training:
            with torch.no_grad():
                frames = mask.sum().clamp(min=1.0)
                rate = (roll * mask[..., None]).sum(dim=(0, 1)) / frames  # (P,)
                self.density.lerp_(rate.to(self.density.dtype), DENSITY_MOMENTUM)
        noisy = self.corrupt(roll) * mask[..., None]
        total, cells = masked_bce(self.logits(noisy), roll, mask)
        loss = total / cells
        return {"loss": loss, "nll": loss.detach(), "n_units": cells.detach()}


def denoising_baseline(store: StoreData, config: AutoencoderConfig) -> dict[str, float]:
    """The autoencoder's loss for the best denoiser that sees one cell: same kind, same unit.

    That denoiser knows each pitch's train activation rate p and the corruption (drop
    d = ``drop_prob``, add a = ``add_prob``), sees only the corrupted cell x~ and
    predicts P(clean = 1 | x~) by Bayes: q1 = p(1-d) / (p(1-d) + (1-p)a) when x~ = 1,
    q0 = pd / (pd + (1-p)(1-a)) when x~ = 0. Its expected BCE over the test cells
    (exact over the corruption, no sampling; the cells of `CellCounts`) is
    ``baseline_denoising_bce``. The network beats it only by using context (other
    cells and frames), not the corruption's statistics alone. The per-pitch Bernoulli
    NLL (no input at all) stays beside it as ``baseline_nll``, another kind.
    """
    import numpy as np

    counts = cell_counts(store, *store_pitch_range(store)[:2])
    result = bernoulli_numbers(counts)
    if counts is None:
        return {**result, "baseline_denoising_bce": float("nan")}
    p, d, a = counts.rates, config.drop_prob, config.add_prob
    q1 = np.clip(p * (1 - d) / (p * (1 - d) + (1 - p) * a), BASELINE_EPS, 1 - BASELINE_EPS)
    q0 = np.clip(p * d / (p * d + (1 - p) * (1 - a)), BASELINE_EPS, 1 - BASELINE_EPS)
    on = -((1 - d) * np.log(q1) + d * np.log(q0))  # clean cell active
    off = -(a * np.log1p(-q1) + (1 - a) * np.log1p(-q0))  # clean cell silent
    total = float((counts.active * on + counts.inactive * off).sum() / counts.n_cells)
    return {**result, "baseline_denoising_bce": total}


SPEC = register(
    ModelSpec(
        name="autoencoder",
        representation="pianoroll",
        config_cls=AutoencoderConfig,
        model_cls=PianorollAutoencoder,
        make_dataset=pianoroll.make_dataset,
        baseline=denoising_baseline,
        objective=Objective(
            name="denoising_bce",
            kind="loss",
            unit="nats per cell",
            description=(
                "binary cross-entropy of the clean window given a corrupted copy (cells "
                "dropped with drop_prob, added with add_prob): the model sees most of the "
                "answer, so this is a denoising loss, not a likelihood of the music"
            ),
            baseline=Baseline(
                key="baseline_denoising_bce",
                name="denoising_bce",
                description="the best denoiser that sees one corrupted cell and its "
                "pitch's train activation rate (exact expectation over the corruption)",
            ),
        ),
        sampler="pipeline.modeling.pianoroll.sampling:generate_autoencoder",
        prepare=pianoroll.prepare,
    )
)
