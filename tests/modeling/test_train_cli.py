"""The train stage and the generate / interpolate tools, through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
import yaml
from fixture_stores import FIXTURES, shipped
from rawfolder import processed_stores
from typer.testing import CliRunner

from pipeline.core.params import ParamsError
from pipeline.midi import parse_midi
from pipeline.modeling.generate import generate_command, interpolate_command
from pipeline.modeling.train import load_train_params, train_command

PIECES = {
    "train": FIXTURES
    / "maestro"
    / ("giantmidi_eval_MIDI-Unprocessed_11_R1_2011_MID--AUDIO_R1-D4_07_Track07_wav.mid"),
    "validation": FIXTURES / "other" / "symusic_1.midi",
    "test": FIXTURES / "other" / "miditoolkit_1390.mid",
}

PARAMS = {
    "train": {
        "seed": 0,
        "device": "cpu",
        "batch_size": 4,
        "max_steps": 50,
        "learning_rate": 0.003,
        "warmup_steps": 1,
        "weight_decay": 0.01,
        "grad_clip": 1.0,
        "eval_every": 2,
        "eval_batches": 2,
        "patience": 0,
        "checkpoint_every": 2,
        "num_threads": 1,
        "augment": shipped("train")["augment"],
        "precision": "fp32",
        "nproc_per_node": 1,
        "nnodes": 1,
        "node_rank": 0,
        "rdzv_endpoint": "",
        "rdzv_timeout_s": 60,
    },
    "models": {  # the shipped sections, made tiny
        "rnn": {
            **shipped("models.rnn"),
            "seq_len": 8,
            "hidden_size": 16,
            "train": {"max_steps": 4},
        },
        "vae": {
            **shipped("models.vae"),
            "window_frames": 16,
            "filters": [4, 8],
            "latent_dim": 4,
            "kl_anneal_steps": 2,
            "train": {"max_steps": 2},
        },
    },
}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Processed tuples and pianoroll stores built by the real ingest and represent code
    from three real fixture files, one per split (fixed by a manifest)."""
    return processed_stores(
        tmp_path_factory.mktemp("stores"), {p: split for split, p in PIECES.items()}
    )


def write_params(path: Path, data: dict = PARAMS) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def app() -> typer.Typer:
    cli = typer.Typer()
    cli.command("train")(train_command)
    cli.command("generate")(generate_command)
    cli.command("interpolate")(interpolate_command)
    return cli


def run(*args: str):  # noqa: ANN201
    return CliRunner().invoke(app(), [str(a) for a in args])


def test_model_sections_override_train_keys(tmp_path: Path) -> None:
    config, train = load_train_params("rnn", write_params(tmp_path / "p.yaml"))
    config_rnn = config
    assert (config.seq_len, config.hidden_size) == (8, 16)
    assert train.max_steps == 4 and train.batch_size == 4  # override, then shared value
    config, _ = load_train_params("vae", tmp_path / "p.yaml")
    assert config.filters == (4, 8)
    declared = json.loads(json.dumps(PARAMS))
    declared["models"]["rnn"]["representation"] = "tuples"  # dvc.yaml's foreach key
    assert load_train_params("rnn", write_params(tmp_path / "d.yaml", declared))[0] == config_rnn
    declared["models"]["rnn"]["representation"] = "events"
    with pytest.raises(ParamsError, match="models.rnn.representation"):
        load_train_params("rnn", write_params(tmp_path / "d.yaml", declared))
    declared["models"]["rnn"]["representation"] = "tuples"
    declared["models"]["rnn"]["network"] = "tuples/rnn"  # dvc.yaml's deps key: its own network
    assert load_train_params("rnn", write_params(tmp_path / "d.yaml", declared))[0] == config_rnn
    declared["models"]["rnn"]["network"] = "transformer"
    with pytest.raises(ParamsError, match="models.rnn.network' is 'transformer'"):
        load_train_params("rnn", write_params(tmp_path / "d.yaml", declared))
    bad = json.loads(json.dumps(PARAMS))
    bad["models"]["rnn"]["train"] = {"max_step": 3}
    with pytest.raises(ParamsError, match="models.rnn.train.max_step"):
        load_train_params("rnn", write_params(tmp_path / "bad.yaml", bad))
    bad["models"]["rnn"] = {**shipped("models.rnn"), "seq_len": 0}
    with pytest.raises(ParamsError, match="seq_len"):
        load_train_params("rnn", write_params(tmp_path / "bad.yaml", bad))
    with pytest.raises(ParamsError, match="unknown model 'gan'"):
        load_train_params("gan", tmp_path / "p.yaml")


