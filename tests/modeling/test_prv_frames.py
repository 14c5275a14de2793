"""The prv models' frame scores (`pipeline.modeling.prv.frames`) on the real JSB slice.

The JSB benchmark scores biaxial and PopH with `play_logits`: these tests tie its frames
to the paper's (the JSON's steps), its windowed score to `etude evaluate`'s, and its
whole-piece score to a causal pass over the piece.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_stores import encoded_store, model_config
from torch.utils.data import DataLoader

from pipeline.evaluation.frames import score_model
from pipeline.modeling import base
from pipeline.modeling.base import StoreData
from pipeline.modeling.fit import evaluate_loader
from pipeline.modeling.frames import (
    FrameError,
    FramesParams,
    frame_nll,
    note_unigram_baseline,
    roll_from_steps,
)
from pipeline.modeling.prv import make_dataset, prepare
from pipeline.modeling.prv.frames import piece_rolls, play_logits, sliding_starts, split_rolls
from pipeline.sources.jsb import OFFICIAL_SPLITS, write_midi

SLICE = Path(__file__).resolve().parents[1] / "fixtures" / "jsb" / "jsb-chorales-slice.json"
GRID = {"steps_per_second": 2, "min_pitch": 43, "n_pitches": 54}  # benchmarks/jsb's prv
BPM = 120  # one step = one quarter = 0.5 s: 2 prv steps per second
SEQ_LEN = 64  # test chorale 1 (61 steps) fits one window, test chorale 0 (84) does not


def chorales() -> dict[str, list[list[list[int]]]]:
    """Etude split -> the slice's chorales (lists of steps of MIDI pitches), file order."""
    data = json.loads(SLICE.read_text(encoding="utf-8"))
    return {OFFICIAL_SPLITS[key]: pieces for key, pieces in data.items()}


def jsb_store(folder: Path, *, tie: bool = True, **grid: int) -> StoreData:
    """A prv store encoded from the slice's chorales written as MIDI (as fetch@jsb does)."""
    splits: dict[str, list[tuple[Path, str]]] = {}
    for split, pieces in chorales().items():
        (folder / split).mkdir(parents=True, exist_ok=True)
        for i, steps in enumerate(pieces):
            path = folder / split / f"chorale_{i:03d}.mid"
            write_midi(steps, path, BPM, tie=tie)
            splits.setdefault(split, []).append((path, "Bach"))
    return encoded_store("prv", splits, **{**GRID, **grid})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> StoreData:
    return jsb_store(tmp_path_factory.mktemp("jsb"))


def expected_rolls(split: str) -> list[np.ndarray]:
    return [roll_from_steps(steps) for steps in chorales()[split]]


def tiny(name: str, store: StoreData, **changes: object) -> torch.nn.Module:
    """A small random biaxial or PopH (seeded), prepared on `store`, in eval mode."""
    kw: dict[str, object] = dict(
        time_hidden=16,
        note_hidden=16,
        style_dim=4,
        neighbour_window=3,
        vicinity_filters=4,
        vicinity_kernel=6,
        seq_len=SEQ_LEN,
        dropout=0.0,
        style_dropout=0.0,
        styles=(),
        beat_period=3,  # 64 mod 3 != 0: a window scored from the wrong start differs
    )
    if name == "poph":
        kw["attention_heads"] = 2
    config = prepare(store, model_config(name, **{**kw, **changes}))
    torch.manual_seed(7)
    model = base.get(name).model_cls(config)
    with torch.no_grad():  # spread the play logits: a random init sits near the bias -2
        model.head.weight.mul_(8.0)
    return model.eval()


# --------------------------------------------------------------------------------------
# (a) the frames are the paper's


@pytest.mark.parametrize("tie", [True, False])
def test_piece_rolls_are_the_json_steps(tmp_path: Path, tie: bool) -> None:
    store = jsb_store(tmp_path, tie=tie)
    for split in ("train", "validation", "test"):
        got = split_rolls(store, split)
        want = expected_rolls(split)
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g.shape == w.shape, f"{split} chorale {i}: {g.shape} != {w.shape}"
            np.testing.assert_array_equal(g, w, err_msg=f"{split} chorale {i} (tie={tie})")
    assert sum(len(r) for r in split_rolls(store, "test")) == 84 + 61


