"""Sampling from the tuples model (`rnn`): one note at a time.

`generate_rnn` feeds the last ``seq_len`` tuples (starting from the start tuple, or
from a primer's notes), samples the pitch from ``softmax(logits / temperature)``
(top-k / top-p filters apply) and draws the step and the duration from the network's
predictions (``sample.rnn`` settings, `DEFAULTS`).

Why draw the times: the step and duration heads are regressions (MSE), so each
predicts only the mean of its quantity given the context. In the chorales two notes
in three start with their predecessor (step 0) and the rest a beat or part of one
later, but the predicted mean is somewhere in between (0.1-0.3 s) and never 0. Taken
as the step (the tutorial's generation), the notes never sound together, every
onset falls off the beat, and fed back, the contexts look like no training piece:
the model drifts. Measured on 128 clips of 30 s against the 22 validation clips
(notes 0.52 s long, 0.39 s between onsets, polyphony 3.9): the default run's model
(1000 steps) writes notes 0.98 s long 0.26 s apart, the same network trained 6000
steps notes 0.43 s long 0.12 s apart. Drawing a grid value with the predicted mean
gives chords and the pulse back and keeps the model on its training data: 0.54 s notes
0.42 s apart, polyphony 4.5 (6000 steps: 0.51 s, 0.43 s, 4.1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.modeling.sampling import GenerateError, SampleOptions, filter_logits, settings
from pipeline.modeling.tuples import N_PITCHES, features

__all__ = ["DEFAULTS", "MAX_NOTES_PER_SECOND", "MIN_DURATION_S", "generate_rnn"]

MIN_DURATION_S = 0.02
# Without `length`, generation stops after seconds * this many notes even if the
# predicted steps never add up to `seconds` (steps near 0 make chords).
MAX_NOTES_PER_SECOND = 40
DRAWS = ("geometric", "round", "nearest", "mean")
DEFAULTS: dict[str, Any] = {
    "step_draw": "geometric",
    "duration_draw": "geometric",
    "grid_s": 0.25,
    "velocity": 0,
}
"""The sampler's own settings (params ``sample.rnn``); see `generate_rnn`."""


