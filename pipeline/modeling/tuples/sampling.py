"""Sampling from the tuples model (`rnn`): one note at a time.

`generate_rnn` feeds the last ``seq_len`` tuples (starting from the start tuple, or
from a primer's notes), samples the pitch from ``softmax(logits / temperature)``
(top-k / top-p filters apply) and takes step and duration as predicted, clipped to
>= 0 (the duration to >= MIN_DURATION_S so every note ends after it starts).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.modeling.sampling import SampleOptions, filter_logits
from pipeline.modeling.tuples import N_PITCHES, features

__all__ = ["MAX_NOTES_PER_SECOND", "MIN_DURATION_S", "generate_rnn"]

MIN_DURATION_S = 0.02
# Without `length`, generation stops after seconds * this many notes even if the
# predicted steps never add up to `seconds` (steps near 0 make chords).
MAX_NOTES_PER_SECOND = 40


@torch.no_grad()
def generate_rnn(
    model: Any, n: int, options: SampleOptions, generator: torch.Generator | None = None
) -> list[pd.DataFrame]:
    """Sample `n` note sequences of a `NoteLSTM`, one note at a time.

    Of the `SampleOptions`: ``temperature`` divides the pitch logits (<= 0: greedy;
    step and duration are regressions and do not depend on it), ``top_k`` and
    ``top_p`` filter the pitch distribution; every sample continues and starts with
    the ``primer``'s tuples rows (pitch, step, duration[, velocity]) in index order;
    sampling stops once the new notes' steps add up to ``seconds``, or after
    ``length`` new notes when given; ``style`` is ignored (no conditioning).

    Returns:
        n DataFrames of tuples rows (piece_id "sample-i"), primer first.
    """
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
            step = step[:, -1].clamp(min=0.0)
            duration = duration[:, -1].clamp(min=MIN_DURATION_S)
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
    out = []
    for i in range(n):
        new = drawn[i, : int(min(done_at[i], drawn.shape[1]))]
        pitch = np.concatenate([prime["pitch"], new[:, 0]]).astype(np.int16)
        out.append(
            pd.DataFrame(
                {
                    "piece_id": pd.Series([f"sample-{i}"] * len(pitch), dtype="str"),
                    "index": np.arange(len(pitch), dtype=np.int32),
                    "pitch": pitch,
                    "step": np.concatenate([prime["step"], new[:, 1]]).astype(np.float32),
                    "duration": np.concatenate([prime["duration"], new[:, 2]]).astype(np.float32),
                    "velocity": np.concatenate(
                        [prime["velocity"], np.full(len(new), cfg.velocity)]
                    ).astype(np.int16),
                }
            )
        )
    return out


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