def test_piece_rolls_refuse_a_pitch_off_the_piano(store: StoreData) -> None:
    from pipeline.modeling.prv import split_pieces

    pieces = split_pieces(store, "test", GRID["n_pitches"])
    with pytest.raises(ValueError, match="MIDI .* is outside the 88 keys"):
        piece_rolls(pieces, min_pitch=90)  # pitch index 53 would be MIDI 143


# --------------------------------------------------------------------------------------
# (b) windowed = evaluate's number; whole = a causal pass over the piece


@pytest.mark.parametrize("name", ["biaxial", "poph"])
def test_windowed_frame_nll_is_n_pitches_times_evaluate_play(store: StoreData, name: str) -> None:
    model = tiny(name, store)
    scored = play_logits(model, store, "test")
    windowed = frame_nll(scored.windowed, scored.rolls, min_pitch=scored.min_pitch, logits=True)
    loader = DataLoader(make_dataset(store, model.config, "test"), batch_size=1)
    play = evaluate_loader(model, loader, None, torch.device("cpu"), 0)["play"]
    assert windowed == pytest.approx(GRID["n_pitches"] * play, rel=1e-5)
    assert 1.0 < windowed < 100.0  # a real, finite score of an untrained model

    # the benchmark's own entry point gives the same numbers
    params = FramesParams(split="test", token_stride=1, device="cpu", num_threads=0)
    result = score_model(base.get(name), model, store, params)
    assert result["frame_nll_windowed"] == pytest.approx(windowed, rel=1e-12)
    whole = frame_nll(scored.whole, scored.rolls, min_pitch=scored.min_pitch, logits=True)
    assert result["frame_nll"] == pytest.approx(whole, rel=1e-12)
    assert (result["frames"], result["pieces"], result["bound"]) == (145, 2, False)
    assert result["note_unigram"] == pytest.approx(
        note_unigram_baseline(expected_rolls("train"), expected_rolls("test")), rel=1e-12
    )


@pytest.mark.parametrize("name", ["biaxial", "poph"])
def test_whole_equals_windowed_only_within_one_window(store: StoreData, name: str) -> None:
    model = tiny(name, store)
    scored = play_logits(model, store, "test")
    n_steps = {pid: len(w) for pid, w in zip(scored.piece_ids, scored.whole, strict=True)}
    assert n_steps == {"test:chorale_000.mid": 84, "test:chorale_001.mid": 61}
    for pid, whole, windowed in zip(scored.piece_ids, scored.whole, scored.windowed, strict=True):
        assert whole.shape == windowed.shape == (n_steps[pid], GRID["n_pitches"])
        # the first window is the same pass
        np.testing.assert_allclose(whole[:SEQ_LEN], windowed[:SEQ_LEN], rtol=1e-4, atol=1e-4)
        if n_steps[pid] > SEQ_LEN:  # the second window restarts without context
            assert np.abs(whole[SEQ_LEN:] - windowed[SEQ_LEN:]).max() > 1e-2


@pytest.mark.parametrize("name", ["biaxial", "poph"])
def test_whole_piece_logits_are_causal(store: StoreData, name: str) -> None:
    """The first k steps' logits do not change when the piece is cut after step k."""
    model = tiny(name, store)
    whole = play_logits(model, store, "test")
    rows = store.rows["test"]
    k = 50  # both test chorales sound at step 49, so the cut pieces last exactly 50 steps
    cut = dataclasses.replace(
        store, rows={**store.rows, "test": rows[rows["step"] < k].reset_index(drop=True)}
    )
    short = play_logits(model, cut, "test")
    assert short.piece_ids == whole.piece_ids
    for i, (w, s) in enumerate(zip(whole.whole, short.whole, strict=True)):
        assert s.shape == (k, GRID["n_pitches"])
        np.testing.assert_allclose(w[:k], s, rtol=1e-4, atol=1e-4, err_msg=f"piece {i}")


# --------------------------------------------------------------------------------------
# sliding windows (frames.window): each step scored with at least half a window of context


@pytest.mark.parametrize("window", [2, 3, 16, 64])
@pytest.mark.parametrize("n", [1, 5, 63, 64, 65, 84, 200, 1001])
def test_sliding_windows_score_every_step_once(n: int, window: int) -> None:
    spans = sliding_starts(n, window)
    kept = [t for _, a, b in spans for t in range(a, b)]
    assert kept == list(range(n))  # every step once, in order
    for start, a, b in spans:
        assert start <= a < b <= start + window  # inside its window
        assert start == 0 or a - start >= window // 2  # at least half a window before it


