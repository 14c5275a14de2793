"""Stages load exactly the model code they run (issue #13: deps are the code a stage runs).

`train` loads base, fit, checkpoint, train, the model's family package and the
model's own module, never sampling code or another model; `evaluate` adds the
family's sampling module. The resume fingerprint hashes the same files.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.modeling import base, fit

FAMILY = {
    "autoencoder": "pianoroll",
    "vae": "pianoroll",
    "rnn": "tuples",
    "transformer": "events",
    "biaxial": "prv",
    "poph": "prv",
}

SCRIPT = """
import json, sys

def loaded():
    return sorted(m for m in sys.modules if m.startswith("pipeline.modeling"))

from pipeline.modeling import base
base.get(sys.argv[1])
import pipeline.modeling.fit, pipeline.modeling.train
train = loaded()
import pipeline.evaluation.evaluate
from pipeline.modeling.sampling import sampler
sampler(base.get(sys.argv[1]))
print(json.dumps({"train": train, "evaluate": sorted(set(loaded()) - set(train))}))
"""


@pytest.fixture(scope="module")
def loaded() -> dict[str, dict[str, set[str]]]:
    """Per model, in a fresh process each (all at once): the pipeline.modeling modules
    that training loads, and those that evaluating then adds."""
    runs = {
        name: subprocess.Popen(
            [sys.executable, "-c", SCRIPT, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for name in FAMILY
    }
    result = {}
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err.decode()[-2000:]
        lists = json.loads(out.decode().strip().splitlines()[-1])
        result[name] = {stage: set(modules) for stage, modules in lists.items()}
    return result


def _training(name: str) -> set[str]:
    family = f"pipeline.modeling.{FAMILY[name]}"
    return {
        "pipeline.modeling",
        "pipeline.modeling.base",
        "pipeline.modeling.checkpoint",
        "pipeline.modeling.fit",
        "pipeline.modeling.train",
        family,
        f"{family}.{name}",
    }


def test_train_loads_only_its_model_and_no_sampling(loaded: dict) -> None:
    for name, stages in loaded.items():
        assert stages["train"] == _training(name), name


def test_evaluate_adds_only_its_family_sampling(loaded: dict) -> None:
    for name, stages in loaded.items():
        family = f"pipeline.modeling.{FAMILY[name]}"
        assert stages["evaluate"] == {"pipeline.modeling.sampling", f"{family}.sampling"}, name


def test_evaluate_uses_neither_the_train_nor_the_generate_module() -> None:
    from pipeline.evaluation import evaluate

    source = Path(evaluate.__file__).read_text(encoding="utf-8")
    assert "pipeline.modeling.train" not in source
    assert "pipeline.modeling.generate" not in source


def test_models_import_no_sampling_and_no_other_model() -> None:
    """Model files, family packages, fit, train and checkpoint import no sampling module;
    a model file imports no other model's file."""
    root = Path(base.__file__).parent
    models = {f"pipeline.modeling.{FAMILY[n]}.{n}" for n in FAMILY}
    training = [root / f for f in ("base.py", "fit.py", "checkpoint.py", "train.py")]
    training += [root / f / "__init__.py" for f in set(FAMILY.values())]
    training += [root / FAMILY[n] / f"{n}.py" for n in FAMILY]
    for path in training:
        imported = _imports(path)
        assert not [m for m in imported if m.rpartition(".")[2] == "sampling"], path
        own = f"pipeline.modeling.{path.parent.name}.{path.stem}"
        assert not (imported & models) - {own}, path


def _imports(path: Path) -> set[str]:
    """Modules `path` imports (``from a import b`` counts a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_code_digest_hashes_the_training_files(name: str) -> None:
    spec = base.get(name)
    family = f"pipeline.modeling.{FAMILY[name]}"
    assert fit._training_modules(spec) == sorted(
        _training(name) - {"pipeline.modeling", "pipeline.modeling.train"}
    )
    assert fit.code_digest(spec) == fit.code_digest(spec)  # deterministic
    assert f"{family}.{name}" == base.REGISTRY.modules[name]


def test_code_digest_differs_per_model() -> None:
    digests = {fit.code_digest(base.get(name)) for name in FAMILY}
    assert len(digests) == len(FAMILY)
