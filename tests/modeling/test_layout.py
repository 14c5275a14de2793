"""Stages load exactly the model code they run (issue #13: deps are the code a stage runs).

`train` loads the training loop, the model's family package and the model's own
module (plus the module of a model whose network it extends: poph's PopH is a
BiaxialLSTM), never sampling code or an unrelated model; `evaluate` adds the sampling
module its spec names. The resume fingerprint hashes the same files, and moves when a
copy of one of them is edited. The models are the registry's, so a new model is
checked without editing this file.
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

from pipeline.core.config import DEFAULT_PARAMS_FILE
from pipeline.core.params import read_params_file
from pipeline.modeling import base, fit, resume

MODELS = base.names()


def module(name: str) -> str:
    """The module that registers model `name` (pipeline.modeling.<family>.<name>)."""
    return base.REGISTRY.modules[name]


def family(name: str) -> str:
    """Model `name`'s family package (pipeline.modeling.<representation>)."""
    return module(name).rpartition(".")[0]


def extended(name: str) -> set[str]:
    """The modules (not its own, its family's or base) of the network classes `name`'s
    network extends: another model's (poph's PopH is a BiaxialLSTM) or shared layers
    (both transformers extend `pipeline.modeling.attention.RelativeTransformer`)."""
    bases = {cls.__module__ for cls in base.get(name).model_cls.__mro__}
    skip = {module(name), family(name), "pipeline.modeling.base"}
    return {m for m in bases if m.startswith("pipeline.modeling.") and m not in skip}


def sampling(name: str) -> str:
    """The module of the sampler model `name`'s spec names."""
    return base.get(name).sampler.partition(":")[0]


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
        for name in MODELS
    }
    result = {}
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err.decode()[-2000:]
        lists = json.loads(out.decode().strip().splitlines()[-1])
        result[name] = {stage: set(modules) for stage, modules in lists.items()}
    return result


def _training(name: str) -> set[str]:
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
        family(name),
        module(name),
        *extended(name),
    }


def test_extended_networks_are_what_params_network_says() -> None:
    """What `extended` finds, and what params.yaml's `network` keys tell dvc.yaml."""
    assert {name: extended(name) for name in MODELS if extended(name)} == {
        "poph": {"pipeline.modeling.prv.biaxial"},
        "transformer": {"pipeline.modeling.attention"},
        "frame_transformer": {"pipeline.modeling.attention"},
    }
    models = read_params_file(DEFAULT_PARAMS_FILE)["models"]
    for name in MODELS:
        network = base.network_model(base.get(name))
        assert models[name]["network"] == network, name
        assert {"pipeline.modeling." + network.replace("/", ".")} <= {module(name)} | extended(
            name
        ), name


def test_train_loads_only_its_model_and_no_sampling(loaded: dict) -> None:
    for name, stages in loaded.items():
        assert stages["train"] == _training(name), name


def test_evaluate_adds_only_its_sampler(loaded: dict) -> None:
    for name, stages in loaded.items():
        assert stages["evaluate"] == {"pipeline.modeling.sampling", sampling(name)}, name
        assert sampling(name) == f"{family(name)}.sampling", name  # beside its family


def test_evaluate_uses_neither_the_train_nor_the_generate_module() -> None:
    from pipeline.evaluation import evaluate

    source = Path(evaluate.__file__).read_text(encoding="utf-8")
    assert "pipeline.modeling.train" not in source
    assert "pipeline.modeling.generate" not in source


def test_models_import_no_sampling_and_no_other_model() -> None:
    """Model files, family packages and the training loop import no sampling module;
    a model file imports no other model's file but those of the networks it extends."""
    root = Path(base.__file__).parent
    models = {module(n) for n in MODELS}
    loop = ("fit.py", "resume.py", "distributed.py", "live.py", "scoring.py")
    training = [root / f for f in ("base.py", *loop, "checkpoint.py", "train.py")]
    training += [_source(family(n)) for n in MODELS]
    training += [_source(module(n)) for n in MODELS]
    for path in training:
        imported = _imports(path)
        assert not [m for m in imported if m.rpartition(".")[2] == "sampling"], path
        own = f"pipeline.modeling.{path.parent.name}.{path.stem}"
        allowed = extended(own.rpartition(".")[2]) if own in models else set()
        assert not (imported & models) - {own} - allowed, path


def _source(name: str) -> Path:
    """The file of module `name` (a package's ``__init__.py``)."""
    path = Path(base.__file__).parents[2] / name.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


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


@pytest.mark.parametrize("name", MODELS)
def test_code_digest_hashes_the_training_files(name: str) -> None:
    spec = base.get(name)
    assert resume._training_modules(spec) == sorted(
        _training(name) - {"pipeline.modeling", "pipeline.modeling.train"}
    )
    assert module(name) == f"pipeline.modeling.{spec.representation}.{name}"


def test_code_digest_differs_per_model() -> None:
    digests = {fit.code_digest(base.get(name)) for name in MODELS}
    assert len(digests) == len(MODELS)


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
    "prv/biaxial.py": {"biaxial", "poph"},  # a model's own module, and PopH extends it
    "checkpoint.py": set(base.names()),  # shared by every model's training
}


def test_code_digest_moves_with_a_real_edit_of_the_training_files(tmp_path: Path) -> None:
    """A process importing a copy of pipeline/ gives this process's digests (the same
    bytes at another path); after an edit of one copied file, exactly the models that
    file trains get a new digest, and undoing the edit restores them."""
    code = tmp_path / "code"
    copy_code(code)
    here = {name: fit.code_digest(base.get(name)) for name in MODELS}
    proc = python_in(code, DIGESTS, *MODELS)
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