@torch.no_grad()
def generate_rnn(
    model: Any, n: int, options: SampleOptions, generator: torch.Generator | None = None
) -> list[pd.DataFrame]:
    """Sample `n` note sequences of a `NoteLSTM`, one note at a time.

    Of the `SampleOptions`: ``temperature`` divides the pitch logits (<= 0: greedy,
    and every time the nearest grid point), ``top_k`` and ``top_p`` filter the pitch
    distribution; every sample continues and starts with the ``primer``'s tuples rows
    (pitch, step, duration[, velocity]) in index order; sampling stops once the new
    notes' steps add up to ``seconds``, or after ``length`` new notes when given;
    ``style`` is ignored (no conditioning).

    Settings (``options.settings``, params ``sample.rnn``; defaults chosen on
    validation clips, see the module docstring):

    - ``step_draw`` ("geometric"): how a step is drawn from the predicted mean m,
      on multiples of ``grid_s``: "geometric" is the maximum-entropy distribution on
      the grid with mean m (P(k grid steps) = (1 - q) q**k, q = m / (m + grid): step
      0, a chord, is the likeliest, longer waits ever rarer); "round" one of the two
      grid points around m, with mean m; "nearest" the nearest grid point; "mean" m
      itself, off the grid (the tutorial's generation, clipped to >= 0).
    - ``duration_draw`` ("geometric"): the same draws for the duration, whose grid
      starts at one grid step (geometric: the floor plus the geometric excess);
      "mean" clips to >= MIN_DURATION_S.
    - ``grid_s`` (0.25): the grid of the draws, seconds (> 0 unless both draws are
      "mean"); 0.25 s is an eighth note of the chorales as encoded (a quarter is
      0.5 s).
    - ``velocity`` (0): velocity of the new notes; 0 takes the model's
      ``models.rnn.velocity`` (the network has no dynamics). Set it to the corpus's
      velocity: every note of the music21 chorales has 90, and notes at another
      velocity give every clip away to find the fake.

    Returns:
        n DataFrames of tuples rows (piece_id "sample-i"), primer first.
    """
    own = _own_settings(options, model)
    step_draw, duration_draw, grid = own["step_draw"], own["duration_draw"], own["grid_s"]
    length, seconds = options.length, options.seconds
    cfg = model.config
    device = model.pitch.weight.device
    prime = _primer(model, options.primer)
    start = np.zeros((1, 3), np.float32)
    context = torch.from_numpy(np.concatenate([start, prime["features"]])).to(device)
    context = context.expand(n, -1, -1).clone()  # (n, C, 3)
    limit = length if length is not None else max(1, int(seconds * MAX_NOTES_PER_SECOND))
    notes: list[torch.Tensor] = []
    elapsed = torch.zeros(n, dtype=torch.float64)
    done_at = torch.full((n,), limit, dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        for i in range(limit):
            logits, step, duration = model.heads(context[:, -cfg.seq_len :])
            pitch = _sample(
                logits[:, -1], generator, options.temperature, options.top_k, options.top_p
            )
            step = _timing(step[:, -1], step_draw, grid, generator, duration=False)
            duration = _timing(duration[:, -1], duration_draw, grid, generator, duration=True)
            note = torch.stack([pitch.float(), step, duration], dim=-1)  # (n, 3)
            notes.append(note)
            context = torch.cat([context, _as_input(note)[:, None]], dim=1)
            if length is None:
                elapsed += step.double().cpu()
                finished = (elapsed >= seconds) & (done_at == limit)
                done_at[finished] = i + 1
                if bool((done_at < limit).all()):
                    break
    finally:
        model.train(was_training)
    drawn = torch.stack(notes, dim=1).cpu().numpy() if notes else np.zeros((n, 0, 3))
    return [
        _rows(i, prime, drawn[i, : int(min(done_at[i], drawn.shape[1]))], own["velocity"])
        for i in range(n)
    ]


def _rows(i: int, prime: dict[str, np.ndarray], new: np.ndarray, velocity: int) -> pd.DataFrame:
    """Sample i's tuples rows: the primer's, then the `new` (m, 3) drawn notes."""
    pitch = np.concatenate([prime["pitch"], new[:, 0]]).astype(np.int16)
    return pd.DataFrame(
        {
            "piece_id": pd.Series([f"sample-{i}"] * len(pitch), dtype="str"),
            "index": np.arange(len(pitch), dtype=np.int32),
            "pitch": pitch,
            "step": np.concatenate([prime["step"], new[:, 1]]).astype(np.float32),
            "duration": np.concatenate([prime["duration"], new[:, 2]]).astype(np.float32),
            "velocity": np.concatenate([prime["velocity"], np.full(len(new), velocity)]).astype(
                np.int16
            ),
        }
    )


def _own_settings(options: SampleOptions, model: Any) -> dict[str, Any]:
    """`DEFAULTS` under ``options.settings``, checked; greedy draws nothing at all."""
    own = settings(options, DEFAULTS, "rnn")
    for key in ("step_draw", "duration_draw"):
        if own[key] not in DRAWS:
            raise GenerateError(
                f"sample.rnn.{key}: expected one of {', '.join(DRAWS)}, got {own[key]!r}"
            )
        if options.temperature <= 0 and own[key] != "mean":
            own[key] = "nearest"
    if own["grid_s"] <= 0 and (own["step_draw"], own["duration_draw"]) != ("mean", "mean"):
        raise GenerateError(f"sample.rnn.grid_s: expected a grid > 0 s, got {own['grid_s']!r}")
    if not 0 <= own["velocity"] <= 127:
        raise GenerateError(f"sample.rnn.velocity: expected 0 or 1..127, got {own['velocity']!r}")
    own["velocity"] = own["velocity"] or model.config.velocity
    return own


def _timing(
    mean: torch.Tensor,
    draw: str,
    grid: float,
    generator: torch.Generator | None,
    duration: bool,
) -> torch.Tensor:
    """A step (or, `duration`, a duration) per sample (n,), drawn from the predicted `mean`.

    See `generate_rnn` for the draws. On the grid, a duration is at least one grid
    step and a step at least 0; ``"mean"`` clips to MIN_DURATION_S and 0.
    """
    mean = mean.clamp(min=0.0)
    if draw == "mean":
        return mean.clamp(min=MIN_DURATION_S) if duration else mean
    floor = grid if duration else 0.0  # grid units below this are impossible
    units = (mean - floor).clamp(min=0.0) / grid  # the mean in grid units above the floor
    if draw == "nearest":
        k = units.round()
    elif draw == "round":
        low = units.floor()
        up = _uniform(mean, generator) < (units - low).double()
        k = low + up.to(low.dtype)
    else:  # geometric: P(k) = (1 - q) q**k, mean q / (1 - q) = units
        q = (units / (units + 1.0)).double()
        u = _uniform(mean, generator)
        k = torch.where(q > 0, (torch.log1p(-u) / q.log()).floor(), 0.0).to(mean.dtype)
    return floor + k * grid


def _uniform(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One U[0, 1) draw per entry of `like` (float64, on its device)."""
    return torch.rand(like.shape, generator=generator, dtype=torch.float64, device=like.device)


def _as_input(note: torch.Tensor) -> torch.Tensor:
    """(n, 3) drawn (pitch, step, duration) -> model input features."""
    return torch.stack([note[:, 0] / N_PITCHES, note[:, 1], note[:, 2]], dim=-1)


def _sample(
    logits: torch.Tensor,
    generator: torch.Generator | None,
    temperature: float,
    top_k: int,
    top_p: float,
) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _primer(model: Any, primer: pd.DataFrame | None) -> dict[str, np.ndarray]:
    if primer is None or len(primer) == 0:
        empty = np.zeros(0, np.float32)
        return {
            "features": np.zeros((0, 3), np.float32),
            "pitch": empty.astype(np.int16),
            "step": empty,
            "duration": empty,
            "velocity": empty.astype(np.int16),
        }
    missing = {"pitch", "step", "duration"} - set(primer.columns)
    if missing:
        raise ValueError(f"primer: missing column(s) {sorted(missing)}")
    rows = primer.sort_values("index") if "index" in primer else primer
    pitch = rows["pitch"].to_numpy(np.int64)
    if pitch.min() < 0 or pitch.max() >= N_PITCHES:
        raise ValueError(f"primer: pitches outside 0..{N_PITCHES - 1}")
    step = rows["step"].to_numpy(np.float32)
    duration = rows["duration"].to_numpy(np.float32)
    velocity = (
        rows["velocity"].to_numpy(np.int16)
        if "velocity" in rows
        else np.full(len(rows), model.config.velocity, np.int16)
    )
    return {
        "features": features(pitch, step, duration),
        "pitch": pitch.astype(np.int16),
        "step": step,
        "duration": duration,
        "velocity": velocity,
    }