def test_train_then_generate_rnn(tmp_path: Path, stores: Path) -> None:
    params = write_params(tmp_path / "params.yaml")
    result = run(
        "train",
        "rnn",
        "--store",
        stores / "tuples",
        "--out",
        tmp_path / "models/rnn",
        "--live",
        tmp_path / "reports/rnn",
        "--params",
        params,
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models/rnn/model.pt").exists()
    assert (tmp_path / "models/rnn/last.pt").exists()
    summary = json.loads((tmp_path / "reports/rnn/summary.json").read_text())
    assert summary["steps"] == 4 and summary["n_parameters"] > 0
    assert summary["best_val_loss"] > 0 and summary["wall_time_s"] > 0

    result = run(
        "generate",
        "rnn",
        "--model-dir",
        tmp_path / "models/rnn",
        "--out",
        tmp_path / "samples",
        "--n",
        2,
        "--seconds",
        2,
        "--top-k",
        10,
    )
    assert result.exit_code == 0, result.output
    for i in range(2):
        notes = parse_midi(tmp_path / "samples" / f"sample-{i}.mid").notes
        assert len(notes) > 0 and notes["pitch"].between(0, 127).all()

    primer = PIECES["validation"]
    result = run(
        "generate",
        "rnn",
        "--model-dir",
        tmp_path / "models/rnn",
        "--out",
        tmp_path / "primed",
        "--n",
        1,
        "--seconds",
        1,
        "--primer",
        primer,
    )
    assert result.exit_code == 0, result.output
    primed = parse_midi(tmp_path / "primed" / "sample-0.mid").notes
    original = parse_midi(primer).notes
    assert len(primed) > len(original[~original["is_drum"]]) - 5  # the primer, then more


def test_train_then_interpolate_vae(tmp_path: Path, stores: Path) -> None:
    params = write_params(tmp_path / "params.yaml")
    result = run(
        "train",
        "vae",
        "--store",
        stores / "pianoroll",
        "--out",
        tmp_path / "models/vae",
        "--live",
        tmp_path / "reports/vae",
        "--params",
        params,
    )
    assert result.exit_code == 0, result.output
    result = run(
        "interpolate",
        "vae",
        PIECES["validation"],
        PIECES["test"],
        "--steps",
        3,
        "--out",
        tmp_path / "interp",
        "--model-dir",
        tmp_path / "models/vae",
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "interp").iterdir()) == [
        "interp-0.mid",
        "interp-1.mid",
        "interp-2.mid",
    ]
    result = run(
        "generate",
        "vae",
        "--model-dir",
        tmp_path / "models/vae",
        "--out",
        tmp_path / "vae-samples",
        "--n",
        1,
        "--seconds",
        2,
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "vae-samples" / "sample-0.mid").exists()


def test_errors_are_one_line_exit_1(tmp_path: Path, stores: Path) -> None:
    params = write_params(tmp_path / "params.yaml")
    result = run("train", "gan", "--store", stores / "tuples", "--params", params)
    assert result.exit_code == 1 and "unknown model 'gan'" in result.output
    assert "Traceback" not in result.output
    result = run(
        "train",
        "rnn",
        "--store",
        tmp_path / "nowhere",
        "--out",
        tmp_path / "m",
        "--live",
        tmp_path / "l",
        "--params",
        params,
    )
    assert result.exit_code == 1 and "nowhere" in result.output
    result = run("generate", "rnn", "--model-dir", tmp_path / "empty", "--out", tmp_path / "s")
    assert result.exit_code == 1 and "checkpoint not found" in result.output
    assert "Traceback" not in result.output
    assert (
        run(
            "train",
            "rnn",
            "--store",
            stores / "tuples",
            "--out",
            tmp_path / "m",
            "--live",
            tmp_path / "l",
            "--params",
            params,
        ).exit_code
        == 0
    )
    result = run(
        "interpolate",
        "rnn",
        PIECES["validation"],
        PIECES["test"],
        "--out",
        tmp_path / "i",
        "--model-dir",
        tmp_path / "m",
    )
    assert result.exit_code == 1 and "no latent space" in result.output
    result = run("generate", "vae", "--model-dir", tmp_path / "m", "--out", tmp_path / "s")
    assert result.exit_code == 1 and "holds model 'rnn', expected 'vae'" in result.output


@pytest.mark.parametrize(
    ("where", "value", "said"),
    [
        ("train", {"bogus": 1}, "unknown key 'train.bogus'"),
        ("models.rnn.train", {"bogus": 1}, "unknown key 'models.rnn.train.bogus'"),
        ("models.rnn", {"hidden_size": "big"}, "'models.rnn.hidden_size' must be an integer"),
    ],
)
def test_a_bad_key_names_the_params_file_given(
    tmp_path: Path, stores: Path, where: str, value: dict, said: str
) -> None:
    """`--params other.yaml`: the message names other.yaml, not "params.yaml"."""
    other = write_params(tmp_path / "other.yaml")
    data = yaml.safe_load(other.read_text())
    node = data
    for part in where.split("."):
        node = node.setdefault(part, {})
    node.update(value)
    other.write_text(yaml.safe_dump(data))
    result = run("train", "rnn", "--store", stores / "tuples", "--params", other)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: {other}: {said}"), result.output
    assert "params.yaml" not in result.output
