"""The frame transformer: exact frame probabilities, causal in time and pitch, trainable,
sampled through a key/value cache that computes what training computes."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
import torch
from fixture_stores import FIXTURES, encoded_store, model_config
from torch.utils.data import DataLoader

from pipeline.modeling import base
from pipeline.modeling.base import StoreData
from pipeline.modeling.checkpoint import describe, load_model, save_checkpoint
from pipeline.modeling.prv import PLAY, REPLAY, VOLUME, make_dataset, prepare
from pipeline.modeling.prv.frame_transformer import FrameTransformer, FrameTransformerConfig
from pipeline.modeling.prv.sampling import generate_biaxial, stepwise_logits
from pipeline.modeling.sampling import SampleOptions


def tiny_config(**kw: object) -> FrameTransformerConfig:
    base_kw = dict(
        d_model=16,
        n_heads=2,
        d_ff=32,
        max_relative_position=4,
        note_hidden=16,
        style_dim=4,
        neighbour_window=3,
        seq_len=8,
        style_dropout=0.0,
        styles=("<unk>", "Bach", "Chopin"),
        min_pitch=36,
        n_pitches=12,
        steps_per_second=8.0,
    )
    return model_config("frame_transformer", **{**base_kw, **kw})


@pytest.fixture(scope="module")
def store() -> StoreData:
    """Real files: POP909 and a Bach performance (train), two small MIDI files."""
    maestro = "maestro/giantmidi_eval_MIDI-Unprocessed_09_R3_2008_01-07_ORIG_MID--AUDIO_09_R3_2008_wav--2.mid"
    splits = {
        "train": [
            (FIXTURES / "other" / "miditok_POP909_008.mid", "pop909"),
            (FIXTURES / maestro, "Bach"),
        ],
        "validation": [(FIXTURES / "other" / "symusic_1.midi", "Bach")],
        "test": [(FIXTURES / "other" / "miditoolkit_1390.mid", "Liszt")],
    }
    return encoded_store("prv", splits, max_steps_per_piece=200)


def test_registered_on_prv_extending_the_shared_trunk() -> None:
    spec = base.get("frame_transformer")
    assert spec.representation == "prv" and spec.objective.kind == "likelihood"
    assert base.network_model(spec) == "attention"
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(d_model=15, n_heads=2).validate()


def _frames_with_rule(prev: torch.Tensor, plays: tuple[int, ...]) -> torch.Tensor:
    """A step whose replay is its onsets (play, not played before) at one volume."""
    play = torch.tensor(plays, dtype=torch.float32)
    step = torch.zeros(len(plays), 3)
    step[:, PLAY] = play
    step[:, REPLAY] = play * (1 - prev[:, PLAY])
    step[:, VOLUME] = 0.7 * play
    return step


def test_frame_probabilities_sum_to_one() -> None:
    """Exact: P(frame | earlier steps) over all 2^P frames of a step sums to 1, so no
    pitch's prediction sees its own value (or a higher pitch's)."""
    torch.manual_seed(0)
    model = FrameTransformer(tiny_config(n_pitches=4, neighbour_window=1)).eval()
    history = (torch.rand(1, 3, 4, 3) < 0.5).float()
    history[..., VOLUME] *= 0.7
    total = 0.0
    for plays in itertools.product([0, 1], repeat=4):
        step = _frames_with_rule(history[0, -1], plays)
        x = torch.cat([history, step[None, None]], dim=1)  # (1, 4, P, 3)
        with torch.no_grad():
            logits = model.logits(x, torch.tensor([1]))[0, -1, :, PLAY]  # (P,)
        p = torch.sigmoid(logits)
        total += float(torch.prod(torch.where(step[:, PLAY] > 0, p, 1 - p)))
    assert total == pytest.approx(1.0, abs=1e-5)


def test_causal_in_time_and_across_pitches_within_a_step() -> None:
    torch.manual_seed(0)
    model = FrameTransformer(tiny_config()).eval()
    x = (torch.rand(1, 10, 12, 3) < 0.3).float()
    style = torch.tensor([2])
    with torch.no_grad():
        a = model.logits(x, style)
        later = x.clone()
        later[0, 6] = 1 - later[0, 6]  # step 6 is logits row 5's target, row 6's input
        b = model.logits(later, style)
        pitch = x.clone()
        pitch[0, 6, 5] = 1 - pitch[0, 6, 5]  # one pitch of step 6
        c = model.logits(pitch, style)
    torch.testing.assert_close(a[0, :5], b[0, :5])
    assert not torch.allclose(a[0, 6:], b[0, 6:])
    torch.testing.assert_close(a[0, 5, :6], c[0, 5, :6])  # the pitch itself and below
    assert not torch.allclose(a[0, 5, 6:], c[0, 5, 6:])  # higher pitches see it


def test_sampling_cache_computes_training_logits() -> None:
    """Step by step through the key/value cache (more steps than the relative window)
    equals one pass over the whole sequence."""
    torch.manual_seed(0)
    model = FrameTransformer(tiny_config(n_layers=2, beat_period=3)).eval()
    x = (torch.rand(2, 11, 12, 3) < 0.3).float()
    style = torch.tensor([1, 2])
    torch.testing.assert_close(
        stepwise_logits(model, x, style), model.logits(x, style), atol=1e-5, rtol=1e-4
    )


def test_overfits_one_batch(store: StoreData) -> None:
    torch.manual_seed(0)
    config = prepare(store, tiny_config(styles=(), n_pitches=0, d_model=32, note_hidden=32))
    model = FrameTransformer(config)
    batch = next(iter(DataLoader(make_dataset(store, config, "train"), batch_size=2)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.eval()
    with torch.no_grad():
        first = model(batch)
    model.train()
    for _ in range(150):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        last = model(batch)
    assert float(last["play"]) < 0.1 * float(first["play"])
    assert float(last["nll"]) == float(last["play"])
    assert float(last["n_units"]) == float(batch["mask"].sum()) * config.n_pitches


def test_generates_from_a_checkpoint_with_a_primer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = tiny_config(n_pitches=24)
    model = FrameTransformer(config)
    payload = {
        "name": "frame_transformer",
        "representation": "prv",
        "config": describe(config),
        "checkpoint_version": base.CHECKPOINT_VERSION,
        "step": 0,
        "state_dict": model.state_dict(),
    }
    loaded, _, _ = load_model(save_checkpoint(payload, tmp_path / "model.pt"), "frame_transformer")
    primer = pd.DataFrame(
        {"piece_id": "p", "step": [0, 0, 1], "pitch": [3, 7, 3], "replay": [True, True, False],
         "volume": [0.7, 0.7, 0.7]}
    )  # fmt: skip
    options = SampleOptions(length=12, style="Chopin", primer=primer)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    rows = generate_biaxial(loaded, 2, options, generator=g1)
    pd.testing.assert_frame_equal(rows[1], generate_biaxial(model.eval(), 2, options, g2)[1])
    for r in rows:
        assert r["step"].max() < 2 + 12 and r["pitch"].between(0, 23).all()
        assert set(r.loc[r["step"] == 0, "pitch"]) == {3, 7}  # the primer is kept


def test_one_call_continues_each_of_many_primers_in_order() -> None:
    """Evaluation primes every clip in one call (`primes_each_sample`): sample i keeps
    primer i, also past ten primers (the ids `clips.primers` writes sort in order)."""
    torch.manual_seed(0)
    model = FrameTransformer(tiny_config(n_pitches=24)).eval()
    primer = pd.concat(
        pd.DataFrame(
            {
                "piece_id": f"primer-{i:06d}",
                "step": [0, 1],
                "pitch": [i, i],
                "replay": [True, False],
                "volume": [0.7, 0.7],
            }
        )  # fmt: skip
        for i in range(12)
    )
    assert generate_biaxial.primes_each_sample
    rows = generate_biaxial(model, 12, SampleOptions(length=3, primer=primer))
    for i, r in enumerate(rows):
        assert r.loc[r["step"] < 2, "pitch"].tolist() == [i, i]
