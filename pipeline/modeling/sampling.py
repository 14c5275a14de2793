"""Sampling shared by the model families, and the lookup of a model's sampler.

Each family keeps its samplers in ``pipeline/modeling/<representation>/sampling.py``:
``generate_<name>(model, n, *, generator, temperature=1.0, top_k=0, top_p=1.0,
primer=None, seconds=30.0, length=None, style=None) -> list[pd.DataFrame]`` for
every model, and ``interpolate_<name>(model, a_rows, b_rows, steps)`` for models
with a latent space. Training never imports these modules; `sampler` and
`interpolator` import the one module a trained model needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from pipeline.modeling.base import GenerateError, ModelSpec

__all__ = ["GenerateError", "filter_logits", "interpolator", "sampler", "sampling_module"]


def sampling_module(spec: ModelSpec) -> ModuleType:
    """``pipeline.modeling.<spec.representation>.sampling``, imported."""
    return importlib.import_module(f"pipeline.modeling.{spec.representation}.sampling")


def sampler(spec: ModelSpec) -> Callable[..., Any]:
    """The ``generate_<name>`` function of `spec`'s model.

    Raises:
        GenerateError: its family's sampling module defines none.
    """
    module = sampling_module(spec)
    generate = getattr(module, f"generate_{spec.name}", None)
    if not callable(generate):
        raise GenerateError(f"model '{spec.name}' has no sampler ({module.__name__})")
    return generate


def interpolator(spec: ModelSpec) -> Callable[..., Any] | None:
    """The ``interpolate_<name>`` function of `spec`'s model, or None if it has none."""
    interpolate = getattr(sampling_module(spec), f"interpolate_{spec.name}", None)
    return interpolate if callable(interpolate) else None


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
