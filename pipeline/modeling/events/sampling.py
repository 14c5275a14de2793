"""Sampling from the events model (`transformer`): autoregressive, with a key/value cache.

`generate_transformer` draws tokens with `sample_next` (temperature, then top-k and
top-p filters; PAD and BOS never drawn), feeding each back through a `ContextWindow`:
`MusicTransformer.logits` with the per-layer key/value cache, re-encoded from scratch
whenever the context would outgrow the training window (see `ContextWindow` for why).

A `NoteState` follows the notes each sample has sounding, paired as decoding will pair
them, and keeps the sequence one the encoder could have written (the settings of
`generate_transformer`). Why: the events encoding leaves each note's end to a later
NOTE_OFF, and a model that loses count of what sounds writes NOTE_OFFs of pitches that
are silent (the decoder ignores them) and strikes sounding pitches again (FIFO pairing
then leaves one of the two open until the end). The default run's model (200 steps)
did both: in 8 clips, 28% of its NOTE_OFFs closed nothing, half its NOTE_ONs struck a
sounding pitch, and 54 notes per clip were still open at the end. Measured on 128
clips of 30 s against the 22 validation clips (notes 0.52 s long, polyphony 3.9):
without the rules its notes last 3.9 s and 19 pitches sound at once, with them 0.86 s
and 5.0 (top-p 0.95: 0.67 s, 4.0); trained 1500 steps the model still leaves notes
sounding (1.2 s, 8.2), the rules bring it to 0.48 s and 3.7, and find the fake's
accuracy from 0.82 to 0.74.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.modeling.sampling import GenerateError, SampleOptions, filter_logits, settings
from pipeline.representations.events import (
    BOS,
    EOS,
    MAX_SHIFT_STEPS,
    N_PITCHES,
    NOTE_OFF,
    NOTE_ON,
    PAD,
    STEP_S,
    TIME_SHIFT,
    VOCAB_SIZE,
)

__all__ = [
    "DEFAULTS",
    "ContextWindow",
    "NoteState",
    "filter_logits",
    "generate_transformer",
    "reencode_chunk",
    "sample_next",
    "time_shift_seconds",
]

# TIME_SHIFT tokens TIME_SHIFT + k (k = 1..MAX_SHIFT_STEPS) advance time by k * STEP_S.
TIME_SHIFT_FIRST = TIME_SHIFT + 1
TIME_SHIFT_LAST = TIME_SHIFT + MAX_SHIFT_STEPS
# Without `length`, generation stops after seconds * this many tokens even if the model
# never emits enough TIME_SHIFTs (dense piano music has ~30-100 events per second).
MAX_TOKENS_PER_SECOND = 200
REPEAT_ON = ("end", "mask", "allow")
DEFAULTS: dict[str, Any] = {"mask_impossible": True, "repeat_on": "end", "max_note_s": 5.0}
"""The sampler's own settings (params ``sample.transformer``); see `generate_transformer`."""
_SILENT = np.iinfo(np.int64).max // 2  # NoteState.oldest of a pitch not sounding


