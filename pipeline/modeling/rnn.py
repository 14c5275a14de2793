"""LSTM over (pitch, step, duration) note tuples: TensorFlow's music-generation model.

The model of the TensorFlow tutorial "Generate music with an RNN"
(https://www.tensorflow.org/tutorials/audio/music_generation): each note is a tuple
(pitch / 128, step in s, duration in s); one LSTM (128 units) reads ``seq_len`` = 25
notes and three heads predict the next note: 128 pitch logits, the step and the
duration. Loss::

    loss = 0.05 * CE(pitch) + 1.0 * (MSE(step) + pp(step)) + 1.0 * (MSE(dur) + pp(dur))
    pp(y_hat) = 10 * mean(max(-y_hat, 0))     # "positive pressure": times are >= 0

(weights and the pressure factor are params). ``nll`` is the pitch cross-entropy in
nats per note; ``step_mse`` and ``duration_mse`` are the plain squared errors (s^2).

Two documented departures from the tutorial, both so that the model can start a
piece without borrowing a training window: every piece is preceded by an all-zero
*start* tuple (pitch 0 never sounds in the data), and the loss is applied at every
position of a window, not only after its last note (the last position is exactly
the tutorial's objective; earlier ones add the shorter contexts that generation from
scratch needs). Training windows start at every note (stride 1, as in the
tutorial); evaluation windows tile each piece so that every note is predicted once.

Generation feeds the last ``seq_len`` tuples (starting from the start tuple, or from
a primer's notes), samples the pitch from ``softmax(logits / temperature)`` (top-k /
top-p filters apply) and takes step and duration as predicted, clipped to >= 0 (the
duration to >= MIN_DURATION_S so every note ends after it starts).

Registered as model ``rnn`` on the ``tuples`` store; params section ``models.rnn``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pipeline.modeling.base import ModelSpec, StoreData, register
from pipeline.params import require

log = logging.getLogger(__name__)

N_PITCHES = 128
MIN_DURATION_S = 0.02
# Without `length`, generation stops after seconds * this many notes even if the
# predicted steps never add up to `seconds` (steps near 0 make chords).
MAX_NOTES_PER_SECOND = 40


@dataclass(frozen=True)
class Config:
    """The `models.rnn` params section (defaults: the tutorial's model).

    Scale: ``hidden_size: 512``, ``num_layers: 2``, ``dropout: 0.2``, ``seq_len: 100``.
    """

    seq_len: int = 25  # notes of context
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0  # between LSTM layers (num_layers > 1)
    pitch_weight: float = 0.05
    step_weight: float = 1.0
    duration_weight: float = 1.0
    positive_pressure: float = 10.0  # weight of mean(max(-prediction, 0)) on step/duration
    velocity: int = 80  # velocity of generated notes (the model ignores dynamics)

    def validate(self) -> None:
        require(self.seq_len > 0, "seq_len must be > 0")
        require(self.hidden_size > 0, "hidden_size must be > 0")
        require(self.num_layers > 0, "num_layers must be > 0")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        require(
            min(self.pitch_weight, self.step_weight, self.duration_weight) >= 0,
            "loss weights must be >= 0",
        )
        require(self.positive_pressure >= 0, "positive_pressure must be >= 0")
        require(1 <= self.velocity <= 127, "velocity must be in 1..127")


def features(pitch: np.ndarray, step: np.ndarray, duration: np.ndarray) -> np.ndarray:
    """(n, 3) float32 model inputs: pitch / 128, step (s), duration (s)."""
    return np.stack([pitch / N_PITCHES, step, duration], axis=-1).astype(np.float32)


def positive_pressure(pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of max(-pred, 0): pushes predicted times to be non-negative."""
    return (F.relu(-pred) * mask).sum() / mask.sum().clamp(min=1.0)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf (last dim)."""
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p  # keeps the first
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


class NoteLSTM(nn.Module):
    """LSTM with pitch, step and duration heads; see the module docstring."""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.lstm = nn.LSTM(
            3,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.pitch = nn.Linear(config.hidden_size, N_PITCHES)
        self.step = nn.Linear(config.hidden_size, 1)
        self.duration = nn.Linear(config.hidden_size, 1)

    def heads(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, 3) -> pitch logits (B, L, 128), step (B, L), duration (B, L)."""
        h, _ = self.lstm(inputs)  # (B, L, H)
        return self.pitch(h), self.step(h)[..., 0], self.duration(h)[..., 0]

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.config
        mask = batch["mask"]  # (B, L): 1 where the target is a real note
        logits, step, duration = self.heads(batch["inputs"])
        n = mask.sum().clamp(min=1.0)
        ce = F.cross_entropy(logits.flatten(0, 1), batch["pitch"].flatten(), reduction="none")
        pitch_ce = (ce * mask.flatten()).sum() / n
        step_mse = ((step - batch["step"]) ** 2 * mask).sum() / n
        duration_mse = ((duration - batch["duration"]) ** 2 * mask).sum() / n
        step_loss = step_mse + cfg.positive_pressure * positive_pressure(step, mask)
        duration_loss = duration_mse + cfg.positive_pressure * positive_pressure(duration, mask)
        loss = (
            cfg.pitch_weight * pitch_ce
            + cfg.step_weight * step_loss
            + cfg.duration_weight * duration_loss
        )
        return {
            "loss": loss,
            "nll": pitch_ce.detach(),
            "step_mse": step_mse.detach(),
            "duration_mse": duration_mse.detach(),
            "n_units": n.detach(),
        }

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
        """Sample `n` note sequences, one note at a time.

        Args:
            n: number of samples.
            generator: torch random generator (seeded by the caller).
            temperature: divides the pitch logits (<= 0: greedy); step and duration
                are regressions and do not depend on it.
            top_k, top_p: filters on the pitch distribution (0 / 1.0: off).
            primer: tuples rows (pitch, step, duration[, velocity]) in index order;
                every sample continues them and starts with them.
            seconds: stop once the new notes' steps add up to this; ``length`` (new
                notes) overrides it.
            style: ignored (no conditioning).

        Returns:
            n DataFrames of tuples rows (piece_id "sample-i"), primer first.
        """
        del style
        cfg = self.config
        device = self.pitch.weight.device
        prime = self._primer(primer)
        start = np.zeros((1, 3), np.float32)
        context = torch.from_numpy(np.concatenate([start, prime["features"]])).to(device)
        context = context.expand(n, -1, -1).clone()  # (n, C, 3)
        limit = length if length is not None else max(1, int(seconds * MAX_NOTES_PER_SECOND))
        notes: list[torch.Tensor] = []
        elapsed = torch.zeros(n, dtype=torch.float64)
        done_at = torch.full((n,), limit, dtype=torch.long)
        was_training = self.training
        self.eval()
        try:
            for i in range(limit):
                logits, step, duration = self.heads(context[:, -cfg.seq_len :])
                pitch = self._sample(logits[:, -1], generator, temperature, top_k, top_p)
                step = step[:, -1].clamp(min=0.0)
                duration = duration[:, -1].clamp(min=MIN_DURATION_S)
                note = torch.stack([pitch.float(), step, duration], dim=-1)  # (n, 3)
                notes.append(note)
                context = torch.cat([context, self._as_input(note)[:, None]], dim=1)
                if length is None:
                    elapsed += step.double().cpu()
                    finished = (elapsed >= seconds) & (done_at == limit)
                    done_at[finished] = i + 1
                    if bool((done_at < limit).all()):
                        break
        finally:
            self.train(was_training)
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
                        "duration": np.concatenate([prime["duration"], new[:, 2]]).astype(
                            np.float32
                        ),
                        "velocity": np.concatenate(
                            [prime["velocity"], np.full(len(new), cfg.velocity)]
                        ).astype(np.int16),
                    }
                )
            )
        return out

    @staticmethod
    def _as_input(note: torch.Tensor) -> torch.Tensor:
        """(n, 3) drawn (pitch, step, duration) -> model input features."""
        return torch.stack([note[:, 0] / N_PITCHES, note[:, 1], note[:, 2]], dim=-1)

    @staticmethod
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

    def _primer(self, primer: pd.DataFrame | None) -> dict[str, np.ndarray]:
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
            else np.full(len(rows), self.config.velocity, np.int16)
        )
        return {
            "features": features(pitch, step, duration),
            "pitch": pitch.astype(np.int16),
            "step": step,
            "duration": duration,
            "velocity": velocity,
        }


