"""The LSTM-on-tuples model: windows, loss terms, baseline, overfitting, generation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from fixture_stores import SMALL, SMALL_2, encoded_store, model_config, repr_params
from torch.utils.data import DataLoader

from pipeline import representations
from pipeline.modeling import base
from pipeline.modeling.base import StoreData
from pipeline.modeling.sampling import SampleOptions, filter_logits
from pipeline.modeling.tuples import TupleWindows, baseline, make_dataset
from pipeline.modeling.tuples.rnn import NoteLSTM, RNNConfig, positive_pressure
from pipeline.modeling.tuples.sampling import MIN_DURATION_S, generate_rnn


def toy_rows(
    piece_id: str, pitch: list[int], step: list[float], duration: list[float]
) -> pd.DataFrame:
    n = len(pitch)
    return pd.DataFrame(
        {
            "piece_id": [piece_id] * n,
            "index": np.arange(n, dtype=np.int32),
            "pitch": np.array(pitch, np.int16),
            "step": np.array(step, np.float32),
            "duration": np.array(duration, np.float32),
            "velocity": np.full(n, 64, np.int16),
        }
    )


def test_registered_on_tuples() -> None:
    spec = base.get("rnn")
    assert spec.representation == "tuples"
    assert spec.config_cls is RNNConfig


def test_windows_start_token_targets_and_masks() -> None:
    rows = toy_rows("p", [60, 62, 64, 65, 67], [0.0, 0.5, 0.5, 0.25, 0.25], [0.4] * 5)
    store = StoreData(rows={"train": rows, "test": rows}, pieces=pd.DataFrame(), params=None)
    config = model_config("rnn", seq_len=3)
    train = make_dataset(store, config, "train")
    assert len(train) == 3  # a window starts at every note with a full window left
    first = train[0]
    # the start tuple, then notes 0 and 1 as inputs; targets are notes 0..2
    np.testing.assert_allclose(
        first["inputs"].numpy(),
        [[0.0, 0.0, 0.0], [60 / 128, 0.0, 0.4], [62 / 128, 0.5, 0.4]],
        rtol=1e-6,
    )
    assert first["pitch"].tolist() == [60, 62, 64]
    assert first["mask"].tolist() == [1.0, 1.0, 1.0]
    assert train[2]["pitch"].tolist() == [64, 65, 67]

    test = make_dataset(store, config, "test")
    assert len(test) == 2  # tiles: notes 0-2, then notes 3-4 (+ one padded position)
    assert test[1]["pitch"].tolist() == [65, 67, 0]
    assert test[1]["mask"].tolist() == [1.0, 1.0, 0.0]
    targets = sum(int(test[i]["mask"].sum()) for i in range(len(test)))
    assert targets == 5  # every note predicted exactly once


def test_short_piece_gives_one_padded_window() -> None:
    windows = TupleWindows(
        [
            {
                "pitch": np.array([60, 61]),
                "step": np.zeros(2, np.float32),
                "duration": np.ones(2, np.float32),
            }
        ],
        seq_len=4,
        stride=1,
    )
    assert len(windows) == 1
    assert windows[0]["mask"].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_positive_pressure_is_mean_of_negative_parts() -> None:
    pred = torch.tensor([[-1.0, 2.0, -3.0, -5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last position is padding
    assert float(positive_pressure(pred, mask)) == pytest.approx((1.0 + 3.0) / 3)


def test_loss_weights_combine_terms() -> None:
    torch.manual_seed(0)
    model = NoteLSTM(model_config("rnn", seq_len=4, hidden_size=8))
    rows = toy_rows("p", [60, 62, 64, 65, 67], [0.0, 0.5, 0.5, 0.25, 0.25], [0.4] * 5)
    store = StoreData(rows={"train": rows}, pieces=pd.DataFrame(), params=None)
    batch = next(iter(DataLoader(make_dataset(store, model.config, "train"), batch_size=2)))
    out = model(batch)
    with torch.no_grad():
        logits, step, duration = model.heads(batch["inputs"])
    mask = batch["mask"]
    ce = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch["pitch"].flatten(), reduction="none"
    )
    expected_ce = float((ce * mask.flatten()).sum() / mask.sum())
    assert float(out["nll"]) == pytest.approx(expected_ce, rel=1e-5)
    step_term = float(out["step_mse"]) + 10 * float(positive_pressure(step, mask))
    dur_term = float(out["duration_mse"]) + 10 * float(positive_pressure(duration, mask))
    expected = 0.05 * expected_ce + step_term + dur_term
    assert float(out["loss"].detach()) == pytest.approx(expected, rel=1e-5)
    assert float(out["n_units"]) == float(mask.sum())


def test_baseline_literal() -> None:
    train = toy_rows("a", [60, 60, 62], [0.0, 1.0, 2.0], [1.0, 1.0, 1.0])
    test = toy_rows("b", [60, 64], [0.0, 1.0], [2.0, 1.0])
    store = StoreData(rows={"train": train, "test": test}, pieces=pd.DataFrame(), params=None)
    result = baseline(store, model_config("rnn"))
    # add-one unigram over 128 pitches: P(60) = 3/131, P(64) = 1/131
    expected = -(math.log(3 / 131) + math.log(1 / 131)) / 2
    assert result["baseline_nll"] == pytest.approx(expected)
    # train means: step 1.0, duration 1.0
    assert result["baseline_step_mse"] == pytest.approx((1.0 + 0.0) / 2)
    assert result["baseline_duration_mse"] == pytest.approx((1.0 + 0.0) / 2)


def test_filter_logits_top_k_and_top_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    top2 = filter_logits(logits, top_k=2)
    assert torch.isinf(top2[0, 2:]).all() and torch.isfinite(top2[0, :2]).all()
    nucleus = filter_logits(logits, top_p=0.7)  # 0.5 alone < 0.7, 0.5 + 0.3 >= 0.7
    assert torch.isfinite(nucleus[0, :2]).all() and torch.isinf(nucleus[0, 2:]).all()


def test_overfits_one_batch() -> None:
    torch.manual_seed(0)
    store = encoded_store("tuples", {"train": [SMALL]})
    config = model_config("rnn", seq_len=8, hidden_size=32)
    data = make_dataset(store, config, "train")
    batch = next(
        iter(
            DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
        )
    )
    model = NoteLSTM(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = last = 0.0
    for i in range(80):
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = float(loss.detach()) if i == 0 else first
        last = float(loss.detach())
    assert last < 0.4 * first


def test_generate_rows_decode_to_valid_notes() -> None:
    torch.manual_seed(0)
    model = NoteLSTM(model_config("rnn", seq_len=8, hidden_size=16))
    samples = generate_rnn(
        model,
        3,
        SampleOptions(seconds=2.0, temperature=1.0, top_k=20),
        generator=torch.Generator().manual_seed(1),
    )
    rep = representations.get("tuples")
    assert len(samples) == 3
    for i, rows in enumerate(samples):
        assert list(rows.columns) == rep.schema.names
        assert (rows["piece_id"] == f"sample-{i}").all()
        assert rows["index"].tolist() == list(range(len(rows)))
        assert len(rows) > 0
        assert (rows["duration"] >= MIN_DURATION_S).all() and (rows["step"] >= 0).all()
        notes = rep.decode(rows, repr_params("tuples"))
        assert (notes["end"] > notes["start"]).all()
        assert notes["pitch"].between(0, 127).all()


def test_generate_length_and_primer() -> None:
    torch.manual_seed(0)
    model = NoteLSTM(model_config("rnn", seq_len=4, hidden_size=16))
    primer = toy_rows("x", [60, 64, 67], [0.0, 0.5, 0.5], [0.5, 0.5, 0.5])
    (rows,) = generate_rnn(
        model, 1, SampleOptions(primer=primer, length=5), generator=torch.Generator().manual_seed(0)
    )
    assert len(rows) == 3 + 5
    assert rows["pitch"].tolist()[:3] == [60, 64, 67]
    assert rows["velocity"].tolist()[:3] == [64, 64, 64]
    assert (rows["velocity"].iloc[3:] == model.config.velocity).all()


def test_generate_is_reproducible_and_greedy_ignores_seed() -> None:
    torch.manual_seed(0)
    model = NoteLSTM(model_config("rnn", seq_len=4, hidden_size=16))
    a = generate_rnn(model, 2, SampleOptions(length=6), generator=torch.Generator().manual_seed(5))
    b = generate_rnn(model, 2, SampleOptions(length=6), generator=torch.Generator().manual_seed(5))
    for x, y in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(x, y)
    g1 = generate_rnn(
        model, 1, SampleOptions(length=6, temperature=0), generator=torch.Generator().manual_seed(1)
    )
    g2 = generate_rnn(
        model, 1, SampleOptions(length=6, temperature=0), generator=torch.Generator().manual_seed(2)
    )
    pd.testing.assert_frame_equal(g1[0], g2[0])


def test_real_store_windows_cover_test_notes() -> None:
    store = encoded_store("tuples", {"train": [SMALL], "test": [SMALL_2]})
    config = model_config("rnn", seq_len=25)
    test = make_dataset(store, config, "test")
    loader = DataLoader(test, batch_size=64)
    assert sum(float(b["mask"].sum()) for b in loader) == len(store.rows["test"])
    result = baseline(store, config)
    assert 0 < result["baseline_nll"] < math.log(128) + 1


# ---------------------------------------------------------------- drawing the times


def constant_model(step: float, duration: float) -> NoteLSTM:
    """A NoteLSTM whose step and duration heads predict `step` and `duration` always."""
    torch.manual_seed(0)
    model = NoteLSTM(model_config("rnn", seq_len=4, hidden_size=16))
    with torch.no_grad():
        for head, value in ((model.step, step), (model.duration, duration)):
            head.weight.zero_()
            head.bias.fill_(value)
    return model


def drawn_times(model: NoteLSTM, settings: dict, n: int = 400, length: int = 5, **kw):
    rows = generate_rnn(
        model,
        n,
        SampleOptions(length=length, settings=settings, **kw),
        generator=torch.Generator().manual_seed(3),
    )
    both = pd.concat(rows)
    return both["step"].to_numpy(np.float64), both["duration"].to_numpy(np.float64)


def test_geometric_draw_has_the_predicted_mean_on_the_grid() -> None:
    step, duration = drawn_times(constant_model(0.3, 0.6), {"grid_s": 0.25})
    assert np.allclose(step / 0.25, np.round(step / 0.25), atol=1e-6)  # on the grid
    assert np.allclose(duration / 0.25, np.round(duration / 0.25), atol=1e-6)
    assert step.mean() == pytest.approx(0.3, rel=0.08)
    assert duration.mean() == pytest.approx(0.6, rel=0.08)
    assert duration.min() == pytest.approx(0.25)  # a duration lasts at least one grid step
    # P(0) = 1 - q = grid / (mean + grid): a chord note as often as the mean implies
    assert (step == 0).mean() == pytest.approx(0.25 / 0.55, abs=0.04)
    assert len(np.unique(step)) > 3  # waits of several grid steps, ever rarer


def test_round_nearest_and_mean_draws() -> None:
    model = constant_model(0.3, 0.6)
    step, duration = drawn_times(model, {"step_draw": "round", "duration_draw": "round"})
    assert set(np.round(step, 6)) == {0.25, 0.5}  # the two grid points around 0.3
    assert (step == 0.5).mean() == pytest.approx(0.2, abs=0.04)  # mean kept: 0.25 + 0.2 * 0.25
    assert set(np.round(duration, 6)) == {0.5, 0.75}
    step, duration = drawn_times(model, {"step_draw": "nearest", "duration_draw": "nearest"})
    assert set(np.round(step, 6)) == {0.25} and set(np.round(duration, 6)) == {0.5}
    step, duration = drawn_times(model, {"step_draw": "mean", "duration_draw": "mean"})
    np.testing.assert_allclose(step, 0.3, rtol=1e-6)  # the point estimate, as the tutorial
    np.testing.assert_allclose(duration, 0.6, rtol=1e-6)
    step, _ = drawn_times(model, {"grid_s": 0.1, "step_draw": "nearest"})
    np.testing.assert_allclose(step, 0.3, rtol=1e-6)


def test_greedy_takes_the_nearest_grid_point() -> None:
    step, duration = drawn_times(constant_model(0.3, 0.6), {}, n=3, temperature=0.0)
    np.testing.assert_allclose(step, 0.25)
    np.testing.assert_allclose(duration, 0.5)


def test_default_draws_are_reproducible_for_a_seed_and_vary_across_seeds() -> None:
    model = constant_model(0.3, 0.6)

    def run(seed: int) -> pd.DataFrame:
        gen = torch.Generator().manual_seed(seed)
        return generate_rnn(model, 1, SampleOptions(length=30), generator=gen)[0]

    pd.testing.assert_frame_equal(run(7), run(7))
    assert not np.array_equal(run(7)["step"], run(8)["step"])


def test_velocity_setting() -> None:
    model = constant_model(0.3, 0.6)
    rows = generate_rnn(model, 1, SampleOptions(length=4, settings={"velocity": 90}))[0]
    assert (rows["velocity"] == 90).all()
    rows = generate_rnn(model, 1, SampleOptions(length=4))[0]
    assert (rows["velocity"] == model.config.velocity).all()  # 0: the model's


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"step_drw": "round"}, "sample.rnn.step_drw: rnn has no such sampling setting"),
        ({"grid_s": "0.25"}, "sample.rnn.grid_s: expected float"),
        ({"duration_draw": "gamma"}, "sample.rnn.duration_draw: expected one of geometric"),
        ({"grid_s": 0.0}, "sample.rnn.grid_s: expected a grid > 0 s"),
        ({"velocity": 128}, "sample.rnn.velocity: expected 0 or 1..127"),
    ],
)
def test_bad_settings_give_one_line(settings: dict, message: str) -> None:
    with pytest.raises(base.GenerateError) as info:
        generate_rnn(constant_model(0.3, 0.6), 1, SampleOptions(length=2, settings=settings))
    assert message in str(info.value) and "\n" not in str(info.value)