def sample_next(
    logits: torch.Tensor,
    generator: torch.Generator | None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw one token per row of `logits` (B, V); temperature <= 0 means greedy.

    `allowed` (B, V) bool, when given, removes the tokens it marks False before the
    temperature and the filters (see `NoteState.allowed`).
    """
    logits = logits.float().clone()
    if allowed is not None:
        logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
    logits[:, PAD] = float("-inf")  # never part of a sequence
    logits[:, BOS] = float("-inf")  # only ever the first token
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = logits.softmax(dim=-1)  # (B, V)
    if generator is not None and probs.device != generator.device:
        probs = probs.to(generator.device)
    # inverse-CDF draw: one uniform per row (several times cheaper than multinomial
    # for one draw); a zero-probability token never owns an interval of the CDF
    cdf = probs.double().cumsum(dim=-1)  # (B, V)
    u = torch.rand(probs.size(0), 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    drawn = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1)  # (B,)
    return drawn.clamp(max=probs.size(-1) - 1).to(logits.device)


def reencode_chunk(seq_len: int) -> int:
    """Tokens generated between two re-encodes of the context: a quarter window (>= 1)."""
    return max(1, seq_len // 4)


class ContextWindow:
    """The model's context while sampling: exactly what a training window shows it.

    Training runs the model on windows of at most `seq_len` tokens at positions
    0 .. seq_len-1, with every key and value computed inside the window. A sliding
    key/value cache breaks both past seq_len: sine positions grow beyond any trained
    one, and cached keys of layer 2 and up were computed while attending to tokens
    that have since left the window (a receptive field of up to n_layers * seq_len
    tokens), which no training window produces; relative positions alone fix the
    first but not the second. (Random-init default model, the first 620 tokens of a
    test piece: the sliding cache's next-token distribution is 0.058 nats (KL, mean
    over the 492 positions past seq_len) from a fresh pass over the same window.)

    So the window grows with the cache up to `seq_len` tokens; the token that would
    exceed it triggers a fresh forward pass over the last ``seq_len - k + 1`` tokens
    (k = `reencode_chunk`, a quarter window) at positions 0.., and the cache grows
    again from there: one re-encode per k sampled tokens. Every next-token
    distribution is then that of a fresh forward pass over the current window
    (`window`) of ``seq_len - k + 1 .. seq_len`` tokens, lengths training windows
    have. k trades context for speed: k = 1 re-encodes the full window for every
    token (a seq_len-token forward per token); a quarter window re-encodes
    ``(seq_len - k + 1) / k`` (about 3) tokens per sampled token, in one batched
    pass far cheaper than as many cached steps, and keeps at least 3/4 of the
    trained context (default model, CPU, 1 thread, 512 tokens: 189 tokens/s against
    204 for the sliding cache, `benchmarks/bench_transformer.py`).
    """

    def __init__(self, model: Any, prime: torch.Tensor):
        """Encode `prime` (B, P); the model sees its last seq_len tokens."""
        self.model = model
        self.seq_len = int(model.config.seq_len)
        self.keep = self.seq_len - reencode_chunk(self.seq_len) + 1  # tokens re-encoded
        self.window = prime[:, -self.seq_len :]  # (B, W)
        logits, self.past = model.logits(self.window)
        self.logits = logits[:, -1]  # (B, V) next-token logits
        self.reencodes = 0

    def push(self, token: torch.Tensor) -> torch.Tensor:
        """Append `token` (B,) to the window; returns the next-token logits (B, V)."""
        n = self.window.size(1)
        self.window = torch.cat([self.window, token[:, None]], dim=1)  # (B, W+1)
        if n + 1 > self.seq_len:  # re-encode the last `keep` tokens at positions 0..
            self.window = self.window[:, -self.keep :]
            logits, self.past = self.model.logits(self.window)
            self.reencodes += 1
        else:
            logits, self.past = self.model.logits(token[:, None], self.past, start_pos=n)
        self.logits = logits[:, -1]
        return self.logits


class NoteState:
    """The notes each sample has sounding while it is drawn, paired as decoding pairs them.

    Per sample and pitch, the onset times (in TIME_SHIFT steps) of the open notes, oldest
    first: a NOTE_ON opens one, a NOTE_OFF closes the oldest (and one of a pitch not
    sounding is ignored), exactly as `pipeline.representations.events.decode_tokens`
    will read the tokens. From it, the sampler's settings (`generate_transformer`):

    - `allowed`: NOTE_OFF only for a pitch sounding since before the current time
      (``mask_impossible``); NOTE_ON only for a silent pitch (``repeat_on: "mask"``)
      or one not struck at the current time (``"end"``);
    - `emit`: the token a sample writes instead of its draw: first a NOTE_OFF for each
      note sounding ``max_note_s`` or longer (the oldest first), then, with
      ``repeat_on: "end"``, the NOTE_ON that a drawn NOTE_ON of a sounding pitch became
      (that pitch's NOTE_OFF is written in the draw's place: the encoder's order for a
      note that ends as the same pitch strikes again).
    """

    def __init__(self, batch: int, mask_impossible: bool, repeat_on: str, max_note_s: float):
        self.open: list[list[list[int]]] = [[[] for _ in range(N_PITCHES)] for _ in range(batch)]
        self.clock = np.zeros(batch, np.int64)
        self.oldest = np.full((batch, N_PITCHES), _SILENT, np.int64)
        self.pending = np.full(batch, -1, np.int64)  # a NOTE_ON to write next
        self.mask_off = mask_impossible
        self.repeat_on = repeat_on
        self.max_steps = round(max_note_s / STEP_S) if max_note_s > 0 else 0

    def sounding(self) -> np.ndarray:
        """(B, 128) bool: pitches with an open note."""
        return self.oldest < _SILENT

    def allowed(self) -> torch.Tensor | None:
        """(B, V) bool of the tokens a sample may draw now, or None (all)."""
        if not self.mask_off and self.repeat_on == "allow":
            return None
        on = self.sounding()
        allowed = np.ones((len(on), VOCAB_SIZE), bool)
        struck_now = self.oldest == self.clock[:, None]  # (B, 128)
        if self.mask_off:  # an encoded note lasts >= one step
            allowed[:, NOTE_OFF : NOTE_OFF + N_PITCHES] = on & ~struck_now
        if self.repeat_on == "mask":
            allowed[:, NOTE_ON : NOTE_ON + N_PITCHES] = ~on
        elif self.repeat_on == "end":  # not struck again at the instant it was struck
            allowed[:, NOTE_ON : NOTE_ON + N_PITCHES] = ~struck_now
        return torch.from_numpy(allowed)

    def emit(self, drawn: np.ndarray) -> np.ndarray:
        """The tokens (B,) the samples write, given their draws (B,); see the class."""
        out = drawn.astype(np.int64).copy()
        late = self.overdue()
        forced_off = late >= 0
        waiting = (self.pending >= 0) & ~forced_off
        if self.repeat_on == "end":
            pitch = np.clip(out - NOTE_ON, 0, N_PITCHES - 1)
            is_on = (out >= NOTE_ON) & (out < NOTE_ON + N_PITCHES)
            again = is_on & self.sounding()[np.arange(len(out)), pitch] & ~forced_off & ~waiting
            self.pending[again] = out[again]
            out[again] = NOTE_OFF + pitch[again]
        out[waiting] = self.pending[waiting]
        self.pending[waiting] = -1
        out[forced_off] = NOTE_OFF + late[forced_off]
        return out

    def overdue(self) -> np.ndarray:
        """(B,) the pitch of each sample's oldest note if it has sounded max_note_s, else -1."""
        if not self.max_steps:
            return np.full(len(self.clock), -1, np.int64)
        pitch = self.oldest.argmin(axis=1)
        age = self.clock - self.oldest[np.arange(len(pitch)), pitch]
        return np.where(age >= self.max_steps, pitch, -1)

    def update(self, tokens: np.ndarray) -> None:
        """Advance each sample by the token it wrote (B,)."""
        for b, token in enumerate(tokens.tolist()):
            if TIME_SHIFT < token <= TIME_SHIFT + MAX_SHIFT_STEPS:
                self.clock[b] += token - TIME_SHIFT
            elif NOTE_ON <= token < NOTE_ON + N_PITCHES:
                self._push(b, token - NOTE_ON)
            elif NOTE_OFF <= token < NOTE_OFF + N_PITCHES:
                self._pop(b, token - NOTE_OFF)

    def update_all(self, tokens: np.ndarray) -> None:
        """Advance every sample by the same tokens (a shared primer), in order."""
        for token in np.asarray(tokens, np.int64).tolist():
            self.update(np.full(len(self.clock), token, np.int64))

    def _push(self, b: int, pitch: int) -> None:
        notes = self.open[b][pitch]
        notes.append(int(self.clock[b]))
        self.oldest[b, pitch] = notes[0]

    def _pop(self, b: int, pitch: int) -> None:
        notes = self.open[b][pitch]
        if notes:
            notes.pop(0)
        self.oldest[b, pitch] = notes[0] if notes else _SILENT