def test_a_sliding_window_needs_two_steps() -> None:
    with pytest.raises(ValueError, match="at least 2 steps"):
        sliding_starts(10, 1)


def test_sliding_scores_are_whole_within_a_window_and_causal(store: StoreData) -> None:
    model = tiny("biaxial", store)
    whole = play_logits(model, store, "test")
    assert whole.sliding == [] and whole.scored is whole.whole
    long = play_logits(model, store, "test", window=128)  # one window holds each piece
    assert long.whole == [] and long.scored is long.sliding
    for w, s in zip(whole.whole, long.sliding, strict=True):
        np.testing.assert_allclose(w, s, rtol=1e-4, atol=1e-4)
    short = play_logits(model, store, "test", window=16)
    for pid, w, s in zip(short.piece_ids, whole.whole, short.sliding, strict=True):
        assert s.shape == w.shape, pid
        np.testing.assert_allclose(w[:16], s[:16], rtol=1e-4, atol=1e-4)  # the first window
        assert np.abs(w[16:] - s[16:]).max() > 1e-2  # later steps see only their window
    rows = store.rows["test"]  # causal: cutting the pieces after step 50 changes no step before
    cut = dataclasses.replace(
        store, rows={**store.rows, "test": rows[rows["step"] < 50].reset_index(drop=True)}
    )
    for s, c in zip(short.sliding, play_logits(model, cut, "test", window=16).sliding, strict=True):
        np.testing.assert_allclose(s[:50], c, rtol=1e-4, atol=1e-4)


def test_frames_window_is_per_model(store: StoreData) -> None:
    model = tiny("biaxial", store)
    scored = play_logits(model, store, "test", window=16)
    kw = {"min_pitch": scored.min_pitch, "logits": True}
    params = FramesParams(split="test", token_stride=1, device="cpu", num_threads=0)
    result = score_model(
        base.get("biaxial"), model, store, dataclasses.replace(params, window={"biaxial": 16})
    )
    assert result["window"] == 16 and "sliding windows of 16 steps" in result["method"]
    assert result["frame_nll"] == pytest.approx(frame_nll(scored.sliding, scored.rolls, **kw))
    other = score_model(
        base.get("biaxial"), model, store, dataclasses.replace(params, window={"poph": 16})
    )
    assert other["window"] == 0 and "scored whole" in other["method"]
    assert other["frame_nll"] != pytest.approx(result["frame_nll"])
    with pytest.raises(FrameError, match="frames.window.transformer: events models"):
        score_model(
            base.get("transformer"),
            None,
            store,
            dataclasses.replace(params, window={"transformer": 64}),
        )


@pytest.mark.parametrize("steps", [1, 0, True, 2.5])
def test_a_bad_frames_window_is_refused_naming_it(steps: object) -> None:
    from pipeline.core.params import ParamsError, from_mapping

    raw = {"split": "test", "token_stride": 1, "device": "cpu", "num_threads": 0}
    with pytest.raises(ParamsError, match="window"):
        from_mapping({**raw, "window": {"biaxial": steps}}, FramesParams, "frames")
    assert from_mapping(raw, FramesParams, "frames").window == {}  # optional


# --------------------------------------------------------------------------------------
# (c) a store of another pitch window


def test_store_with_another_pitch_window_is_refused(store: StoreData, tmp_path: Path) -> None:
    model = tiny("biaxial", store)
    other = jsb_store(tmp_path, min_pitch=36, n_pitches=61)  # also covers 43-96
    with pytest.raises(ValueError, match=r"MIDI 36 \+ 61 pitches, the model 43 \+ 54"):
        play_logits(model, other, "test")
    params = FramesParams(split="test", token_stride=1, device="cpu", num_threads=0)
    with pytest.raises(FrameError, match="not the store it was trained on"):
        score_model(base.get("biaxial"), model, other, params)


def test_a_missing_split_is_named(store: StoreData) -> None:
    model = tiny("biaxial", store)
    empty = dataclasses.replace(store, rows={k: v for k, v in store.rows.items() if k != "test"})
    with pytest.raises(KeyError, match="no 'test' split"):
        play_logits(model, empty, "test")
