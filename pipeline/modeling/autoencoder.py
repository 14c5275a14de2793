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
windows, kept in the checkpoint), then ``gen_iterations`` times corrupt,
reconstruct and sample each cell from the reconstruction (logits divided by the
temperature); the last reconstruction is thresholded at ``threshold`` (cells with
probability above it are played). The chain's corruption only deletes cells: the
cells that training corruption switches on are, once in the chain, mostly kept by
the model and pile up as stray notes across the keyboard (measured on the Bach
corpus: a pitch range of ~80 semitones instead of ~26; real chorales span ~37).
Few iterations and a threshold below 0.5 offset the chain's drift toward silence.
Long outputs are made window by window, each window's first half clamped to the
frames already generated (or to the primer), so the music continues rather than
restarting every window.

Registered as model ``autoencoder`` on the ``pianoroll`` store; params section
``models.autoencoder``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.modeling import pianoroll_data as prd
from pipeline.modeling.base import ModelSpec, StoreData, register
from pipeline.params import require

log = logging.getLogger(__name__)

# Running mean of each pitch's activation rate in training windows (start, momentum).
INITIAL_DENSITY = 0.05
DENSITY_MOMENTUM = 0.01


@dataclass(frozen=True)
class Config:
    """The `models.autoencoder` params section.

    Defaults train in about a minute on two CPU cores. Scale: ``window_frames: 128``,
    ``filters: [64, 128, 256]``, more ``train.max_steps``.
    ``min_pitch``, ``n_pitches`` and ``frame_ms`` are taken from the pianoroll store
    by the spec's ``prepare`` (leave them 0); checkpoints keep the filled-in values.
    """

    window_frames: int = 64  # frames per window (64 x 50 ms = 3.2 s)
    filters: tuple[int, ...] = (32, 64)  # conv filters per level (one 2x2 pooling each)
    drop_prob: float = 0.3  # corruption: P(an active input cell is deleted)
    add_prob: float = 0.01  # corruption: P(a silent input cell is switched on)
    threshold: float = 0.3  # generation: play cells above it (0: expected count, `binarize`)
    gen_iterations: int = 4  # generation: corrupt/reconstruct steps per window
    velocity: int = 80  # velocity of generated notes (the model ignores dynamics)
    min_pitch: int = 0  # from the store params (prepare)
    n_pitches: int = 0  # from the store params (prepare)
    frame_ms: float = 0.0  # from the store params (prepare)

    def validate(self) -> None:
        validate_backbone(self)
        require(0.0 <= self.drop_prob < 1.0, "drop_prob must be in [0, 1)")
        require(0.0 <= self.add_prob < 1.0, "add_prob must be in [0, 1)")
        require(self.gen_iterations >= 1, "gen_iterations must be >= 1")


def validate_backbone(config: Any) -> None:
    """Checks shared by the autoencoder and VAE configs."""
    levels = len(config.filters)
    require(levels >= 1, "filters must list at least one level")
    require(all(f > 0 for f in config.filters), "filters must be > 0")
    require(
        config.window_frames > 0 and config.window_frames % (2**levels) == 0,
        f"window_frames must be a positive multiple of {2**levels} (2 ** levels)",
    )
    require(0.0 <= config.threshold < 1.0, "threshold must be in [0, 1) (0 = expected count)")
    require(1 <= config.velocity <= 127, "velocity must be in 1..127")
    require(config.n_pitches >= 0 and config.min_pitch >= 0, "pitch range must be >= 0")
    require(config.frame_ms >= 0, "frame_ms must be >= 0")


def prepare(store: StoreData, config: Any) -> Any:
    """Fill the pitch range and frame length in from the pianoroll store's params."""
    min_pitch, n_pitches, frame_ms = prd.store_pitch_range(store)
    return dataclasses.replace(config, min_pitch=min_pitch, n_pitches=n_pitches, frame_ms=frame_ms)


def padded_pitches(config: Any) -> int:
    """Pitch axis rounded up to a multiple of 2 ** levels (the pooling needs it)."""
    unit = 2 ** len(config.filters)
    return int(math.ceil(config.n_pitches / unit) * unit)


def check_prepared(config: Any) -> None:
    if config.n_pitches <= 0 or config.frame_ms <= 0:
        raise ValueError(
            "config has no pitch range/frame length: build it with the spec's prepare(store, "
            "config) (fit does) or load it from a checkpoint"
        )


# --------------------------------------------------------------------------------------
# The shared convolutional backbone


class ConvEncoder(nn.Module):
    """Per level conv3x3 + ReLU then 2x2 max pooling; then a conv3x3 bottleneck."""

    def __init__(self, filters: tuple[int, ...]):
        super().__init__()
        channels = [1, *filters]
        self.levels = nn.ModuleList(
            nn.Conv2d(channels[i], channels[i + 1], 3, padding=1) for i in range(len(filters))
        )
        self.bottleneck = nn.Conv2d(filters[-1], filters[-1], 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, 1, T, P) -> bottleneck (B, F_last, T / 2^L, P / 2^L) and per-level maps."""
        skips = []
        for conv in self.levels:
            x = F.relu(conv(x))  # (B, F_i, T_i, P_i)
            skips.append(x)
            x = F.max_pool2d(x, 2)  # (B, F_i, T_i / 2, P_i / 2)
        return F.relu(self.bottleneck(x)), skips


class ConvDecoder(nn.Module):
    """Per level a 2x2 transposed conv (x2 upsampling) [+ skip] then conv3x3 + ReLU."""

    def __init__(self, filters: tuple[int, ...]):
        super().__init__()
        reversed_filters = list(reversed(filters))
        inputs = [filters[-1], *reversed_filters[:-1]]
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
            for c_in, c_out in zip(inputs, reversed_filters, strict=True)
        )
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for c in reversed_filters)
        self.out = nn.Conv2d(filters[0], 1, 1)
        # start at the log-odds of a typical cell density rather than at p = 0.5: the
        # first steps then learn music, not that most cells are silent
        nn.init.constant_(self.out.bias, math.log(INITIAL_DENSITY / (1 - INITIAL_DENSITY)))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Bottleneck (B, F_last, T / 2^L, P / 2^L) -> logits (B, 1, T, P)."""
        for level, (up, conv) in enumerate(zip(self.ups, self.convs, strict=True)):
            x = up(x)  # (B, F_i, T_i, P_i)
            if skips is not None:
                x = x + skips[-1 - level]  # U-Net style skip connection
            x = F.relu(conv(x))
        return self.out(x)


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


