"""The events sampler's note rules (`NoteState`, the ``sample.transformer`` settings).

The models here are scripted stand-ins for a `MusicTransformer` (fixed next-token
preferences), so each test shows what a rule does whatever a trained network prefers.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pipeline.modeling.base import GenerateError
from pipeline.modeling.events.sampling import DEFAULTS, generate_transformer
from pipeline.modeling.sampling import SampleOptions
from pipeline.representations.events import (
    BOS,
    EOS,
    NOTE_OFF,
    NOTE_ON,
    STEP_S,
    TIME_SHIFT,
    VOCAB_SIZE,
    decode_tokens,
)

OFF_RULES = {"mask_impossible": False, "repeat_on": "allow", "max_note_s": 0.0}


class Scripted(nn.Module):
    """A stand-in model: next-token logits = `rule(all tokens so far)`."""

    def __init__(self, rule: Callable[[list[int]], torch.Tensor]):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(seq_len=100_000)  # never re-encodes
        self.rule = rule

    def logits(
        self, tokens: torch.Tensor, past: torch.Tensor | None = None, start_pos: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        history = tokens if past is None else torch.cat([past, tokens], dim=1)
        last = torch.stack([self.rule(row.tolist()) for row in history])  # (B, V)
        return last[:, None].expand(-1, tokens.size(1), -1), history


def prefers(weights: dict[int, float]) -> Scripted:
    """A model drawing token t with probability proportional to weights[t], always."""
    logits = torch.full((VOCAB_SIZE,), -30.0)
    for token, weight in weights.items():
        logits[token] = float(np.log(weight))
    return Scripted(lambda history: logits)


def sample(model: nn.Module, settings: dict, n: int = 4, seed: int = 0, **kw) -> list[np.ndarray]:
    options = SampleOptions(settings=settings, **{"length": 300, **kw})
    rows = generate_transformer(model, n, options, torch.Generator().manual_seed(seed))
    return [row["tokens"][0].astype(np.int64) for row in rows]


def walk(tokens: np.ndarray) -> list[tuple[str, int, int]]:
    """(event, pitch, time step) of every NOTE_ON/NOTE_OFF, and what it met:
    "on", "restrike" (pitch sounding), "off", "unmatched" (silent), "instant" (same step)."""
    clock, sounding, out = 0, {}, []
    for token in tokens.tolist():
        if TIME_SHIFT < token <= TIME_SHIFT + 100:
            clock += token - TIME_SHIFT
        elif NOTE_ON <= token < NOTE_OFF:
            p = token - NOTE_ON
            out.append(("restrike" if sounding.get(p) else "on", p, clock))
            sounding.setdefault(p, []).append(clock)
        elif NOTE_OFF <= token < NOTE_OFF + 128:
            p = token - NOTE_OFF
            if not sounding.get(p):
                out.append(("unmatched", p, clock))
            else:
                start = sounding[p].pop(0)
                out.append(("instant" if start == clock else "off", p, clock))
    return out


def kinds(samples: list[np.ndarray]) -> set[str]:
    return {event for tokens in samples for event, _, _ in walk(tokens)}


# notes on and off at random, a few pitches, short waits: every rule gets exercised
BUSY = {NOTE_ON + 60: 3, NOTE_ON + 64: 3, NOTE_OFF + 60: 3, NOTE_OFF + 62: 3, TIME_SHIFT + 5: 3}


def test_defaults_write_only_what_the_encoder_writes() -> None:
    samples = sample(prefers(BUSY), {})
    assert kinds(samples) == {"on", "off"}  # no unmatched, instant or restruck note
    assert kinds(sample(prefers(BUSY), OFF_RULES)) >= {"unmatched", "instant", "restrike"}


def test_mask_impossible_alone() -> None:
    found = kinds(sample(prefers(BUSY), {**OFF_RULES, "mask_impossible": True}))
    assert "unmatched" not in found and "instant" not in found and "restrike" in found


def test_repeat_on_end_ends_the_sounding_note_first() -> None:
    settings = {**OFF_RULES, "mask_impossible": True, "repeat_on": "end"}
    for tokens in sample(prefers(BUSY), settings):
        events = walk(tokens)
        assert all(event != "restrike" for event, _, _ in events)
        # the tokens of a re-strike: the pitch's NOTE_OFF, then at once its NOTE_ON
        positions = np.flatnonzero(np.isin(tokens, [NOTE_ON + 60, NOTE_OFF + 60]))
        pairs = [(tokens[i], tokens[i + 1]) for i in positions[:-1] if i + 1 in positions]
        assert (NOTE_OFF + 60, NOTE_ON + 60) in pairs
        notes = decode_tokens(tokens)
        for _, same in notes.groupby("pitch"):  # one voice per pitch: no overlaps
            assert (same["start"].to_numpy()[1:] >= same["end"].to_numpy()[:-1] - 1e-9).all()


def test_repeat_on_mask_and_allow() -> None:
    assert "restrike" not in kinds(sample(prefers(BUSY), {**OFF_RULES, "repeat_on": "mask"}))
    assert "restrike" in kinds(sample(prefers(BUSY), {**OFF_RULES, "repeat_on": "allow"}))


def strike_once(history: list[int]) -> torch.Tensor:
    """NOTE_ON 60 first, then only 100 ms waits (and NOTE_OFF 60 rarely)."""
    logits = torch.full((VOCAB_SIZE,), -30.0)
    if NOTE_ON + 60 not in history:
        logits[NOTE_ON + 60] = 0.0
    else:
        logits[TIME_SHIFT + 10] = 0.0
    return logits


@pytest.mark.parametrize("max_note_s", [0.5, 1.25, 0.0])
def test_max_note_s_ends_a_note_left_sounding(max_note_s: float) -> None:
    settings = {"max_note_s": max_note_s}
    (tokens,) = sample(Scripted(strike_once), settings, n=1, length=None, seconds=3.0)
    notes = decode_tokens(tokens)
    assert notes["pitch"].tolist() == [60]
    # ended at the first 100 ms step at or after the limit; 0: sounds to the end
    final = sum(t - TIME_SHIFT for t in tokens if TIME_SHIFT < t <= TIME_SHIFT + 100) * STEP_S
    assert final >= 3.0
    expected = np.ceil(max_note_s / 0.1 - 1e-9) * 0.1 if max_note_s else final
    assert float(notes["end"].iloc[0]) == pytest.approx(expected)
    if max_note_s:  # written where it happened: right after the step that reached it
        at = int(np.flatnonzero(tokens == NOTE_OFF + 60)[0])
        clock = sum(t - TIME_SHIFT for t in tokens[:at] if TIME_SHIFT < t <= TIME_SHIFT + 100)
        assert clock * STEP_S == pytest.approx(expected)


def test_max_note_s_applies_to_a_primer_note() -> None:
    primer_tokens = np.array([BOS, NOTE_ON + 67, TIME_SHIFT + 100, EOS], np.uint16)
    primer = pd.DataFrame({"piece_id": ["p"], "tokens": [primer_tokens]})
    model = prefers({TIME_SHIFT + 50: 1.0})
    (tokens,) = sample(model, {"max_note_s": 2.0}, n=1, length=None, seconds=4.0, primer=primer)
    notes = decode_tokens(tokens)
    assert float((notes["end"] - notes["start"]).iloc[0]) == pytest.approx(2.0)


def test_defaults_are_reproducible_for_a_seed() -> None:
    model = prefers(BUSY)
    for a, b in zip(sample(model, {}, seed=5), sample(model, {}, seed=5), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(sample(model, {}, seed=5), sample(model, {}, seed=6), strict=True)
    )


def test_greedy_draws_the_likeliest_allowed_token() -> None:
    # NOTE_OFF 62 is the likeliest token but 62 never sounds: greedy writes the next one
    model = prefers({NOTE_OFF + 62: 10, NOTE_ON + 60: 5, TIME_SHIFT + 5: 1})
    (tokens,) = sample(model, {}, n=1, length=4, temperature=0.0)
    assert tokens[1] == NOTE_ON + 60
    (tokens,) = sample(model, OFF_RULES, n=1, length=4, temperature=0.0)
    assert tokens[1] == NOTE_OFF + 62


def test_default_settings_are_documented() -> None:
    doc = generate_transformer.__doc__ or ""
    for key, value in DEFAULTS.items():
        assert f"``{key}`` ({value!r})".replace("'", '"') in doc


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_note": 5.0}, "sample.transformer.max_note: transformer has no such sampling"),
        ({"mask_impossible": 1}, "sample.transformer.mask_impossible: expected bool"),
        ({"repeat_on": "merge"}, "sample.transformer.repeat_on: expected one of end, mask"),
        ({"max_note_s": -1.0}, "sample.transformer.max_note_s: expected >= 0"),
    ],
)
def test_bad_settings_give_one_line(settings: dict, message: str) -> None:
    with pytest.raises(GenerateError) as info:
        sample(prefers(BUSY), settings, n=1, length=3)
    assert message in str(info.value) and "\n" not in str(info.value)
