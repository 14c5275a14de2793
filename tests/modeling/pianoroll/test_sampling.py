"""The pianoroll samplers' settings and decisions: segments, density, window correlation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from fixture_stores import model_config

from pipeline.modeling.pianoroll import sampling
from pipeline.modeling.pianoroll.autoencoder import PianorollAutoencoder
from pipeline.modeling.pianoroll.sampling import (
    AUTOENCODER_SETTINGS,
    VAE_SETTINGS,
    decide,
    generate_autoencoder,
    generate_vae,
    interpolate_vae,
    segment_starts,
    segments,
)
from pipeline.modeling.pianoroll.vae import PianorollVAE
from pipeline.modeling.sampling import GenerateError, SampleOptions


def autoencoder(**kw: object) -> PianorollAutoencoder:
    torch.manual_seed(0)
    base = dict(window_frames=16, filters=(4, 8), min_pitch=60, n_pitches=8, frame_ms=100.0)
    return PianorollAutoencoder(model_config("autoencoder", **{**base, **kw}))


def vae(**kw: object) -> PianorollVAE:
    torch.manual_seed(0)
    base = dict(
        window_frames=8, filters=(4, 8), latent_dim=3, min_pitch=60, n_pitches=8, frame_ms=100.0
    )
    return PianorollVAE(model_config("vae", **{**base, **kw}))


def dense(rows: pd.DataFrame, frames: int, n_pitches: int = 8) -> np.ndarray:
    roll = np.zeros((frames, n_pitches), np.float32)
    roll[rows["frame"], rows["pitch"] - 60] = 1.0
    return roll


# --- segments ---------------------------------------------------------------------------


def test_segment_starts_take_the_strongest_changes_min_frames_apart() -> None:
    novelty = np.zeros(19)  # 20 frames
    novelty[[4, 6, 9, 16]] = [1.0, 3.0, 2.0, 5.0]  # changes after frames 4, 6, 9, 16
    # 17 (after 16) would leave a last segment of 3 < 4 frames; 7 (after 6) is taken
    # before 5 and 10, which are then too close to it
    assert segment_starts(novelty, 4, 0.0) == [0, 7]
    assert segment_starts(novelty, 2, 0.0) == [0, 5, 7, 10, 17]
    # `change` keeps only changes above that many times the mean (0.58 here)
    assert segment_starts(novelty, 2, 4.0) == [0, 7, 17]
    assert segment_starts(novelty, 11, 0.0) == [0]  # 20 frames < 2 * 11: one segment
    assert segment_starts(np.zeros(19), 2, 1.0) == [0]  # nothing changes


def test_segments_play_chords_that_start_and_end_together() -> None:
    probs = torch.zeros(12, 6)
    probs[:6, [0, 2, 4]] = torch.tensor([0.9, 0.7, 0.6])  # a chord, then another
    probs[6:, [1, 3]] = torch.tensor([0.8, 0.8])
    probs[2, 5] = 0.4  # a one-frame blip: a change below the mean change (`change` 1.0)
    cells = segments(probs, min_frames=3, change=1.0)
    # each segment plays round(sum of its mean probabilities) pitches, all through it:
    # 2.2 + 0.4 / 6 -> the 2 most probable, then 1.6 -> 2
    expected = torch.zeros(12, 6)
    expected[:6, [0, 2]] = 1.0
    expected[6:, [1, 3]] = 1.0
    assert cells.tolist() == expected.tolist()
    batch = segments(torch.stack([probs, probs.flip(0)]), min_frames=3, change=1.0)
    assert batch[0].tolist() == expected.tolist()
    assert batch[1].tolist() == expected.flip(0).tolist()


def test_decide_draws() -> None:
    probs = torch.tensor([[0.6, 0.3, 0.2, 0.1], [0.05, 0.1, 0.05, 0.1]])
    how = dict(VAE_SETTINGS)
    assert decide(probs, {**how, "draw": "threshold", "threshold": 0.25}).tolist() == [
        [1, 1, 0, 0],
        [0, 0, 0, 0],
    ]
    assert decide(probs, {**how, "draw": "count"}).tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]
    many = torch.full((200, 50), 0.3)
    a = decide(many, {**how, "draw": "bernoulli"}, torch.Generator().manual_seed(1))
    b = decide(many, {**how, "draw": "bernoulli"}, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and 0.28 < float(a.mean()) < 0.32


# --- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "settings", "message"),
    [
        ("autoencoder", {"threshhold": 0.3}, "sample.autoencoder.threshhold: autoencoder has no"),
        ("autoencoder", {"iterations": 2.5}, "sample.autoencoder.iterations: expected int"),
        ("autoencoder", {"draw": "greedy"}, "sample.autoencoder.draw: must be one of segments"),
        ("autoencoder", {"density": -1.0}, "sample.autoencoder.density: must be >= 0"),
        ("vae", {"window_correlation": 1.5}, r"sample.vae.window_correlation: must be in \[0, 1\]"),
        ("vae", {"iterations": 3}, "sample.vae.iterations: vae has no such sampling setting"),
        ("vae", {"min_frames": 0}, "sample.vae.min_frames: must be >= 1"),
    ],
)
def test_bad_settings_are_refused_in_one_line(
    model: str, settings: dict[str, object], message: str
) -> None:
    net = autoencoder() if model == "autoencoder" else vae()
    generate = generate_autoencoder if model == "autoencoder" else generate_vae
    with pytest.raises(GenerateError, match=message) as caught:
        generate(net, 1, SampleOptions(length=4, settings=settings))
    assert "\n" not in str(caught.value)


# --- autoencoder ------------------------------------------------------------------------


def test_autoencoder_density_sets_the_expected_cells_per_frame() -> None:
    chain = sampling._Chain(0, 1.0, 2.5, AUTOENCODER_SETTINGS, min_pitch=60)
    logits = torch.randn(3, 10, 8, generator=torch.Generator().manual_seed(0)) - 4.0
    expected = torch.sigmoid(logits + chain._shift(logits)).sum(dim=-1).mean(dim=-1)
    torch.testing.assert_close(expected, torch.full((3,), 2.5), atol=1e-3, rtol=0)
    off = sampling._Chain(0, 1.0, 0.0, AUTOENCODER_SETTINGS, min_pitch=60)
    assert float(off._shift(logits).abs().max()) == 0.0


def test_autoencoder_density_fills_what_an_untrained_chain_leaves_silent() -> None:
    model = autoencoder()
    with torch.no_grad():
        model.pitch_bias.fill_(-6.0)  # the network says "silence" everywhere
        model.density.fill_(0.25)  # the data had 2 active cells per frame

    def cells_per_frame(density: float) -> float:
        options = SampleOptions(length=48, settings={"density": density, "draw": "count"})
        rows = generate_autoencoder(model, 2, options, torch.Generator().manual_seed(0))
        return sum(len(r) for r in rows) / (2 * 48)

    assert cells_per_frame(0.0) < 0.1
    assert 1.5 < cells_per_frame(1.0) < 2.5


def in_best_scale(rows: pd.DataFrame) -> float:
    """The share of a clip's notes in the major or natural minor scale holding most."""
    from pipeline.modeling.sampling import outside_scales

    hist = torch.bincount(torch.as_tensor(rows["pitch"].to_numpy() % 12), minlength=12).float()
    return 1.0 - float((outside_scales() @ hist).min() / hist.sum())


