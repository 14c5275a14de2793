"""The evaluate stage: whole-split means, baselines, samples and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import typer
import yaml
from fixture_stores import FIXTURES, model_config
from rawfolder import processed_stores
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from pipeline.core.params import default_params, from_mapping
from pipeline.evaluation.evaluate import (
    HEADLINE_KEYS,
    EvaluateParams,
    evaluate,
    evaluate_command,
    headline,
    objective_numbers,
)
from pipeline.evaluation.params import SampleParams, load_sample_params
from pipeline.midi import parse_midi
from pipeline.modeling import base
from pipeline.modeling.fit import fit
from pipeline.representations import load_store

PIECES = {
    "train": [
        FIXTURES
        / "maestro"
        / ("giantmidi_eval_MIDI-Unprocessed_11_R1_2011_MID--AUDIO_R1-D4_07_Track07_wav.mid")
    ],
    "validation": [FIXTURES / "other" / "symusic_1.midi"],
    "test": [
        FIXTURES / "other" / "miditoolkit_1390.mid",
        FIXTURES
        / "maestro"
        / (
            "giantmidi_eval_MIDI-Unprocessed_09_R3_2008_01-07_ORIG_MID--AUDIO_09_R3_2008_wav--2.mid"
        ),
    ],
}
SMALL_EVAL = EvaluateParams(
    n_samples=2,
    seconds=3.0,
    seed=0,
    n_real=2,
    batch_size=16,
    train_batches=3,
    render=False,
    num_threads=0,
    fake_folds=5,
    oa_boot=50,
)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Processed tuples and pianoroll stores from real fixture files via ingest + represent."""
    return processed_stores(
        tmp_path_factory.mktemp("stores"),
        {p: split for split, paths in PIECES.items() for p in paths},
    )


def tiny_model(name: str, store: base.StoreData) -> torch.nn.Module:
    spec = base.get(name)
    kw = {
        "rnn": {"seq_len": 8, "hidden_size": 16},
        "autoencoder": {"window_frames": 16, "filters": (4, 8)},
        "vae": {"window_frames": 16, "filters": (4, 8), "latent_dim": 4},
    }[name]
    config = model_config(name, **kw)
    if spec.prepare is not None:
        config = spec.prepare(store, config)
    torch.manual_seed(0)
    return spec.model_cls(config).eval()


def test_params_defaults_and_validation(tmp_path: Path) -> None:
    params = default_params("evaluate", EvaluateParams)
    assert (params.n_samples, params.n_real, params.seconds) == (20, 20, 20.0)
    with pytest.raises(ValueError, match="fake_folds"):
        from_mapping({**dataclasses.asdict(params), "fake_folds": 1}, EvaluateParams, "evaluate")
    with pytest.raises(ValueError, match="top_p"):
        from_mapping({"top_p": 0.0}, SampleParams, "sample.rnn")
    # sample.<model>: the shared keys typed, the rest the sampler's own; none = defaults
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"sample": {"vae": {"temperature": 0.5, "threshold": 0.3}}}))
    assert load_sample_params("vae", path) == (SampleParams(temperature=0.5), {"threshold": 0.3})
    assert load_sample_params("rnn", path) == (SampleParams(), {})
    path.write_text(yaml.safe_dump({"sample": {"vae": {"top_k": "x"}}}))
    with pytest.raises(ValueError, match=r"p\.yaml.*sample\.vae\.top_k"):
        load_sample_params("vae", path)


def test_test_terms_are_unit_weighted_means_over_the_whole_split(stores: Path) -> None:
    store = load_store(stores / "tuples", "tuples")
    spec = base.get("rnn")
    model = tiny_model("rnn", store)
    result = evaluate(spec, model, store, SMALL_EVAL)
    # by hand: every test window, each batch weighted by its number of notes
    data = spec.make_dataset(store, model.config, "test")
    total = notes = 0.0
    with torch.no_grad():
        for batch in DataLoader(data, batch_size=7):
            out = model(batch)
            total += float(out["nll"]) * float(out["n_units"])
            notes += float(out["n_units"])
    assert notes == len(store.rows["test"])
    assert result["test"]["nll"] == pytest.approx(total / notes, rel=1e-5)
    assert {"loss", "step_mse", "duration_mse", "baseline_nll", "baseline_step_mse"} <= set(
        result["test"]
    )
    assert "n_units" not in result["test"]
    assert set(result["train"]) == {"loss", "nll", "step_mse", "duration_mse"}
    samples = result["samples"]
    assert samples["n"] == 2 and samples["n_real"] == 2
    assert samples["mean_notes"] > 0 and 0 < samples["mean_seconds"] <= 3.0 + 10.0
    assert len(samples["real_clips"]) == 2
    # two clips a side cannot fill 5 folds: find the fake says so instead of scoring
    assert "5" in samples["fake"]["score"]["error"]
    assert "metrics" in samples and "oa_mean" in samples  # from metrics.compare_sets


