"""The conv VAE: loss terms, KL annealing, overfitting, sampling, interpolation."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fixture_stores import SMALL, encoded_store, model_config
from torch.utils.data import DataLoader

from pipeline import representations
from pipeline.modeling import base
from pipeline.modeling.pianoroll import make_dataset, prepare
from pipeline.modeling.pianoroll.sampling import (
    VAE_SETTINGS,
    decide,
    generate_vae,
    interpolate_vae,
    slerp,
)
from pipeline.modeling.pianoroll.vae import PianorollVAE, VAEConfig
from pipeline.modeling.sampling import SampleOptions


def tiny_config(**kw: object) -> VAEConfig:
    base_kw = dict(
        window_frames=8, filters=(4, 8), latent_dim=3, min_pitch=60, n_pitches=6, frame_ms=100.0
    )
    return model_config("vae", **{**base_kw, **kw})


def test_registered_on_pianoroll() -> None:
    spec = base.get("vae")
    assert spec.representation == "pianoroll" and spec.prepare is not None


def test_terms_add_up_and_eval_scores_the_elbo() -> None:
    torch.manual_seed(0)
    model = PianorollVAE(tiny_config(beta=0.5, kl_anneal_steps=100))
    batch = {"roll": (torch.rand(3, 8, 6) < 0.3).float(), "mask": torch.ones(3, 8)}
    model.train()
    model.set_step(49)  # the 50th optimizer step
    with torch.no_grad():
        out = model(batch)
    assert float(out["kl_weight"]) == pytest.approx(0.25)
    assert float(out["loss"]) == pytest.approx(
        float(out["recon"]) + 0.25 * float(out["kl"]), rel=1e-6
    )
    assert float(out["nll"]) == pytest.approx(float(out["recon"]) + float(out["kl"]), rel=1e-6)
    assert float(out["kl"]) >= 0
    model.set_step(0)
    assert model.kl_weight() == pytest.approx(0.005)  # the first step already counts
    model.set_step(99)  # the kl_anneal_steps-th step is the first at the full beta
    assert model.kl_weight() == 0.5
    model.set_step(1000)
    assert model.kl_weight() == 0.5
    model.eval()
    # evaluation (and so fit's checkpoint selection) scores the negative ELBO that
    # evaluate reports: KL weight 1, whatever beta and the step
    assert model.kl_weight() == 1.0
    with torch.no_grad():
        out = model(batch)
    assert "kl_weight" not in out
    assert float(out["loss"]) == pytest.approx(float(out["recon"]) + float(out["kl"]), rel=1e-6)
    assert float(out["loss"]) == pytest.approx(float(out["nll"]), rel=1e-6)


def test_objective_is_a_bound_beside_an_exact_nll_baseline() -> None:
    objective = base.get("vae").objective
    assert (objective.name, objective.kind, objective.unit) == (
        "neg_elbo",
        "bound",
        "nats per cell",
    )
    assert objective.baseline is not None and objective.baseline.key == "baseline_nll"
    assert objective.baseline.name == "nll"


def test_annealing_longer_than_the_run_is_an_error_naming_both_keys(tmp_path: Path) -> None:
    from fixture_stores import shipped

    from pipeline.core.params import ParamsError
    from pipeline.modeling.fit import fit

    spec = base.get("vae")
    assert spec.check_train is not None
    train = base.TrainParams(**{**shipped("train"), "augment": base.Augment((0,), (1.0,))})
    short = dataclasses.replace(train, max_steps=150)
    with pytest.raises(ParamsError) as caught:
        spec.check_train(tiny_config(kl_anneal_steps=200), short)
    message = str(caught.value)
    assert "models.vae.kl_anneal_steps (200)" in message and "max_steps (150" in message
    assert "models.vae.train.max_steps" in message and "train.max_steps" in message
    assert "0.75" in message  # where the weight would have ended
    spec.check_train(tiny_config(kl_anneal_steps=150), short)  # reaches beta at the last step
    # fit refuses before building anything
    store = encoded_store("pianoroll", {"train": [SMALL], "validation": [SMALL]})
    with pytest.raises(ParamsError, match="kl_anneal_steps"):
        fit(spec, tiny_config(kl_anneal_steps=200), short, store, tmp_path / "m", tmp_path / "l")
    assert not (tmp_path / "m").exists()


def test_shipped_defaults_anneal_within_the_run() -> None:
    """The default run trains the ELBO it reports: the weight reaches beta in training."""
    from fixture_stores import shipped

    vae = shipped("models.vae")
    max_steps = {**shipped("train"), **vae.get("train", {})}["max_steps"]
    assert vae["beta"] == 1.0
    assert 0 < vae["kl_anneal_steps"] <= max_steps // 2, "half the run at the full ELBO"


def test_kl_matches_closed_form() -> None:
    torch.manual_seed(0)
    model = PianorollVAE(tiny_config())
    roll = (torch.rand(2, 8, 6) < 0.3).float()
    mask = torch.ones(2, 8)
    with torch.no_grad():
        mu, logvar = model.encode(roll)
        out = model({"roll": roll, "mask": mask})
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = float(torch.distributions.kl_divergence(q, p).sum()) / (2 * 8 * 6)
    assert float(out["kl"]) == pytest.approx(expected, rel=1e-5)


def test_slerp_literal() -> None:
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([0.0, 1.0])
    mid = slerp(a, b, 0.5)
    torch.testing.assert_close(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    torch.testing.assert_close(slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel: linear


def test_overfits_one_batch() -> None:
    torch.manual_seed(0)
    store = encoded_store("pianoroll", {"train": [SMALL]}, max_frames_per_piece=400)
    # a small KL weight: memorising 8 windows needs information in the code
    config = prepare(
        store,
        model_config(
            "vae", window_frames=16, filters=(8, 16), latent_dim=8, beta=0.01, kl_anneal_steps=0
        ),
    )
    data = make_dataset(store, config, "train")
    batch = next(
        iter(
            DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
        )
    )
    model = PianorollVAE(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        out = model(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["recon"]))
    assert losses[-1] < 0.6 * losses[0]
    # and below the best input-independent guess: per-pitch rates of this very batch
    roll, mask = batch["roll"], batch["mask"]
    rates = ((roll * mask[..., None]).sum(dim=(0, 1)) / mask.sum()).clamp(1e-6, 1 - 1e-6)
    marginal = torch.nn.functional.binary_cross_entropy(
        rates.expand_as(roll), roll, reduction="none"
    )
    marginal_bce = float((marginal * mask[..., None]).sum() / (mask.sum() * roll.size(-1)))
    assert losses[-1] < 0.8 * marginal_bce, (losses[-1], marginal_bce)


def test_generate_rows_decode_to_valid_notes() -> None:
    torch.manual_seed(0)
    store = encoded_store("pianoroll", {"train": [SMALL]}, max_frames_per_piece=400)
    config = prepare(store, model_config("vae", window_frames=16, filters=(4, 8), latent_dim=4))
    model = PianorollVAE(config)
    rep = representations.get("pianoroll")
    samples = generate_vae(
        model, 2, SampleOptions(seconds=3.0), generator=torch.Generator().manual_seed(0)
    )
    again = generate_vae(
        model, 2, SampleOptions(seconds=3.0), generator=torch.Generator().manual_seed(0)
    )
    assert len(samples) == 2
    for i, rows in enumerate(samples):
        pd.testing.assert_frame_equal(rows, again[i])
        assert list(rows.columns) == rep.schema.names
        assert (rows["piece_id"] == f"sample-{i}").all()
        assert rows["frame"].between(0, 59).all()
        assert rows["pitch"].between(21, 108).all()
        notes = rep.decode(rows, store.params)
        assert (notes["end"] > notes["start"]).all()


def test_generate_with_primer_keeps_it() -> None:
    torch.manual_seed(0)
    model = PianorollVAE(tiny_config())
    primer = pd.DataFrame(
        {
            "piece_id": "p",
            "frame": np.array([0, 3], np.int32),
            "pitch": np.array([60, 65], np.int16),
            "velocity": np.array([70, 70], np.int16),
        }
    )
    (rows,) = generate_vae(
        model, 1, SampleOptions(primer=primer, length=8), generator=torch.Generator().manual_seed(0)
    )
    opening = rows[rows["frame"] < 4]
    assert sorted(zip(opening["frame"], opening["pitch"], strict=True)) == [(0, 60), (3, 65)]
    assert rows["frame"].max() < 4 + 8


def test_interpolate_endpoints_and_count() -> None:
    torch.manual_seed(0)
    model = PianorollVAE(tiny_config())
    a = pd.DataFrame(
        {
            "piece_id": "a",
            "frame": np.arange(8, dtype=np.int32),
            "pitch": np.full(8, 60, np.int16),
            "velocity": np.full(8, 80, np.int16),
        }
    )
    b = a.assign(piece_id="b", pitch=np.int16(65))
    path = interpolate_vae(model, a, b, steps=4)
    assert [r["piece_id"].unique().tolist() for r in path if len(r)] == [
        [f"interp-{i}"] for i, r in enumerate(path) if len(r)
    ]
    assert len(path) == 4
    # the ends decode the posterior means of a and b exactly
    with torch.no_grad():
        mu_a = model.encode(torch.from_numpy(np.eye(6, dtype=np.float32)[[0] * 8])[None])[0]
        ends = decide(torch.sigmoid(model.decode(mu_a)), VAE_SETTINGS).numpy()[0]
    first = np.zeros((8, 6), np.float32)
    first[path[0]["frame"], path[0]["pitch"] - 60] = 1.0
    np.testing.assert_array_equal(first, ends)
    with pytest.raises(ValueError, match="steps"):
        interpolate_vae(model, a, b, steps=1)