def time_shift_seconds(tokens: np.ndarray | torch.Tensor) -> Any:
    """Seconds that TIME_SHIFT `tokens` advance (0 for other tokens), elementwise."""
    is_shift = (tokens >= TIME_SHIFT_FIRST) & (tokens <= TIME_SHIFT_LAST)
    return (tokens - TIME_SHIFT) * is_shift * STEP_S


@torch.no_grad()
def generate_transformer(
    model: Any, n: int, options: SampleOptions, generator: torch.Generator | None = None
) -> list[pd.DataFrame]:
    """Sample `n` event sequences of a `MusicTransformer` with a key/value cache.

    Of the `SampleOptions`: tokens are drawn with ``temperature`` (<= 0: greedy),
    then the ``top_k`` and ``top_p`` filters; PAD and BOS are never drawn. A sample
    stops at EOS, after ``length`` new tokens when given, otherwise once its
    TIME_SHIFTs add up to ``seconds`` (capped at ``seconds * MAX_TOKENS_PER_SECOND``
    tokens). With a ``primer`` (events rows, a ``tokens`` column) sample i continues
    row ``i % len(primer)`` after removing its trailing EOS/PAD, and the returned
    tokens are primer + continuation; the model sees at most the last `seq_len`
    primer tokens; without one samples start from BOS. ``style`` is ignored (the
    transformer is unconditioned).

    Settings (``options.settings``, params ``sample.transformer``; defaults chosen on
    validation clips, see the module docstring), applied by a `NoteState`:

    - ``mask_impossible`` (True): never draw an event the encoder never writes: a
      NOTE_OFF of a pitch not sounding, or one at the instant its note began (an
      encoded note lasts at least one 10 ms step). False: draw every token.
    - ``repeat_on`` ("end"): a NOTE_ON of a pitch already sounding. "end" writes
      that pitch's NOTE_OFF in its place and the NOTE_ON next (the earlier note
      ends as the pitch strikes again, Magenta's performance decoding; a second
      strike at the instant the note began is not drawn); "mask" never draws it;
      "allow" draws it (the decoder pairs ends first-in-first-out, as for two voices
      in unison).
    - ``max_note_s`` (5.0): a note that has sounded this long is ended: its NOTE_OFF
      is written before the next draw, at the first time step at or after the
      limit (Magenta's performance decoding also caps notes at 5 s); 0: no limit.

    Every token written, forced or drawn, uses one draw of `generator`, so a seed
    gives one sequence. ``temperature`` <= 0 is greedy over the allowed tokens.

    A sample that did not end with EOS gets one appended, so rows always end with
    EOS. Past `seq_len` tokens the cache keeps the last ``seq_len - 1`` positions, so
    attention spans stay those of training and relative distances stay exact (with
    `sine_positions`, absolute positions past seq_len were never seen in training).

    Returns:
        n DataFrames with columns piece_id ("sample-i") and tokens (np.uint16).
    """
    own = _note_settings(options)
    length, seconds = options.length, options.seconds
    primers = _primers(n, options.primer)
    limit = length if length is not None else max(1, int(seconds * MAX_TOKENS_PER_SECOND))
    was_training = model.training
    model.eval()
    try:
        results: list[np.ndarray | None] = [None] * n
        groups: dict[bytes, list[int]] = {}
        for i, p in enumerate(primers):  # samples sharing a primer are one batch
            groups.setdefault(p.tobytes(), []).append(i)
        for members in groups.values():
            prime = primers[members[0]]
            state = NoteState(len(members), **own)
            state.update_all(prime)
            continuations = _sample_batch(
                model,
                prime,
                state,
                generator,
                options,
                limit,
                None if length is not None else seconds,
            )
            for i, cont in zip(members, continuations, strict=True):
                results[i] = np.concatenate([prime, cont]).astype(np.uint16)
    finally:
        model.train(was_training)
    return [
        pd.DataFrame({"piece_id": [f"sample-{i}"], "tokens": [tokens]})
        for i, tokens in enumerate(results)
    ]