# --------------------------------------------------------------------------------------
# Data


def piece_arrays(store: StoreData, split: str) -> list[dict[str, np.ndarray]]:
    """Per piece of one split: pitch (int64), step and duration (float32), in index order."""
    if split not in store.rows:
        raise KeyError(f"tuples store {store.path or ''}: no '{split}' split")
    rows = store.rows[split]
    missing = {"piece_id", "index", "pitch", "step", "duration"} - set(rows.columns)
    if missing:
        raise ValueError(f"tuples store {store.path or ''}: {split} rows lack {sorted(missing)}")
    if rows.empty:
        return []
    rows = rows.sort_values(["piece_id", "index"], kind="stable")
    pitch = rows["pitch"].to_numpy(np.int64)
    if pitch.min() < 0 or pitch.max() >= N_PITCHES:
        raise ValueError(f"tuples store {store.path or ''}: {split} has pitches outside 0..127")
    codes, _ = pd.factorize(rows["piece_id"].to_numpy())
    bounds = np.flatnonzero(np.diff(codes)) + 1
    step = rows["step"].to_numpy(np.float32)
    duration = rows["duration"].to_numpy(np.float32)
    return [
        {"pitch": p, "step": s, "duration": d}
        for p, s, d in zip(
            np.split(pitch, bounds),
            np.split(step, bounds),
            np.split(duration, bounds),
            strict=True,
        )
    ]


