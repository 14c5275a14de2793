"""The one training loop: checkpoints, exact resume, early stopping, dvclive, DDP."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixture_stores import SMALL, SMALL_2, SMALL_3, encoded_store, model_config
from tiny_project import copy_code
from tools import last_line, python_in

from pipeline.modeling import base
from pipeline.modeling.base import CHECKPOINT_VERSION, Augment, StoreData, TrainParams
from pipeline.modeling.checkpoint import CheckpointError, load_checkpoint, load_model
from pipeline.modeling.fit import _lr_lambda, fit
from pipeline.modeling.resume import code_digest
from pipeline.modeling.scoring import FitError

OFF = Augment(transpositions=(0,), stretches=(1.0,))  # train.augment as shipped

TINY = {
    "rnn": {"seq_len": 8, "hidden_size": 16},
    "autoencoder": {"window_frames": 16, "filters": (4, 8)},
    "vae": {"window_frames": 16, "filters": (4, 8), "latent_dim": 4, "kl_anneal_steps": 6},
}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)  # nothing may be written relative to the checkout


def fixture_store(representation: str) -> StoreData:
    """Test helper: an in-memory store (train/validation/test: one real piece each)."""
    changes = {"max_frames_per_piece": 300} if representation == "pianoroll" else {}
    splits = {"train": [SMALL], "validation": [SMALL_2], "test": [SMALL_3]}
    return encoded_store(representation, splits, **changes)


_STORES: dict[str, StoreData] = {}


def store_for(name: str) -> StoreData:
    representation = base.get(name).representation
    if representation not in _STORES:
        _STORES[representation] = fixture_store(representation)
    return _STORES[representation]


def train_params(**kw: object) -> TrainParams:
    values = dict(
        seed=0,
        device="cpu",
        batch_size=4,
        max_steps=12,
        learning_rate=3e-3,
        warmup_steps=2,
        weight_decay=0.01,
        grad_clip=1.0,
        eval_every=4,
        eval_batches=2,
        patience=0,
        checkpoint_every=4,
        num_threads=1,
        augment=OFF,
        precision="fp32",
        nproc_per_node=1,
        nnodes=1,
        node_rank=0,
        rdzv_endpoint="",
        rdzv_timeout_s=60,
    )
    return TrainParams(**{**values, **kw})  # type: ignore[arg-type]


def config_for(name: str) -> object:
    return model_config(name, **TINY[name])


class Interrupt(Exception):
    pass


def interrupt_at(step: int):  # noqa: ANN201
    def hook(s: int) -> None:
        if s == step:
            raise Interrupt

    return hook


def test_fit_writes_checkpoints_curves_and_summary(tmp_path: Path) -> None:
    spec = base.get("rnn")
    summary = fit(
        spec, config_for("rnn"), train_params(), store_for("rnn"), tmp_path / "m", tmp_path / "live"
    )
    assert summary["steps"] == 12 and summary["resumed_from"] is None
    assert summary["n_parameters"] == sum(
        p.numel() for p in spec.model_cls(config_for("rnn")).parameters()
    )
    assert summary["best_step"] in (4, 8, 12) and math.isfinite(summary["best_val_loss"])
    best = load_checkpoint(tmp_path / "m" / "model.pt", "rnn")
    assert best["representation"] == "tuples" and best["checkpoint_version"] == CHECKPOINT_VERSION
    assert best["config"]["seq_len"] == 8 and best["repr_params"] == {"sustain": True}
    assert best["step"] == summary["best_step"]
    assert best["val_loss"] == pytest.approx(summary["best_val_loss"])
    last = load_checkpoint(tmp_path / "m" / "last.pt", "rnn")
    assert last["step"] == 12 and last["finished"] is True
    assert {"optimizer", "scheduler", "rng"} <= set(last)
    # dvclive wrote its files only (no dvc.yaml, no git)
    metrics = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert metrics["step"] == 12 and "loss" in metrics["val"] and "nll" in metrics["train"]
    curve = (tmp_path / "live" / "plots" / "metrics" / "val" / "loss.tsv").read_text().split()
    assert curve[:2] == ["step", "loss"] and [int(x) for x in curve[2::2]] == [4, 8, 12]
    assert not (tmp_path / "live" / "dvc.yaml").exists() and not (tmp_path / ".dvc").exists()
    # model.pt rebuilds the model from its config alone
    model, _, _ = load_model(tmp_path / "m" / "model.pt", "rnn")
    assert model.config == config_for("rnn")


@pytest.mark.parametrize("name", ["rnn", "autoencoder", "vae"])
def test_resume_after_interruption_equals_uninterrupted(tmp_path: Path, name: str) -> None:
    spec, store, params = base.get(name), store_for(name), train_params()
    whole = fit(spec, config_for(name), params, store, tmp_path / "a", tmp_path / "la")
    with pytest.raises(Interrupt):
        fit(
            spec,
            config_for(name),
            params,
            store,
            tmp_path / "b",
            tmp_path / "lb",
            on_step=interrupt_at(7),
        )  # last.pt holds step 4; steps 5-7 are lost
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 4
    resumed = fit(spec, config_for(name), params, store, tmp_path / "b", tmp_path / "lb")
    assert resumed["resumed_from"] == 4 and resumed["steps"] == 12
    assert resumed["best_val_loss"] == pytest.approx(whole["best_val_loss"], abs=0, rel=0)
    a = load_checkpoint(tmp_path / "a" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the resumed curve has each evaluation once
    curve = (tmp_path / "lb" / "plots" / "metrics" / "val" / "loss.tsv").read_text().split()
    assert [int(x) for x in curve[2::2]] == [4, 8, 12]


def test_finished_run_is_not_retrained_but_other_params_are(tmp_path: Path) -> None:
    spec, store = base.get("rnn"), store_for("rnn")
    fit(spec, config_for("rnn"), train_params(), store, tmp_path / "m", tmp_path / "l")
    before = (tmp_path / "m" / "last.pt").stat().st_mtime_ns
    again = fit(
        spec, config_for("rnn"), train_params(num_threads=2), store, tmp_path / "m", tmp_path / "l"
    )
    assert again["resumed_from"] == 12  # num_threads does not change the result
    assert (tmp_path / "m" / "last.pt").stat().st_mtime_ns == before
    other = fit(
        spec,
        config_for("rnn"),
        train_params(learning_rate=1e-3),
        store,
        tmp_path / "m",
        tmp_path / "l",
    )
    assert other["resumed_from"] is None and other["steps"] == 12
    fresh = fit(
        spec,
        config_for("rnn"),
        train_params(learning_rate=1e-3),
        store,
        tmp_path / "m",
        tmp_path / "l",
        resume=False,
    )
    assert fresh["resumed_from"] is None


def test_checkpoint_version_and_name_are_checked(tmp_path: Path) -> None:
    spec, store = base.get("rnn"), store_for("rnn")
    fit(spec, config_for("rnn"), train_params(max_steps=4), store, tmp_path / "m", tmp_path / "l")
    path = tmp_path / "m" / "model.pt"
    ckpt = torch.load(path, weights_only=True)
    with pytest.raises(CheckpointError, match="holds model 'rnn', expected 'vae'"):
        load_checkpoint(path, "vae")
    ckpt["checkpoint_version"] = CHECKPOINT_VERSION + 1
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=f"checkpoint version {CHECKPOINT_VERSION + 1}"):
        load_checkpoint(path, "rnn")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    # a tampered last.pt is not resumed: training starts over
    last = torch.load(tmp_path / "m" / "last.pt", weights_only=True)
    last["checkpoint_version"] = 0
    torch.save(last, tmp_path / "m" / "last.pt")
    summary = fit(
        spec, config_for("rnn"), train_params(max_steps=4), store, tmp_path / "m", tmp_path / "l"
    )
    assert summary["resumed_from"] is None


def test_early_stopping_after_patience(tmp_path: Path) -> None:
    # a learning rate far below float32 resolution leaves the weights, and so the
    # (fixed-seed) validation loss, unchanged: no evaluation improves on the first
    params = train_params(learning_rate=1e-20, weight_decay=0.0, patience=2, max_steps=40)
    summary = fit(
        base.get("rnn"), config_for("rnn"), params, store_for("rnn"), tmp_path / "m", tmp_path / "l"
    )
    assert summary["stopped_early"] is True
    assert summary["steps"] == 12 and summary["best_step"] == 4
    assert load_checkpoint(tmp_path / "m" / "last.pt")["finished"] is True


def test_learning_rate_schedule() -> None:
    factor = _lr_lambda(train_params(warmup_steps=4, max_steps=104))
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == pytest.approx(1.0)
    assert factor(54) == pytest.approx(0.1 + 0.9 * 0.5)
    assert factor(104) == pytest.approx(0.1)


def test_errors_are_named(tmp_path: Path) -> None:
    store = store_for("rnn")
    empty = StoreData(
        rows={**store.rows, "train": store.rows["train"].iloc[:0]},
        pieces=store.pieces,
        params=store.params,
    )
    with pytest.raises(FitError, match="train split"):
        fit(
            base.get("rnn"),
            config_for("rnn"),
            train_params(),
            empty,
            tmp_path / "m",
            tmp_path / "l",
        )
    if not torch.cuda.is_available():
        with pytest.raises(FitError, match="no CUDA"):
            fit(
                base.get("rnn"),
                config_for("rnn"),
                train_params(device="cuda"),
                store,
                tmp_path / "m",
                tmp_path / "l",
            )


DDP_SCRIPT = """
import os, pickle, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from pipeline.modeling import base
from pipeline.modeling.fit import fit_model
store = pickle.loads(Path(sys.argv[1]).read_bytes())
out = Path(sys.argv[2])
spec = base.get("rnn")
params = base.TrainParams(seed=0, device="cpu", batch_size=4, max_steps=6, learning_rate=3e-3,
    warmup_steps=1, weight_decay=0.01, grad_clip=1.0, eval_every=3, eval_batches=2, patience=0,
    checkpoint_every=3, num_threads=1, augment=base.Augment((0,), (1.0,)), precision="fp32",
    nproc_per_node=1, nnodes=1, node_rank=0, rdzv_endpoint="", rdzv_timeout_s=60)
