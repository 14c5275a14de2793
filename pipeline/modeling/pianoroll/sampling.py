"""Sampling from the pianoroll models: the autoencoder's chain, the VAE's prior and
latent walk, and how both turn cell probabilities into notes.

`generate_autoencoder` runs the generalized-denoising-autoencoder Markov chain
described in `pipeline.modeling.pianoroll.autoencoder`; `generate_vae` decodes codes
drawn from the VAE's prior (or from the posterior of a primer's last window) and
`interpolate_vae` decodes points on the slerp path between the codes of two windows
(`pipeline.modeling.pianoroll.vae`). Both models give one probability per cell, and
`decide` turns those into played cells (``draw``, below).

Each sampler reads its own settings (params ``sample.<model>``, `SampleOptions.settings`)
with `pipeline.modeling.sampling.settings`; `AUTOENCODER_SETTINGS` and `VAE_SETTINGS`
are their defaults, chosen on validation clips (the docstrings of the samplers say
what each does). The ones both share:

- ``draw`` (``"segments"``): how probabilities become cells. ``"segments"``: cut time
  at the model's change points (the local maxima of the frame-to-frame change of the
  probabilities, summed over pitches, above ``change`` times its mean, at least
  ``min_frames`` apart) and play, through each segment, its ``round(sum of mean
  probabilities)`` most probable pitches: the notes of a chord start and end
  together and last at least ``min_frames`` frames. ``"count"``: in each frame on its
  own, its ``round(sum of probabilities)`` most probable cells (a blurry decoder's
  near-ties then flip from frame to frame: notes of one or two frames, the VAE's
  mean inter-onset interval of 0.12 s against the chorales' 0.40). ``"threshold"``:
  cells above ``threshold``. ``"bernoulli"``: each cell drawn on its own.
- ``min_frames`` (4) and ``change`` (0.5): the segments' shortest length (frames) and
  how strong a change must be, in multiples of the mean change, to start one.
- ``threshold`` (0.5): the ``"threshold"`` draw's cut.
- ``velocity`` (90): velocity of every generated note (the models ignore dynamics; 90
  is what the default corpus, music21 scores, carries throughout, so a classifier
  does not tell the clips by their loudness).

The defaults were chosen on validation clips of the Bach corpus, at the default
training budget and at 800 steps (the numbers are in the samplers' docstrings).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.modeling.pianoroll import roll_to_rows, rows_to_roll
from pipeline.modeling.sampling import GenerateError, SampleOptions, key_outside, settings

__all__ = [
    "AUTOENCODER_SETTINGS",
    "DRAWS",
    "VAE_SETTINGS",
    "binarize",
    "decide",
    "generate_autoencoder",
    "generate_vae",
    "interpolate_vae",
    "segment_starts",
    "segments",
    "slerp",
]

DRAWS = ("segments", "count", "threshold", "bernoulli")
"""The values of the ``draw`` setting (see the module docstring)."""

_DECISION = {"draw": "segments", "min_frames": 4, "change": 0.5, "threshold": 0.5, "velocity": 90}
AUTOENCODER_SETTINGS: dict[str, Any] = {
    **_DECISION,
    "iterations": 8,
    "density": 1.0,
    "key_bias": 0.0,
}
"""``sample.autoencoder`` defaults (`generate_autoencoder` says what each does)."""
VAE_SETTINGS: dict[str, Any] = {**_DECISION, "window_correlation": 0.9, "refine": 0}
"""``sample.vae`` defaults (`generate_vae` says what each does)."""

_CALIBRATION_STEPS = 30  # bisection steps of the density calibration's logit shift
_MAX_SHIFT = 20.0  # the calibration's logit shift stays within +-this


def resolve_settings(options: SampleOptions, defaults: Mapping[str, Any], model: str) -> dict:
    """`settings` over `defaults`, with each value's range checked (one-line errors)."""
    s = settings(options, defaults, model)
    checks = {
        "draw": (s["draw"] in DRAWS, f"one of {', '.join(DRAWS)}"),
        "min_frames": (s["min_frames"] >= 1, ">= 1"),
        "change": (s["change"] >= 0, ">= 0"),
        "threshold": (0.0 < s["threshold"] < 1.0, "in (0, 1)"),
        "velocity": (1 <= s["velocity"] <= 127, "in 1..127"),
        "iterations": (s.get("iterations", 1) >= 1, ">= 1"),
        "density": (s.get("density", 0.0) >= 0, ">= 0 (0: off)"),
        "key_bias": (s.get("key_bias", 0.0) >= 0, ">= 0 (0: off)"),
        "window_correlation": (0.0 <= s.get("window_correlation", 0.0) <= 1.0, "in [0, 1]"),
        "refine": (s.get("refine", 0) >= 0, ">= 0"),
    }
    for key, (ok, wanted) in checks.items():
        if key in s and not ok:
            raise GenerateError(f"sample.{model}.{key}: must be {wanted}, got {s[key]!r}")
    return s


