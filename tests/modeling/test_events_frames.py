"""The Music Transformer's frame bound (`pipeline.modeling.events.frames`).

`sequence_nll` scores each piece in sliding windows; these tests pin it to evaluate's
consecutive windows (stride = seq_len) and to a brute-force loop that scores every
target from its own context, and `frame_bound`'s frames to the pieces' durations.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from fixture_stores import model_config
from torch.utils.data import DataLoader

from pipeline.evaluation.frames import score_model
from pipeline.modeling import base
from pipeline.modeling.base import StoreData
from pipeline.modeling.events import EventWindows
from pipeline.modeling.events.frames import frame_bound, sequence_nll
from pipeline.modeling.events.transformer import MusicTransformer
from pipeline.modeling.frames import FrameError, FramesParams
from pipeline.representations.events import BOS, EOS, VOCAB_SIZE

SEQ_LEN = 16
TINY = model_config(
    "transformer",
    d_model=32,
    n_layers=2,
    n_heads=4,
    d_ff=64,
    dropout=0.0,
    max_relative_position=6,
    seq_len=SEQ_LEN,
    sine_positions=True,  # absolute positions: a window's must start at 0, as in training
    tie_embeddings=True,
)


@pytest.fixture(scope="module")
def model() -> MusicTransformer:
    torch.manual_seed(0)
    return MusicTransformer(TINY).eval()


def random_piece(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([[BOS], rng.integers(3, VOCAB_SIZE, n - 2), [EOS]]).astype(np.int64)


def brute_force_nll(model: MusicTransformer, tokens: np.ndarray, stride: int) -> float:
    """Target j scored from tokens[s:j], s the start of the first window reaching j.

    Windows start at 0, stride, 2 stride, ...; window s covers targets s+1 .. s+seq_len,
    so j's window is the first s >= j - seq_len (s = 0 for j <= seq_len). Each target
    gets its own forward pass, positions from 0.
    """
    total = 0.0
    seq = torch.as_tensor(tokens)
    with torch.no_grad():
        for j in range(1, len(tokens)):
            s = max(0, math.ceil((j - SEQ_LEN) / stride) * stride)
            logits, _ = model.logits(seq[None, s:j])
            total += float(F.cross_entropy(logits[0, -1:].double(), seq[j : j + 1]))
    return total


def evaluate_windows_nll(model: MusicTransformer, tokens: np.ndarray) -> float:
    """Summed nll of evaluate's consecutive windows: forward's mean nll x n_units."""
    loader = DataLoader(EventWindows([tokens], SEQ_LEN, random_offsets=False), batch_size=1)
    total = 0.0
    with torch.no_grad():
        for batch in loader:
            out = model(batch)
            total += float(out["nll"].double() * out["n_units"])
    return total


# --------------------------------------------------------------------------------------
# sequence_nll


@pytest.mark.parametrize("n", [SEQ_LEN + 1, 3 * SEQ_LEN + 1, 3 * SEQ_LEN + 7])
def test_stride_seq_len_is_evaluates_windows(model: MusicTransformer, n: int) -> None:
    tokens = random_piece(n, n)
    assert sequence_nll(model, tokens, SEQ_LEN) == pytest.approx(
        evaluate_windows_nll(model, tokens), rel=1e-5
    )


@pytest.mark.parametrize("stride", [1, 5, SEQ_LEN])
def test_sliding_windows_match_a_brute_force_loop(model: MusicTransformer, stride: int) -> None:
    tokens = random_piece(11, 2 * SEQ_LEN + 9)
    assert sequence_nll(model, tokens, stride) == pytest.approx(
        brute_force_nll(model, tokens, stride), rel=1e-5
    )


def test_more_context_changes_the_score(model: MusicTransformer) -> None:
    tokens = random_piece(12, 2 * SEQ_LEN + 9)
    assert abs(sequence_nll(model, tokens, 1) - sequence_nll(model, tokens, SEQ_LEN)) > 1e-3


def test_a_piece_within_one_window_scores_the_same_at_every_stride(
    model: MusicTransformer,
) -> None:
    for n in (2, 5, SEQ_LEN + 1):  # n - 1 targets <= seq_len: one window
        tokens = random_piece(n, n)
        values = [sequence_nll(model, tokens, stride) for stride in (1, 3, SEQ_LEN)]
        assert values == pytest.approx([values[0]] * 3, rel=1e-9), n
        assert values[0] == pytest.approx(brute_force_nll(model, tokens, 1), rel=1e-5)


@pytest.mark.parametrize("stride", [0, -1, SEQ_LEN + 1])
def test_a_bad_stride_is_refused(model: MusicTransformer, stride: int) -> None:
    with pytest.raises(ValueError, match=rf"stride must be in 1..seq_len \({SEQ_LEN}\)"):
        sequence_nll(model, random_piece(1, 10), stride)


# --------------------------------------------------------------------------------------
# frame_bound


def events_store(durations: dict[str, float | None]) -> StoreData:
    """Test pieces t0.. of various lengths (one too short to score) and their durations."""
    lengths = {"t0": 40, "t1": 9, "t2": 23, "t3": 2}  # t3: cut to BOS only below, skipped
    ids = list(lengths)
    rows = pd.DataFrame(
        {
            "piece_id": ids,
            "tokens": [random_piece(i, lengths[p]).astype(np.uint16) for i, p in enumerate(ids)],
        }
    )
    rows.loc[3, "tokens"] = np.array([BOS], np.uint16)
    pieces = pd.DataFrame(
        {"piece_id": list(durations), "split": "test", "duration": list(durations.values())}
    )
    return StoreData(rows={"test": rows}, pieces=pieces, params=None)


DURATIONS = {"t0": 2.0, "t1": 2.25, "t2": 0.3, "t3": 9.0}  # seconds


def test_frame_bound_sums_nats_tokens_and_frames(model: MusicTransformer) -> None:
    store = events_store(DURATIONS)
    bound = frame_bound(model, store, "test", 2.0, stride=4)
    # ceil(2.0 x 2) + ceil(2.25 x 2) + ceil(0.3 x 2) = 4 + 5 + 1; t3 has no target
    assert (bound.frames, bound.pieces, bound.tokens) == (10, 3, 39 + 8 + 22)
    rows = store.rows["test"]
    nats = sum(sequence_nll(model, np.asarray(t, np.int64), 4) for t in rows["tokens"][:3])
    assert bound.nats == pytest.approx(nats, rel=1e-12)
    # float noise above a whole frame count is no extra frame: 0.1 x 3 x 10 = 3.0000000000000004
    noisy = events_store({**DURATIONS, "t0": 0.1 * 3})
    assert frame_bound(model, noisy, "test", 10.0, 4).frames == 3 + 23 + 3

    params = FramesParams(split="test", token_stride=4, device="cpu", num_threads=0)
    result = score_model(base.get("transformer"), model, store, params, steps_per_second=2.0)
    assert result["bound"] is True
    assert result["frames"] == 10 and result["tokens"] == 69 and result["pieces"] == 3
    assert result["frame_nll"] == pytest.approx(bound.nats / 10, rel=1e-12)
    assert result["nats_per_token"] == pytest.approx(bound.nats / 69, rel=1e-12)


def test_frame_bound_needs_every_duration(model: MusicTransformer) -> None:
    store = events_store(DURATIONS)
    no_column = StoreData(
        rows=store.rows, pieces=store.pieces.drop(columns="duration"), params=None
    )
    with pytest.raises(ValueError, match="pieces.parquet has no 'duration'"):
        frame_bound(model, no_column, "test", 2.0, 4)
    missing = events_store({k: v for k, v in DURATIONS.items() if k != "t1"})
    with pytest.raises(ValueError, match="piece 't1' has no duration"):
        frame_bound(model, missing, "test", 2.0, 4)
    params = FramesParams(split="test", token_stride=4, device="cpu", num_threads=0)
    with pytest.raises(FrameError, match="piece 't1' has no duration"):
        score_model(base.get("transformer"), model, missing, params, steps_per_second=2.0)
    too_long = FramesParams(split="test", token_stride=SEQ_LEN + 1, device="cpu", num_threads=0)
    with pytest.raises(FrameError, match="stride must be in 1..seq_len"):
        score_model(base.get("transformer"), model, store, too_long, steps_per_second=2.0)


def test_score_model_scores_without_dropout_and_restores_the_mode() -> None:
    torch.manual_seed(0)
    dropping = MusicTransformer(dataclasses.replace(TINY, dropout=0.5))
    store = events_store(DURATIONS)
    params = FramesParams(split="test", token_stride=4, device="cpu", num_threads=0)
    spec = base.get("transformer")
    dropping.train()
    first = score_model(spec, dropping, store, params, steps_per_second=2.0)["frame_nll"]
    assert dropping.training  # handed back as it came
    second = score_model(spec, dropping, store, params, steps_per_second=2.0)["frame_nll"]
    expected = frame_bound(dropping.eval(), store, "test", 2.0, 4).nats / 10
    assert first == second == pytest.approx(expected, rel=1e-12)