import dataclasses
from pipeline.core.config import DEFAULT_PARAMS_FILE
from pipeline.modeling.train import load_train_params
config = dataclasses.replace(
    load_train_params("rnn", DEFAULT_PARAMS_FILE)[0], seq_len=8, hidden_size=16)
summary, model = fit_model(spec, config, params, store, out / "m", out / "live")
torch.save(model.state_dict(), out / f"rank{os.environ['RANK']}.pt")
"""


def test_ddp_two_cpu_ranks_end_with_identical_weights(tmp_path: Path) -> None:
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    store_file = tmp_path / "store.pkl"
    store_file.write_bytes(pickle.dumps(store_for("rnn")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(script),
            str(store_file),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    last = load_checkpoint(tmp_path / "m" / "last.pt", "rnn")
    assert last["step"] == 6 and len(last["rng"]) == 2  # one RNG state per rank
    assert all(torch.equal(last["state_dict"][k], w0[k]) for k in w0)
    initial = base.get("rnn").model_cls(model_config("rnn", seq_len=8, hidden_size=16))
    assert not all(torch.equal(initial.state_dict()[k], w0[k]) for k in w0)  # it trained


def test_finished_checkpoint_is_not_reused_after_a_data_change(tmp_path: Path) -> None:
    """models/<m> persists across `dvc repro` for resume; a change of the store's rows
    (which makes DVC rerun the stage) must retrain. Code changes: the next test."""
    spec, store = base.get("rnn"), store_for("rnn")
    fit(spec, config_for("rnn"), train_params(), store, tmp_path / "m", tmp_path / "l")
    same = fit(spec, config_for("rnn"), train_params(), store, tmp_path / "m", tmp_path / "l")
    assert same["resumed_from"] == 12
    fewer_rows = {**store.rows, "train": store.rows["train"].iloc[:-5]}
    smaller = dataclasses.replace(store, rows=fewer_rows)
    again = fit(spec, config_for("rnn"), train_params(), smaller, tmp_path / "m", tmp_path / "l")
    assert again["resumed_from"] is None and again["steps"] == 12


FIT_SCRIPT = """
import json, pickle, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from pipeline.modeling import base
from pipeline.modeling.fit import fit
from pipeline.modeling.resume import code_digest
config, params, store = pickle.loads(Path(sys.argv[1]).read_bytes())
spec, run = base.get("rnn"), Path(sys.argv[2])
summary = fit(spec, config, params, store, run / "m", run / "live")
model_file = sys.modules[spec.model_cls.__module__].__file__
print(json.dumps({"summary": summary, "digest": code_digest(spec), "model_file": model_file}))
"""


def test_a_model_code_edit_retrains_and_the_same_code_resumes(tmp_path: Path) -> None:
    """A finished last.pt, written by this process's code, meets two copies of pipeline/
    in fresh processes: the byte-identical copy resumes it (nothing to train), the copy
    whose rnn.py was edited gets another code digest and trains from scratch."""
    spec, config, params = base.get("rnn"), config_for("rnn"), train_params(max_steps=4)
    first = fit(spec, config, params, store_for("rnn"), tmp_path / "run" / "m", tmp_path / "l")
    assert first["resumed_from"] is None and first["steps"] == 4
    inputs = tmp_path / "inputs.pkl"
    inputs.write_bytes(pickle.dumps((config, params, store_for("rnn"))))
    procs = {}
    for kind in ("same", "edited"):
        code = tmp_path / kind
        copy_code(code)
        shutil.copytree(tmp_path / "run", code / "run")  # last.pt of the first run
        model_file = code / "pipeline" / "modeling" / "tuples" / "rnn.py"
        if kind == "edited":
            model_file.write_text(model_file.read_text() + "\nEDITED_BY_A_TEST = True\n")
        procs[kind] = (code, python_in(code, FIT_SCRIPT, str(inputs), str(code / "run")))
    results = {}
    for kind, (code, proc) in procs.items():
        results[kind] = result = json.loads(last_line(proc))
        # the copy's code ran, and last.pt now carries the digest of that code
        assert Path(result["model_file"]) == code / "pipeline" / "modeling" / "tuples" / "rnn.py"
        last = load_checkpoint(code / "run" / "m" / "last.pt", "rnn")
        assert last["fingerprint"]["code"] == result["digest"] and last["step"] == 4
    same, edited = results["same"], results["edited"]
    assert same["digest"] == code_digest(spec)
    assert same["summary"]["resumed_from"] == 4  # finished: reused as it is, not rewritten
    last_pt = Path("run") / "m" / "last.pt"
    assert (tmp_path / "same" / last_pt).read_bytes() == (tmp_path / last_pt).read_bytes()
    assert edited["digest"] != code_digest(spec)
    assert edited["summary"]["resumed_from"] is None and edited["summary"]["steps"] == 4


def test_augment_draws_are_reproducible_and_cover_the_lists() -> None:
    aug = Augment(transpositions=(-3, -2, -1, 0, 1, 2, 3), stretches=(0.95, 1.0, 1.05))
    assert aug.active and not OFF.active
    draws = [aug.draw(0, epoch, i) for epoch in range(3) for i in range(200)]
    assert draws == [aug.draw(0, epoch, i) for epoch in range(3) for i in range(200)]
    assert {d[0] for d in draws} == set(aug.transpositions)
    assert {d[1] for d in draws} == set(aug.stretches)
    assert aug.draw(0, 0, 5) != aug.draw(0, 1, 5) or aug.draw(0, 0, 6) != aug.draw(0, 1, 6)


def test_augment_on_a_dataset_that_cannot_augment_is_a_clear_error(tmp_path: Path) -> None:
    """A model whose dataset has no set_augment refuses an active train.augment by name."""
    import dataclasses

    spec = base.get("rnn")
    store = encoded_store("tuples", {"train": [SMALL], "validation": [SMALL_2]})
    plain = dataclasses.replace(spec, make_dataset=lambda *a: list(spec.make_dataset(*a)))
    params = train_params(augment=Augment(transpositions=(0, 1), stretches=(1.0,)))
    with pytest.raises(FitError, match="rnn: its dataset cannot augment"):
        fit(plain, model_config("rnn", seq_len=8, hidden_size=16), params, store,
            tmp_path / "m", tmp_path / "live")  # fmt: skip


def test_model_selection_scores_the_whole_validation_split(tmp_path: Path) -> None:
    """eval_batches 0: the selected checkpoint's validation loss is the mean over every
    validation window, not over the first batches."""
    from torch.utils.data import DataLoader

    from pipeline.modeling.scoring import evaluate_loader

    spec, config, store = base.get("rnn"), config_for("rnn"), store_for("rnn")
    params = train_params(eval_batches=0, max_steps=4, eval_every=4)
    summary = fit(spec, config, params, store, tmp_path / "m", tmp_path / "l")
    model, _, _ = load_model(tmp_path / "m" / "model.pt", "rnn")
    val = spec.make_dataset(store, config, "validation")
    assert len(val) > 2 * params.batch_size  # so that a 2-batch cap would differ
    loader = DataLoader(val, batch_size=params.batch_size, shuffle=False)
    whole = evaluate_loader(model, loader, None, torch.device("cpu"), params.seed)["loss"]
    first = evaluate_loader(model, loader, 2, torch.device("cpu"), params.seed)["loss"]
    assert summary["best_val_loss"] == pytest.approx(whole, rel=1e-6)
    assert first != pytest.approx(whole, rel=1e-6)


def test_capped_validation_is_a_fixed_sample_spread_over_the_split() -> None:
    from pipeline.modeling.scoring import validation_loader

    spec, config, store = base.get("rnn"), config_for("rnn"), store_for("rnn")
    val = spec.make_dataset(store, config, "validation")
    capped = validation_loader(val, train_params(eval_batches=2))
    indices = list(capped.dataset.indices)
    assert len(indices) == 8 and indices == sorted(set(indices))
    assert indices != list(range(8)) and max(indices) >= len(val) // 2  # not the first batches
    assert list(validation_loader(val, train_params(eval_batches=2)).dataset.indices) == indices
    assert validation_loader(val, train_params(eval_batches=0)).dataset is val
    assert validation_loader(val, train_params(eval_batches=10_000)).dataset is val


def test_negative_eval_batches_is_an_error() -> None:
    from fixture_stores import shipped

    from pipeline.core.params import ParamsError, from_mapping

    with pytest.raises(ParamsError, match="eval_batches must be >= 0"):
        from_mapping({**shipped("train"), "eval_batches": -1}, TrainParams, "train")


def test_check_train_runs_before_training(tmp_path: Path) -> None:
    from pipeline.core.params import ParamsError

    def refuse(config: object, train: TrainParams) -> None:
        raise ParamsError(f"models.rnn: not with max_steps {train.max_steps}")

    spec = dataclasses.replace(base.get("rnn"), check_train=refuse)
    with pytest.raises(ParamsError, match="not with max_steps 12"):
        fit(
            spec,
            config_for("rnn"),
            train_params(),
            store_for("rnn"),
            tmp_path / "m",
            tmp_path / "l",
        )
    assert not (tmp_path / "m" / "last.pt").exists()


def test_every_model_names_its_objective() -> None:
    """Each reported number says what it is; a loss is compared only with the same loss."""
    expected = {
        "autoencoder": ("denoising_bce", "loss", "nats per cell", "denoising_bce"),
        "vae": ("neg_elbo", "bound", "nats per cell", "nll"),
        "rnn": ("pitch_nll", "likelihood", "nats per note", "pitch_nll"),
        "transformer": ("nll", "likelihood", "nats per token", "nll"),
        "biaxial": ("play_nll", "likelihood", "nats per pitch-step", "play_nll"),
        "poph": ("play_nll", "likelihood", "nats per pitch-step", "play_nll"),
    }
    for name, (objective, kind, unit, baseline) in expected.items():
        got = base.get(name).objective
        assert (got.name, got.kind, got.unit) == (objective, kind, unit), name
        assert (got.baseline.name if got.baseline else None) == baseline, name
        key = "baseline_denoising_bce" if name == "autoencoder" else "baseline_nll"
        assert got.baseline is not None and got.baseline.key == key, name
    with pytest.raises(ValueError, match="is a loss"):
        base.Objective("x", "loss", "nats", "d", base.Baseline("baseline_nll", "nll", "d"))
    with pytest.raises(ValueError, match="kind"):
        base.Objective("x", "score", "nats", "d", None)  # type: ignore[arg-type]
