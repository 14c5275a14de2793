"""The prv sampler's own settings (`generate_biaxial`): silence heat, dynamics, key bias."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from fixture_stores import model_config

from pipeline.modeling.prv import PLAY, REPLAY, VOLUME
from pipeline.modeling.prv.biaxial import BiaxialLSTM
from pipeline.modeling.prv.poph import PopH
from pipeline.modeling.prv.sampling import DEFAULTS, _bernoulli, _Heat, _Key, generate_biaxial
from pipeline.modeling.sampling import GenerateError, SampleOptions

TINY = dict(
    time_hidden=16,
    note_hidden=16,
    style_dim=4,
    neighbour_window=3,
    seq_len=8,
    style_dropout=0.0,
    min_pitch=36,
    n_pitches=12,
    steps_per_second=8.0,
)


def biaxial(seed: int = 0) -> BiaxialLSTM:
    torch.manual_seed(seed)
    return BiaxialLSTM(model_config("biaxial", styles=("<unk>", "Bach"), **TINY)).eval()


def constant_head(model: BiaxialLSTM, play: float, volume_varies: bool = False) -> BiaxialLSTM:
    """`model` whose play and replay logits are `play` and 0 whatever the input."""
    with torch.no_grad():
        rows = [PLAY, REPLAY] if volume_varies else [PLAY, REPLAY, VOLUME]
        model.head.weight[rows] = 0.0
        model.head.bias[PLAY] = play
        model.head.bias[REPLAY] = 0.0
    return model


def draw(model: torch.nn.Module, n: int = 2, seed: int = 0, **kw: object) -> list[pd.DataFrame]:
    settings = kw.pop("settings", {})
    options = SampleOptions(length=kw.pop("length", 24), settings=settings, **kw)
    return generate_biaxial(model, n, options, torch.Generator().manual_seed(seed))


def test_defaults_are_reproducible_for_a_seed() -> None:
    model = biaxial()
    for a, b in zip(draw(model), draw(model), strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert any(not a.equals(b) for a, b in zip(draw(model), draw(model, seed=1), strict=True))
    # the defaults spelt out are the defaults
    for a, b in zip(draw(model), draw(model, settings=dict(DEFAULTS)), strict=True):
        pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"silence": 4}, r"sample\.biaxial\.silence: biaxial has no such sampling setting"),
        ({"silence_steps": 1.5}, r"sample\.biaxial\.silence_steps: expected int"),
        ({"silence_steps": 0}, r"sample\.biaxial\.silence_steps: expected >= 1, got 0"),
        ({"silence_heat": -0.1}, r"sample\.biaxial\.silence_heat: expected >= 0"),
        ({"dynamics": "loud"}, r"sample\.biaxial\.dynamics: expected one of predicted, piece"),
        ({"key_bias": -1.0}, r"sample\.biaxial\.key_bias: expected >= 0, got -1\.0"),
        ({"key_bias": "C"}, r"sample\.biaxial\.key_bias: expected float"),
    ],
)
def test_bad_settings_give_one_line_naming_the_key(settings: dict, message: str) -> None:
    with pytest.raises(GenerateError, match=message) as info:
        draw(biaxial(), settings=settings)
    assert "\n" not in str(info.value)


def test_poph_settings_are_named_after_poph() -> None:
    torch.manual_seed(0)
    config = model_config("poph", styles=("<unk>",), attention_heads=2, **TINY)
    with pytest.raises(GenerateError, match=r"^sample\.poph\.heat: poph has no such"):
        draw(PopH(config).eval(), settings={"heat": 1.0})


def test_heat_rises_per_silent_step_after_silence_steps() -> None:
    heat = _Heat(base=1.0, after=2, rate=0.5)
    silent = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0])
    assert heat.temperatures(silent).tolist() == [1.0, 1.0, 1.5, 2.0, 5.5]
    assert _Heat(base=0.0, after=2, rate=0.5).temperatures(silent).tolist() == [0.0] * 5


def test_bernoulli_greedy_where_temperature_is_zero() -> None:
    logits = torch.tensor([3.0, -3.0, 3.0, -3.0])
    g = torch.Generator().manual_seed(0)
    drawn = _bernoulli(logits, torch.tensor([0.0, 0.0, 1e6, 1e6]), g)
    assert drawn[:2].tolist() == [1.0, 0.0]  # greedy
    hot = torch.stack([_bernoulli(logits, torch.full((4,), 1e6), g) for _ in range(200)])
    assert 0.3 < float(hot.mean()) < 0.7  # a huge temperature: fair coins
    greedy = _bernoulli(logits, torch.zeros(4), None)  # no generator needed: nothing drawn
    assert greedy.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_silence_heat_wakes_a_silent_model_and_resets() -> None:
    """At temperature 0.01 logits of -2 never play; heat makes a note after `silence_steps`.

    Every pitch's play logit is -2 whatever came before, so each note is followed by
    silence; at the base temperature (P = sigmoid(-200) = 0 in float32) nothing can
    sound before the heat starts, and it must start again from 0 after every note
    (the reset). Greedy sampling is left greedy.
    """
    model = constant_head(biaxial(), play=-2.0)
    cold = draw(model, temperature=0.01, length=40, settings={"silence_heat": 0.0})
    assert all(len(s) == 0 for s in cold)
    heat = {"silence_steps": 3, "silence_heat": 2.0}
    assert all(len(s) == 0 for s in draw(model, temperature=0.0, length=40, settings=heat))
    woken = draw(model, temperature=0.01, length=40, settings=heat)
    for s in woken:
        sounding = np.unique(s["step"].to_numpy())
        assert len(sounding) >= 2
        assert sounding[0] >= 3  # steps 0-2 at 0.01, then T = 2.01, 4.01, ... from step 3 on
        assert (np.diff(sounding) >= 4).all()  # after a note: 3 cold silent steps again


def test_dynamics_piece_holds_one_volume_per_sample() -> None:
    model = constant_head(biaxial(), play=1.0, volume_varies=True)
    predicted = draw(model, settings={"dynamics": "predicted"})
    held = draw(model, settings={"dynamics": "piece"})
    for p, h in zip(predicted, held, strict=True):
        cells = ["step", "pitch", "replay"]
        pd.testing.assert_frame_equal(p[cells], h[cells])  # the same draws
        assert p["volume"].nunique() > 1
        onset_mean = p.loc[p["replay"], "volume"].mean()
        np.testing.assert_allclose(h["volume"].to_numpy(), onset_mean, rtol=1e-6)
    primer = pd.DataFrame(
        {
            "piece_id": ["x", "x"],
            "step": np.array([0, 1], np.int32),
            "pitch": np.array([4, 4], np.int16),
            "replay": [True, False],
            "volume": np.array([0.75, 0.75], np.float32),
        }
    )
    primed = draw(model, n=1, primer=primer, settings={"dynamics": "piece"})[0]
    assert len(primed) > 2 and (primed["volume"] == np.float32(0.75)).all()


def c_major_primer() -> pd.DataFrame:
    """Two steps of C, E and G (pitch indices 0, 4, 7 above C2), as prv rows."""
    steps, pitches = [0, 0, 0, 1, 1, 1], [0, 4, 7, 0, 4, 7]
    return pd.DataFrame(
        {
            "piece_id": ["c"] * 6,
            "step": np.array(steps, np.int32),
            "pitch": np.array(pitches, np.int16),
            "replay": [True, True, True, False, False, False],
            "volume": np.full(6, 0.7, np.float32),
        }
    )


def new_pitch_classes(sample: pd.DataFrame) -> list[int]:
    """Pitch classes of the onsets sampled after the two primer steps (index 0 = C2)."""
    onsets = sample[(sample["step"] >= 2) & sample["replay"]]
    return (onsets["pitch"] % 12).tolist()


def test_key_bias_keeps_new_notes_in_the_primers_key() -> None:
    """Every pitch equally likely to start; a strong key bias keeps onsets in C major."""
    model = constant_head(biaxial(), play=-1.0)
    primer = c_major_primer()
    free = draw(model, n=4, primer=primer, length=32, settings={"key_bias": 0.0})
    steered = draw(model, n=4, primer=primer, length=32, settings={"key_bias": 30.0})
    c_major = {0, 2, 4, 5, 7, 9, 11}
    assert all(set(new_pitch_classes(s)) - c_major for s in free)
    for s in steered:
        assert len(new_pitch_classes(s)) > 20
        assert set(new_pitch_classes(s)) <= c_major


def test_key_bias_spares_held_notes_and_silent_samples() -> None:
    model = biaxial()
    key = _Key(model, 2, strength=1.5)
    prev = torch.zeros(2, 12, 3)
    assert key.bias(prev).abs().sum() == 0  # no onset heard yet: no key, no bias
    key.hear(torch.from_numpy(c_major_primer_dense())[None].expand(2, -1, -1, -1))
    prev[0, 6, PLAY] = 1.0  # F# sounding in sample 0: it may go on
    bias = key.bias(prev)
    assert bias[0, 6] == 0 and bias[1, 6] == -1.5
    outside = [k for k in range(12) if bias[1, k] != 0]
    assert outside == [1, 3, 6, 8, 10]  # C#, D#, F#, G#, A#: outside C major


def c_major_primer_dense() -> np.ndarray:
    dense = np.zeros((2, 12, 3), np.float32)
    dense[:, [0, 4, 7], PLAY] = 1.0
    dense[0, [0, 4, 7], REPLAY] = 1.0
    return dense


def test_key_scales_are_pophs_without_loading_poph() -> None:
    """The key bias's scales are PopH's 24 rows; sampling builds them itself so that
    evaluating the biaxial LSTM does not load (and depend on) PopH's module."""
    from pipeline.modeling.prv.poph import disharmony_matrix
    from pipeline.modeling.sampling import outside_scales

    assert torch.equal(outside_scales(), disharmony_matrix("all"))


