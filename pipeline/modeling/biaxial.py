"""Biaxial LSTM with style conditioning (DeepJ) on play/replay/volume steps.

DeepJ (H. H. Mao, T. Shin, G. W. Cottrell, "DeepJ: Style-Specific Music Generation",
ICSC 2018, arXiv:1801.00887) extends D. Johnson's biaxial LSTM with a replay channel,
a dynamics (volume) output and a learned style embedding. The input of step t is the
prv tensor of step t - 1 (``prv_data``: channels play, replay, volume per pitch):

1. **Features per (t, pitch)**: play and replay of the pitches within
   ``±neighbour_window`` semitones at t - 1 (the pitch's own included, zeros beyond
   the range), the pitch's own volume at t - 1, its position (pitch index scaled to
   [0, 1]), its pitch class one-hot (12; from the store's ``min_pitch``) and the
   style embedding. DeepJ's beat (bar position) feature is left out: the prv grid is
   in seconds, not beats, so there is no bar position to give.
2. **Time axis**: an LSTM (``n_layers`` x ``time_hidden``) shared by all pitches runs
   over time for each pitch (batch B x P).
3. ``mix`` hook: identity here; `pipeline.modeling.poph` puts attention over time and
   an octave convolution over pitch here.
4. **Note axis**: an LSTM (``n_layers`` x ``note_hidden``) runs across pitches, low to
   high, at each step (batch B x T). Its input is the time-axis output, the previous
   (lower) pitch's *ground-truth* play and replay at this step (teacher forcing;
   zeros below the lowest pitch) and the style embedding.
5. **Heads** per (t, pitch): play logit, replay logit, dynamics (sigmoid of a logit).

Losses (all in nats or squared volume, per cell): ``play`` = BCE of play over every
pitch-step inside the piece; ``replay`` = BCE of replay over the truly played cells
only; ``dynamics`` = MSE of volume over the truly played cells only (replay and
volume are undefined where nothing sounds); ``loss`` = their sum. ``nll`` is the
play BCE (nats per pitch-step), comparable with the per-pitch baseline.

Style: DeepJ feeds a one-hot composer through a linear layer; ``nn.Embedding`` is the
same thing. With probability ``style_dropout`` a training window's style is replaced
by ``<unk>`` (index 0), so ``<unk>`` learns "any style": it is what test pieces by
unseen composers get, and what ``generate(style=None)`` uses.

Registered as model ``biaxial`` on the ``prv`` store; params section ``models.biaxial``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.modeling import prv_data as prv
from pipeline.modeling.base import ModelSpec, StoreData, register
from pipeline.params import require

log = logging.getLogger(__name__)

PLAY, REPLAY, VOLUME = prv.PLAY, prv.REPLAY, prv.VOLUME
# Initial bias of the play logit: sigmoid(-2) ~= 0.12, about the share of played cells
# in piano music on 48 pitches, so training does not spend its first steps on it.
INITIAL_PLAY_LOGIT = -2.0
# A primer runs through the time-axis LSTM in chunks of this many steps (bounds memory).
PRIMER_CHUNK_STEPS = 512


@dataclass(frozen=True)
class Config:
    """The `models.biaxial` params section.

    Defaults beat the baseline after about a minute on two CPU cores (learning rate
    1e-2). Scale toward DeepJ: ``time_hidden: 256``, ``note_hidden: 128``,
    ``n_layers: 2``, ``style_dim: 64``, ``seq_len: 128``, ``dropout: 0.5``.
    ``styles``, ``min_pitch``, ``n_pitches`` and ``steps_per_second`` are filled in
    from the prv store by the spec's ``prepare`` (leave them empty/0); checkpoints
    keep the filled-in values, so ``--style NAME`` works from the checkpoint alone.
    """

    time_hidden: int = 32  # time-axis LSTM units
    note_hidden: int = 32  # note-axis LSTM units
    n_layers: int = 1  # layers of each LSTM
    style_dim: int = 16  # style embedding size (0: no style conditioning)
    neighbour_window: int = 12  # semitones each side whose previous play/replay is input
    seq_len: int = 32  # steps per training window (32 x 1/8 s = 4 s)
    dropout: float = 0.0  # on the time- and note-axis outputs (and between layers)
    style_dropout: float = 0.1  # P(a training window's style is replaced by <unk>)
    styles: tuple[str, ...] = ()  # style vocabulary, "<unk>" first (prepare)
    min_pitch: int = 0  # MIDI pitch of index 0 (prepare)
    n_pitches: int = 0  # pitch axis size (prepare)
    steps_per_second: float = 0.0  # prv grid (prepare)

    def validate(self) -> None:
        require(self.time_hidden > 0 and self.note_hidden > 0, "hidden sizes must be > 0")
        require(self.n_layers >= 1, "n_layers must be >= 1")
        require(self.style_dim >= 0, "style_dim must be >= 0")
        require(self.neighbour_window >= 0, "neighbour_window must be >= 0")
        require(self.seq_len >= 1, "seq_len must be >= 1")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        require(0.0 <= self.style_dropout <= 1.0, "style_dropout must be in [0, 1]")
        require(
            not self.styles or self.styles[0] == prv.UNKNOWN_STYLE,
            f"styles must start with {prv.UNKNOWN_STYLE!r}",
        )
        require(len(set(self.styles)) == len(self.styles), "styles must be distinct")
        require(self.min_pitch >= 0 and self.n_pitches >= 0, "pitch range must be >= 0")
        require(self.min_pitch + self.n_pitches <= 128, "pitch range must end at <= 127")
        require(self.steps_per_second >= 0, "steps_per_second must be >= 0")


def prepare(store: StoreData, config: Any) -> Any:
    """Fill the style vocabulary and the grid (pitch range, steps/s) in from the store.

    A non-empty ``styles`` in params.yaml is kept (a fixed vocabulary); otherwise it
    is ``["<unk>", *sorted styles of the train pieces]``.
    """
    min_pitch, n_pitches, steps_per_second = prv.store_prv_params(store)
    styles = tuple(config.styles) or tuple(prv.style_vocabulary(store))
    return dataclasses.replace(
        config,
        styles=styles,
        min_pitch=min_pitch,
        n_pitches=n_pitches,
        steps_per_second=steps_per_second,
    )


def check_prepared(config: Any) -> None:
    if config.n_pitches <= 0 or config.steps_per_second <= 0 or not config.styles:
        raise ValueError(
            "config has no pitch range/grid/styles: build it with the spec's prepare(store, "
            "config) (fit does) or load it from a checkpoint"
        )


# --------------------------------------------------------------------------------------
# Losses


def prv_losses(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """DeepJ's three terms, each a mean over the cells it is defined on.

    Args:
        logits: (B, T, P, 3) play logit, replay logit, dynamics logit.
        target: (B, T, P, 3) true play, replay, volume.
        mask: (B, T), 1 for steps inside the piece.

    Returns:
        play (BCE per pitch-step), replay (BCE per played cell), dynamics (MSE per
        played cell), cells (number of pitch-steps), played (number of played cells).
    """
    cell_mask = mask[..., None].expand_as(target[..., PLAY])  # (B, T, P)
    played = target[..., PLAY] * cell_mask  # (B, T, P)
    cells = cell_mask.sum().clamp(min=1.0)
    n_played = played.sum()
    play = F.binary_cross_entropy_with_logits(
        logits[..., PLAY], target[..., PLAY], reduction="none"
    )
    replay = F.binary_cross_entropy_with_logits(
        logits[..., REPLAY], target[..., REPLAY], reduction="none"
    )
    volume_error = (torch.sigmoid(logits[..., VOLUME]) - target[..., VOLUME]) ** 2
    return {
        "play": (play * cell_mask).sum() / cells,
        "replay": (replay * played).sum() / n_played.clamp(min=1.0),
        "dynamics": (volume_error * played).sum() / n_played.clamp(min=1.0),
        "cells": cells,
        "played": n_played,
    }


# --------------------------------------------------------------------------------------
# The model


class BiaxialLSTM(nn.Module):
    """Time-axis then note-axis LSTM over prv steps; see the module docstring.

    Subclasses change the architecture through two hooks: ``mix`` (time-axis
    features -> features for the note axis) with ``mix_out``/``context_steps``, and
    ``extra_losses`` (terms added to the loss).
    """

    def __init__(self, config: Config):
        super().__init__()
        check_prepared(config)
        self.config = config
        n_pitches, window = config.n_pitches, config.neighbour_window
        pitch = torch.arange(n_pitches)
        pitch_class = F.one_hot((pitch + config.min_pitch) % 12, 12).float()  # (P, 12)
        position = (pitch.float() / max(1, n_pitches - 1))[:, None]  # (P, 1)
        self.register_buffer("pitch_features", torch.cat([position, pitch_class], dim=1))
        self.style_embedding = (
            nn.Embedding(len(config.styles), config.style_dim) if config.style_dim else None
        )
        time_in = 2 * (2 * window + 1) + 1 + 13 + config.style_dim
        between = config.dropout if config.n_layers > 1 else 0.0
        self.time_lstm = nn.LSTM(
            time_in, config.time_hidden, config.n_layers, batch_first=True, dropout=between
        )
        note_in = self.mix_out + 2 + config.style_dim
        self.note_lstm = nn.LSTM(
            note_in, config.note_hidden, config.n_layers, batch_first=True, dropout=between
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.note_hidden, 3)
        with torch.no_grad():  # start near the data's sparsity, not at P(play) = 0.5
            self.head.bias[PLAY] = INITIAL_PLAY_LOGIT

    # -- hooks --------------------------------------------------------------------------

    @property
    def mix_out(self) -> int:
        """Feature size ``mix`` returns (the note axis's input size)."""
        return self.config.time_hidden

    @property
    def context_steps(self) -> int:
        """Time-axis steps ``mix`` needs to see when generating (1: only the current)."""
        return 1

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        """(B, P, T, time_hidden) time-axis outputs -> (B, P, T, mix_out); causal in T."""
        return h

    def extra_losses(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor], mask: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Extra loss terms: name -> (weighted term added to the loss, value to log)."""
        return {}

    # -- pieces -------------------------------------------------------------------------

    def style_vectors(self, style: torch.Tensor) -> torch.Tensor:
        """(B,) style indices -> (B, style_dim) embeddings ((B, 0) without styles)."""
        if self.style_embedding is None:
            return torch.zeros(style.size(0), 0, device=style.device)
        return self.style_embedding(style)

    def time_inputs(self, prev: torch.Tensor, style_vec: torch.Tensor) -> torch.Tensor:
        """(B, T, P, 3) previous steps + (B, S) style -> (B, T, P, F) time-axis inputs."""
        b, t, p, _ = prev.shape
        w = self.config.neighbour_window
        padded = F.pad(prev[..., :VOLUME], (0, 0, w, w))  # (B, T, P + 2w, 2)
        neighbours = padded.unfold(2, 2 * w + 1, 1)  # (B, T, P, 2, 2w + 1)
        neighbours = neighbours.reshape(b, t, p, 2 * (2 * w + 1))
        return torch.cat(
            [
                neighbours,
                prev[..., VOLUME:],  # (B, T, P, 1) own volume
                self.pitch_features.expand(b, t, p, 13),
                style_vec[:, None, None, :].expand(b, t, p, style_vec.size(-1)),
            ],
            dim=-1,
        )

    def note_inputs(
        self, h: torch.Tensor, current: torch.Tensor, style_vec: torch.Tensor
    ) -> torch.Tensor:
        """(B, T, P, H) features + (B, T, P, 3) this step's truth -> (B, T, P, H + 2 + S).

        Pitch p gets pitch p - 1's play and replay (zeros for the lowest pitch).
        """
        b, t, p, _ = h.shape
        lower = F.pad(current[..., :VOLUME], (0, 0, 1, 0))[:, :, :p]  # (B, T, P, 2)
        style = style_vec[:, None, None, :].expand(b, t, p, style_vec.size(-1))
        return torch.cat([h, lower, style], dim=-1)

    def logits(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """(B, T + 1, P, 3) steps, (B,) styles -> (B, T, P, 3) logits for steps 1..T."""
        prev, current = x[:, :-1], x[:, 1:]  # (B, T, P, 3) each
        b, t, p, _ = prev.shape
        style_vec = self.style_vectors(style)  # (B, S)
        inputs = self.time_inputs(prev, style_vec)  # (B, T, P, F)
        inputs = inputs.permute(0, 2, 1, 3).reshape(b * p, t, -1)  # (B*P, T, F)
        h, _ = self.time_lstm(inputs)  # (B*P, T, Ht)
        h = self.mix(self.drop(h).reshape(b, p, t, -1))  # (B, P, T, H)
        h = h.permute(0, 2, 1, 3)  # (B, T, P, H)
        note_in = self.note_inputs(h, current, style_vec).reshape(b * t, p, -1)
        out, _ = self.note_lstm(note_in)  # (B*T, P, Hn)
        return self.head(self.drop(out)).reshape(b, t, p, 3)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x, mask, style = batch["x"], batch["mask"], batch["style"]  # (B,T+1,P,3) (B,T) (B,)
        if self.training and self.config.style_dropout > 0:
            drop = torch.rand(style.shape, device=style.device) < self.config.style_dropout
            style = torch.where(drop, torch.zeros_like(style), style)
        logits = self.logits(x, style)
        terms = prv_losses(logits, x[:, 1:], mask)
        loss = terms["play"] + terms["replay"] + terms["dynamics"]
        out = {
            "nll": terms["play"].detach(),
            "play": terms["play"].detach(),
            "replay": terms["replay"].detach(),
            "dynamics": terms["dynamics"].detach(),
            "n_units": terms["cells"].detach(),
        }
        for name, (weighted, value) in self.extra_losses(logits, batch, mask).items():
            loss = loss + weighted
            out[name] = value.detach()
        out["loss"] = loss
        return out

    # -- generation -----------------------------------------------------------------------

    def resolve_style(self, style: str | None) -> int:
        """Index of `style` (None -> "<unk>"); ValueError listing the known styles."""
        if style is None:
            return 0
        styles = list(self.config.styles)
        if style not in styles:
            known = ", ".join(repr(s) for s in styles[1:]) or "none"
            raise ValueError(f"unknown style {style!r}; this model knows: {known}")
        return styles.index(style)

    @torch.no_grad()
    def generate(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        primer: pd.DataFrame | None = None,
        seconds: float = 30.0,
        length: int | None = None,
        style: str | None = None,
    ) -> list[pd.DataFrame]:
        """Sample `n` pieces step by step, and within a step pitch by pitch (low to high).

        At each pitch the play and replay logits are divided by `temperature` and each
        drawn as a Bernoulli (``temperature <= 0``: greedy, probability > 0.5); the
        replay draw only counts where the pitch plays, and a pitch that plays after a
        silent step is always a replay (a new onset). Volume is the dynamics head's
        output. The draws feed the note axis (next pitch) and the time axis (next step),
        exactly as the ground truth does in training.

        Args:
            n: number of samples.
            generator: torch random generator (seeded by the caller).
            temperature: Bernoulli temperature for play and replay.
            top_k, top_p: ignored (each cell is a Bernoulli draw; there is no ranked
                vocabulary to truncate).
            primer: prv rows; sample i continues primer piece ``i % k`` of the k pieces
                in it (by sorted piece_id), its steps from step 0 kept in the output.
            seconds: length of the continuation; ``length`` (steps) overrides it.
            style: a style of ``config.styles`` (None: "<unk>", any style).

        Returns:
            n DataFrames of prv rows (piece_id "sample-i", step, pitch, replay, volume),
            primer included.

        Raises:
            ValueError: unknown style (the message lists the known ones), bad primer.
        """
        del top_k, top_p
        cfg = self.config
        style_id = self.resolve_style(style)
        steps = int(length) if length is not None else round(seconds * cfg.steps_per_second)
        steps = max(0, steps)
        device = self.pitch_features.device
        primers = self._primers(n, primer)
        prime_len = max((len(p) for p in primers), default=0)
        # left-pad shorter primers with silence so every sample continues at one step
        prime = torch.zeros(n, prime_len, cfg.n_pitches, 3, device=device)
        for i, p in enumerate(primers):
            if len(p):
                prime[i, prime_len - len(p) :] = torch.from_numpy(p).to(device)
        was_training = self.training
        self.eval()
        try:
            new = self._sample(prime, steps, style_id, generator, temperature)
        finally:
            self.train(was_training)
        out = []
        for i, p in enumerate(primers):
            full = np.concatenate([p, new[i].cpu().numpy()], axis=0)
            out.append(prv.dense_to_rows(full, f"sample-{i}"))
        return out

    def _primers(self, n: int, primer: pd.DataFrame | None) -> list[np.ndarray]:
        p = self.config.n_pitches
        if primer is None or len(primer) == 0:
            return [np.zeros((0, p, 3), dtype=np.float32) for _ in range(n)]
        prv.check_columns(primer, "primer")
        pieces = prv.sparse_pieces(primer, p)
        if not pieces.piece_ids:
            raise ValueError(f"primer: no cells inside pitches 0..{p - 1}")
        dense = [
            prv.dense_steps(pieces, k, 0, int(pieces.n_steps[k]), p)
            for k in range(len(pieces.piece_ids))
        ]
        return [dense[i % len(dense)] for i in range(n)]

    def _sample(
        self,
        prime: torch.Tensor,
        steps: int,
        style_id: int,
        generator: torch.Generator | None,
        temperature: float,
    ) -> torch.Tensor:
        """Continue (n, Tp, P, 3) `prime` by `steps` sampled steps -> (n, steps, P, 3)."""
        n, prime_len, p, _ = prime.shape
        device = prime.device
        style_vec = self.style_vectors(torch.full((n,), style_id, dtype=torch.long, device=device))
        stepper = _TimeStepper(self, style_vec)
        prev = torch.zeros(n, p, 3, device=device)
        if prime_len:  # the primer only advances the time axis (inputs: steps -1 .. Tp - 2)
            stepper.feed(torch.cat([prev[:, None], prime[:, :-1]], dim=1))
            prev = prime[:, -1]
        out = torch.zeros(n, steps, p, 3, device=device)
        for t in range(steps):
            stepper.advance(prev)
            feats = stepper.features()
            out[:, t], _ = self._note_step(feats, prev, style_vec, generator, temperature)
            prev = out[:, t]
        return out

    @torch.no_grad()
    def stepwise_logits(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Logits computed the way sampling computes them, step by step and pitch by pitch.

        With the ground truth in place of the draws this equals ``logits(x, style)`` in
        eval mode; the tests use it to check that sampling runs the trained model.

        Args:
            x: (B, T + 1, P, 3) steps; style: (B,) style indices.

        Returns:
            (B, T, P, 3) logits for steps 1..T.
        """
        style_vec = self.style_vectors(style)
        stepper = _TimeStepper(self, style_vec)
        logits = []
        for t in range(x.size(1) - 1):
            stepper.advance(x[:, t])
            feats = stepper.features()
            logits.append(self._note_step(feats, x[:, t], style_vec, None, 1.0, x[:, t + 1])[1])
        return torch.stack(logits, dim=1)

    def _note_step(
        self,
        feats: torch.Tensor,
        prev: torch.Tensor,
        style_vec: torch.Tensor,
        generator: torch.Generator | None,
        temperature: float,
        forced: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step pitch by pitch (low to high): (n, P, H) features -> (n, P, 3) cells.

        Each pitch's play and replay are drawn (`_bernoulli`), or taken from `forced`
        (n, P, 3) when given; the cells feed the next pitch's note-axis input.

        Returns:
            the step's play/replay/volume (n, P, 3) and its logits (n, P, 3).
        """
        n, p, _ = feats.shape
        current = torch.zeros(n, p, 3, device=feats.device)
        all_logits = torch.zeros(n, p, 3, device=feats.device)
        lower = torch.zeros(n, 2, device=feats.device)
        state = None
        for k in range(p):
            note_in = torch.cat([feats[:, k], lower, style_vec], dim=-1)  # (n, I)
            out, state = lstm_step(self.note_lstm, note_in, state)  # (n, Hn)
            logits = self.head(out)  # (n, 3)
            all_logits[:, k] = logits
            if forced is not None:
                current[:, k] = forced[:, k]
            else:
                play = _bernoulli(logits[:, PLAY], temperature, generator)
                replay = _bernoulli(logits[:, REPLAY], temperature, generator)
                replay = play * torch.maximum(replay, 1.0 - prev[:, k, PLAY])  # onset after rest
                current[:, k, PLAY] = play
                current[:, k, REPLAY] = replay
                current[:, k, VOLUME] = torch.sigmoid(logits[:, VOLUME]) * play
            lower = current[:, k, :VOLUME]
        return current, all_logits


class _TimeStepper:
    """The time axis one step at a time: LSTM state plus the history ``mix`` needs."""

    def __init__(self, model: BiaxialLSTM, style_vec: torch.Tensor):
        self.model = model
        self.style_vec = style_vec
        self.state: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.history: list[torch.Tensor] = []  # time-axis outputs, (n, P, Ht) per step

    def advance(self, prev: torch.Tensor) -> None:
        """Feed step t - 1 (n, P, 3): update the LSTM state and the history."""
        n, p, _ = prev.shape
        model = self.model
        inputs = model.time_inputs(prev[:, None], self.style_vec)[:, 0]  # (n, P, F)
        h, self.state = lstm_step(model.time_lstm, inputs.reshape(n * p, -1), self.state)
        self.history = [*self.history, h.reshape(n, p, -1)][-model.context_steps :]

    def feed(self, steps: torch.Tensor) -> None:
        """Feed (n, L, P, 3) steps at once (``advance`` L times, one LSTM call per chunk)."""
        n, length, p, _ = steps.shape
        model = self.model
        for start in range(0, length, PRIMER_CHUNK_STEPS):
            chunk = steps[:, start : start + PRIMER_CHUNK_STEPS]
            inputs = model.time_inputs(chunk, self.style_vec)  # (n, L, P, F)
            inputs = inputs.permute(0, 2, 1, 3).reshape(n * p, chunk.size(1), -1)
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

    def features(self) -> torch.Tensor:
        """The note-axis features (n, P, H) of the step after the last one fed."""
        return self.model.mix(torch.stack(self.history, dim=2))[:, :, -1]


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
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """0/1 draws with P(1) = sigmoid(logits / temperature); greedy when temperature <= 0."""
    if temperature <= 0:
        return (logits > 0).float()
    probs = torch.sigmoid(logits / temperature)
    u = torch.rand(probs.shape, generator=generator, device=probs.device)
    return (u < probs).float()


def make_dataset(store: StoreData, config: Config, split: str) -> prv.PrvWindows:
    """Windows of one split (random offsets for train); see `prv_data`."""
    check_prepared(config)
    return prv.make_windows(store, config.seq_len, config.n_pitches, config.styles, split)


def baseline(store: StoreData, config: Config) -> dict[str, float]:
    """Per-pitch play rates, replay rate and mean volume of train, scored on test."""
    _, n_pitches, _ = prv.store_prv_params(store)
    return prv.prv_baseline(store, n_pitches)


SPEC = register(
    ModelSpec(
        name="biaxial",
        representation="prv",
        config_cls=Config,
        model_cls=BiaxialLSTM,
        make_dataset=make_dataset,
        baseline=baseline,
        prepare=prepare,
    )
)
