"""Performance events: literal token sequences, tolerant decoding, truncation."""

from __future__ import annotations

import dataclasses
from collections import defaultdict, deque

import numpy as np
import pandas as pd
import pytest
from fixture_stores import shipped
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.params import ParamsError, default_params, from_mapping
from pipeline.representations import events as ev

PARAMS = default_params("events", ev.Params)  # as params.yaml ships them
NO_SUSTAIN = dataclasses.replace(PARAMS, sustain=False)


def notes_table(rows: list[tuple], piece: str = "a") -> pd.DataFrame:
    """(pitch, velocity, start, end[, track[, is_drum]]) -> a notes-store frame."""
    full = [tuple(r) + (0, False)[len(r) - 4 :] for r in rows]  # default track 0, not drum
    df = pd.DataFrame(full, columns=["pitch", "velocity", "start", "end", "track", "is_drum"])
    return df.assign(piece_id=piece, program=0)


TINY = notes_table(
    [
        (60, 100, 0.0, 0.5),
        (64, 80, 0.25, 0.5),
        (67, 100, 1.75, 1.752),  # after a 1.25 s gap; shorter than 10 ms
        (36, 110, 0.0, 0.1, 9, True),  # drum: left out
    ]
)


def test_vocabulary_constants() -> None:
    assert (ev.PAD, ev.BOS, ev.EOS, ev.VOCAB_SIZE) == (0, 1, 2, 391)
    assert ev.token_name(3 + 60) == "NOTE_ON_60"
    assert ev.token_name(131 + 127) == "NOTE_OFF_127"
    assert ev.token_name(259) == "TIME_SHIFT_10ms" and ev.token_name(358) == "TIME_SHIFT_1000ms"
    assert ev.token_name(359) == "SET_VELOCITY_0" and ev.token_name(390) == "SET_VELOCITY_31"
    assert ev.token_name(391) == "INVALID_391"


def test_velocity_bins() -> None:
    assert ev.velocity_bin(np.array([1, 4, 5, 100, 127])).tolist() == [0, 0, 1, 24, 31]
    assert ev.bin_velocity(np.array([0, 24, 31])).tolist() == [3, 99, 127]
    v = np.arange(1, 128)
    assert np.abs(ev.bin_velocity(ev.velocity_bin(v)) - v).max() <= 2


def test_encode_literal() -> None:
    rows = ev.encode(TINY, None, NO_SUSTAIN)
    assert rows["piece_id"].tolist() == ["a"]
    tokens = rows["tokens"].iloc[0]
    assert tokens.dtype == np.uint16
    assert tokens.tolist() == [
        ev.BOS,
        359 + 24,  # SET_VELOCITY bin 24 (velocity 100)
        3 + 60,  # NOTE_ON 60
        258 + 25,  # TIME_SHIFT 250 ms
        359 + 19,  # SET_VELOCITY bin 19 (velocity 80)
        3 + 64,  # NOTE_ON 64
        258 + 25,  # TIME_SHIFT 250 ms
        131 + 60,  # NOTE_OFF 60 (offs in pitch order)
        131 + 64,  # NOTE_OFF 64
        258 + 100,  # TIME_SHIFT 1 s ...
        258 + 25,  # ... + 250 ms
        359 + 24,  # velocity back to bin 24
        3 + 67,  # NOTE_ON 67
        258 + 1,  # 10 ms: a note never shorter than one step
        131 + 67,  # NOTE_OFF 67
        ev.EOS,
    ]


def test_decode_literal() -> None:
    notes = ev.decode(ev.encode(TINY, None, NO_SUSTAIN), PARAMS)
    got = list(notes[["pitch", "velocity", "start", "end"]].itertuples(index=False, name=None))
    assert got == [(60, 99, 0.0, 0.5), (64, 79, 0.25, 0.5), (67, 99, 1.75, 1.76)]


def test_offs_before_ons_at_the_same_time() -> None:
    """A note ending as the same pitch starts again: NOTE_OFF first, two notes back."""
    notes = notes_table([(60, 100, 0.0, 0.5), (60, 100, 0.5, 1.0)])
    tokens = ev.encode_piece(notes)
    assert tokens.tolist() == [1, 383, 63, 308, 191, 63, 308, 191, 2]
    back = ev.decode_tokens(tokens)
    assert back[["start", "end"]].values.tolist() == [[0.0, 0.5], [0.5, 1.0]]