def one_note_primer(piece_id: str, pitch: int, steps: int) -> pd.DataFrame:
    """`pitch` struck at step 0 and held for `steps` steps."""
    return pd.DataFrame(
        {
            "piece_id": [piece_id] * steps,
            "step": np.arange(steps, dtype=np.int32),
            "pitch": np.full(steps, pitch, np.int16),
            "replay": [True] + [False] * (steps - 1),
            "volume": np.full(steps, 0.6, np.float32),
        }
    )


def test_one_call_draws_each_primer_as_a_call_of_its_own() -> None:
    """Primers of 3, 6 and 3 steps in one call (evaluation's batched call): sample i
    keeps primer i at steps 0..len - 1 and continues it exactly as a call with primer
    i alone does (greedy: no random numbers). Padding the short primers to one length
    would change their continuations; mixing up samples, their openings."""
    torch.manual_seed(0)
    model = BiaxialLSTM(model_config("biaxial", styles=("<unk>",), **TINY)).eval()
    with torch.no_grad():
        model.head.bias[PLAY] += 2.0  # greedy, the random model would write nothing
    primers = [one_note_primer("primer-0", 2, 3), one_note_primer("primer-1", 9, 6)]
    primers.append(one_note_primer("primer-2", 5, 3))
    options = SampleOptions(length=16, temperature=0.0, settings={"dynamics": "predicted"})
    every = pd.concat(primers, ignore_index=True)
    rows = generate_biaxial(model, 3, dataclasses.replace(options, primer=every))
    for i, (primer, sample) in enumerate(zip(primers, rows, strict=True)):
        opening = sample[sample["step"] < len(primer)].reset_index(drop=True)
        pd.testing.assert_frame_equal(
            opening.drop(columns="piece_id"), primer.drop(columns="piece_id"), check_dtype=False
        )
        assert sample["step"].max() < len(primer) + 16
        assert len(sample) > len(primer) + 50  # it wrote something to compare
        alone = generate_biaxial(model, 1, dataclasses.replace(options, primer=primer))[0]
        pd.testing.assert_frame_equal(  # volumes: batched float sums, within 1e-5
            sample.drop(columns="piece_id"), alone.drop(columns="piece_id"), rtol=1e-5
        )
        assert (sample["piece_id"] == f"sample-{i}").all()