def test_autoencoder_key_bias_keeps_a_clip_in_one_key() -> None:
    model = autoencoder(n_pitches=24)  # untrained: every pitch class about as likely

    def share(bias: float) -> float:
        options = SampleOptions(length=48, settings={"key_bias": bias, "draw": "count"})
        rows = generate_autoencoder(model, 4, options, torch.Generator().manual_seed(0))
        return sum(in_best_scale(r) for r in rows) / len(rows)

    unbiased, biased = share(0.0), share(2.0)  # 48 frames: three windows, one key
    assert biased >= 0.95 > unbiased
    with pytest.raises(GenerateError, match=r"sample.autoencoder.key_bias: must be >= 0"):
        generate_autoencoder(model, 1, SampleOptions(length=8, settings={"key_bias": -1.0}))


def test_autoencoder_runs_iterations_steps_per_window(monkeypatch: pytest.MonkeyPatch) -> None:
    model = autoencoder()
    calls = []
    logits = model.logits
    monkeypatch.setattr(model, "logits", lambda roll: calls.append(1) or logits(roll))
    # 24 frames: the first window writes 16, the next (8 frames of context) 8 more
    generate_autoencoder(model, 1, SampleOptions(length=24, settings={"iterations": 3}))
    assert len(calls) == 2 * 3


