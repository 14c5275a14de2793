"""The sampler lookup: every registered model names a sampler of the one `Sampler` shape."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from pipeline.modeling import base
from pipeline.modeling.base import GenerateError
from pipeline.modeling.sampling import SampleOptions, Sampler, interpolator, resolve, sampler


def _parameters(function: object) -> list[tuple[str, object, object]]:
    signature = inspect.signature(function)  # annotations stay strings (no evaluation)
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


SAMPLER_PARAMETERS = _parameters(Sampler.__call__)[1:]  # less self


def test_the_sampler_shape_is_model_count_options_generator() -> None:
    assert [name for name, _, _ in SAMPLER_PARAMETERS] == ["model", "n", "options", "generator"]


@pytest.mark.parametrize("name", base.names())
def test_every_registered_sampler_resolves_to_a_sampler(name: str) -> None:
    spec = base.get(name)
    module, _, function = spec.sampler.partition(":")
    generate = sampler(spec)
    assert (generate.__module__, generate.__name__) == (module, function)
    assert _parameters(generate) == SAMPLER_PARAMETERS, spec.sampler


@pytest.mark.parametrize("name", base.names())
def test_interpolators_resolve_and_only_the_vae_has_one(name: str) -> None:
    spec = base.get(name)
    walk = interpolator(spec)
    assert (walk is not None) == (name == "vae")
    if walk is not None:
        parameters = _parameters(walk)
        assert [p for p, _, _ in parameters[:4]] == ["model", "a", "b", "steps"]
        assert all(default is not inspect.Parameter.empty for _, _, default in parameters[4:])


def test_a_reference_to_nothing_says_what_is_missing() -> None:
    with pytest.raises(GenerateError, match="defines no function 'generate_nothing'"):
        resolve("pipeline.modeling.tuples.sampling:generate_nothing")
    with pytest.raises(ModuleNotFoundError):
        resolve("pipeline.modeling.nowhere:generate_rnn")


def test_a_spec_rejects_a_sampler_that_is_not_a_reference() -> None:
    spec = base.get("rnn")
    with pytest.raises(ValueError, match="sampler 'generate_rnn' is not '<module>:<function>'"):
        dataclasses.replace(spec, sampler="generate_rnn")
    with pytest.raises(ValueError, match="interpolator"):
        dataclasses.replace(spec, interpolator="pipeline.modeling.tuples.sampling")


def test_sample_options_default_to_the_cli_defaults() -> None:
    assert SampleOptions() == SampleOptions(
        temperature=1.0, top_k=0, top_p=1.0, primer=None, seconds=30.0, length=None, style=None
    )


def test_key_outside_finds_the_scale_that_holds_the_most_cells() -> None:
    from pipeline.modeling.sampling import key_outside

    d_major = [62, 64, 66, 67, 69, 71, 73]  # D E F# G A B C#
    cells = torch.zeros(2, 3, 24)  # MIDI 60..83
    cells[0, :, [p - 60 for p in d_major]] = 1.0
    cells[0, 0, 65 - 60] = 1.0  # one F among them: D major still holds the most
    cells[1, :, [p - 60 for p in (60, 62, 64, 65, 67, 69, 71)]] = 1.0  # C major (or A minor)
    out = key_outside(cells, 60)
    pcs = [(60 + p) % 12 for p in range(24)]
    assert {pc for pc, o in zip(pcs, out[0].tolist(), strict=True) if o} == {0, 3, 5, 8, 10}
    # C major and A natural minor hold the same cells: the tie goes to the lower row
    assert {pc for pc, o in zip(pcs, out[1].tolist(), strict=True) if o} == {1, 3, 6, 8, 10}
