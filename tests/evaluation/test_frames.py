"""The `frames` stage (`pipeline.evaluation.frames`): which family scores a model, where
the frame grid comes from, and the command's refusals. The metric itself is tested in
tests/modeling/test_frames.py; each family's scores in tests/modeling/test_*_frames.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from pipeline.core.params import from_mapping
from pipeline.evaluation.frames import grid_of, score_model
from pipeline.modeling.frames import FrameError, FramesParams

FRAMES = {"split": "test", "token_stride": 128, "device": "auto", "num_threads": 0}


def prv_store(steps_per_second: float) -> object:
    from pipeline.modeling.base import StoreData

    return StoreData(
        rows={},
        pieces=None,
        params=SimpleNamespace(steps_per_second=steps_per_second, min_pitch=36, n_pitches=48),
        path=Path("data/processed/prv"),
    )


def test_a_model_without_frame_probabilities_is_refused() -> None:
    from pipeline.modeling import base

    params = from_mapping(FRAMES, FramesParams, "frames")
    with pytest.raises(FrameError, match="model 'autoencoder' .* defines no probability of frames"):
        score_model(base.get("autoencoder"), None, None, params)


def test_a_prv_store_on_another_grid_is_refused() -> None:
    from pipeline.modeling import base

    params = from_mapping(FRAMES, FramesParams, "frames")
    message = r"data/processed/prv has steps_per_second 8.0, but the frames are on a grid of 2"
    with pytest.raises(FrameError, match=message):
        score_model(base.get("biaxial"), None, prv_store(8), params, steps_per_second=2.0)


def test_an_events_model_needs_a_grid() -> None:
    from pipeline.modeling import base
    from pipeline.modeling.base import StoreData

    params = from_mapping(FRAMES, FramesParams, "frames")
    store = StoreData(rows={}, pieces=None, params=None, path=Path("data/processed/events"))
    with pytest.raises(FrameError, match="events store data/processed/events has no frame grid"):
        score_model(base.get("transformer"), None, store, params)


def write_meta(folder: Path, meta: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def test_grid_of_reads_the_store_params(tmp_path: Path) -> None:
    prv = write_meta(tmp_path / "prv", {"representation": "prv", "params": {"steps_per_second": 2}})
    assert grid_of(prv) == 2.0 and isinstance(grid_of(prv), float)
    events = write_meta(tmp_path / "events", {"representation": "events", "params": {}})
    with pytest.raises(FrameError, match=r"events/params.json: no frame grid"):
        grid_of(events)
    with pytest.raises(FrameError, match=r"missing/params.json: missing"):
        grid_of(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "params.json").write_text("{", encoding="utf-8")
    with pytest.raises(FrameError, match="not valid JSON"):
        grid_of(tmp_path / "bad")


def test_frames_command_names_a_grid_store_without_a_grid(tmp_path: Path) -> None:
    from pipeline.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(
        "frames: {split: test, token_stride: 4, device: cpu, num_threads: 0}\n", encoding="utf-8"
    )
    events = write_meta(tmp_path / "events", {"representation": "events", "params": {}})
    args = ["frames", "transformer", "--store", str(events), "--grid", str(events)]
    args += ["--model-dir", str(tmp_path / "m"), "--out", str(tmp_path / "out.json")]
    result = CliRunner().invoke(app, [*args, "--params", str(params)])
    assert result.exit_code == 1, result.output
    assert f"{events / 'params.json'}: no frame grid" in result.output
    assert not (tmp_path / "out.json").exists()
