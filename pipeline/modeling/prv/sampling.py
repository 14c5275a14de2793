"""Sampling from the prv models (`biaxial`, `poph`, `frame_transformer`): step by step,
pitch by pitch.

At each step the time axis advances one step (`_TimeStepper`, which keeps the LSTM
state and the histories the model's ``pre_time`` and ``mix`` need), then the note axis runs from the
lowest pitch to the highest, drawing each pitch's play and replay (`_bernoulli`) and
feeding the draws to the next pitch and to the next step, exactly as the ground truth
is fed in training. PopH samples with the biaxial code (its hooks do the rest), and so
does the frame transformer, whose time axis advances through a key/value cache
(`_CachedStepper`): all three specs name `generate_biaxial`.

Long samples from short training windows: the model is trained on ``seq_len``-step
windows whose time-axis LSTM starts from a zero state, and sampled for hundreds of
steps from one carried state (as DeepJ generates). The LSTM state is carried over the
whole sample; the attention/convolution hooks see at most the last ``seq_len`` steps
(``pre_time_steps``/``context_steps``), the span they were trained on. What carrying
the state past ``seq_len`` costs is measured in `pipeline.modeling.prv.biaxial`.

Sampling settings (``SampleOptions.settings``, params ``sample.biaxial`` /
``sample.poph``; `DEFAULTS`; an unknown key or a bad value is a `GenerateError` naming
``sample.<model>.<key>``). Defaults chosen on VALIDATION clips of the default corpus
(music21 chorales, 30 s after a 2-s primer, 32 clips, with ``temperature: 0.9``):

- ``silence_steps`` (int >= 1, default 2), ``silence_heat`` (float >= 0, default
  0.3): DeepJ's answer to silence. Conditioned on its own silence the model keeps
  predicting silence (the corpus has almost none: a silent input is seen only
  before a piece's first step), so once a sample has been silent for
  ``silence_steps`` consecutive steps, every further silent step adds
  ``silence_heat`` to its temperature until a step sounds, when the temperature
  falls back to ``options.temperature``. DeepJ waits a bar (16 steps) and adds 0.1;
  at 8 steps/s that leaves 2-s holes. ``silence_heat: 0`` turns it off; greedy
  sampling (temperature <= 0) stays greedy, without heat.
- ``key_bias`` (float >= 0, default 0.5): subtracted from the play logit of every
  pitch that would start a note outside the key heard so far (`_Key`: the major or
  natural minor scale holding most of the sample's onsets, primer included, each
  onset's weight halving every `KEY_HALF_LIFE_S`). Held notes are never touched;
  0 turns it off. The models spread onsets over too many pitch classes (pitch-class
  entropy above the corpus's); 0.5 brought scale consistency to the validation
  clips' (1.0 overshot it and the classifier caught the thinner texture).
- ``dynamics`` (``"piece"`` default, or ``"predicted"``): ``"predicted"`` writes each
  played cell's volume as the dynamics head predicts it (DeepJ); ``"piece"`` writes
  one volume per sample: the mean of the primer's onset volumes when the primer has
  notes, else the mean of the volumes the head gave the sample's own onsets. The
  draws are the same either way (the model is fed its predicted volumes; only the
  written volume changes). The corpus is rendered from scores at one velocity (90),
  and the head's per-note noise (velocity std 1.5-2.6) was the classifier's first
  tell; use ``"predicted"`` for performances (MAESTRO).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.modeling.prv import (
    PLAY,
    REPLAY,
    VOLUME,
    check_columns,
    dense_steps,
    dense_to_rows,
    sparse_pieces,
)
from pipeline.modeling.sampling import GenerateError, SampleOptions, outside_scales, settings

if TYPE_CHECKING:
    from pipeline.modeling.prv.biaxial import BiaxialLSTM

__all__ = [
    "DEFAULTS",
    "generate_biaxial",
    "lstm_step",
    "resolve_style",
    "stepwise_logits",
]

DEFAULTS: dict[str, Any] = {
    "silence_steps": 2,
    "silence_heat": 0.3,
    "dynamics": "piece",
    "key_bias": 0.5,
}
"""The sampler's own settings (params ``sample.biaxial`` / ``sample.poph``), chosen on
validation clips of the default corpus; see `generate_biaxial`."""

DYNAMICS = ("predicted", "piece")

KEY_HALF_LIFE_S = 4.0
"""``key_bias``: an onset's weight in the sample's key halves every this many seconds."""

# A primer runs through the time-axis LSTM in chunks of this many steps (bounds memory).
PRIMER_CHUNK_STEPS = 512


def resolve_style(model: Any, style: str | None) -> int:
    """Index of `style` (None -> "<unk>"); ValueError listing the known styles."""
    if style is None:
        return 0
    styles = list(model.config.styles)
    if style not in styles:
        known = ", ".join(repr(s) for s in styles[1:]) or "none"
        raise ValueError(f"unknown style {style!r}; this model knows: {known}")
    return styles.index(style)


@torch.no_grad()
def generate_biaxial(
    model: Any, n: int, options: SampleOptions, generator: torch.Generator | None = None
) -> list[pd.DataFrame]:
    """Sample `n` pieces of a `BiaxialLSTM` (or PopH) step by step, pitch by pitch.

    Within a step pitches go low to high. At each pitch the play and replay logits
    are divided by the sample's temperature and each drawn as a Bernoulli
    (temperature <= 0: greedy, probability > 0.5); the replay draw only counts
    where the pitch plays, and a pitch that plays after a silent step is always a
    replay (a new onset). The draws feed the note axis (next pitch) and the time
    axis (next step), exactly as the ground truth does in training.

    The sampler's own settings (``options.settings``, params ``sample.<model>``;
    `DEFAULTS`, documented in the module docstring) raise the temperature of a
    silent sample (``silence_steps``, ``silence_heat``), steer onsets into the key
    heard so far (``key_bias``) and choose the written volume (``dynamics``).

    Of the other `SampleOptions`: ``temperature`` is the base temperature;
    sample i continues ``primer`` piece ``i % k`` of the k pieces in it (by sorted
    piece_id; each needs a cell inside the model's pitches), its steps from step 0
    kept in the output; samples whose primers are equally long are drawn in one batch
    (`_sample_groups`: nothing padded, so each continues its primer exactly as a call
    of its own would); ``length`` counts steps; ``style`` is one of ``config.styles``
    (None: "<unk>", any style); ``top_k`` and ``top_p`` are ignored (each cell is
    a Bernoulli draw; there is no ranked vocabulary to truncate).

    Returns:
        n DataFrames of prv rows (piece_id "sample-i", step, pitch, replay, volume),
        primer included.

    Raises:
        ValueError: unknown style (the message lists the known ones), bad primer.
        GenerateError: an unknown setting or a bad setting value.
    """
    cfg = model.config
    heat, dynamics, key_bias = _read_settings(model, options)
    style_id = resolve_style(model, options.style)
    length, seconds = options.length, options.seconds
    steps = int(length) if length is not None else round(seconds * cfg.steps_per_second)
    steps = max(0, steps)
    primers = _primers(model, n, options.primer)
    was_training = model.training
    model.eval()
    try:
        new = _sample_groups(model, primers, steps, style_id, generator, heat, key_bias)
    finally:
        model.train(was_training)
    out = []
    for i, p in enumerate(primers):
        written = new[i].cpu().numpy()
        if dynamics == "piece":
            written = _hold_volume(written, p)
        out.append(dense_to_rows(np.concatenate([p, written], axis=0), f"sample-{i}"))
    return out


generate_biaxial.primes_each_sample = True  # type: ignore[attr-defined]
"""Sample i continues primer piece i (of the pieces in sorted order): evaluation passes
all its primers in one batched call."""


def _sample_groups(
    model: Any,
    primers: list[np.ndarray],
    steps: int,
    style_id: int,
    generator: torch.Generator | None,
    heat: _Heat,
    key_bias: float,
) -> list[torch.Tensor]:
    """Each sample's `steps` new steps (steps, P, 3), continuing its (Tp, P, 3) primer.

    One batched `_sample` per primer length (shortest first; every sample, when none
    is primed): padding a shorter primer would put silence before it and shift its
    beat, so each sample is drawn as a call with its primer alone would draw it.
    """
    device = model.pitch_features.device
    new: list[torch.Tensor] = [torch.empty(0)] * len(primers)
    for length in sorted({len(p) for p in primers}):
        group = [i for i, p in enumerate(primers) if len(p) == length]
        prime = torch.from_numpy(np.stack([primers[i] for i in group])).to(device)
        key = _Key(model, len(group), key_bias) if key_bias > 0 else None
        drawn = _sample(model, prime, steps, style_id, generator, heat, key)
        for j, i in enumerate(group):
            new[i] = drawn[j]
    return new


def _read_settings(model: Any, options: SampleOptions) -> tuple[_Heat, str, float]:
    """The heat (temperature and silence settings), dynamics and key bias, checked."""
    name = model_name(model)
    own = settings(options, DEFAULTS, name)
    if own["silence_steps"] < 1:
        raise GenerateError(
            f"sample.{name}.silence_steps: expected >= 1, got {own['silence_steps']!r}"
        )
    if own["silence_heat"] < 0:
        raise GenerateError(
            f"sample.{name}.silence_heat: expected >= 0, got {own['silence_heat']!r}"
        )
    if own["dynamics"] not in DYNAMICS:
        known = ", ".join(DYNAMICS)
        raise GenerateError(
            f"sample.{name}.dynamics: expected one of {known}, got {own['dynamics']!r}"
        )
    if own["key_bias"] < 0:
        raise GenerateError(f"sample.{name}.key_bias: expected >= 0, got {own['key_bias']!r}")
    heat = _Heat(options.temperature, own["silence_steps"], own["silence_heat"])
    return heat, own["dynamics"], own["key_bias"]


def _hold_volume(written: np.ndarray, primer: np.ndarray) -> np.ndarray:
    """(T, P, 3) sampled steps with every played cell at one volume (``dynamics: piece``).

    The volume is the mean of the primer's onsets when it has any, else the mean the
    dynamics head gave the sample's own onsets.
    """
    source = primer if (primer[..., REPLAY] > 0).any() else written
    onsets = source[..., REPLAY] > 0
    if not onsets.any():
        return written
    held = written.copy()
    held[..., VOLUME] = np.where(written[..., PLAY] > 0, source[..., VOLUME][onsets].mean(), 0.0)
    return held


def _primers(model: Any, n: int, primer: pd.DataFrame | None) -> list[np.ndarray]:
    p = model.config.n_pitches
    if primer is None or len(primer) == 0:
        return [np.zeros((0, p, 3), dtype=np.float32) for _ in range(n)]
    check_columns(primer, "primer")
    pieces = sparse_pieces(primer, p)
    if not pieces.piece_ids:
        raise ValueError(f"primer: no cells inside pitches 0..{p - 1}")
    empty = sorted({str(i) for i in primer["piece_id"].unique()} - set(pieces.piece_ids))
    if empty:  # dropped, it would shift every later sample onto the next piece's primer
        raise ValueError(f"primer: no cells inside pitches 0..{p - 1} in {', '.join(empty)}")
    dense = [
        dense_steps(pieces, k, 0, int(pieces.n_steps[k]), p) for k in range(len(pieces.piece_ids))
    ]
    return [dense[i % len(dense)] for i in range(n)]


def _sample(
    model: Any,
    prime: torch.Tensor,
    steps: int,
    style_id: int,
    generator: torch.Generator | None,
    heat: _Heat,
    key: _Key | None,
) -> torch.Tensor:
    """Continue (n, Tp, P, 3) `prime` by `steps` sampled steps -> (n, steps, P, 3)."""
    n, prime_len, p, _ = prime.shape
    device = prime.device
    style_vec = model.style_vectors(torch.full((n,), style_id, dtype=torch.long, device=device))
    stepper = time_stepper(model, style_vec)
    prev = torch.zeros(n, p, 3, device=device)
    if prime_len:  # the primer only advances the time axis (inputs: steps -1 .. Tp - 2)
        stepper.feed(torch.cat([prev[:, None], prime[:, :-1]], dim=1))
        prev = prime[:, -1]
        if key is not None:
            key.hear(prime)
    out = torch.zeros(n, steps, p, 3, device=device)
    silent = torch.zeros(n, device=device)  # consecutive silent sampled steps per sample
    for t in range(steps):
        stepper.advance(prev)  # predicts step prime_len + t
        feats = stepper.features()
        temperature = heat.temperatures(silent)
        bias = key.bias(prev) if key is not None else None
        out[:, t], _ = _note_step(model, feats, prev, style_vec, generator, temperature, bias=bias)
        prev = out[:, t]
        if key is not None:
            key.hear(prev[:, None])
        sounding = prev[..., PLAY].sum(dim=-1) > 0
        silent = torch.where(sounding, torch.zeros_like(silent), silent + 1)
    return out


@torch.no_grad()
def stepwise_logits(model: Any, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Logits computed the way sampling computes them, step by step and pitch by pitch.

    With the ground truth in place of the draws this equals ``logits(x, style)`` in
    eval mode; the tests use it to check that sampling runs the trained model.

    Args:
        x: (B, T + 1, P, 3) steps; style: (B,) style indices.

    Returns:
        (B, T, P, 3) logits for steps 1..T.
    """
    style_vec = model.style_vectors(style)
    stepper = time_stepper(model, style_vec)
    logits = []
    for t in range(x.size(1) - 1):
        stepper.advance(x[:, t])
        feats = stepper.features()
        ones = torch.ones(x.size(0), device=x.device)
        logits.append(_note_step(model, feats, x[:, t], style_vec, None, ones, x[:, t + 1])[1])
    return torch.stack(logits, dim=1)


def _note_step(
    model: Any,
    feats: torch.Tensor,
    prev: torch.Tensor,
    style_vec: torch.Tensor,
    generator: torch.Generator | None,
    temperature: torch.Tensor,
    forced: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step pitch by pitch (low to high): (n, P, H) features -> (n, P, 3) cells.

    Each pitch's play and replay are drawn (`_bernoulli`, at each sample's
    `temperature` (n,), `bias` (n, P) added to the play logits drawn from), or
    taken from `forced`
    (n, P, 3) when given; the cells feed the next pitch's note-axis input.

    Returns:
        the step's play/replay/volume (n, P, 3) and its logits (n, P, 3).
    """
    n, p, _ = feats.shape
    current = torch.zeros(n, p, 3, device=feats.device)
    all_logits = torch.zeros(n, p, 3, device=feats.device)
    lower = torch.zeros(n, 3, device=feats.device)
    state = None
    for k in range(p):
        note_in = torch.cat([feats[:, k], lower, style_vec], dim=-1)  # (n, I)
        out, state = lstm_step(model.note_lstm, note_in, state)  # (n, Hn)
        logits = model.head(out)  # (n, 3)
        all_logits[:, k] = logits
        if forced is not None:
            current[:, k] = forced[:, k]
        else:
            play_logit = logits[:, PLAY] if bias is None else logits[:, PLAY] + bias[:, k]
            play = _bernoulli(play_logit, temperature, generator)
            replay = _bernoulli(logits[:, REPLAY], temperature, generator)
            replay = play * torch.maximum(replay, 1.0 - prev[:, k, PLAY])  # onset after rest
            current[:, k, PLAY] = play
            current[:, k, REPLAY] = replay
            current[:, k, VOLUME] = torch.sigmoid(logits[:, VOLUME]) * play
        lower = current[:, k]
    return current, all_logits


class _TimeStepper:
    """The time axis one step at a time: LSTM state plus the histories the hooks need.

    ``inputs`` keeps the last ``pre_time_steps`` per-pitch input features (for
    ``pre_time``), ``history`` the last ``context_steps`` time-axis outputs (for
    ``mix``); ``step`` is the index of the next step to predict (the beat feature).
    """

    def __init__(self, model: BiaxialLSTM, style_vec: torch.Tensor):
        self.model = model
        self.style_vec = style_vec
        self.state: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.inputs: list[torch.Tensor] = []  # time-axis input features, (n, P, F) per step
        self.history: list[torch.Tensor] = []  # time-axis outputs, (n, P, Ht) per step
        self.step = 0

    def _step_index(self, n: int, length: int, device: torch.device) -> torch.Tensor:
        return (self.step + torch.arange(length, device=device)).expand(n, length)

    def advance(self, prev: torch.Tensor) -> None:
        """Feed step t - 1 (n, P, 3): update the LSTM state and the histories."""
        n, p, _ = prev.shape
        model = self.model
        step = self._step_index(n, 1, prev.device)
        features = model.time_inputs(prev[:, None], self.style_vec, step)[:, 0]  # (n, P, F)
        self.inputs = [*self.inputs, features][-model.pre_time_steps :]
        inputs = model.pre_time(torch.stack(self.inputs, dim=2))[:, :, -1]  # (n, P, F')
        h, self.state = lstm_step(model.time_lstm, inputs.reshape(n * p, -1), self.state)
        self.history = [*self.history, h.reshape(n, p, -1)][-model.context_steps :]
        self.step += 1

    def feed(self, steps: torch.Tensor) -> None:
        """Feed (n, L, P, 3) steps at once (``advance`` L times, one LSTM call per chunk).

        Models whose ``pre_time`` looks back over steps are fed step by step.
        """
        if self.model.pre_time_steps > 1:
            for t in range(steps.size(1)):
                self.advance(steps[:, t])
            return
        n, length, p, _ = steps.shape
        model = self.model
        for start in range(0, length, PRIMER_CHUNK_STEPS):
            chunk = steps[:, start : start + PRIMER_CHUNK_STEPS]
            step = self._step_index(n, chunk.size(1), chunk.device)
            features = model.time_inputs(chunk, self.style_vec, step)  # (n, L, P, F)
            self.inputs = [features[:, -1]]  # pre_time_steps == 1 here
            inputs = model.pre_time(features.permute(0, 2, 1, 3))
            inputs = inputs.reshape(n * p, chunk.size(1), -1)
            state = None
            if self.state is not None:
                state = tuple(torch.stack(parts) for parts in zip(*self.state, strict=True))
            out, (h_n, c_n) = model.time_lstm(inputs, state)  # (n*P, L, Ht)
            self.state = [(h_n[k], c_n[k]) for k in range(h_n.size(0))]
            out = out.reshape(n, p, chunk.size(1), -1)
            recent = [
                out[:, :, t]
                for t in range(max(0, chunk.size(1) - model.context_steps), chunk.size(1))
            ]
            self.history = [*self.history, *recent][-model.context_steps :]
            self.step += chunk.size(1)

    def features(self) -> torch.Tensor:
        """The note-axis features (n, P, H) of the step after the last one fed."""
        return self.model.mix(torch.stack(self.history, dim=2))[:, :, -1]


class _CachedStepper:
    """The frame transformer's time axis one step at a time: each layer's keys and values
    of the steps fed so far (batch n x P) are kept, so a new step attends to all of them
    without recomputing them, exactly as the whole sequence does in `FrameTransformer.logits`.
    """

    def __init__(self, model: Any, style_vec: torch.Tensor):
        self.model = model
        self.style_vec = style_vec
        self.past: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.last: torch.Tensor | None = None  # (n, P, D): the newest step's output
        self.step = 0

    def feed(self, steps: torch.Tensor) -> None:
        """Feed (n, L, P, 3) steps at once (a primer): one pass, the caches extended."""
        n, length = steps.shape[:2]
        step = (self.step + torch.arange(length, device=steps.device)).expand(n, length)
        features = self.model.time_inputs(steps, self.style_vec, step)  # (n, L, P, F)
        h, self.past = self.model.time_axis(features, self.past)  # (n, L, P, D)
        self.last = h[:, -1]
        self.step += length

    def advance(self, prev: torch.Tensor) -> None:
        """Feed step t - 1 (n, P, 3)."""
        self.feed(prev[:, None])

    def features(self) -> torch.Tensor:
        """The note-axis features (n, P, D) of the step after the last one fed."""
        assert self.last is not None, "feed a step first"
        return self.last


def time_stepper(model: Any, style_vec: torch.Tensor) -> _TimeStepper | _CachedStepper:
    """The model's time axis, one step at a time: cached attention or the LSTM."""
    if hasattr(model, "time_axis"):  # the frame transformer
        return _CachedStepper(model, style_vec)
    return _TimeStepper(model, style_vec)


def model_name(model: Any) -> str:
    """The registered name of a prv network (its params: ``sample.<name>``)."""
    if hasattr(model, "time_axis"):
        return "frame_transformer"
    return "poph" if hasattr(model.config, "harmony_weight") else "biaxial"


def lstm_step(
    lstm: nn.LSTM, x: torch.Tensor, state: list[tuple[torch.Tensor, torch.Tensor]] | None
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """One time step of a (batch_first, unidirectional) `nn.LSTM` in eval mode.

    Calling ``nn.LSTM`` on length-1 sequences costs a kernel launch per call, which
    dominates pitch-by-pitch sampling; the gate arithmetic on its own weights is the
    same function (tested against ``nn.LSTM``) at a fraction of the cost.

    Args:
        x: (N, input_size); state: per layer (h, c), each (N, hidden); None = zeros.

    Returns:
        the top layer's h (N, hidden) and the new per-layer state.
    """
    new_state = []
    for layer in range(lstm.num_layers):
        w_ih = getattr(lstm, f"weight_ih_l{layer}")
        w_hh = getattr(lstm, f"weight_hh_l{layer}")
        bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
        if state is None:
            h = c = x.new_zeros(x.size(0), lstm.hidden_size)
        else:
            h, c = state[layer]
        gates = torch.addmm(bias, x, w_ih.T) + h @ w_hh.T  # (N, 4H): input, forget, cell, output
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        new_state.append((h, c))
        x = h
    return x, new_state


def _bernoulli(
    logits: torch.Tensor, temperature: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """(n,) 0/1 draws with P(1) = sigmoid(logits / temperature), a temperature per sample.

    Greedy (1 where the logit is > 0) for samples whose temperature is <= 0; no
    random numbers are drawn when every sample is greedy.
    """
    greedy = (logits > 0).float()
    hot = temperature > 0
    if not bool(hot.any()):
        return greedy
    probs = torch.sigmoid(logits / torch.where(hot, temperature, torch.ones_like(temperature)))
    u = torch.rand(probs.shape, generator=generator, device=probs.device)
    return torch.where(hot, (u < probs).float(), greedy)


@dataclass(frozen=True)
class _Heat:
    """Each sample's draw temperature: ``base``, raised while the sample stays silent.

    After ``after`` consecutive silent steps every further one adds ``rate``; the
    first step with a note resets it (DeepJ's generation, see `generate_biaxial`).
    """

    base: float
    after: int
    rate: float

    def temperatures(self, silent: torch.Tensor) -> torch.Tensor:
        """(n,) consecutive silent steps so far -> (n,) temperature of the next step.

        Greedy sampling (``base <= 0``) stays greedy: it draws nothing, so it stays
        reproducible without a generator.
        """
        if self.base <= 0:
            return torch.full_like(silent, self.base)
        return self.base + self.rate * (silent - self.after + 1).clamp(min=0)


class _Key:
    """Each sample's key so far, and the play-logit bias against onsets outside it.

    The key is the major or natural minor scale (`outside_scales`: the scales of
    `pipeline.evaluation.metrics.scale_consistency` and PopH's harmony loss) holding
    the most onsets heard so far, primer included, each onset's
    weight halving every `KEY_HALF_LIFE_S` seconds (so a modulation is followed).
    """

    def __init__(self, model: Any, n: int, strength: float):
        cfg = model.config
        device = model.pitch_features.device
        self.strength = strength
        self.decay = 0.5 ** (1.0 / (KEY_HALF_LIFE_S * cfg.steps_per_second))
        self.outside = outside_scales().to(device)  # (24, 12): 1 = not in the scale
        pitch_class = (torch.arange(cfg.n_pitches, device=device) + cfg.min_pitch) % 12
        self.fold = F.one_hot(pitch_class, 12).float()  # (P, 12)
        self.counts = torch.zeros(n, 12, device=device)  # decayed onsets per pitch class

    def hear(self, steps: torch.Tensor) -> None:
        """Count the onsets of (n, L, P, 3) steps, in order."""
        for t in range(steps.size(1)):
            onsets = steps[:, t, :, PLAY] * steps[:, t, :, REPLAY]  # (n, P)
            self.counts = self.counts * self.decay + onsets @ self.fold

    def bias(self, prev: torch.Tensor) -> torch.Tensor:
        """(n, P): ``-strength`` for pitches outside the key not sounding at `prev`.

        Zero for a sample that has heard no onset yet, and for pitches still sounding
        (a held note is never cut short; only new notes are steered).
        """
        best = (self.counts @ self.outside.T).argmin(dim=-1)  # (n,): fewest onsets outside
        heard = (self.counts.sum(dim=-1, keepdim=True) > 0).float()  # (n, 1)
        outside = (self.outside[best] * heard) @ self.fold.T  # (n, P)
        return -self.strength * outside * (prev[..., PLAY] == 0).float()
