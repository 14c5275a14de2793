"""Stages load exactly the model code they run (issue #13: deps are the code a stage runs).

`train` loads base, fit, checkpoint, train, the model's family package and the
model's own module, never sampling code or another model; `evaluate` adds the
family's sampling module. The resume fingerprint hashes the same files, and moves when
a copy of one of them is edited.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_project import copy_code
from tools import python_in

from pipeline.modeling import base, fit, resume

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
        "pipeline.modeling.distributed",
        "pipeline.modeling.fit",
        "pipeline.modeling.live",
        "pipeline.modeling.resume",
        "pipeline.modeling.scoring",
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
    loop = ("fit.py", "resume.py", "distributed.py", "live.py", "scoring.py")
    training = [root / f for f in ("base.py", *loop, "checkpoint.py", "train.py")]
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
    assert resume._training_modules(spec) == sorted(
        _training(name) - {"pipeline.modeling", "pipeline.modeling.train"}
    )
    assert f"{family}.{name}" == base.REGISTRY.modules[name]


def test_code_digest_differs_per_model() -> None:
    digests = {fit.code_digest(base.get(name)) for name in FAMILY}
    assert len(digests) == len(FAMILY)


DIGESTS = """
import json, sys
from pipeline.modeling import base, fit
for _ in sys.stdin:  # a line per request: every model's digest, its files read anew
    digests = {name: fit.code_digest(base.get(name)) for name in sys.argv[1:]}
    print(json.dumps({"base": base.__file__, "digests": digests}), flush=True)
"""

# a file of pipeline/modeling edited in a copy -> the models whose digest must move
EDITS = {
    "tuples/rnn.py": {"rnn"},  # one model's own module
    "pianoroll/__init__.py": {"autoencoder", "vae"},  # a family package: its models
    "tuples/sampling.py": set(),  # sampling does not train
    "prv/frames.py": set(),  # nor does the frames stage's scoring
    "checkpoint.py": set(FAMILY),  # shared by every model's training
}


def test_code_digest_moves_with_a_real_edit_of_the_training_files(tmp_path: Path) -> None:
    """A process importing a copy of pipeline/ gives this process's digests (the same
    bytes at another path); after an edit of one copied file, exactly the models that
    file trains get a new digest, and undoing the edit restores them."""
    code = tmp_path / "code"
    copy_code(code)
    here = {name: fit.code_digest(base.get(name)) for name in FAMILY}
    proc = python_in(code, DIGESTS, *FAMILY)
    requests, replies = proc.stdin, proc.stdout
    assert requests is not None and replies is not None

    def digests() -> dict[str, str]:
        requests.write("\n")
        requests.flush()
        line = replies.readline()
        assert line, proc.communicate(timeout=60)[1][-3000:]
        result = json.loads(line)
        assert Path(result["base"]).is_relative_to(code), result["base"]  # the copy's code
        return result["digests"]

    try:
        assert digests() == here
        for edit, expected in EDITS.items():
            path = code / "pipeline" / "modeling" / edit
            original = path.read_bytes()
            path.write_bytes(original + b"\nEDITED_BY_A_TEST = True\n")
            moved = {name for name, digest in digests().items() if digest != here[name]}
            assert moved == expected, edit
            path.write_bytes(original)
        assert digests() == here
    finally:
        proc.communicate(timeout=60)  # closes stdin: the loop ends
