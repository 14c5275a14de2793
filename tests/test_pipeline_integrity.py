"""dvc.yaml, params.yaml and the code agree: every stage runs a registered `etude`
command, reads exactly the params sections that its code loads, and writes the
outputs DESIGN.md fixes."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from dvc.repo import Repo

from pipeline import representations, sources
from pipeline.cli import COMMANDS
from pipeline.core.params import from_mapping, get_section, read_params_file

ROOT = Path(__file__).resolve().parents[1]
PARAMS = read_params_file(ROOT / "params.yaml")


def stages() -> dict[str, object]:
    repo = Repo(str(ROOT))
    try:
        return {s.addressing: s for s in repo.index.stages}
    finally:
        repo.close()


STAGES = stages()


def params_of(stage) -> set[str]:
    out: set[str] = set()
    for dep in stage.deps:
        if type(dep).__name__ == "ParamsDependency":
            out |= set(dep.params)
    return out


def test_every_stage_runs_a_registered_command():
    commands = set(COMMANDS)
    for name, stage in STAGES.items():
        argv = shlex.split(stage.cmd)
        assert argv[0] == "etude", name
        assert argv[1] in commands, f"{name}: `etude {argv[1]}` is not a CLI command"
        stage_name = name.split(":")[-1]  # benchmarks/jsb/dvc.yaml:fetch -> fetch
        assert argv[1] == stage_name.split("@")[0].split("_")[0], (
            f"{name}: stage and command names differ"
        )


@pytest.mark.parametrize("source", PARAMS["sources"])
def test_source_stages(source):
    fetch, ingest = STAGES[f"fetch@{source}"], STAGES[f"ingest@{source}"]
    assert params_of(fetch) == {source}
    assert params_of(ingest) == {"ingest"}
    assert [str(o) for o in fetch.outs] == [f"data/raw/{source}"]
    assert [str(o) for o in ingest.outs] == [f"data/interim/{source}"]
    spec = sources.get(source)
    from_mapping(get_section(PARAMS, source), spec.params_cls, source)


def test_foreach_lists_name_registered_things():
    assert set(PARAMS["sources"]) <= set(sources.names())
    assert set(PARAMS["representations"]) <= set(representations.names())


@pytest.mark.parametrize("rep", PARAMS["representations"])
def test_representation_stages(rep):
    represent, validate = STAGES[f"represent@{rep}"], STAGES[f"validate@{rep}"]
    assert params_of(represent) == {"sources", rep}
    assert [str(o) for o in represent.outs] == [f"data/processed/{rep}"]
    assert params_of(validate) == {"validate"}
    assert f"reports/validation/{rep}.json" in [str(o) for o in validate.outs]
    from_mapping(get_section(PARAMS, rep), representations.get(rep).params_cls, rep)


@pytest.mark.parametrize("model", sorted(PARAMS["models"]))
def test_model_stages(model):
    from pipeline.modeling import base
    from pipeline.modeling.train import load_train_params

    spec = base.get(model)
    assert PARAMS["models"][model]["representation"] == spec.representation
    train, evaluate = STAGES[f"train@{model}"], STAGES[f"evaluate@{model}"]
    assert params_of(train) == {"train", f"models.{model}"}
    assert params_of(evaluate) == {"evaluate"}  # the model config comes from the checkpoint
    store = f"data/processed/{spec.representation}"
    assert store in [str(d) for d in train.deps] and store in [str(d) for d in evaluate.deps]
    assert f"models/{model}" in [str(o) for o in train.outs]
    metrics = [str(o) for o in evaluate.outs if o.metric]
    assert metrics == [f"reports/metrics/{model}.json"]  # the headline numbers only
    assert f"reports/evaluate/{model}.json" in [str(o) for o in evaluate.outs]
    assert not [o for o in train.outs if o.metric], "train writes no DVC metrics"
    assert f"reports/samples/{model}" in [str(o) for o in evaluate.outs]
    config, train_params = load_train_params(model, ROOT / "params.yaml")
    assert type(config) is spec.config_cls and train_params.max_steps > 0


def test_every_registered_model_and_representation_is_in_the_dag():
    from pipeline.modeling import base

    assert sorted(PARAMS["models"]) == base.names()
    assert sorted(PARAMS["representations"]) == representations.names()


def test_report_stage_reads_every_model_output():
    report = STAGES["report"]
    deps = {str(d) for d in report.deps}
    assert {"reports/evaluate", "reports/samples", "reports/train"} <= deps
    assert params_of(report) == {"report", "models"}  # it lists the models in params order


def test_only_headline_metrics_are_dvc_metrics():
    """Store sizes, row counts, wall times and devices are plain outputs, not metrics."""
    metrics = sorted(str(o) for s in STAGES.values() for o in s.outs if o.metric)
    assert metrics == sorted(f"reports/metrics/{m}.json" for m in PARAMS["models"])


def test_small_reports_go_to_git_and_big_outputs_to_the_cache():
    for name, stage in STAGES.items():
        for out in stage.outs:
            path = str(out)
            small = path.endswith(".json") or path.endswith(".html") and "validation" in path
            small = small or "/plots/" in path
            # a benchmark's table: committed with its JSON (the README and report show it)
            small = small or name.endswith(":table") and path.endswith((".md", ".html"))
            assert out.use_cache is not small, f"{name}: {path} cache={out.use_cache}"
