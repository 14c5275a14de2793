"""A seventh model enters through the registry alone (issue #21).

`seventh_model` (beside this file) is a model written as the README says: a family
package with its dataset, a model module with its config, its network (loss in
``forward``) and its `ModelSpec`, and a sampling module named in that spec. Registering
its module in the model table is all it takes for `fit` to train it and for the
sampler its entry names to sample the checkpoint; no file under ``pipeline/`` knows it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fixture_stores import SMALL, SMALL_2, SMALL_3, encoded_store, shipped

from pipeline.core.params import from_mapping
from pipeline.modeling import base
from pipeline.modeling.base import TrainParams
from pipeline.modeling.checkpoint import load_model
from pipeline.modeling.fit import fit
from pipeline.modeling.sampling import SampleOptions, sampler
from pipeline.representations import decode_rows

PIPELINE = Path(base.__file__).parents[1]


@pytest.fixture
def bigram(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Model "bigram" in the model table for one test (the registry restored after)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # where seventh_model lives
    monkeypatch.setitem(base.REGISTRY.modules, "bigram", "seventh_model.bigram")
    monkeypatch.setattr(base.REGISTRY, "_entries", dict(base.REGISTRY._entries))
    yield "bigram"
    for name in [m for m in sys.modules if m.partition(".")[0] == "seventh_model"]:
        del sys.modules[name]


def train_params(**kw: object) -> TrainParams:
    values = {
        **shipped("train"),
        "augment": base.Augment((0,), (1.0,)),
        "device": "cpu",
        "batch_size": 16,
        "max_steps": 40,
        "learning_rate": 0.1,
        "warmup_steps": 1,
        "eval_every": 20,
        "eval_batches": 0,
        "checkpoint_every": 20,
        "num_threads": 1,
        **kw,
    }
    return TrainParams(**values)


def test_a_seventh_model_trains_and_samples_through_the_registry_alone(
    bigram: str, tmp_path: Path
) -> None:
    spec = base.get(bigram)  # imports seventh_model.bigram, which registers it
    assert base.model_spec(bigram) is spec and bigram in base.names()
    config = from_mapping({"smoothing": 0.0}, spec.config_cls, f"models.{bigram}")
    store = encoded_store("tuples", {"train": [SMALL, SMALL_3], "validation": [SMALL_2]})
    summary = fit(spec, config, train_params(), store, tmp_path / "m", tmp_path / "live")
    assert summary["steps"] == 40

    model, loaded, ckpt = load_model(tmp_path / "m" / "model.pt", bigram)
    assert loaded is spec and type(model) is spec.model_cls and model.config == config
    assert ckpt["val_loss"] < math.log(128)  # better than a uniform guess over pitches
    generate = sampler(loaded)  # the function its registry entry names
    rows = generate(model, 2, SampleOptions(length=8), torch.Generator().manual_seed(0))
    again = generate(model, 2, SampleOptions(length=8), torch.Generator().manual_seed(0))
    assert [r["pitch"].tolist() for r in rows] == [r["pitch"].tolist() for r in again]
    notes = decode_rows(spec.representation, rows[0], store.params)
    assert len(notes) == 8 and notes["pitch"].between(0, 127).all()


def test_no_pipeline_file_names_the_seventh_model() -> None:
    """It got in through the registry, not through an edit of the pipeline."""
    for path in PIPELINE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "seventh_model" not in text and '"bigram"' not in text, path
