"""Train-time augmentation of the piano-roll and tuples windows (`train.augment`).

Exact transpositions and stretches on literal inputs, validity of every augmented
window of real stores, determinism per (seed, epoch, index) and across a resume, no
change at all when it is off, and `fit` training with it for the autoencoder, the
VAE and the rnn.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fixture_stores import SMALL, SMALL_2, SMALL_3, encoded_store, model_config

from pipeline.modeling import base
from pipeline.modeling.base import Augment, StoreData, TrainParams
from pipeline.modeling.checkpoint import load_checkpoint
from pipeline.modeling.fit import fit
from pipeline.modeling.pianoroll import (
    PianorollWindows,
    SparsePieces,
    augmented_window,
    dense_window,
    split_pieces,
    store_pitch_range,
)
from pipeline.modeling.tuples import N_PITCHES, TupleWindows, features, piece_arrays

OFF = Augment(transpositions=(0,), stretches=(1.0,))
RECIPE = Augment(transpositions=(-3, -2, -1, 0, 1, 2, 3), stretches=(0.95, 0.975, 1.0, 1.025, 1.05))
# a wider draw than the recipe, so the edges (dropped cells, clipped shifts) are reached
WIDE = Augment(transpositions=(-12, -5, 0, 7, 12), stretches=(0.5, 0.8, 1.0, 1.3, 2.0))


def always(semitones: int, factor: float) -> Augment:
    """An augmentation whose every draw is (semitones, factor)."""
    return Augment(transpositions=(semitones,), stretches=(factor,))


_STORES: dict[str, StoreData] = {}


def store(representation: str) -> StoreData:
    """Real fixture store: train/validation/test one real piece each (built once)."""
    if representation not in _STORES:
        changes = {"max_frames_per_piece": 300} if representation == "pianoroll" else {}
        splits = {"train": [SMALL], "validation": [SMALL_2], "test": [SMALL_3]}
        _STORES[representation] = encoded_store(representation, splits, **changes)
    return _STORES[representation]


def items(data: Any, epoch: int) -> list[dict[str, torch.Tensor]]:
    data.set_epoch(epoch)
    return [data[i] for i in range(len(data))]


def same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    """Bit-identical items (values and dtypes)."""
    return len(a) == len(b) and all(
        x.keys() == y.keys()
        and all(torch.equal(x[k], y[k]) and x[k].dtype == y[k].dtype for k in x)
        for x, y in zip(a, b, strict=True)
    )


# --------------------------------------------------------------------------------------
# Piano-roll windows


def cells(roll: np.ndarray) -> set[tuple[int, int]]:
    return {(int(f), int(p)) for f, p in zip(*np.nonzero(roll), strict=True)}


def literal_piece() -> tuple[np.ndarray, np.ndarray, int]:
    """Frame-sorted cells of one piece over 6 pitches: a 2-frame run of pitch 1 at
    frames 2-3, single frames of pitches 0 and 5 at frame 0 and pitch 3 at frame 5."""
    frames = np.array([0, 0, 2, 3, 5], np.int64)
    pitches = np.array([0, 5, 1, 1, 3], np.int64)
    return frames, pitches, 6


def test_pianoroll_transposition_shifts_pitches_and_drops_cells_outside() -> None:
    frames, pitches, n = literal_piece()
    up, mask = augmented_window(frames, pitches, n, 0, 8, 6, 2, 1.0)
    assert cells(up) == {(0, 2), (2, 3), (3, 3), (5, 5)}  # pitch 5 + 2 is outside: dropped
    down, _ = augmented_window(frames, pitches, n, 0, 8, 6, -1, 1.0)
    assert cells(down) == {(0, 4), (2, 0), (3, 0), (5, 2)}  # pitch 0 - 1 is outside
    assert mask.tolist() == [1, 1, 1, 1, 1, 1, 0, 0]  # unchanged: 6 frames, window of 8


def test_pianoroll_stretch_scales_frames_and_keeps_every_run() -> None:
    frames, pitches, n = literal_piece()
    slow, mask = augmented_window(frames, pitches, n, 0, 8, 6, 0, 2.0)
    # every source frame f covers output frames 2f, 2f + 1; the window shows 4 source frames
    assert cells(slow) == {(0, 0), (1, 0), (0, 5), (1, 5), (4, 1), (5, 1), (6, 1), (7, 1)}
    assert mask.tolist() == [1] * 8
    fast, mask = augmented_window(frames, pitches, n, 0, 8, 6, 0, 0.5)
    # frame f starts at floor(f / 2 + 0.5) and keeps at least one frame
    assert cells(fast) == {(0, 0), (0, 5), (1, 1), (3, 3)}
    assert mask.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # the piece's 6 frames now end at 4
    # from an offset: source frames 2.. (the run of pitch 1, then pitch 3)
    late, mask = augmented_window(frames, pitches, n, 2, 4, 6, 1, 1.5)
    # the run at rel frames [0, 2) -> [b(0), b(2)) = [0, 3); rel frame 3 -> b(3) = 5: outside
    assert cells(late) == {(0, 2), (1, 2), (2, 2)}
    assert mask.tolist() == [1, 1, 1, 1]


def test_pianoroll_identity_draw_is_the_plain_window() -> None:
    pieces = split_pieces(store("pianoroll"), "train", *store_pitch_range(store("pianoroll"))[:2])
    frames, pitches, n = pieces.frames[0], pieces.pitches[0], int(pieces.n_frames[0])
    for start in (0, 17, n - 40, n - 1):
        plain = dense_window(frames, pitches, n, start, 32, 88)
        ident = augmented_window(frames, pitches, n, start, 32, 88, 0, 1.0)
        assert all(np.array_equal(a, b) for a, b in zip(plain, ident, strict=True))
        # a pure transposition is the plain window moved along the pitch axis
        up = augmented_window(frames, pitches, n, start, 32, 88, 5, 1.0)[0]
        assert np.array_equal(up[:, 5:], plain[0][:, :-5]) and not up[:, :5].any()


def pianoroll_train(seed: int = 7, window: int = 32) -> PianorollWindows:
    min_pitch, n_pitches, _ = store_pitch_range(store("pianoroll"))
    pieces = split_pieces(store("pianoroll"), "train", min_pitch, n_pitches)
    return PianorollWindows(pieces, window, n_pitches, random_offsets=True, seed=seed)


@pytest.mark.parametrize("aug", [RECIPE, WIDE], ids=["recipe", "wide"])
def test_every_augmented_pianoroll_window_is_valid(aug: Augment) -> None:
    data = pianoroll_train()
    plain = pianoroll_train()
    data.set_augment(aug)
    n_pitches = data.n_pitches
    drawn = set()
    for epoch in range(4):
        for i, item in enumerate(items(data, epoch)):
            roll, mask = item["roll"].numpy(), item["mask"].numpy()
            assert roll.shape == (32, n_pitches) and mask.shape == (32,)
            assert roll.dtype == np.float32 and set(np.unique(roll)) <= {0.0, 1.0}  # binary
            valid = int(mask.sum())
            assert mask.tolist() == [1.0] * valid + [0.0] * (32 - valid)  # a prefix
            assert not roll[valid:].any()  # nothing past the stretched piece
            semitones, factor = aug.draw(data.index.seed, epoch, i)
            drawn.add((semitones, factor))
            if factor == 1.0:  # pure transposition: the plain window, moved
                plain.set_epoch(epoch)
                ref = np.zeros_like(roll)
                src = plain[i]["roll"].numpy()
                lo, hi = max(0, -semitones), min(n_pitches, n_pitches - semitones)
                ref[:, lo + semitones : hi + semitones] = src[:, lo:hi]
                assert np.array_equal(roll, ref)
    assert len(drawn) > len(aug.transpositions)  # several transpositions and stretches met


def test_pianoroll_augmentation_is_a_pure_function_of_seed_epoch_index() -> None:
    a, b = pianoroll_train(seed=7), pianoroll_train(seed=7)
    a.set_augment(RECIPE)
    b.set_augment(RECIPE)
    first = [items(a, e) for e in range(3)]
    # b is a resumed run: it starts at epoch 2 without having seen epochs 0-1
    assert same(items(b, 2), first[2])
    b_again = items(b, 0)
    assert same(b_again, first[0])
    assert not same(first[0], first[1])  # epochs draw differently
    other = pianoroll_train(seed=8)
    other.set_augment(RECIPE)
    assert not same(items(other, 0), first[0])
    # each item is its draw applied at its offset
    a.set_epoch(1)
    for i in range(len(a)):
        piece, start = a.index.locate(i)
        roll, mask = augmented_window(
            a.pieces.frames[piece],
            a.pieces.pitches[piece],
            a.index.lengths[piece],
            start,
            32,
            a.n_pitches,
            *RECIPE.draw(7, 1, i),
        )
        assert np.array_equal(a[i]["roll"].numpy(), roll)
        assert np.array_equal(a[i]["mask"].numpy(), mask)


def test_pianoroll_augmentation_off_is_bit_identical() -> None:
    never, off = pianoroll_train(), pianoroll_train()
    off.set_augment(OFF)
    for epoch in range(3):
        assert same(items(off, epoch), items(never, epoch))
    off.set_augment(None)
    assert same(items(off, 0), items(never, 0))


def test_pianoroll_make_dataset_seeds_draws_from_torch() -> None:
    from pipeline.modeling.pianoroll import make_dataset, prepare

    config = prepare(store("pianoroll"), model_config("autoencoder", window_frames=16))
    torch.manual_seed(3)
    a = make_dataset(store("pianoroll"), config, "train")
    torch.manual_seed(3)
    b = make_dataset(store("pianoroll"), config, "train")
    a.set_augment(RECIPE)
    b.set_augment(RECIPE)
    assert same(items(a, 1), items(b, 1))


def test_empty_pianoroll_piece_window_stays_empty() -> None:
    pieces = SparsePieces(
        ["p"], [np.array([3], np.int64)], [np.array([2], np.int64)], np.array([4])
    )
    data = PianorollWindows(pieces, 8, 4, random_offsets=True, seed=0)
    data.set_augment(always(-3, 0.5))  # pitch 2 - 3 < 0: the only cell is dropped
    # the mask still covers the piece: its last frame 3 ends at max(b(4), b(3) + 1) = 3
    assert not data[0]["roll"].any() and data[0]["mask"].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


# --------------------------------------------------------------------------------------
# Tuple windows


def literal_notes() -> dict[str, np.ndarray]:
    return {
        "pitch": np.array([60, 62, 64, 65, 67], np.int64),
        "step": np.array([0.0, 0.5, 0.5, 0.25, 0.25], np.float32),
        "duration": np.array([0.5, 0.5, 0.25, 0.25, 1.0], np.float32),
    }


def scaled(piece: dict[str, np.ndarray], semitones: int, factor: float) -> dict[str, np.ndarray]:
    return {
        "pitch": piece["pitch"] + semitones,
        "step": (piece["step"] * factor).astype(np.float32),
        "duration": (piece["duration"] * factor).astype(np.float32),
    }


@pytest.mark.parametrize(("semitones", "factor"), [(2, 1.0), (0, 2.0), (-3, 0.5), (5, 1.25)])
def test_tuples_augmented_window_is_the_window_of_the_augmented_piece(
    semitones: int, factor: float
) -> None:
    data = TupleWindows([literal_notes()], seq_len=3, stride=1)
    data.set_augment(always(semitones, factor))
    expected = TupleWindows([scaled(literal_notes(), semitones, factor)], seq_len=3, stride=1)
    assert same(items(data, 0), items(expected, 0))


def test_tuples_literal_values() -> None:
    data = TupleWindows([literal_notes()], seq_len=3, stride=1)
    data.set_augment(always(2, 2.0))
    item = data[1]  # inputs notes 0-2, targets notes 1-3
    assert item["pitch"].tolist() == [64, 66, 67]
    assert item["step"].tolist() == [1.0, 1.0, 0.5]
    assert item["duration"].tolist() == [1.0, 0.5, 0.5]
    assert (item["inputs"][:, 0] * N_PITCHES).tolist() == [62, 64, 66]
    assert item["inputs"][:, 1].tolist() == [0.0, 1.0, 1.0]
    assert data[0]["inputs"][0].tolist() == [0.0, 0.0, 0.0]  # the start tuple stays


def test_tuples_shift_is_limited_to_keep_the_window_inside_0_127() -> None:
    piece = {
        "pitch": np.array([60, 61, 126, 62, 63], np.int64),
        "step": np.full(5, 0.5, np.float32),
        "duration": np.full(5, 0.5, np.float32),
    }
    data = TupleWindows([piece], seq_len=2, stride=1)
    data.set_augment(always(3, 1.0))
    # window 0 reads notes 0-1: +3; windows 1-3 read note 2 (126): only +1 fits
    assert data[0]["pitch"].tolist() == [63, 64]
    assert data[1]["pitch"].tolist() == [62, 127]
    assert data[3]["pitch"].tolist() == [63, 64] and data[3]["inputs"][0, 0] * N_PITCHES == 127
    low = {**piece, "pitch": np.array([1, 2, 40, 41, 42], np.int64)}
    data = TupleWindows([low], seq_len=2, stride=1)
    data.set_augment(always(-3, 1.0))
    assert data[0]["pitch"].tolist() == [0, 1]  # -1 keeps pitch 1 at 0
    assert data[3]["pitch"].tolist() == [38, 39]  # notes 2-4: the whole -3


def tuples_train(seed: int = 7, seq_len: int = 8) -> TupleWindows:
    return TupleWindows(piece_arrays(store("tuples"), "train"), seq_len, 1, seed=seed)


@pytest.mark.parametrize("aug", [RECIPE, WIDE], ids=["recipe", "wide"])
def test_every_augmented_tuple_window_is_valid(aug: Augment) -> None:
    data, plain = tuples_train(), tuples_train()
    data.set_augment(aug)
    for epoch in range(2):
        plain_items = items(plain, epoch)
        for i, item in enumerate(items(data, epoch)):
            semitones, factor = aug.draw(data.seed, epoch, i)
            ref = plain_items[i]
            valid = item["mask"] > 0
            assert torch.equal(item["mask"], ref["mask"])
            pitch = item["pitch"][valid]
            assert int(pitch.min()) >= 0 and int(pitch.max()) < N_PITCHES
            assert bool((item["step"][valid] >= 0).all())
            assert bool((item["duration"][valid] > 0).all())
            assert not item["pitch"][~valid].any() and not item["step"][~valid].any()
            # one shift for the whole window, never further than drawn
            shift = (pitch - ref["pitch"][valid]).unique()
            assert len(shift) == 1 and abs(int(shift)) <= abs(semitones)
            assert int(shift) * semitones >= 0
            torch.testing.assert_close(item["step"], ref["step"] * factor, rtol=1e-6, atol=0)
            torch.testing.assert_close(item["duration"], ref["duration"] * factor)
            # inputs are the previous note of each target, in the same augmented units
            n = int(valid.sum())
            prev = features(
                item["pitch"][: n - 1].numpy(),
                item["step"][: n - 1].numpy(),
                item["duration"][: n - 1].numpy(),
            )
            assert np.array_equal(item["inputs"][1:n].numpy(), prev)


def test_tuples_augmentation_is_a_pure_function_of_seed_epoch_index() -> None:
    a, b = tuples_train(), tuples_train()
    a.set_augment(RECIPE)
    b.set_augment(RECIPE)
    first = [items(a, e) for e in range(3)]
    assert same(items(b, 2), first[2])  # a resumed run meets epoch 2 first
    assert same(items(b, 0), first[0])
    assert not same(first[0], first[1])
    other = tuples_train(seed=8)
    other.set_augment(RECIPE)
    assert not same(items(other, 0), first[0])


def test_tuples_augmentation_off_is_bit_identical() -> None:
    never, off = tuples_train(), tuples_train()
    off.set_augment(OFF)
    for epoch in range(2):
        assert same(items(off, epoch), items(never, epoch))


def test_tuples_make_dataset_seeds_train_draws_from_torch() -> None:
    from pipeline.modeling.tuples import make_dataset

    config = model_config("rnn", seq_len=8)
    torch.manual_seed(3)
    a = make_dataset(store("tuples"), config, "train")
    torch.manual_seed(3)
    b = make_dataset(store("tuples"), config, "train")
    torch.manual_seed(4)
    c = make_dataset(store("tuples"), config, "train")
    assert a.seed == b.seed != c.seed
    assert make_dataset(store("tuples"), config, "test").windows[1][1] == 8  # tiles


# --------------------------------------------------------------------------------------
# fit with augmentation on tiny real stores

TINY = {
    "rnn": {"seq_len": 8, "hidden_size": 16},
    "autoencoder": {"window_frames": 16, "filters": (4, 8)},
    "vae": {"window_frames": 16, "filters": (4, 8), "latent_dim": 4, "kl_anneal_steps": 2},
}


def train_params(**kw: Any) -> TrainParams:
    values = dict(
        seed=0,
        device="cpu",
        batch_size=4,
        max_steps=2,
        learning_rate=3e-3,
        warmup_steps=1,
        weight_decay=0.01,
        grad_clip=1.0,
        eval_every=2,
        eval_batches=1,
        patience=0,
        checkpoint_every=2,
        num_threads=1,
        augment=RECIPE,
        precision="fp32",
        nproc_per_node=1,
        nnodes=1,
        node_rank=0,
        rdzv_endpoint="",
        rdzv_timeout_s=60,
    )
    return TrainParams(**{**values, **kw})


def recording(spec: base.ModelSpec, seen: list[Any]) -> base.ModelSpec:
    """`spec`, keeping every dataset it makes in `seen`."""

    def make(store: StoreData, config: Any, split: str) -> Any:
        data = spec.make_dataset(store, config, split)
        seen.append((split, data))
        return data

    return dataclasses.replace(spec, make_dataset=make)


@pytest.mark.parametrize("name", ["autoencoder", "vae", "rnn"])
def test_fit_trains_with_augmentation(tmp_path: Path, name: str) -> None:
    spec = base.get(name)
    seen: list[Any] = []
    summary = fit(
        recording(spec, seen),
        model_config(name, **TINY[name]),
        train_params(),
        store(spec.representation),
        tmp_path / "m",
        tmp_path / "live",
    )
    assert summary["steps"] == 2 and np.isfinite(summary["best_val_loss"])
    augments = {split: data.augment for split, data in seen}
    assert augments == {"train": RECIPE, "validation": None}  # validation stays as recorded


@pytest.mark.parametrize("name", ["autoencoder", "rnn"])
def test_resume_with_augmentation_equals_uninterrupted(tmp_path: Path, name: str) -> None:
    """A resumed run draws the same augmentations: its weights are bit-identical."""

    class Interrupt(Exception):
        pass

    def stop_at_5(step: int) -> None:
        if step == 5:
            raise Interrupt

    spec, config = base.get(name), model_config(name, **TINY[name])
    params = train_params(max_steps=8, eval_every=4, checkpoint_every=4, augment=WIDE)
    data = store(spec.representation)
    fit(spec, config, params, data, tmp_path / "a", tmp_path / "la")
    with pytest.raises(Interrupt):
        fit(spec, config, params, data, tmp_path / "b", tmp_path / "lb", on_step=stop_at_5)
    resumed = fit(spec, config, params, data, tmp_path / "b", tmp_path / "lb")
    assert resumed["resumed_from"] == 4
    a = load_checkpoint(tmp_path / "a" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    params = dataclasses.replace(params, augment=OFF)
    off = fit(spec, config, params, data, tmp_path / "c", tmp_path / "lc")
    assert off["steps"] == 8
    c = load_checkpoint(tmp_path / "c" / "last.pt")["state_dict"]
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the augmentation changed training