def test_decode_ill_formed() -> None:
    tokens = [
        ev.PAD,
        131 + 60,  # NOTE_OFF without NOTE_ON: ignored
        3 + 60,  # NOTE_ON before any SET_VELOCITY: default velocity 63
        ev.EOS,  # skipped
        258 + 10,
        359 + 31,
        3 + 62,  # never closed: ends at the final time
        3 + 64,
        131 + 64,  # closed at once: keeps one step
        258 + 5,
        131 + 60,
        500,  # outside the vocabulary: skipped
        ev.BOS,
    ]
    notes = ev.decode_tokens(np.array(tokens))
    got = list(notes[["pitch", "velocity", "start", "end"]].itertuples(index=False, name=None))
    assert got == [(60, 63, 0.0, 0.15), (62, 127, 0.1, 0.15), (64, 127, 0.1, 0.11)]
    assert ev.decode_tokens(np.array([], np.int64)).empty
    assert ev.decode_tokens([ev.BOS, ev.EOS]).columns.tolist() == [
        "pitch",
        "velocity",
        "start",
        "end",
    ]


def reference_decode(tokens: list[int]) -> list[tuple[int, int, int, int]]:
    """The decoding rules as a plain token loop: (pitch, velocity, on step, off step)."""
    clock, velocity = 0, 63
    open_notes: dict[int, deque] = defaultdict(deque)
    out = []
    for t in tokens:
        if 259 <= t <= 358:
            clock += t - 258
        elif 359 <= t <= 390:
            velocity = (t - 359) * 4 + 3
        elif 3 <= t <= 130:
            open_notes[t - 3].append((clock, velocity))
        elif 131 <= t <= 258 and open_notes[t - 131]:
            on, vel = open_notes[t - 131].popleft()
            out.append((t - 131, vel, on, max(clock, on + 1)))
    for pitch, queue in open_notes.items():
        out.extend((pitch, vel, on, max(clock, on + 1)) for on, vel in queue)
    return sorted(out)


TOKEN_POOL = [0, 1, 2, 3 + 60, 3 + 61, 3 + 62, 131 + 60, 131 + 61, 131 + 62, 259, 268, 358, 359,
              380, 390, 391, 1000]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(TOKEN_POOL), max_size=120))
def test_decode_matches_reference_loop(tokens: list[int]) -> None:
    notes = ev.decode_tokens(np.array(tokens, np.int64))
    got = sorted(
        zip(
            notes["pitch"].tolist(),
            notes["velocity"].tolist(),
            np.rint(notes["start"] / 0.01).astype(int).tolist(),
            np.rint(notes["end"] / 0.01).astype(int).tolist(),
            strict=True,
        )
    )
    assert got == reference_decode(tokens)


def test_truncation_keeps_bos_eos() -> None:
    full = ev.encode(TINY, None, NO_SUSTAIN)["tokens"].iloc[0]
    rows = ev.encode(TINY, None, dataclasses.replace(NO_SUSTAIN, max_tokens_per_piece=7))
    tokens = rows["tokens"].iloc[0]
    assert tokens.tolist() == [*full[:6].tolist(), ev.EOS]
    notes = ev.decode(rows, PARAMS)  # NOTE_ON 64 never closed: ends at the final time
    assert notes[["pitch", "end"]].values.tolist() == [[60, 0.25], [64, 0.26]]


def test_several_pieces_and_drum_only_piece() -> None:
    notes = pd.concat(
        [
            notes_table([(36, 100, 0.0, 0.1, 9, True)], "drums"),
            notes_table([(62, 50, 0.0, 0.5)], "b"),
            TINY,
        ],
        ignore_index=True,
    )
    rows = ev.encode(notes, None, NO_SUSTAIN)
    assert rows["piece_id"].tolist() == ["b", "a"]  # no row for a piece without notes
    assert rows["tokens"].iloc[0].tolist() == [1, 359 + 12, 3 + 62, 308, 131 + 62, 2]
    single = ev.encode(TINY, None, NO_SUSTAIN)["tokens"].iloc[0]
    np.testing.assert_array_equal(rows["tokens"].iloc[1], single)


def test_encode_piece_empty() -> None:
    assert ev.encode_piece(TINY.iloc[:0]).tolist() == [ev.BOS, ev.EOS]


def test_params_rejected() -> None:
    with pytest.raises(ParamsError, match="max_tokens_per_piece"):
        from_mapping({**shipped("events"), "max_tokens_per_piece": 1}, ev.Params, "events")