def _primers(n: int, primer: pd.DataFrame | None) -> list[np.ndarray]:
    if primer is None or len(primer) == 0:
        return [np.array([BOS], dtype=np.int64) for _ in range(n)]
    if "tokens" not in primer:
        raise ValueError(f"primer: no 'tokens' column (columns: {list(primer.columns)})")
    rows = [np.asarray(t, dtype=np.int64) for t in primer["tokens"]]
    out = []
    for i in range(n):
        tokens = rows[i % len(rows)]
        if tokens.size and (tokens.min() < 0 or tokens.max() >= VOCAB_SIZE):
            raise ValueError(f"primer row {i % len(rows)}: token ids outside 0..{VOCAB_SIZE - 1}")
        end = len(tokens)
        while end > 0 and tokens[end - 1] in (EOS, PAD):
            end -= 1
        out.append(tokens[:end] if end else np.array([BOS], dtype=np.int64))
    return out


def _note_settings(options: SampleOptions) -> dict[str, Any]:
    """The sampler's own settings (`DEFAULTS`), checked."""
    own = settings(options, DEFAULTS, "transformer")
    if own["repeat_on"] not in REPEAT_ON:
        raise GenerateError(
            f"sample.transformer.repeat_on: expected one of {', '.join(REPEAT_ON)}, "
            f"got {own['repeat_on']!r}"
        )
    if own["max_note_s"] < 0:
        raise GenerateError(
            f"sample.transformer.max_note_s: expected >= 0 (0: no limit), got {own['max_note_s']!r}"
        )
    return own