def masked_bce(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of per-cell BCE over valid frames, and the number of valid cells.

    Args:
        logits, target: (B, T, P); mask: (B, T) with 1 for frames inside the piece.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, T, P)
    cells = mask.sum() * target.size(-1)
    return (bce * mask[..., None]).sum(), cells.clamp(min=1.0)


def pad_pitches(roll: torch.Tensor, width: int) -> torch.Tensor:
    """(B, T, P) -> (B, T, width), zero cells above the pitch range."""
    return F.pad(roll, (0, width - roll.size(-1)))


# --------------------------------------------------------------------------------------
# The model


class PianorollAutoencoder(nn.Module):
    """Denoising conv autoencoder with skip connections; see the module docstring."""

    def __init__(self, config: Config):
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
        """Sample `n` piano rolls with the denoising chain (module docstring).

        Args:
            n: number of samples.
            generator: torch random generator (seeded by the caller).
            temperature: divides the logits inside the chain (> 1: busier, < 1: sparser).
            top_k, top_p, style: ignored (cells are independent Bernoullis; no styles).
            primer: pianoroll rows; its frames (from frame 0) open every sample and the
                chain continues them.
            seconds: length of the continuation; ``length`` (frames) overrides it.

        Returns:
            n DataFrames of pianoroll rows (piece_id "sample-i"), primer included.
        """
        del top_k, top_p, style
        cfg = self.config
        device = self.density.device
        prime = self._primer_roll(primer, device)  # (F, P)
        new_frames = length if length is not None else round(seconds * 1000.0 / cfg.frame_ms)
        total = prime.size(0) + max(0, int(new_frames))
        roll = torch.zeros(n, total, cfg.n_pitches, device=device)
        roll[:, : prime.size(0)] = prime
        was_training = self.training
        self.eval()
        try:
            position = prime.size(0)
            window, context = cfg.window_frames, cfg.window_frames // 2
            while position < total:
                start = max(0, position - context)
                known = position - start
                x = torch.zeros(n, window, cfg.n_pitches, device=device)
                chunk = roll[:, start : start + window]
                x[:, : chunk.size(1)] = chunk
                x[:, known:] = self._noise(n, window - known, generator, device)
                x = self._chain(x, known, generator, max(temperature, 1e-3))
                end = min(total, start + window)
                roll[:, position:end] = x[:, known : end - start]
                position = end
        finally:
            self.train(was_training)
        return [
            prd.roll_to_rows(roll[i].cpu().numpy(), f"sample-{i}", cfg.min_pitch, cfg.velocity)
            for i in range(n)
        ]

    def _noise(
        self, n: int, frames: int, generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        u = torch.rand(n, frames, self.config.n_pitches, generator=generator, device=device)
        return (u < self.density.clamp(1e-4, 0.5)).float()

    def _chain(
        self, x: torch.Tensor, known: int, generator: torch.Generator | None, temperature: float
    ) -> torch.Tensor:
        """Corrupt/reconstruct/sample `gen_iterations` times; frames < known stay clamped."""
        for it in range(self.config.gen_iterations):
            noisy = self.corrupt(x, generator, add=False)
            probs = torch.sigmoid(self.logits(noisy) / temperature)
            if it + 1 < self.config.gen_iterations:
                u = torch.rand(probs.shape, generator=generator, device=probs.device)
                sample = (u < probs).float()
            else:
                sample = binarize(probs, self.config.threshold)
            x = torch.cat([x[:, :known], sample[:, known:]], dim=1)
        return x

    def _primer_roll(self, primer: pd.DataFrame | None, device: torch.device) -> torch.Tensor:
        cfg = self.config
        if primer is None or len(primer) == 0:
            return torch.zeros(0, cfg.n_pitches, device=device)
        roll = prd.rows_to_roll(primer, cfg.min_pitch, cfg.n_pitches)
        return torch.from_numpy(roll).to(device)


def make_dataset(store: StoreData, config: Any, split: str) -> prd.PianorollWindows:
    """Windows of one split (random offsets for train); see `pianoroll_data`.

    Shared with the VAE: any prepared config with window_frames/min_pitch/n_pitches.
    """
    check_prepared(config)
    return prd.make_windows(store, config.window_frames, config.min_pitch, config.n_pitches, split)


def baseline(store: StoreData, config: Any) -> dict[str, float]:
    """Per-pitch Bernoulli baseline (train activation rates), BCE per test cell (also the VAE's)."""
    min_pitch, n_pitches, _ = prd.store_pitch_range(store)
    return prd.bernoulli_baseline(store, min_pitch, n_pitches)


SPEC = register(
    ModelSpec(
        name="autoencoder",
        representation="pianoroll",
        config_cls=Config,
        model_cls=PianorollAutoencoder,
        make_dataset=make_dataset,
        baseline=baseline,
        prepare=prepare,
    )
)