class TupleWindows(Dataset):
    """Windows of ``seq_len`` inputs and their next-note targets.

    Each piece is the start tuple followed by its notes (n + 1 items, n targets).
    Item: inputs (L, 3), targets pitch (L,) int64, step (L,), duration (L,) and a
    mask (L,) that is 0 past the piece's last note. ``stride=1`` gives the training
    windows (one starting at every note); ``stride=seq_len`` tiles each piece so
    every note is a target exactly once (evaluation).
    """

    def __init__(self, pieces: list[dict[str, np.ndarray]], seq_len: int, stride: int):
        self.seq_len = seq_len
        self.sequences = []
        self.windows: list[tuple[int, int]] = []
        for piece in pieces:
            n = len(piece["pitch"])
            if n == 0:
                continue
            inputs = np.concatenate(
                [
                    np.zeros((1, 3), np.float32),
                    features(piece["pitch"], piece["step"], piece["duration"]),
                ]
            )
            self.sequences.append((inputs, piece))
            last = max(0, n - seq_len) if stride == 1 else n - 1
            self.windows.extend((len(self.sequences) - 1, o) for o in range(0, last + 1, stride))

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        seq_index, offset = self.windows[index]
        inputs_all, piece = self.sequences[seq_index]
        length = self.seq_len
        inputs = np.zeros((length, 3), np.float32)
        chunk = inputs_all[offset : offset + length]
        inputs[: len(chunk)] = chunk
        # targets of inputs offset..offset+L-1 are notes offset..offset+L-1 (0-based)
        valid = max(0, min(length, len(piece["pitch"]) - offset))
        pitch = np.zeros(length, np.int64)
        step = np.zeros(length, np.float32)
        duration = np.zeros(length, np.float32)
        mask = np.zeros(length, np.float32)
        pitch[:valid] = piece["pitch"][offset : offset + valid]
        step[:valid] = piece["step"][offset : offset + valid]
        duration[:valid] = piece["duration"][offset : offset + valid]
        mask[:valid] = 1.0
        return {
            "inputs": torch.from_numpy(inputs),
            "pitch": torch.from_numpy(pitch),
            "step": torch.from_numpy(step),
            "duration": torch.from_numpy(duration),
            "mask": torch.from_numpy(mask),
        }


def make_dataset(store: StoreData, config: Config, split: str) -> TupleWindows:
    """Stride-1 windows for train (as the tutorial), tiling windows otherwise."""
    stride = 1 if split == "train" else config.seq_len
    return TupleWindows(piece_arrays(store, split), config.seq_len, stride)


def baseline(store: StoreData, config: Config) -> dict[str, float]:
    """Unigram pitch distribution (add-one smoothed) and mean step/duration from train.

    ``baseline_nll`` is the unigram's cross-entropy on every test note (nats per
    note, the units of the model's ``nll``); ``baseline_step_mse`` and
    ``baseline_duration_mse`` are the squared errors of predicting the train means.
    """
    train = piece_arrays(store, "train")
    test = piece_arrays(store, "test")
    if not train or not test:
        log.warning("rnn baseline: empty train or test split; returning NaN")
        nan = float("nan")
        return {"baseline_nll": nan, "baseline_step_mse": nan, "baseline_duration_mse": nan}
    cat = {k: np.concatenate([p[k] for p in train]) for k in ("pitch", "step", "duration")}
    test_cat = {k: np.concatenate([p[k] for p in test]) for k in ("pitch", "step", "duration")}
    counts = np.bincount(cat["pitch"], minlength=N_PITCHES).astype(np.float64) + 1.0
    probs = counts / counts.sum()
    return {
        "baseline_nll": float(-np.log(probs[test_cat["pitch"]]).mean()),
        "baseline_step_mse": float(
            ((test_cat["step"].astype(np.float64) - cat["step"].mean()) ** 2).mean()
        ),
        "baseline_duration_mse": float(
            ((test_cat["duration"].astype(np.float64) - cat["duration"].mean()) ** 2).mean()
        ),
    }


SPEC = register(
    ModelSpec(
        name="rnn",
        representation="tuples",
        config_cls=Config,
        model_cls=NoteLSTM,
        make_dataset=make_dataset,
        baseline=baseline,
    )
)