def _sample_batch(
    model: Any,
    prime: np.ndarray,
    state: NoteState,
    generator: torch.Generator | None,
    options: SampleOptions,
    limit: int,
    seconds: float | None,
) -> list[np.ndarray]:
    """Continue `prime` once per sample of `state`; returns each continuation (ending EOS)."""
    batch = len(state.clock)
    temperature, top_k, top_p = options.temperature, options.top_k, options.top_p
    device = next(model.parameters()).device
    window = torch.as_tensor(prime, device=device).repeat(batch, 1)  # (B, P)
    context = ContextWindow(model, window)
    drawn: list[torch.Tensor] = []
    n_drawn = torch.full((batch,), limit, dtype=torch.long)
    elapsed = torch.zeros(batch, dtype=torch.float64)
    done = torch.zeros(batch, dtype=torch.bool)
    for step in range(limit):
        allowed = state.allowed()
        token = sample_next(context.logits, generator, temperature, top_k, top_p, allowed)
        token_cpu = torch.from_numpy(state.emit(token.cpu().numpy()))  # (B,)
        state.update(token_cpu.numpy())
        token = token_cpu.to(token.device)
        drawn.append(token)
        elapsed += time_shift_seconds(token_cpu).double()
        stop = token_cpu == EOS
        if seconds is not None:
            stop |= elapsed >= seconds
        newly = stop & ~done
        n_drawn[newly] = step + 1
        done |= stop
        if bool(done.all()) or step + 1 == limit:
            break
        context.push(token)
    tokens = torch.stack(drawn, dim=1).cpu().numpy() if drawn else np.zeros((batch, 0), int)
    out = []
    for i in range(batch):
        cont = tokens[i, : int(n_drawn[i])]
        if cont.size == 0 or cont[-1] != EOS:
            cont = np.append(cont, EOS)
        out.append(cont.astype(np.int64))
    return out
