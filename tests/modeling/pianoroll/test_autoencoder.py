"""The denoising conv autoencoder and the shared pianoroll windows and baseline."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from fixture_stores import SMALL, SMALL_2, encoded_store, model_config
from torch.utils.data import DataLoader

from pipeline import representations
from pipeline.modeling import base
from pipeline.modeling import pianoroll as prd
from pipeline.modeling.base import StoreData
from pipeline.modeling.pianoroll import make_dataset, prepare
from pipeline.modeling.pianoroll.autoencoder import AutoencoderConfig, PianorollAutoencoder
from pipeline.modeling.pianoroll.sampling import binarize, generate_autoencoder
from pipeline.modeling.sampling import SampleOptions


def cells(piece_id: str, frame_pitch: list[tuple[int, int]]) -> pd.DataFrame:
    frame, pitch = zip(*frame_pitch, strict=True) if frame_pitch else ((), ())
    return pd.DataFrame(
        {
            "piece_id": [piece_id] * len(frame),
            "frame": np.array(frame, np.int32),
            "pitch": np.array(pitch, np.int16),
            "velocity": np.full(len(frame), 90, np.int16),
        }
    )


@dataclasses.dataclass(frozen=True)
class ToyParams:
    frame_ms: int = 100
    min_pitch: int = 60
    max_pitch: int = 63


def tiny_config(**kw: object) -> AutoencoderConfig:
    base_kw = dict(window_frames=8, filters=(4, 8), min_pitch=60, n_pitches=4, frame_ms=100.0)
    return model_config("autoencoder", **{**base_kw, **kw})


def test_registered_with_prepare() -> None:
    spec = base.get("autoencoder")
    assert spec.representation == "pianoroll"
    store = StoreData(rows={}, pieces=pd.DataFrame(), params=ToyParams())
    config = spec.prepare(store, model_config("autoencoder"))
    assert (config.min_pitch, config.n_pitches, config.frame_ms) == (60, 4, 100.0)


def test_unprepared_config_is_refused() -> None:
    with pytest.raises(ValueError, match="prepare"):
        PianorollAutoencoder(model_config("autoencoder"))


def test_windows_are_dense_with_masks() -> None:
    rows = pd.concat(
        [cells("a", [(0, 60), (1, 61), (9, 63)]), cells("b", [(2, 62), (2, 99)])]  # 99: out
    )
    store = StoreData(rows={"test": rows, "train": rows}, pieces=pd.DataFrame(), params=ToyParams())
    config = prepare(store, model_config("autoencoder", window_frames=8, filters=(4,)))
    test = make_dataset(store, config, "test")
    assert len(test) == 3  # a: 10 frames -> 2 windows; b: 3 frames -> 1 window
    first = test[0]
    expected = np.zeros((8, 4), np.float32)
    expected[0, 0] = expected[1, 1] = 1.0
    np.testing.assert_array_equal(first["roll"].numpy(), expected)
    assert first["mask"].tolist() == [1.0] * 8
    second = test[1]  # frames 8..15 of a: frame 9 pitch 63, frames 10+ are padding
    assert second["roll"].numpy()[1, 3] == 1.0 and second["roll"].sum() == 1.0
    assert second["mask"].tolist() == [1.0, 1.0] + [0.0] * 6
    third = test[2]
    assert third["roll"].sum() == 1.0 and third["mask"].tolist() == [1.0] * 3 + [0.0] * 5

    train = make_dataset(store, config, "train")
    assert len(train) == 3
    train.set_epoch(1)
    again = [train[i]["roll"] for i in range(3)]
    assert all(torch.equal(x, train[i]["roll"]) for i, x in enumerate(again))  # pure


def test_bernoulli_baseline_literal() -> None:
    # train: 4 frames, pitch 60 on in 2 of them, pitch 61 in 1, others never (clipped)
    train = cells("t", [(0, 60), (3, 60), (1, 61)])
    test = cells("u", [(0, 60), (1, 62)])  # 2 frames
    store = StoreData(
        rows={"train": train, "test": test}, pieces=pd.DataFrame(), params=ToyParams()
    )
    result = prd.bernoulli_baseline(store, 60, 4)
    eps = prd.BASELINE_EPS
    p = np.clip(np.array([0.5, 0.25, 0.0, 0.0]), eps, 1 - eps)
    active = np.array([1, 0, 1, 0])
    inactive = 2 - active
    expected = -(active * np.log(p) + inactive * np.log1p(-p)).sum() / 8
    assert result["baseline_nll"] == pytest.approx(expected)
    assert result["baseline_density"] == pytest.approx(2 / 8)


def test_rows_round_trip_through_dense() -> None:
    rows = cells("x", [(0, 60), (0, 63), (5, 61)])
    roll = prd.rows_to_roll(rows, 60, 4)
    assert roll.shape == (6, 4)
    back = prd.roll_to_rows(roll, "x", 60, 90)
    pd.testing.assert_frame_equal(
        back.reset_index(drop=True), rows.reset_index(drop=True), check_dtype=True
    )


def test_loss_is_masked_bce_per_cell() -> None:
    torch.manual_seed(0)
    model = PianorollAutoencoder(tiny_config(drop_prob=0.0, add_prob=0.0))
    model.eval()
    roll = (torch.rand(2, 8, 4) < 0.3).float()
    mask = torch.ones(2, 8)
    mask[1, 4:] = 0
    with torch.no_grad():
        out = model({"roll": roll, "mask": mask})
        logits = model.logits(roll * mask[..., None])  # no corruption at these rates
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, roll, reduction="none")
    expected = float((bce * mask[..., None]).sum() / (mask.sum() * 4))
    assert float(out["nll"]) == pytest.approx(expected, rel=1e-5)
    assert float(out["n_units"]) == 12 * 4


def test_binarize_fixed_threshold_and_expected_count() -> None:
    probs = torch.tensor([[0.6, 0.3, 0.2, 0.1], [0.05, 0.1, 0.05, 0.1]])  # (T=2, P=4)
    fixed = binarize(probs, 0.25)
    assert fixed.tolist() == [[1, 1, 0, 0], [0, 0, 0, 0]]
    # expected counts: round(1.2) = 1 cell in frame 0, round(0.3) = 0 in frame 1
    assert binarize(probs, 0.0).tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]
    busy = torch.tensor([[0.9, 0.8, 0.45, 0.4]])  # sum 2.55 -> the 3 most probable
    assert binarize(busy, 0.0).tolist() == [[1, 1, 1, 0]]


def test_corruption_rates() -> None:
    model = PianorollAutoencoder(tiny_config(drop_prob=0.5, add_prob=0.1))
    roll = torch.zeros(1, 400, 4)
    roll[:, :200] = 1.0
    noisy = model.corrupt(roll, torch.Generator().manual_seed(0))
    kept = float(noisy[:, :200].mean())
    added = float(noisy[:, 200:].mean())
    assert 0.45 < kept < 0.55 and 0.07 < added < 0.13


def test_overfits_one_batch() -> None:
    torch.manual_seed(0)
    store = encoded_store("pianoroll", {"train": [SMALL]}, max_frames_per_piece=400)
    config = prepare(store, model_config("autoencoder", window_frames=16, filters=(8, 16)))
    data = make_dataset(store, config, "train")
    batch = next(
        iter(
            DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
        )
    )
    model = PianorollAutoencoder(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.25 * losses[0]
    # the running per-pitch density moved toward the batch's rates
    rates = (batch["roll"] * batch["mask"][..., None]).sum(dim=(0, 1)) / batch["mask"].sum()
    start = torch.full_like(rates, 0.05)
    assert (model.density - rates).abs().sum() < (start - rates).abs().sum()


def test_generate_rows_decode_to_valid_notes() -> None:
    torch.manual_seed(0)
    store = encoded_store("pianoroll", {"train": [SMALL]}, max_frames_per_piece=400)
    config = prepare(store, model_config("autoencoder", window_frames=16, filters=(4, 8)))
    model = PianorollAutoencoder(config)
    rep = representations.get("pianoroll")
    samples = generate_autoencoder(
        model, 2, SampleOptions(seconds=2.0), generator=torch.Generator().manual_seed(0)
    )
    assert len(samples) == 2
    for i, rows in enumerate(samples):
        assert list(rows.columns) == rep.schema.names
        assert (rows["piece_id"] == f"sample-{i}").all()
        assert rows["frame"].between(0, 39).all()  # 2 s at 50 ms
        top = config.min_pitch + config.n_pitches - 1
        assert rows["pitch"].between(config.min_pitch, top).all()
        notes = rep.decode(rows, store.params)
        assert (notes["end"] > notes["start"]).all()
        assert notes["end"].max() <= 2.0 + 1e-9 if len(notes) else True


def test_generate_keeps_primer_and_is_reproducible() -> None:
    torch.manual_seed(0)
    model = PianorollAutoencoder(tiny_config())
    primer = cells("p", [(0, 60), (1, 61), (5, 63)])
    a = generate_autoencoder(
        model,
        2,
        SampleOptions(primer=primer, length=12),
        generator=torch.Generator().manual_seed(3),
    )
    b = generate_autoencoder(
        model,
        2,
        SampleOptions(primer=primer, length=12),
        generator=torch.Generator().manual_seed(3),
    )
    for x, y in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(x, y)
        opening = x[x["frame"] < 6]
        assert sorted(zip(opening["frame"], opening["pitch"], strict=True)) == [
            (0, 60),
            (1, 61),
            (5, 63),
        ]
        assert x["frame"].max() < 6 + 12


def test_real_store_test_windows_cover_every_frame() -> None:
    store = encoded_store(
        "pianoroll", {"train": [SMALL], "test": [SMALL_2]}, max_frames_per_piece=300
    )
    config = prepare(store, model_config("autoencoder"))
    test = make_dataset(store, config, "test")
    frames = sum(float(test[i]["mask"].sum()) for i in range(len(test)))
    assert frames == store.rows["test"]["frame"].max() + 1
    active = sum(float(test[i]["roll"].sum()) for i in range(len(test)))
    assert active == len(store.rows["test"])  # all cells are inside the piano range
    result = prd.bernoulli_baseline(store, config.min_pitch, config.n_pitches)
    assert 0 < result["baseline_nll"] < math.log(2)


def test_denoising_baseline_is_the_exact_expected_loss_of_the_one_cell_denoiser() -> None:
    """baseline_denoising_bce equals a Monte-Carlo estimate of the one-cell Bayes denoiser's
    BCE under the model's own corruption, and sits between perfect and the no-input NLL."""
    import numpy as np

    from pipeline.modeling.pianoroll import pitch_rates, split_pieces
    from pipeline.modeling.pianoroll.autoencoder import denoising_baseline

    store = encoded_store(
        "pianoroll", {"train": [SMALL], "test": [SMALL]}, max_frames_per_piece=400
    )
    config = prepare(store, model_config("autoencoder"))
    got = denoising_baseline(store, config)
    assert 0 < got["baseline_denoising_bce"] < got["baseline_nll"]
    # Monte Carlo over the same cells with the same corruption
    test = split_pieces(store, "test", config.min_pitch, config.n_pitches)
    p = np.clip(pitch_rates(split_pieces(store, "train", config.min_pitch, config.n_pitches),
                            config.n_pitches), 1e-4, 1 - 1e-4)  # fmt: skip
    d, a = config.drop_prob, config.add_prob
    rng = np.random.default_rng(0)
    losses = []
    for frames, pitches, n in zip(test.frames, test.pitches, test.n_frames, strict=True):
        clean = np.zeros((int(n), config.n_pitches), bool)
        clean[frames, pitches] = True
        for _ in range(200):
            u = rng.random(clean.shape)
            noisy = (clean & (u >= d)) | (~clean & (u < a))
            q = np.where(noisy, p * (1 - d) / (p * (1 - d) + (1 - p) * a),
                         p * d / (p * d + (1 - p) * (1 - a)))  # fmt: skip
            q = np.clip(q, 1e-4, 1 - 1e-4)
            losses.append(-np.where(clean, np.log(q), np.log1p(-q)).mean())
    assert abs(np.mean(losses) - got["baseline_denoising_bce"]) < 3e-3
