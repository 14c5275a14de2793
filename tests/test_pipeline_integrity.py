"""dvc.yaml, params.yaml and the code agree: every stage runs a registered `etude`
command, reads exactly the params sections that its code loads, and writes the
outputs DESIGN.md fixes."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shlex
import sys
from pathlib import Path

import pytest
import tomlkit  # DVC's TOML library (tomllib is Python 3.11+)
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
    # the model config comes from the checkpoint; how it samples from sample.<model>
    assert params_of(evaluate) == {"evaluate", f"sample.{model}"}
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
            small = (
                small
                or (name.endswith((":table", ":quality", ":tables")) or ":table@" in name)
                and path.endswith((".md", ".html"))
            )
            assert out.use_cache is not small, f"{name}: {path} cache={out.use_cache}"


# --- tests mirror the package ------------------------------------------------------------
TESTS = ROOT / "tests"

# Top-level tests of no one module: they exercise the CLI, dvc.yaml or a whole run across
# stages, so no pipeline/ path is theirs. Every other top-level test_<name>.py tests the
# top-level module pipeline/<name>.py (midi, download, ingest, splits, cli).
CROSS_CUTTING = {
    "test_dag.py": "dvc.yaml's code deps, traced on the tiny project's `dvc repro`",
    "test_disk_full.py": "a full disk in every stage that writes",
    "test_faults.py": "hostile MIDI through ingest, midi and the stores",
    "test_interruptions.py": "SIGKILL of real `etude` and `dvc repro` processes",
    "test_jsb_benchmark.py": "benchmarks/jsb/dvc.yaml end to end",
    "test_poly2012_benchmark.py": "benchmarks/poly2012/dvc.yaml end to end",
    "test_layers.py": "pipeline/'s import layers, cycles and file and function sizes",
    "test_pipeline_integrity.py": "dvc.yaml, params.yaml and the code agree",
    "test_readme.py": "README.md's checkable claims",
    "test_remote.py": "dvc push / pull of the tiny project through a remote",
}

# Tests that do not sit at their module's mirrored path yet, with where they belong
# (none today): a pending move is listed here, and the test below fails on an entry
# that has moved, so the list never outlives the move.
NOT_YET_MIRRORED: dict[str, str] = {}  # old path -> mirrored path, while a move is pending


def mirrored_tests() -> dict[str, set[str]]:
    """Module name -> the test paths (relative to tests/) that mirror a module of that name:
    pipeline/a/b.py is tested in tests/a/test_b.py. Several modules may share a name
    (`frames`, `sampling`, `stage`): a test of that name may mirror any of them."""
    out: dict[str, set[str]] = {}
    for module in (ROOT / "pipeline").rglob("*.py"):
        if module.stem.startswith("__"):
            continue
        rel = module.relative_to(ROOT / "pipeline")
        out.setdefault(module.stem, set()).add(str(rel.with_name(f"test_{rel.name}")))
    return out


def all_test_files() -> list[str]:
    """Every test file, relative to tests/ (fixtures hold data, not tests)."""
    paths = (p.relative_to(TESTS) for p in TESTS.rglob("test_*.py"))
    return sorted(str(p) for p in paths if p.parts[0] != "fixtures")


def misplaced_tests(paths: list[str]) -> list[str]:
    """The paths (relative to tests/) named after a pipeline module but not at its mirror."""
    mirrors = mirrored_tests()
    return [
        f"tests/{path}: move to " + " or ".join(f"tests/{m}" for m in sorted(mirrors[name]))
        for path in paths
        if (name := Path(path).stem.removeprefix("test_")) in mirrors
        and path not in mirrors[name]
        and path not in NOT_YET_MIRRORED
    ]


def test_tests_mirror_the_package_path_for_path():
    """A test named after a pipeline module sits at that module's mirrored path."""
    misplaced = misplaced_tests(all_test_files())
    assert not misplaced, "\n".join(misplaced)


