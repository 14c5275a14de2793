"""What every sampler takes, the lookup of a model's sampler, and shared sampling code.

A model's sampler is a `Sampler`: ``generate_<name>(model, n, options, generator)``
returning ``n`` DataFrames of store rows (the representation's schema, ``piece_id`` set
to e.g. "sample-0"), which the representation's ``decode`` turns into notes; the shared
arguments travel in one `SampleOptions`. Models with a latent space also have
``interpolate_<name>(model, a_rows, b_rows, steps)``. Both usually live in
``pipeline/modeling/<representation>/sampling.py`` and are named in the model's
`ModelSpec` as ``"<module>:<function>"``; training never imports them, and `sampler` and
`interpolator` import the one module a trained model needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from pipeline.modeling.base import GenerateError, ModelSpec

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "GenerateError",
    "SampleOptions",
    "Sampler",
    "filter_logits",
    "interpolator",
    "resolve",
    "sampler",
    "settings",
]


@dataclass(frozen=True)
class SampleOptions:
    """The sampling arguments every model's sampler takes (`Sampler`).

    Each sampler's docstring says how it reads them and which it ignores (e.g. top-k
    for a piano roll of independent cells).

    Attributes:
        temperature: divides the logits drawn from (<= 0: greedy, where the model
            draws from logits).
        top_k: keep the k most likely tokens (0: off; token models only).
        top_p: keep the smallest nucleus of this mass (1.0: off; token models only).
        primer: store rows (the model's representation) every sample continues and
            starts with.
        seconds: length of the continuation, in seconds.
        length: length of the continuation in the model's units (tokens, frames,
            steps, notes); overrides ``seconds`` when given.
        style: a style label of style-conditioned models (None: any style).
        settings: the model's own sampling settings (params ``sample.<model>``
            beyond the shared keys above, e.g. a roll model's ``threshold``); each
            sampler reads them with `settings`, which fills its defaults and
            refuses a key it does not know.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    primer: pd.DataFrame | None = None
    seconds: float = 30.0
    length: int | None = None
    style: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


class Sampler(Protocol):
    """``generate_<name>``: `n` samples of a trained model as store rows."""

    def __call__(
        self,
        model: Any,
        n: int,
        options: SampleOptions,
        generator: torch.Generator | None = None,
    ) -> list[pd.DataFrame]: ...


def resolve(reference: str) -> Callable[..., Any]:
    """The function a ``"<module>:<function>"`` reference names, importing its module.

    Raises:
        GenerateError: the module defines no such function.
    """
    module_name, _, attribute = reference.partition(":")
    function = getattr(importlib.import_module(module_name), attribute, None)
    if not callable(function):
        raise GenerateError(f"{reference}: {module_name} defines no function {attribute!r}")
    return function


def sampler(spec: ModelSpec) -> Sampler:
    """The sampler `spec` names (``spec.sampler``), its module imported."""
    return resolve(spec.sampler)


def interpolator(spec: ModelSpec) -> Callable[..., Any] | None:
    """The latent walk `spec` names (``spec.interpolator``), or None if it has none."""
    return resolve(spec.interpolator) if spec.interpolator is not None else None


def settings(options: SampleOptions, defaults: Mapping[str, Any], model: str) -> dict[str, Any]:
    """`options.settings` over a sampler's `defaults`, each value of its default's type.

    Why strict: a misspelt setting silently ignored would leave a user judging the
    default while believing they changed it.

    Raises:
        GenerateError: an unknown key or a value of the wrong type, naming
            ``sample.<model>.<key>`` and what the sampler accepts.
    """
    resolved = dict(defaults)
    for key, value in options.settings.items():
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise GenerateError(
                f"sample.{model}.{key}: {model} has no such sampling setting (it has: {known})"
            )
        default = defaults[key]
        kind = float if isinstance(default, float) else type(default)
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if default is not None and (not ok or isinstance(value, bool) != isinstance(default, bool)):
            raise GenerateError(
                f"sample.{model}.{key}: expected {kind.__name__} like {default!r}, got {value!r}"
            )
        resolved[key] = float(value) if kind is float else value
    return resolved


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the `top_k` largest logits and then the smallest nucleus of mass >= `top_p`.

    Removed entries become -inf. ``top_k <= 0`` and ``top_p >= 1`` disable the filters.
    Top-k keeps exactly k entries (ties broken by `torch.topk`). The nucleus is
    minimal: sorted by probability, a token is kept only while the mass of the tokens
    before it is still below `top_p` (Holtzman et al. 2020); the most likely token
    is always kept.

    Args:
        logits: (..., V).
    """
    if top_k > 0 and top_k < logits.size(-1):
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep.scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (..., V)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


MAJOR, NATURAL_MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)


def outside_scales() -> torch.Tensor:
    """(24, 12): 1 for the pitch classes outside the major (row 2k) and natural minor
    (row 2k + 1) scale on tonic k: the scales of `pipeline.evaluation.metrics`'s scale
    consistency and PopH's ``disharmony_matrix("all")``, built here so that a sampler's
    key bias (prv, pianoroll) loads neither."""
    rows = torch.ones(24, 12)
    for k in range(12):
        for r, scale in enumerate((MAJOR, NATURAL_MINOR)):
            rows[2 * k + r, [(k + d) % 12 for d in scale]] = 0.0
    return rows


def key_outside(cells: torch.Tensor, min_pitch: int) -> torch.Tensor:
    """(B, P): 1 for each sample's pitches outside its key, from its cells (B, T, P).

    The key is the major or natural minor scale (`outside_scales`) that leaves the
    fewest of the sample's sounding cells outside it (ties: the lowest row); pitch p is
    MIDI ``min_pitch + p``.
    """
    pcs = (torch.arange(cells.size(-1), device=cells.device) + min_pitch) % 12
    hist = torch.zeros(cells.size(0), 12, device=cells.device, dtype=cells.dtype)
    hist.index_add_(1, pcs, cells.sum(dim=1))
    scales = outside_scales().to(device=cells.device, dtype=cells.dtype)
    key = (hist @ scales.T).argmin(dim=1)  # (B,)
    return scales[key][:, pcs]
