"""The `frames` stage (`pipeline.evaluation.frames`): which family scores a model, where
the frame grid comes from, and the command's refusals. The metric itself is tested in
tests/modeling/test_frames.py; each family's scores in tests/modeling/test_*_frames.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
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


# --------------------------------------------------------------------------------------
# --reference: the data set's own rolls (pipeline.sources.poly2012), and the validation split

POLY2012 = Path(__file__).resolve().parents[1] / "fixtures" / "poly2012"
NOTTINGHAM = (31, 63)  # the Nottingham slice's window: MIDI 31-93
NARROW = (40, 48)  # MIDI 40-87: the slice's test split sounds MIDI 36-89


def nottingham_store(folder: Path, representation: str, **params: int) -> object:
    """The Nottingham slice fetched, ingested and represented as the stages do."""
    import dataclasses
    import hashlib

    from fixture_stores import repr_params

    from pipeline.core.params import default_params
    from pipeline.ingest import IngestParams, ingest_dir
    from pipeline.representations import load_store
    from pipeline.representations.stage import build_store
    from pipeline.sources.poly2012 import Params, fetch

    raw, interim = folder / "raw", folder / "interim" / "nottingham"
    if not raw.exists():
        mat = POLY2012 / "nottingham-slice.mat"
        sha = hashlib.sha256(mat.read_bytes()).hexdigest()
        source = {"dataset": "nottingham", "url": str(mat), "sha256": sha, "bpm": 120}
        fetch(from_mapping({**source, "max_files": 0}, Params, "poly2012"), raw)
        ingest = dataclasses.replace(default_params("ingest", IngestParams), workers=1)
        ingest_dir(raw, interim, source="nottingham", params=ingest)
    out = folder / f"{representation}-{'-'.join(map(str, params.values()))}"
    build_store(representation, [interim], out, repr_params(representation, **params))
    return load_store(out, representation)


def prv_window(min_pitch: int, n_pitches: int) -> dict[str, int]:
    return {"steps_per_second": 4, "min_pitch": min_pitch, "n_pitches": n_pitches}


def tiny_biaxial(store: object) -> object:
    """A small random biaxial LSTM prepared on `store` (its window), in eval mode."""
    import torch
    from fixture_stores import model_config

    from pipeline.modeling import base
    from pipeline.modeling.prv import prepare

    kw = dict(time_hidden=8, note_hidden=8, style_dim=0, neighbour_window=3)
    kw |= dict(vicinity_filters=4, vicinity_kernel=6, seq_len=16, dropout=0.0, beat_period=8)
    config = prepare(store, model_config("biaxial", **kw, style_dropout=0.0, styles=()))
    torch.manual_seed(0)
    return base.get("biaxial").model_cls(config).eval()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models score fastest on one torch thread (and share the machine's cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def nottingham(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object, object]:
    """The Nottingham slice's prv store (window MIDI 31-93), its reference, a tiny model."""
    from pipeline.sources.poly2012 import read_reference

    folder = tmp_path_factory.mktemp("nottingham")
    store = nottingham_store(folder, "prv", **prv_window(*NOTTINGHAM))
    return store, read_reference(folder / "raw"), tiny_biaxial(store)