def test_the_mirror_check_catches_a_misplaced_test():
    assert misplaced_tests(["test_io.py"]) == ["tests/test_io.py: move to tests/core/test_io.py"]
    assert misplaced_tests(["core/test_io.py", "test_midi.py", "test_dag.py"]) == []


def test_top_level_tests_are_top_level_modules_or_cross_cutting():
    """So that a test of a subpackage's module cannot hide at the top under another name."""
    top_modules = {p.stem for p in (ROOT / "pipeline").glob("*.py")}
    stray = [
        f"tests/{path}"
        for path in all_test_files()
        if "/" not in path
        and path not in CROSS_CUTTING
        and Path(path).stem.removeprefix("test_") not in top_modules
    ]
    assert not stray, f"neither a top-level module's test nor listed in CROSS_CUTTING: {stray}"
    assert set(CROSS_CUTTING) <= set(all_test_files()), "CROSS_CUTTING names a missing file"


def test_not_yet_mirrored_entries_are_still_pending():
    files = set(all_test_files())
    moved = [f"{old} -> {new}" for old, new in NOT_YET_MIRRORED.items() if old not in files]
    assert not moved, f"moved (or gone): delete these entries from NOT_YET_MIRRORED: {moved}"


# --- benchmarks: one folder each ---------------------------------------------------------
BENCHMARKS = [p.parent for p in sorted((ROOT / "benchmarks").glob("*/dvc.yaml"))]


@pytest.mark.parametrize("folder", BENCHMARKS, ids=lambda p: p.name)
def test_each_benchmark_folder_holds_its_readme_params_and_scripts(folder: Path):
    """A benchmark's README, dvc.yaml, params.yaml and scripts live in its own folder."""
    for name in ("README.md", "dvc.yaml", "params.yaml"):
        assert (folder / name).is_file(), f"benchmarks/{folder.name}/{name} is missing"
    outside = sorted(p.name for p in (ROOT / "benchmarks").glob(f"{folder.name}_*.py"))
    assert not outside, f"move into benchmarks/{folder.name}/: {outside}"


# --- runtime dependencies: what pipeline/ imports ---------------------------------------
# Declared runtime dependencies that no pipeline/ module imports, and why they are needed.
NOT_IMPORTED = {
    "dvc": "the tool that runs the stages (`dvc repro`); dvclive talks to it",
    "ruamel.yaml.clib": "DVC's C YAML loader (a no-op `dvc repro` 3.2 s without it, 2.4 s with)",
}


def distribution_name(requirement: str) -> str:
    """`great-expectations>=1.0,<2; ...` -> `great-expectations` (PEP 503 normalised)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions() -> set[str]:
    """The distributions whose top-level modules pipeline/ imports, lazy imports included."""
    modules: set[str] = set()
    for path in (ROOT / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    modules -= set(sys.stdlib_module_names) | {"pipeline", "__future__"}
    owners = importlib.metadata.packages_distributions()
    missing = sorted(m for m in modules if m not in owners)
    assert not missing, f"pipeline/ imports modules no installed distribution provides: {missing}"
    return {distribution_name(d) for m in modules for d in owners[m]}


def test_runtime_dependencies_are_what_pipeline_imports():
    """[project] dependencies: every one imported by pipeline/ (or listed in NOT_IMPORTED),
    and every third-party module pipeline/ imports declared; tools that only tests and
    benchmarks use (miditoolkit, miditok, muspy) belong in the dev extra."""
    pyproject = tomlkit.parse((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    declared = {distribution_name(str(r)) for r in pyproject["project"]["dependencies"]}
    exempt = {distribution_name(n) for n in NOT_IMPORTED}
    imported = imported_distributions()
    unused, undeclared = sorted(declared - imported - exempt), sorted(imported - declared)
    assert not unused, f"declared, never imported by pipeline/ (move to dev?): {unused}"
    assert not undeclared, f"imported by pipeline/, not in [project] dependencies: {undeclared}"