def test_batched_primers_are_reproducible_and_keep_their_order() -> None:
    """Twelve primers of two lengths, sampled (seeded) in one call: each sample opens
    with its own primer (ids sorting past ten), and the same seed gives the same clips."""
    model = biaxial()
    primers = [one_note_primer(f"primer-{i:06d}", i, 2 + i % 2) for i in range(12)]
    every = pd.concat(primers, ignore_index=True)
    first, again = (draw(model, n=12, primer=every, length=10) for _ in range(2))
    for i, (a, b) in enumerate(zip(first, again, strict=True)):
        pd.testing.assert_frame_equal(a, b)
        opening = a[a["step"] < 2 + i % 2]
        assert opening["pitch"].tolist() == [i] * (2 + i % 2)
        assert opening["volume"].tolist() == pytest.approx([0.6] * (2 + i % 2))


def test_a_primer_piece_without_cells_is_refused_not_skipped() -> None:
    """Skipping it would move every later sample onto the next piece's primer."""
    inside = one_note_primer("a", 3, 2)
    outside = one_note_primer("b", 30, 2)  # above the 12 pitches
    with pytest.raises(ValueError, match=r"no cells inside pitches 0\.\.11 in b$"):
        draw(biaxial(), n=2, primer=pd.concat([inside, outside], ignore_index=True))
