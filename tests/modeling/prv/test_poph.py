"""PopH: harmony loss, octave convolution, causal attention, training and sampling."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from fixture_stores import FIXTURES, encoded_store, model_config, shipped
from torch.utils.data import DataLoader

from pipeline.core.params import ParamsError, from_mapping
from pipeline.modeling import base, prv
from pipeline.modeling.base import StoreData
from pipeline.modeling.prv import sampling as prv_sampling
from pipeline.modeling.prv.biaxial import BiaxialConfig
from pipeline.modeling.prv.poph import (
    OctaveConv,
    PopH,
    PopHConfig,
    TimeAttention,
    disharmony_matrix,
    harmony_loss,
)
from pipeline.modeling.sampling import SampleOptions

FILES = {
    "train": (FIXTURES / "other" / "miditok_POP909_008.mid", "pop909"),
    "validation": (FIXTURES / "other" / "symusic_1.midi", "other"),
    "test": (FIXTURES / "other" / "miditoolkit_1390.mid", "other"),
}
E = math.e
C_MAJOR = [0, 2, 4, 5, 7, 9, 11]
G_MAJOR = [7, 9, 11, 0, 2, 4, 6]


@pytest.fixture(scope="module")
def store() -> StoreData:
    splits = {split: [entry] for split, entry in FILES.items()}
    return encoded_store("prv", splits, max_steps_per_piece=160)


def tiny_config(**kw: object) -> PopHConfig:
    base_kw = dict(
        time_hidden=16,
        note_hidden=16,
        style_dim=4,
        neighbour_window=3,
        seq_len=8,
        style_dropout=0.0,
        attention_heads=2,
        styles=("<unk>", "pop", "rock"),
        min_pitch=36,
        n_pitches=24,
        steps_per_second=8.0,
    )
    return model_config("poph", **{**base_kw, **kw})


def pitch_class_probs(tones: list[int], octaves: int = 1) -> torch.Tensor:
    """(1, 1, 12 * octaves) play probabilities from C: 1 on `tones`, 0 elsewhere."""
    probs = torch.zeros(1, 1, 12 * octaves)
    for octave in range(octaves):
        probs[0, 0, [12 * octave + t for t in tones]] = 1.0
    return probs


# --------------------------------------------------------------------------------------
# harmony loss


def test_disharmony_matrix_rows() -> None:
    c = disharmony_matrix("c")
    assert c.tolist() == [
        [0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0],  # C major: C# D# F# G# A# are outside
        [0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1],  # C minor: C# E F# A B are outside
    ]
    every = disharmony_matrix("all")
    assert every.shape == (24, 12)
    assert every[2 * 7].tolist() == [0, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0]  # G major: F outside
    assert every[2 * 9 + 1].tolist() == c[0].tolist()  # A minor = C major's tones
    assert (every.sum(dim=1) == 5).all()
    with pytest.raises(ValueError, match="harmony_keys"):
        disharmony_matrix("dorian")


def test_harmony_loss_literal_values() -> None:
    pc = torch.arange(24) % 12
    mask = torch.ones(1, 1)
    c = disharmony_matrix("c")
    # one octave of the C major scale: softmax gives e / (7e + 5) to each scale tone
    got = harmony_loss(pitch_class_probs(C_MAJOR), pc[:12], c, mask)
    assert float(got) == pytest.approx(5 / (7 * E + 5))  # major row (~0.2081) < minor row
    # two octaves fold to 2 per scale tone
    got = harmony_loss(pitch_class_probs(C_MAJOR, 2), pc, c, mask)
    assert float(got) == pytest.approx(5 / (7 * E**2 + 5))
    # uniform: each row sees 5 of 12 equal weights
    got = harmony_loss(torch.full((1, 1, 12), 0.3), pc[:12], c, mask)
    assert float(got) == pytest.approx(5 / 12)
    # G major under PopH's C rows: F# (weight e) and C# D# G# A# (weight 1) are outside
    g_major = pitch_class_probs(G_MAJOR)
    assert float(harmony_loss(g_major, pc[:12], c, mask)) == pytest.approx((4 + E) / (7 * E + 5))
    # the key-agnostic matrix finds G major itself
    every = disharmony_matrix("all")
    assert float(harmony_loss(g_major, pc[:12], every, mask)) == pytest.approx(5 / (7 * E + 5))


def test_harmony_loss_masks_steps_and_follows_min_pitch() -> None:
    c = disharmony_matrix("c")
    probs = torch.cat([pitch_class_probs(C_MAJOR), torch.full((1, 1, 12), 0.3)], dim=1)
    pc = torch.arange(12) % 12
    both = harmony_loss(probs, pc, c, torch.ones(1, 2))
    assert float(both) == pytest.approx((5 / (7 * E + 5) + 5 / 12) / 2)
    first = harmony_loss(probs, pc, c, torch.tensor([[1.0, 0.0]]))
    assert float(first) == pytest.approx(5 / (7 * E + 5))
    # the model folds with its own min_pitch: index 0 is pitch class (min_pitch % 12)
    model = PopH(tiny_config(min_pitch=31, n_pitches=12))  # G1
    assert model.pitch_class.tolist() == [7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5, 6]


def test_harmony_term_added_with_its_weight(store: StoreData) -> None:
    config = prv.prepare(store, tiny_config(styles=(), n_pitches=0, aux_loss_cells="played"))
    batch = next(iter(DataLoader(prv.make_dataset(store, config, "validation"), batch_size=2)))
    outs = []
    for weight in (0.0, 2.0):
        torch.manual_seed(0)
        model = PopH(dataclasses.replace(config, harmony_weight=weight)).eval()
        with torch.no_grad():
            outs.append(model(batch))
    unweighted, weighted = outs
    three = float(unweighted["play"] + unweighted["replay"] + unweighted["dynamics"])
    assert float(unweighted["loss"]) == pytest.approx(three, rel=1e-5)
    assert 0 < float(weighted["harmony"]) < 5 / 12 + 1e-6  # never worse than uniform
    assert float(weighted["harmony"]) == pytest.approx(float(unweighted["harmony"]))
    assert float(weighted["loss"]) == pytest.approx(three + 2.0 * float(weighted["harmony"]))


def test_harmony_silence_reward_and_neutral() -> None:
    matrix, pcs, mask = disharmony_matrix("all"), torch.arange(24) % 12, torch.ones(1, 1)
    silent = torch.zeros(1, 1, 24)
    # the seed's softmax form: silence scores 5/12, as bad as all twelve pitch classes
    assert float(harmony_loss(silent, pcs, matrix, mask)) == pytest.approx(5 / 12)
    assert float(harmony_loss(torch.ones(1, 1, 24), pcs, matrix, mask)) == pytest.approx(5 / 12)
    triad = pitch_class_probs([0, 4, 7], octaves=2)
    assert float(harmony_loss(triad, pcs, matrix, mask)) < 5 / 12  # sound in scale pays
    # neutral: silence 0, scale-free (half as loud scores the same), off-scale share counts
    assert float(harmony_loss(silent, pcs, matrix, mask, "neutral")) == 0.0
    assert float(harmony_loss(triad, pcs, matrix, mask, "neutral")) == pytest.approx(0.0)
    cluster = pitch_class_probs([0, 1, 2, 3], octaves=2)  # C C# D D#: best key has 1 of 4 out
    full = float(harmony_loss(cluster, pcs, matrix, mask, "neutral"))
    assert full == pytest.approx(1 / 4)
    assert float(harmony_loss(0.5 * cluster, pcs, matrix, mask, "neutral")) == pytest.approx(full)
    with pytest.raises(ValueError, match="harmony_silence"):
        harmony_loss(silent, pcs, matrix, mask, "quiet")


def test_forward_reports_play_rate_bias(store: StoreData) -> None:
    config = prv.prepare(store, tiny_config(styles=(), n_pitches=0))
    batch = next(iter(DataLoader(prv.make_dataset(store, config, "validation"), batch_size=2)))
    model = PopH(config).eval()
    with torch.no_grad():
        out = model(batch)
        probs = torch.sigmoid(model.logits(batch["x"], batch["style"], batch["start"]))
    cells = batch["mask"][..., None].expand_as(probs[..., 0])
    predicted = float((probs[..., 0] * cells).sum() / cells.sum())
    true = float((batch["x"][:, 1:, :, 0] * cells).sum() / cells.sum())
    assert float(out["play_rate_bias"]) == pytest.approx(predicted - true, abs=1e-6)


# --------------------------------------------------------------------------------------
# architecture


def test_octave_conv_sees_octave_related_pitches_only() -> None:
    torch.manual_seed(0)
    conv = OctaveConv(4, 4, reach=1, dropout=0.0)
    h = torch.randn(1, 48, 1, 4, requires_grad=True)
    (conv(h)[0, 20] * torch.randn(1, 4)).sum().backward()  # (LayerNorm rows sum to 0)
    touched = (h.grad[0, :, 0].abs().sum(dim=-1) > 0).nonzero().flatten().tolist()
    assert touched == [8, 20, 32]  # G#: one octave down, itself, one octave up
    projection = OctaveConv(5, 4, reach=1, dropout=0.0)  # the seed order: on input features
    assert projection(torch.randn(2, 48, 3, 5)).shape == (2, 48, 3, 4)


def test_time_attention_is_causal() -> None:
    torch.manual_seed(0)
    attention = TimeAttention(dim=8, heads=2, dropout=0.0, span=6).eval()
    h = torch.randn(3, 6, 8)
    changed = h.clone()
    changed[:, 4:] = torch.randn(3, 2, 8)  # change the future
    a, b = attention(h), attention(changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_time_attention_keeps_its_span_on_longer_inputs() -> None:
    # trained on 4-step windows: on 10 steps, step t sees t-3..t only, so its output
    # equals that of the 4-step window ending at t (what generation and training see)
    torch.manual_seed(0)
    attention = TimeAttention(dim=8, heads=2, dropout=0.0, span=4).eval()
    h = torch.randn(2, 10, 8)
    whole = attention(h)
    for t in range(3, 10):
        window = attention(h[:, t - 3 : t + 1])
        torch.testing.assert_close(whole[:, t], window[:, -1])
    changed = h.clone()
    changed[:, :2] = torch.randn(2, 2, 8)  # steps 0-1 are outside step 5's span
    torch.testing.assert_close(attention(changed)[:, 5:], whole[:, 5:])
    assert not torch.allclose(attention(changed)[:, :2], whole[:, :2])


def test_config_section_and_validation() -> None:
    section = shipped("models.poph")
    section.pop("representation"), section.pop("network"), section.pop("train")
    raw = {**section, "time_hidden": 32, "attention_heads": 4, "harmony_keys": "c"}
    config = from_mapping(raw, PopHConfig, "models.poph")
    assert isinstance(config, BiaxialConfig)  # the biaxial fields, plus PopH's
    assert (config.note_hidden, config.harmony_keys) == (model_config("biaxial").note_hidden, "c")
    with pytest.raises(ParamsError, match="multiple of attention_heads"):
        from_mapping({**raw, "time_hidden": 30, "attention_heads": 4}, PopHConfig, "models.poph")
    with pytest.raises(ParamsError, match="harmony_keys"):
        from_mapping({**raw, "harmony_keys": "major"}, PopHConfig, "models.poph")


def test_registered_and_shares_biaxial_data() -> None:
    spec = base.get("poph")
    assert spec.representation == "prv" and spec.model_cls is PopH
    assert spec.prepare is prv.prepare and spec.make_dataset is prv.make_dataset
    assert spec.sampler == "pipeline.modeling.prv.sampling:generate_biaxial"  # hooks do the rest


@pytest.mark.parametrize("order", ["seed", "after_lstm"])
def test_sampling_path_computes_training_logits(order: str) -> None:
    torch.manual_seed(0)
    model = PopH(tiny_config(seq_len=5, layer_order=order)).eval()
    x = (torch.rand(2, 6, 24, 3) < 0.3).float()  # 5 predicted steps = seq_len
    style = torch.tensor([1, 2])
    torch.testing.assert_close(
        prv_sampling.stepwise_logits(model, x, style), model.logits(x, style), atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("order", ["seed", "after_lstm"])
def test_primer_fed_at_once_equals_step_by_step(
    monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    monkeypatch.setattr(prv_sampling, "PRIMER_CHUNK_STEPS", 3)  # several chunks
    torch.manual_seed(0)
    model = PopH(tiny_config(seq_len=4, n_layers=2, layer_order=order)).eval()
    steps = (torch.rand(2, 7, 24, 3) < 0.3).float()
    style_vec = model.style_vectors(torch.tensor([1, 2]))
    at_once, one_by_one = (prv_sampling._TimeStepper(model, style_vec) for _ in range(2))
    with torch.no_grad():
        at_once.feed(steps)
        for t in range(7):
            one_by_one.advance(steps[:, t])
        span = at_once.inputs if order == "seed" else at_once.history  # what attention sees
        assert len(span) == 4  # the attention span
        assert len(at_once.history) == len(one_by_one.history)
        assert len(at_once.inputs) == len(one_by_one.inputs)
        torch.testing.assert_close(at_once.features(), one_by_one.features())
        for (h1, c1), (h2, c2) in zip(at_once.state, one_by_one.state, strict=True):
            torch.testing.assert_close(h1, h2)
            torch.testing.assert_close(c1, c2)


# --------------------------------------------------------------------------------------
# training and sampling


def test_overfits_one_batch(store: StoreData) -> None:
    torch.manual_seed(0)
    config = prv.prepare(store, tiny_config(styles=(), n_pitches=0, time_hidden=32, note_hidden=32))
    model = PopH(config)
    torch.manual_seed(1)
    batch = next(iter(DataLoader(prv.make_dataset(store, config, "train"), batch_size=2)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.eval()
    with torch.no_grad():
        first = model(batch)
    model.train()
    for _ in range(200):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        last = model(batch)
    # the harmony term pulls against fitting out-of-scale notes, so play stops higher
    assert float(last["play"]) < 0.25 * float(first["play"])
    assert float(last["replay"]) < 0.1 * float(first["replay"])
    assert float(last["dynamics"]) < 0.25 * float(first["dynamics"])
    assert float(last["loss"]) < 0.25 * float(first["loss"])
    assert float(last["harmony"]) < float(first["harmony"])


def test_generate_valid_rows_polyphony_and_styles() -> None:
    torch.manual_seed(0)
    model = PopH(tiny_config(seq_len=4))

    def sample(style: str | None) -> list[pd.DataFrame]:
        g = torch.Generator().manual_seed(0)
        return prv_sampling.generate_biaxial(
            model, 2, SampleOptions(length=10, style=style), generator=g
        )  # longer than seq_len

    samples = sample("pop")
    for s in samples:
        assert list(s.columns) == list(prv.PRV_COLUMNS)
        assert s["step"].between(0, 9).all() and s["pitch"].between(0, 23).all()
        assert s["volume"].between(0, 1).all() and len(s) > 0
    assert max(s.groupby("step").size().max() for s in samples) >= 2
    assert any(not a.equals(b) for a, b in zip(samples, sample("rock"), strict=True))
    with pytest.raises(ValueError, match="unknown style 'jazz'.*'pop', 'rock'"):
        sample("jazz")
    primer = pd.DataFrame(
        {
            "piece_id": ["x", "x", "y"],
            "step": np.array([0, 1, 0], np.int32),
            "pitch": np.array([5, 5, 9], np.int16),
            "replay": [True, False, True],
            "volume": np.array([0.5, 0.5, 0.8], np.float32),
        }
    )
    with_primer = prv_sampling.generate_biaxial(
        model, 2, SampleOptions(primer=primer, length=3), generator=torch.Generator()
    )
    first = with_primer[0][with_primer[0]["step"] < 2]
    assert first[["step", "pitch"]].values.tolist() == [[0, 5], [1, 5]]  # piece "x"
    second = with_primer[1][with_primer[1]["step"] < 1]
    assert second[["step", "pitch"]].values.tolist() == [[0, 9]]  # piece "y"
    assert with_primer[1]["step"].max() <= 3  # 1 primer step + 3 new
