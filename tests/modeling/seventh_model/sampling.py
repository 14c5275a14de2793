"""Sampling from the ``bigram`` model: a pitch walk, one note per step."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.modeling.sampling import SampleOptions

STEP_S = 0.25  # seconds between generated notes


@torch.no_grad()
def generate_bigram(
    model: Any, n: int, options: SampleOptions, generator: torch.Generator | None = None
) -> list[pd.DataFrame]:
    """`n` pitch walks from middle C as tuples rows, a note every `STEP_S` seconds.

    Of the `SampleOptions`: ``temperature`` divides the logits, ``length`` counts
    notes; the other options are ignored.
    """
    length = options.length if options.length is not None else round(options.seconds / STEP_S)
    pitch = torch.full((n,), 60, dtype=torch.long)
    drawn = []
    for _ in range(length):
        probs = torch.softmax(model.table(pitch) / options.temperature, dim=-1)
        pitch = torch.multinomial(probs, 1, generator=generator)[:, 0]
        drawn.append(pitch)
    pitches = torch.stack(drawn, dim=1).numpy() if drawn else np.zeros((n, 0), np.int64)
    return [
        pd.DataFrame(
            {
                "piece_id": pd.Series([f"sample-{i}"] * length, dtype="str"),
                "index": np.arange(length, dtype=np.int32),
                "pitch": pitches[i].astype(np.int16),
                "step": np.full(length, STEP_S, np.float32),
                "duration": np.full(length, STEP_S, np.float32),
                "velocity": np.full(length, 80, np.int16),
            }
        )
        for i in range(n)
    ]