# --------------------------------------------------------------------------------------
# From probabilities to cells


def binarize(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """0/1 cells from probabilities (..., T, P), frame by frame.

    ``threshold > 0``: cells whose probability exceeds it. ``threshold == 0``: in each
    frame, the ``round(sum of its probabilities)`` most probable cells - as many notes
    as the model expects (the ``"count"`` draw).
    """
    if threshold > 0:
        return (probs > threshold).to(probs.dtype)
    count = probs.sum(dim=-1).round()  # (..., T)
    rank = probs.argsort(dim=-1, descending=True).argsort(dim=-1)  # 0 = most probable
    return (rank < count[..., None]).to(probs.dtype)


def segment_starts(novelty: np.ndarray, min_frames: int, change: float) -> list[int]:
    """First frames of the segments of a span of ``len(novelty) + 1`` frames.

    ``novelty[t]`` is how much the probabilities change from frame t to t + 1. A
    segment starts at frame 0 and after each change point: a local maximum of
    `novelty` above ``change`` times its mean. The strongest are taken first, each
    only if every segment stays at least `min_frames` long (a span shorter than
    ``2 * min_frames`` is one segment).

    Returns:
        sorted frames, 0 first.
    """
    frames = len(novelty) + 1
    if frames < 2 * min_frames:
        return [0]
    padded = np.concatenate([[-np.inf], novelty, [-np.inf]])
    peak = (novelty >= padded[:-2]) & (novelty > padded[2:]) & (novelty > change * novelty.mean())
    candidates = np.flatnonzero(peak)
    blocked = np.zeros(frames + 1, bool)  # starts that would leave a segment too short
    blocked[:min_frames] = True
    blocked[frames - min_frames + 1 :] = True
    taken = []
    for t in candidates[np.argsort(-novelty[candidates], kind="stable")]:
        start = int(t) + 1
        if not blocked[start]:
            taken.append(start)
            blocked[max(0, start - min_frames + 1) : start + min_frames] = True
    return [0, *sorted(taken)]


def segments(probs: torch.Tensor, min_frames: int, change: float) -> torch.Tensor:
    """The ``"segments"`` draw of probabilities (..., T, P): see the module docstring."""
    flat = probs.reshape(-1, *probs.shape[-2:])  # (B, T, P)
    out = torch.zeros_like(flat)
    frames = flat.size(1)
    if frames == 0:
        return out.reshape(probs.shape)
    novelty = (flat[:, 1:] - flat[:, :-1]).abs().sum(dim=-1).cpu().numpy()  # (B, T-1)
    for b in range(flat.size(0)):
        bounds = [*segment_starts(novelty[b], min_frames, change), frames]
        for start, end in pairwise(bounds):
            mean = flat[b, start:end].mean(dim=0)  # (P,)
            count = int(mean.sum().round())
            if count:
                out[b, start:end, mean.topk(count).indices] = 1.0
    return out.reshape(probs.shape)


def decide(
    probs: torch.Tensor, how: Mapping[str, Any], generator: torch.Generator | None = None
) -> torch.Tensor:
    """0/1 cells (..., T, P) from probabilities by the ``draw`` of `how` (resolved settings).

    Only ``"bernoulli"`` draws random numbers (from `generator`).
    """
    draw = how["draw"]
    if draw == "segments":
        return segments(probs, how["min_frames"], how["change"])
    if draw == "count":
        return binarize(probs, 0.0)
    if draw == "threshold":
        return binarize(probs, how["threshold"])
    if draw == "bernoulli":
        u = torch.rand(probs.shape, generator=generator, device=probs.device)
        return (u < probs).to(probs.dtype)
    raise GenerateError(f"draw: one of {', '.join(DRAWS)} expected, got {draw!r}")


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between codes `a` and `b` (lerp when nearly parallel)."""
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp(min=1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if float(torch.sin(omega)) < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def _new_frames(options: SampleOptions, frame_ms: float) -> int:
    length, seconds = options.length, options.seconds
    frames = length if length is not None else round(seconds * 1000.0 / frame_ms)
    return max(0, int(frames))


# --------------------------------------------------------------------------------------
# Autoencoder


@torch.no_grad()
def generate_autoencoder(
    model: Any, n: int, options: SampleOptions, generator: torch.Generator | None = None
) -> list[pd.DataFrame]:
    """Sample `n` piano rolls of a `PianorollAutoencoder` with its denoising chain.

    The chain is described in the autoencoder's module docstring: per window, start
    from random cells at the training data's per-pitch density, then ``iterations``
    times corrupt (delete cells), reconstruct and draw each cell from the
    reconstruction; the last reconstruction is turned into notes by ``draw``.

    Settings (``sample.autoencoder``, defaults in `AUTOENCODER_SETTINGS`; the shared
    ``draw``, ``min_frames``, ``change``, ``threshold``, ``velocity`` are in the module
    docstring):

    - ``iterations`` (8): corrupt/reconstruct steps per window (after 800 steps, scale
      consistency 0.85 at 4, 0.86 at 8, 0.88 at 16 for twice the time).
    - ``density`` (1.0): every step's probabilities of the new frames are shifted (one
      logit bias per sample, found by bisection) so that they expect ``density`` times
      the training data's active cells per frame (the checkpoint's running per-pitch
      density, summed). The chain's corruption only deletes, so without it (0: off)
      each step keeps fewer notes than the last: measured on the Bach corpus, 1.8
      expected cells per frame after one step, 0.6 after twelve (the data has 4.1):
      polyphony 1.6 and 12% silent beats. The notes it adds are the model's less sure
      ones, so a briefly trained model pays in scale consistency (120 steps: 0.77,
      against 0.86 off; 800 steps: 0.86 either way).
    - ``key_bias`` (0.0: off): subtracted, at every step, from the logits of the pitches
      outside the sample's key: the major or natural minor scale holding most of the
      clip's cells so far (every frame before the window and the window's current
      cells), so a clip keeps one key unless its notes move it. The chain's cells are independent
      draws, and without a bias an out-of-key note costs the model nothing once a
      neighbour is wrong: scale consistency stays near 0.87 at the quality recipe's
      800 steps where the chorales hold 0.93 (the values chosen are in
      benchmarks/quality/params.yaml).

    Of the `SampleOptions`: ``temperature`` divides the logits inside the chain (before
    the density shift: < 1 favours the model's surest cells); the ``primer``'s frames
    (from frame 0) open every sample and the chain continues them; ``length`` counts
    frames; ``top_k``, ``top_p`` and ``style`` are ignored (cells are independent
    Bernoullis; no styles).

    Returns:
        n DataFrames of pianoroll rows (piece_id "sample-i"), primer included.
    """
    cfg = model.config
    how = resolve_settings(options, AUTOENCODER_SETTINGS, "autoencoder")
    device = model.density.device
    prime = _primer_roll(model, options.primer, device)  # (F, P)
    total = prime.size(0) + _new_frames(options, cfg.frame_ms)
    roll = torch.zeros(n, total, cfg.n_pitches, device=device)
    roll[:, : prime.size(0)] = prime
    target = how["density"] * float(model.density.clamp(1e-4, 0.5).sum())
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
            chain = _Chain(known, max(options.temperature, 1e-3), target, how, cfg.min_pitch)
            x = chain.run(model, x, generator, roll[:, :start])
            end = min(total, start + window)
            roll[:, position:end] = x[:, known : end - start]
            position = end
    finally:
        model.train(was_training)
    return [
        roll_to_rows(roll[i].cpu().numpy(), f"sample-{i}", cfg.min_pitch, how["velocity"])
        for i in range(n)
    ]


def _noise(
    model: Any, n: int, frames: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    u = torch.rand(n, frames, model.config.n_pitches, generator=generator, device=device)
    return (u < model.density.clamp(1e-4, 0.5)).float()


class _Chain:
    """One window's chain: frames < `known` stay clamped; `target` cells per frame (0: off);
    ``how["key_bias"]`` against the pitches outside the window's key (0: off)."""

    def __init__(
        self,
        known: int,
        temperature: float,
        target: float,
        how: Mapping[str, Any],
        min_pitch: int,
    ):
        self.known, self.temperature, self.target, self.how = known, temperature, target, how
        self.min_pitch = min_pitch

    def run(
        self,
        model: Any,
        x: torch.Tensor,
        generator: torch.Generator | None,
        before: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The window `x` (B, T, P) after the chain; `before` (B, H, P): the clip's frames
        before the window, which the key bias counts with the window's cells."""
        known, iterations = self.known, self.how["iterations"]
        for it in range(iterations):
            noisy = model.corrupt(x, generator, add=False)
            logits = model.logits(noisy)[:, known:] / self.temperature
            bias = self.how.get("key_bias", 0.0)
            if bias > 0:  # off: no key is estimated, the chain is what it was
                heard = x if before is None else torch.cat([before, x], dim=1)
                logits = logits - bias * key_outside(heard, self.min_pitch)[:, None, :]
            probs = torch.sigmoid(logits + self._shift(logits))
            if it + 1 < iterations:
                u = torch.rand(probs.shape, generator=generator, device=probs.device)
                new = (u < probs).to(x.dtype)
            else:
                new = decide(probs, self.how, generator)
            x = torch.cat([x[:, :known], new], dim=1)
        return x

    def _shift(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1) logit bias giving ``target`` expected cells per frame (0 when off)."""
        batch = logits.size(0)
        if self.target <= 0 or logits.size(1) == 0:
            return torch.zeros(batch, 1, 1, device=logits.device)
        wanted = self.target * logits.size(1)
        low = torch.full((batch, 1, 1), -_MAX_SHIFT, device=logits.device)
        high = torch.full((batch, 1, 1), _MAX_SHIFT, device=logits.device)
        for _ in range(_CALIBRATION_STEPS):
            mid = (low + high) / 2
            expected = torch.sigmoid(logits + mid).sum(dim=(1, 2), keepdim=True)
            below = expected < wanted
            low, high = torch.where(below, mid, low), torch.where(below, high, mid)
        return (low + high) / 2


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
    """Decode windows of a `PianorollVAE` from its prior, one code per window.

    Settings (``sample.vae``, defaults in `VAE_SETTINGS`; the shared ``draw``,
    ``min_frames``, ``change``, ``threshold``, ``velocity`` are in the module docstring):

    - ``window_correlation`` (0.9): the correlation between the codes of any two
      windows of one sample. Each window's noise is ``sqrt(c) * shared + sqrt(1 - c) *
      own`` with one ``shared`` draw per sample, so every code is still a draw of the
      prior; 0 decodes independent windows, each 3.2 s in a key and register of its
      own (measured on validation clips after 800 steps: scale consistency 0.76 and
      a pitch range of 61 semitones over 30 s, real 0.92 and 34; 0.9 gives 0.89 and
      38); 1 repeats one window.
    - ``refine`` (0): passes of decode, draw, encode (posterior mean) before the last
      decoding: the encoder maps a blurry decoding back to the code of a window it
      knows, which decodes sharper (the pair used as a Markov chain, Rezende et al.
      2014). Off by default: after 800 steps 2 passes raise scale consistency by
      ~0.03, but a briefly trained VAE (150 steps) falls into a fixed point, one chord
      held for seconds (pitch range 13, notes of 11 s).

    Of the `SampleOptions`: ``temperature`` scales the standard deviation of the codes
    drawn (0.8 measured best on validation clips: codes nearer the prior's centre stay
    in one key, scale consistency +0.02 to +0.03); a ``primer``'s frames open every
    sample and the codes of the following windows are drawn from the posterior of the
    primer's last window (std scaled by temperature): variations on it; ``length``
    counts frames after the primer; ``top_k``, ``top_p`` and ``style`` are ignored (no
    token distribution; no styles).

    Returns:
        n DataFrames of pianoroll rows (piece_id "sample-i"), primer included.
    """
    cfg = model.config
    how = resolve_settings(options, VAE_SETTINGS, "vae")
    device = model.from_latent.weight.device
    was_training = model.training
    model.eval()
    try:
        prime, mu, sigma = _vae_start(model, options.primer, device)
        new_frames = _new_frames(options, cfg.frame_ms)
        n_windows = math.ceil(new_frames / cfg.window_frames)
        eps = torch.randn(n, n_windows, cfg.latent_dim, generator=generator, device=device)
        c = how["window_correlation"]
        if n_windows and c > 0:
            shared = torch.randn(n, 1, cfg.latent_dim, generator=generator, device=device)
            eps = math.sqrt(c) * shared + math.sqrt(1.0 - c) * eps
        z = mu + options.temperature * sigma * eps  # (n, windows, latent)
        cells = np.zeros((n, 0, cfg.n_pitches), np.float32)
        if n_windows:
            probs = _vae_probs(model, z.reshape(n * n_windows, -1), how, generator)
            probs = probs.reshape(n, -1, cfg.n_pitches)[:, :new_frames]
            cells = decide(probs, how, generator).cpu().numpy()
    finally:
        model.train(was_training)
    out = []
    for i in range(n):
        roll = np.concatenate([prime, cells[i]], axis=0)
        out.append(roll_to_rows(roll, f"sample-{i}", cfg.min_pitch, how["velocity"]))
    return out


def _vae_start(
    model: Any, primer: pd.DataFrame | None, device: torch.device
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The primer's roll and the mean and std codes are drawn around (the prior's if none)."""
    cfg = model.config
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
    return prime, mu, sigma


def _vae_probs(
    model: Any, z: torch.Tensor, how: Mapping[str, Any], generator: torch.Generator | None
) -> torch.Tensor:
    """Cell probabilities (windows, T, P) of codes `z`, after ``refine`` passes."""
    probs = torch.sigmoid(model.decode(z))
    for _ in range(how["refine"]):
        z = model.encode(decide(probs, how, generator))[0]
        probs = torch.sigmoid(model.decode(z))
    return probs


@torch.no_grad()
def interpolate_vae(
    model: Any,
    a: pd.DataFrame,
    b: pd.DataFrame,
    steps: int,
    sample_settings: Mapping[str, Any] | None = None,
) -> list[pd.DataFrame]:
    """Decode `steps` points on the slerp path between the codes of two windows.

    Args:
        model: a `PianorollVAE`.
        a, b: pianoroll rows; the first ``window_frames`` frames of each are
            encoded to their posterior means.
        steps: number of windows, from `a`'s code (t = 0) to `b`'s (t = 1).
        sample_settings: ``sample.vae`` settings; the decision ones (``draw``,
            ``min_frames``, ``change``, ``threshold``, ``velocity``) apply, each
            window decided on its own; default `VAE_SETTINGS`.

    Returns:
        `steps` DataFrames of pianoroll rows ("interp-0", ...), one window each.
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    how = resolve_settings(SampleOptions(settings=sample_settings or {}), VAE_SETTINGS, "vae")
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
        cells = decide(torch.sigmoid(model.decode(z)), how).cpu().numpy()
    finally:
        model.train(was_training)
    return [
        roll_to_rows(cells[i], f"interp-{i}", cfg.min_pitch, how["velocity"]) for i in range(steps)
    ]