@pytest.mark.parametrize("name", ["autoencoder", "vae"])
def test_pianoroll_models_write_samples_and_real_clips(
    stores: Path, tmp_path: Path, name: str
) -> None:
    store = load_store(stores / "pianoroll", "pianoroll")
    model = tiny_model(name, store)
    out = tmp_path / "samples"
    render = name == "autoencoder"  # rendering is slow (matplotlib): check it once
    params = dataclasses.replace(SMALL_EVAL, render=render)
    result = evaluate(base.get(name), model, store, params, samples_dir=out)
    assert result["test"]["nll"] > 0 and result["test"]["baseline_nll"] > 0
    objective = result["objective"]
    assert objective["test"] == result["test"]["nll"] and objective["unit"] == "nats per cell"
    numbers = headline({"model": {"name": name}, **result})
    assert tuple(numbers) == HEADLINE_KEYS and numbers["unit"] == "nats/cell"
    assert numbers["test"] == result["test"]["nll"] and numbers["kind"] == objective["kind"]
    if name == "autoencoder":  # a denoising loss, beside the same loss of a one-cell denoiser
        assert objective["kind"] == "loss"
        assert objective["baseline"]["name"] == "denoising_bce"
        assert objective["baseline"]["test"] == result["test"]["baseline_denoising_bce"]
        assert numbers["objective"] == "denoising_bce"
        assert numbers["baseline"] == result["test"]["baseline_denoising_bce"]
    else:  # a bound, beside the Bernoulli baseline's exact NLL
        assert objective["kind"] == "bound"
        assert objective["baseline"]["test"] == result["test"]["baseline_nll"]
        assert numbers["objective"] == "neg_elbo"
        assert numbers["baseline"] == result["test"]["baseline_nll"]
    names = {p.name for p in out.iterdir()}
    for stem in ("sample-0", "sample-1", "real-0", "real-1"):
        assert f"{stem}.mid" in names
        assert ({f"{stem}.ogg", f"{stem}.png"} <= names) is render  # render.render_clip
    real = parse_midi(out / "real-0.mid").notes
    assert real["end"].max() <= 3.0 + 1e-3  # real clips are cut to `seconds`
    json.dumps(result, allow_nan=False)  # NaN written as null


def test_headline_is_one_flat_schema_for_every_model() -> None:
    """Issue 20: every model's DVC metrics file has the same keys, so `dvc metrics show`
    prints one row per model; what "test" is travels beside it as short strings."""
    samples = {
        "oa_mean": 0.4,
        "kl_mean": 6.0,
        "metrics": {
            "polyphony": {"generated_mean": 3.0, "real_mean": 4.0},
            "scale_consistency": {"generated_mean": float("nan")},  # -> null
            "pitch_class_entropy": {"generated_mean": 3.2},
        },
    }
    for name in base.names():
        spec = base.get(name)
        baseline = spec.objective.baseline
        test = {"nll": 1.5} | ({} if baseline is None else {baseline.key: 2.0})
        objective = objective_numbers(spec, test, {"nll": 1.0})
        result = {"model": {"name": name}, "objective": objective, "samples": samples}
        numbers = headline(result)
        assert tuple(numbers) == HEADLINE_KEYS, name
        assert numbers["objective"] == spec.objective.name and numbers["test"] == 1.5
        assert numbers["kind"] == spec.objective.kind
        assert " " not in numbers["unit"] and numbers["unit"].startswith("nats/"), numbers
        assert numbers["baseline"] == (None if baseline is None else 2.0)
        assert numbers["oa_mean"] == 0.4 and numbers["polyphony"] == 3.0
        assert numbers["scale"] is None and numbers["pce"] == 3.2
        json.dumps(numbers, allow_nan=False)  # valid JSON: no NaN
    # a result without samples or baseline still has every key (null)
    bare = headline({"model": {"name": "x"}, "objective": {"name": "nll", "test": math.inf}})
    assert tuple(bare) == HEADLINE_KEYS and bare["test"] is None and bare["baseline"] is None