def test_autoencoder_defaults_are_reproducible_and_set_the_velocity() -> None:
    model = autoencoder()
    options = SampleOptions(length=40)
    a = generate_autoencoder(model, 2, options, torch.Generator().manual_seed(5))
    b = generate_autoencoder(model, 2, options, torch.Generator().manual_seed(5))
    for x, y in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(x, y)
        assert (x["velocity"] == AUTOENCODER_SETTINGS["velocity"]).all()
    loud = SampleOptions(
        length=40, settings={"velocity": 110, "draw": "threshold", "threshold": 0.01}
    )
    (rows,) = generate_autoencoder(model, 1, loud, torch.Generator().manual_seed(5))
    assert len(rows) and (rows["velocity"] == 110).all()


# --- VAE --------------------------------------------------------------------------------


def vae_windows(correlation: float, seed: int = 0) -> np.ndarray:
    model = vae()
    with torch.no_grad():
        model.from_latent.weight.mul_(50.0)  # an untrained decoder that heeds its code,
        model.decoder.out.bias.zero_()  # around probability 0.5
    settings = {"window_correlation": correlation, "draw": "threshold"}
    (rows,) = generate_vae(
        model,
        1,
        SampleOptions(length=24, settings=settings),
        torch.Generator().manual_seed(seed),
    )
    return dense(rows, 24).reshape(3, 8, 8)  # 3 windows of 8 frames


def test_vae_window_correlation_one_repeats_a_window_and_zero_does_not() -> None:
    same = vae_windows(1.0)
    assert (same == same[0]).all() and same.any()
    independent = vae_windows(0.0)
    assert not (independent == independent[0]).all()


def test_vae_codes_of_one_sample_correlate_as_set(monkeypatch: pytest.MonkeyPatch) -> None:
    model = vae(latent_dim=4)
    codes = []
    decode = model.decode
    monkeypatch.setattr(model, "decode", lambda z: codes.append(z.clone()) or decode(z))
    options = SampleOptions(length=8 * 400, settings={"window_correlation": 0.9})
    generate_vae(model, 1, options, torch.Generator().manual_seed(0))
    z = codes[0].numpy()  # (400 windows, 4): one shared draw per sample
    centred = z - z.mean(axis=0)
    assert np.abs(centred.std(axis=0) - np.sqrt(0.1)).max() < 0.05


def test_vae_refine_encodes_that_many_times(monkeypatch: pytest.MonkeyPatch) -> None:
    model = vae()
    calls = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda roll: calls.append(1) or encode(roll))
    generate_vae(model, 2, SampleOptions(length=16, settings={"refine": 3}))
    assert len(calls) == 3


def test_vae_defaults_are_reproducible_and_interpolation_reads_settings() -> None:
    model = vae()
    options = SampleOptions(length=24)
    a = generate_vae(model, 2, options, torch.Generator().manual_seed(2))
    b = generate_vae(model, 2, options, torch.Generator().manual_seed(2))
    for x, y in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(x, y)
        assert (x["velocity"] == VAE_SETTINGS["velocity"]).all()
    window = pd.DataFrame(
        {"piece_id": "a", "frame": np.arange(8, dtype=np.int32), "pitch": np.int16(60)}
    ).assign(velocity=np.int16(80))
    path = interpolate_vae(model, window, window, 3, {"velocity": 33, "draw": "count"})
    assert all((rows["velocity"] == 33).all() for rows in path)
    with pytest.raises(GenerateError, match="sample.vae.temperature"):
        interpolate_vae(model, window, window, 3, {"temperature": 0.5})