def test_the_reference_scores_every_frame_and_validation_too(
    nottingham: tuple, one_thread: None
) -> None:
    """Where the store is the data set's frames the numbers are the store's; the train
    split (one piece ends in silence, which a prv store has no rows for) counts the
    reference's every frame, and the Note 1-Gram is the reference's train split's."""
    from pipeline.modeling import base
    from pipeline.modeling.frames import note_unigram_baseline
    from pipeline.modeling.prv.frames import store_rolls

    store, reference, model = nottingham
    spec = base.get("biaxial")
    params = from_mapping(FRAMES, FramesParams, "frames")
    plain = score_model(spec, model, store, params)
    assert not {"validation_frame_nll", "reference"} & set(plain)  # the default is unchanged
    result = score_model(spec, model, store, params, reference=reference, validation=True)
    assert result["frame_nll"] == pytest.approx(plain["frame_nll"], rel=1e-12)
    assert result["frames"] == plain["frames"] == reference.frames("test") == 128
    valid = score_model(spec, model, store, FramesParams("validation", 128, "auto", 0))
    assert result["validation_frame_nll"] == pytest.approx(valid["frame_nll"], rel=1e-12)
    assert (result["validation_frames"], result["validation_pieces"]) == (128, 2)
    assert result["reference"] == {
        "dataset": "nottingham",
        "sha256": reference.meta["sha256"],
        "frames": 128,
    }
    train = list(reference.split("train").values())
    test = list(reference.split("test").values())
    assert result["note_unigram"] == pytest.approx(note_unigram_baseline(train, test), rel=1e-12)
    assert result["note_unigram"] != plain["note_unigram"]  # the store's train lacks 3 frames

    on_train = FramesParams("train", 128, "auto", 0)
    scored = score_model(spec, model, store, on_train, reference=reference)
    assert scored["frames"] == reference.frames("train") == 192
    assert sum(len(r) for r in store_rolls(store, "train").values()) == 189  # the store's


def test_a_window_too_narrow_for_a_test_frame_is_refused_with_a_reference(
    nottingham: tuple, tmp_path: Path, one_thread: None
) -> None:
    from pipeline.modeling import base

    _, reference, _ = nottingham
    narrow = nottingham_store(tmp_path, "prv", **prv_window(*NARROW))
    model = tiny_biaxial(narrow)
    params = from_mapping(FRAMES, FramesParams, "frames")
    score_model(base.get("biaxial"), model, narrow, params)  # without one: folded, unnoticed
    with pytest.raises(FrameError) as info:
        score_model(base.get("biaxial"), model, narrow, params, reference=reference)
    assert str(info.value) == (
        "nottingham: test piece 0 frame 0 sounds MIDI 36, below the model's window 40-87; "
        "widen prv.min_pitch/n_pitches (the test split sounds MIDI 36-89)"
    )


def test_an_events_model_must_count_the_reference_frames(
    nottingham: tuple, tmp_path: Path, one_thread: None
) -> None:
    import dataclasses

    import torch
    from fixture_stores import model_config

    from pipeline.modeling import base
    from pipeline.modeling.events.transformer import MusicTransformer

    _, reference, _ = nottingham
    store = nottingham_store(tmp_path, "events")
    torch.manual_seed(0)
    tiny = dict(d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0, seq_len=32)
    model = MusicTransformer(model_config("transformer", **tiny, max_relative_position=8)).eval()
    params = FramesParams("test", 32, "cpu", 0)
    spec = base.get("transformer")
    result = score_model(spec, model, store, params, steps_per_second=4.0, reference=reference)
    assert result["frames"] == 128 and result["reference"]["dataset"] == "nottingham"
    longer = {**reference.split("test")}
    key = next(iter(longer))
    longer[key] = np.concatenate([longer[key], longer[key][-1:]])
    other = dataclasses.replace(reference, rolls={**reference.rolls, "test": longer})
    with pytest.raises(
        FrameError, match="nottingham: 128 test frames scored, the data set has 129"
    ):
        score_model(spec, model, store, params, steps_per_second=4.0, reference=other)


def test_frames_command_names_a_missing_reference(tmp_path: Path) -> None:
    from pipeline.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(
        "frames: {split: test, token_stride: 4, device: cpu, num_threads: 0}\n", encoding="utf-8"
    )
    args = ["frames", "biaxial", "--store", str(tmp_path / "prv"), "--reference", str(tmp_path)]
    args += ["--model-dir", str(tmp_path / "m"), "--out", str(tmp_path / "out.json")]
    result = CliRunner().invoke(app, [*args, "--params", str(params)])
    assert result.exit_code == 1, result.output
    assert f"error: {tmp_path / 'reference.npz'}: missing (`etude fetch poly2012`" in result.output
    assert not (tmp_path / "out.json").exists()