def test_committed_headlines_are_the_headline_of_the_committed_results() -> None:
    """reports/metrics/<m>.json (what `dvc metrics show` prints in a fresh clone) is
    exactly `headline` of reports/evaluate/<m>.json, in one schema for every model."""
    root = Path(__file__).resolve().parents[2] / "reports"
    names = sorted(p.stem for p in (root / "metrics").glob("*.json"))
    assert names == sorted(base.names())
    for name in names:
        details = json.loads((root / "evaluate" / f"{name}.json").read_text())
        assert json.loads((root / "metrics" / f"{name}.json").read_text()) == headline(details)


def test_evaluate_command_writes_metrics_and_samples(stores: Path, tmp_path: Path) -> None:
    store = load_store(stores / "tuples", "tuples")
    spec = base.get("rnn")
    train = base.TrainParams(
        seed=0,
        device="cpu",
        batch_size=4,
        max_steps=2,
        learning_rate=1e-3,
        warmup_steps=0,
        weight_decay=0.0,
        grad_clip=1.0,
        eval_every=2,
        eval_batches=1,
        patience=0,
        checkpoint_every=2,
        num_threads=1,
        augment=base.Augment((0,), (1.0,)),
        precision="fp32",
        nproc_per_node=1,
        nnodes=1,
        node_rank=0,
        rdzv_endpoint="",
        rdzv_timeout_s=60,
    )
    fit(
        spec,
        model_config("rnn", seq_len=8, hidden_size=16),
        train,
        store,
        tmp_path / "m",
        tmp_path / "live",
    )
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": dataclasses.asdict(SMALL_EVAL)}))
    app = typer.Typer()
    app.command()(evaluate_command)
    metrics = tmp_path / "reports" / "metrics" / "rnn.json"
    details = tmp_path / "reports" / "evaluate" / "rnn.json"
    samples = tmp_path / "reports" / "samples" / "rnn"
    args = [
        "rnn",
        "--store",
        str(stores / "tuples"),
        "--model-dir",
        str(tmp_path / "m"),
        "--metrics",
        str(metrics),
        "--details",
        str(details),
        "--samples",
        str(samples),
        "--params",
        str(params),
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(details.read_text())
    head = json.loads(metrics.read_text())
    # DVC metrics: the same flat keys for every model, and what "test" is beside it
    assert sorted(head) == sorted(HEADLINE_KEYS) and head == headline(data)
    assert head["objective"] == "pitch_nll" and head["kind"] == "likelihood"
    assert head["unit"] == "nats/note"
    assert head["test"] == data["test"]["nll"]
    assert head["baseline"] == data["test"]["baseline_nll"]
    assert data["objective"]["name"] == "pitch_nll" and data["objective"]["kind"] == "likelihood"
    assert data["objective"]["unit"] == "nats per note"
    assert data["objective"]["test"] == data["test"]["nll"]
    assert data["objective"]["train"] == data["train"]["nll"]
    assert data["objective"]["baseline"]["test"] == data["test"]["baseline_nll"]
    assert "test pitch_nll" in result.output and "nats per note (likelihood)" in result.output
    generated = data["samples"]["metrics"]
    assert head["oa_mean"] == data["samples"]["oa_mean"]
    assert head["scale"] == generated["scale_consistency"]["generated_mean"]
    assert head["pce"] == generated["pitch_class_entropy"]["generated_mean"]
    assert data["model"] == {
        "name": "rnn",
        "representation": "tuples",
        "step": 2,
        "n_parameters": data["model"]["n_parameters"],
    }
    assert math.isfinite(data["test"]["nll"]) and math.isfinite(data["test"]["baseline_nll"])
    assert {p.name for p in samples.glob("*.mid")} == {
        "sample-0.mid",
        "sample-1.mid",
        "real-0.mid",
        "real-1.mid",
    }
    assert not list(samples.parent.glob("*.tmp*"))  # the folder appeared atomically
    # errors: a model folder without model.pt is one line and exit code 1
    args[args.index("--model-dir") + 1] = str(tmp_path / "nothing")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "checkpoint not found" in result.output
