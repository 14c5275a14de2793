"""dvc.yaml's code deps are true: each stage depends on the `pipeline/` files it loads.

Issue 13. A session-scoped fixture (`tiny_run` in tests/conftest.py, built by
tests/tiny_project.py and shared with tests/test_remote.py) builds a throwaway project:
a copy of `pipeline/`, the repository's dvc.yaml and .dvcignore as they are now, and a
params.yaml derived from the repository's with every budget shrunk (a dozen pieces, a
few training steps, one short sample), and runs `dvc repro` there. Every Python
process runs with tests/dagtrace on PYTHONPATH, whose sitecustomize records the files
of the copied `pipeline/` that the process loaded (modules, and files it opened:
templates); a process counts for the stage whose `etude` command it is or descends from
(pool workers included). The copy comes first on PYTHONPATH, so the files DVC hashes are
the files Python runs (checked: no `pipeline` module may come from elsewhere).

- test_tiny_pipeline_runs: `dvc repro` succeeds (else: the failing stage's output).
- test_deps_cover_loaded_files (A): every file a stage loads is covered by its deps.
- test_train_deps_are_loaded (B): a train stage's deps cover no .py file it never
  loads (training is the expensive stage; a needless dep reruns it).
- test_appending_a_comment_changes_exactly_the_loading_stages (C): after the repro,
  appending a comment to a file under pipeline/ makes `dvc status` list exactly the
  stages that loaded it, with the issue's examples spelled out.

The checks collect every problem before failing, so one run lists them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tiny_project import (
    BIN,
    Run,
    clean_env,
    covered_files,
    covers,
    failed_stage_output,
    git,
    git_copy,
    run_cmd,
)

from pipeline.evaluation.evaluate import HEADLINE_KEYS


@pytest.fixture(scope="module")
def run(tiny_run: Run) -> Run:
    """The session's tiny repro (tests/conftest.py), under this module's name for it."""
    return tiny_run


def test_tiny_pipeline_runs(run: Run) -> None:
    took = ", ".join(f"{n} {t:.1f}" for n, t in sorted(run.stage_seconds.items()))
    print(f"\ntiny dvc repro: {run.seconds:.1f} s; per stage (s): {took}")
    problems = []
    if not run.ok:
        problems.append(
            f"dvc repro failed (rc {run.rc}):\n" + failed_stage_output(run.log, run.completed)
        )
    problems += [f"tracing: {p}" for p in run.problems]
    if untraced := sorted(run.completed - set(run.loaded)):
        problems.append(f"completed without a trace: {', '.join(untraced)}")
    # the tiny params must still give every split a piece, or a stage tests nothing
    import pyarrow.parquet as pq

    for pieces in sorted((run.project / "data" / "interim").glob("*/pieces.parquet")):
        splits = set(pq.read_table(pieces, columns=["split"]).column("split").to_pylist())
        if not {"train", "validation", "test"} <= splits:
            problems.append(f"{pieces}: splits {sorted(splits)}; raise MAX_FILES/SPLIT_FRACTION")
    assert not problems, "\n".join(problems)


def test_deps_cover_loaded_files(run: Run) -> None:
    """A: each file of pipeline/ a stage loaded is covered by one of its deps."""
    problems = []
    for name in sorted(run.loaded):
        deps = run.stages[name].deps
        missing = sorted(f for f in run.loaded[name] if not any(covers(d, f) for d in deps))
        if missing:
            problems.append(f"{name}: loads, but its deps do not cover: " + ", ".join(missing))
    missing_traces = sorted(set(run.completed) - set(run.loaded))
    if missing_traces:
        problems.append(f"completed without any trace: {', '.join(missing_traces)}")
    assert not problems, "\n".join(problems) + run.not_run_note()
    assert run.ok, run.not_run_note()


def test_train_deps_are_loaded(run: Run) -> None:
    """B: a train stage's deps cover only .py files that the stage loads."""
    problems = []
    trains = sorted(n for n in run.stages if n.startswith("train@"))
    assert trains, "dvc.yaml has no train@* stage"
    for name in trains:
        if name not in run.completed:
            continue  # failed or not run: its trace is partial (see the note)
        extra = sorted(
            f
            for f in covered_files(run.project, run.stages[name])
            if f.endswith(".py") and f not in run.loaded.get(name, set())
        )
        if extra:
            problems.append(f"{name}: deps cover, but it never loads: " + ", ".join(extra))
    assert not problems, "\n".join(problems) + run.not_run_note()
    assert run.ok, run.not_run_note()


# --- C: dvc status after a comment ----------------------------------------------------

COMMENT = {".py": "# dag test\n", ".yaml": "# dag test\n", ".html": "<!-- dag test -->\n"}
COMMENT_DEFAULT = "/* dag test */\n"  # .css, .js


@contextlib.contextmanager
def appended(paths: list[Path]) -> Iterator[None]:
    """A comment appended to each of `paths`, their bytes restored on the way out."""
    originals = {}
    try:
        for path in paths:
            originals[path] = original = path.read_bytes()
            text = COMMENT.get(path.suffix, COMMENT_DEFAULT).encode()
            path.write_bytes(original + (b"" if original.endswith(b"\n") else b"\n") + text)
        yield
    finally:
        for path, original in originals.items():
            path.write_bytes(original)


def batches(files: list[str], dir_deps: set[str]) -> list[list[str]]:
    """Files to edit together: no two in a batch lie in one folder dep, so each changed
    dep that `dvc status` names holds at most one file of its batch (exact blame)."""
    out: list[list[str]] = []
    for file in files:
        for batch in out:
            if not any(covers(d, file) and covers(d, other) for d in dir_deps for other in batch):
                batch.append(file)
                break
        else:
            out.append([file])
    return out


def dvc_status(project: Path) -> dict:
    """`dvc status --json`, in-process (the same code, without ~2 s of start-up)."""
    from dvc.repo import Repo

    cwd = os.getcwd()
    os.chdir(project)  # stage names and dep paths as `dvc status` run there prints them
    try:
        with Repo(str(project)) as repo:
            return repo.status()
    finally:
        os.chdir(cwd)


def changed_by(status: dict, file: str) -> set[str]:
    """Stages whose changed deps include `file` (itself or a folder holding it)."""
    out = set()
    for stage, entries in status.items():
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            for dep, state in entry.get("changed deps", {}).items():
                if state == "modified" and covers(dep, file):
                    out.add(stage)
    return out


EXAMPLES = (  # issue 13's examples, checked where they exist
    "pipeline/modeling/prv/poph.py",  # exactly train@poph and evaluate@poph
    "pipeline/modeling/events/sampling.py",  # evaluate@transformer, not train@transformer
    "pipeline/representations/notes.py",  # every represent@* stage
)


def test_appending_a_comment_changes_exactly_the_loading_stages(run: Run) -> None:
    """C: after a comment is appended to a file under pipeline/, `dvc status` lists
    exactly the stages that loaded it."""
    if not run.completed:
        pytest.fail(f"nothing to check: no stage completed{run.not_run_note()}")
    project = run.project
    baseline = dvc_status(project)
    problems = []
    pipeline_changes = {s: e for s, e in baseline.items() if s in run.completed}
    if pipeline_changes:
        problems.append(f"before any edit, dvc status is not clean: {pipeline_changes}")
    candidates = set().union(*run.loaded.values()) if run.loaded else set()
    for stage in run.stages.values():
        candidates |= covered_files(project, stage)
    candidates |= {f for f in EXAMPLES if (project / f).is_file()}
    # a symlink (pipeline/params.yaml -> ../params.yaml) edits params.yaml itself
    candidates = {f for f in candidates if not (project / f).is_symlink()}
    dir_deps = {d for st in run.stages.values() for d in st.deps if (project / d).is_dir()}
    changed: dict[str, set[str]] = {}
    start = time.monotonic()
    groups = batches(sorted(candidates), dir_deps)
    for batch in groups:
        with appended([project / f for f in batch]):
            status = dvc_status(project)
        for file in batch:
            changed[file] = (changed_by(status, file) - changed_by(baseline, file)) & run.completed
    for file in sorted(candidates):
        expected = {s for s in run.completed if file in run.loaded.get(s, set())}
        if changed[file] != expected:
            extra, missing = changed[file] - expected, expected - changed[file]
            parts = []
            if extra:
                parts.append(f"also changes {', '.join(sorted(extra))} (never loaded there)")
            if missing:
                parts.append(f"does not change {', '.join(sorted(missing))} (which load it)")
            problems.append(f"{file}: " + "; ".join(parts))
    seconds = time.monotonic() - start
    print(f"\ndvc status: {len(candidates)} files in {len(groups)} calls, {seconds:.1f} s")

    # the examples, where the files exist in this layout and the stages ran
    def example(file: str, stages: set[str], ok: bool, want: str) -> None:
        if file in changed and stages <= run.completed and not ok:
            problems.append(f"{file}: dvc status lists {sorted(changed[file])}; want {want}")

    poph, sampling, notes = EXAMPLES
    pair = {"train@poph", "evaluate@poph"}
    example(poph, pair, changed.get(poph) == pair, "exactly train@poph, evaluate@poph")
    pair = {"train@transformer", "evaluate@transformer"}
    got = changed.get(sampling, set())
    example(
        sampling,
        pair,
        "evaluate@transformer" in got and "train@transformer" not in got,
        "evaluate@transformer and not train@transformer",
    )
    represents = {s for s in run.stages if s.startswith("represent@")}
    example(notes, represents, represents <= changed.get(notes, set()), f"{sorted(represents)}")
    if (after := dvc_status(project)) != baseline:
        problems.append(f"with every file restored, dvc status is {after}, not {baseline}")
    assert not problems, "\n".join(problems) + run.not_run_note()
    assert run.ok, run.not_run_note()


# --- D. metrics in git: dvc metrics diff and dvc exp show work across revisions -------------


def _metric_rows(shown: object, file: str) -> list[dict]:
    """Every `data` dict of metrics file `file` in `dvc exp show --json` output (any
    nesting: baseline revisions and their experiments)."""
    found: list[dict] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            metrics = node.get("metrics")
            if isinstance(metrics, dict) and file in metrics:
                found.append(metrics[file])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(shown)
    return found


def test_metrics_compare_across_commits_and_experiments(run: Run, tmp_path: Path) -> None:
    """D: the headline metrics are in git, so after a commit `dvc metrics diff` works
    against HEAD, and `dvc exp run -S models.rnn.hidden_size=...` then `dvc exp show`
    gives every model's test metrics for both the commit and the experiment.

    Issue 20: every model's file has the same keys, so `dvc metrics show` is one row
    per model within 160 columns, and `dvc exp show` sorts by one model's "test"."""
    if not run.ok:
        pytest.fail(f"the tiny pipeline did not complete{run.not_run_note()}")
    repo = tmp_path / "repo"
    git_copy(run.project, repo)  # what DVC caches stays out of git
    env = {**clean_env(), "PYTHONPATH": str(repo)}
    tracked = git(repo, "ls-files").split()
    models = sorted(s.split("@")[1] for s in run.stages if s.startswith("evaluate@"))
    for model in models:
        assert f"reports/metrics/{model}.json" in tracked, "headline metrics must be in git"
        assert f"reports/evaluate/{model}.json" in tracked
    assert not [f for f in tracked if f.startswith(("data/", "models/", "reports/samples/"))]

    dvc = str(BIN / "dvc")
    rc, out = run_cmd([dvc, "metrics", "show"], repo, env, 120)
    assert rc == 0, out
    table = [line for line in out.splitlines() if line.startswith(("Path ", "reports/"))]
    columns = table[0].split()[1:]  # one per key, sorted; DVC drops a column of nulls only
    assert {"objective", "kind", "unit", "test"} <= set(columns) <= set(HEADLINE_KEYS), out
    assert sorted(line.split()[0] for line in table[1:]) == [
        f"reports/metrics/{model}.json" for model in models
    ], out  # one row per model
    assert max(len(line.rstrip()) for line in table) <= 160, out
    rc, out = run_cmd([dvc, "metrics", "diff", "--json"], repo, env, 120)
    assert rc == 0, out
    hidden = yaml.safe_load((repo / "params.yaml").read_text())["models"]["rnn"]["hidden_size"]
    experiment = [dvc, "exp", "run", "-S", f"models.rnn.hidden_size={hidden // 2}"]
    rc, out = run_cmd(experiment, repo, env, 600)
    assert rc == 0, out
    reran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert reran == {"train@rnn", "evaluate@rnn", "report"}, out
    rc, out = run_cmd([dvc, "exp", "show", "--json"], repo, env, 120)
    assert rc == 0, out
    shown = json.loads(out[out.index("[") :] if "[" in out else out)
    for model in models:
        rows = _metric_rows(shown, f"reports/metrics/{model}.json")
        assert len(rows) >= 3, (model, rows)  # workspace, the commit, the experiment
        for row in rows:
            assert "error" not in row, (model, row)
            numbers = row["data"]
            # the same keys for every model (DVC leaves out the null ones)
            assert {"objective", "kind", "unit", "test"} <= set(numbers) <= set(HEADLINE_KEYS)
            assert isinstance(numbers["test"], float), (model, numbers)
            assert isinstance(numbers["objective"], str), (model, numbers)  # what "test" is
    rows = _metric_rows(shown, "reports/metrics/rnn.json")
    rnn = {r["data"]["test"] for r in rows}
    assert {r["data"]["objective"] for r in rows} == {"pitch_nll"}, rows
    assert len(rnn) == 2, f"the experiment changes rnn's test NLL and nothing else: {rnn}"
    # the same key in every file: `dvc exp show` sorts by it with the file's path
    sort = [dvc, "exp", "show", "--no-pager", "--only-changed", "--csv"]
    rc, out = run_cmd([*sort, "--sort-by", "reports/metrics/rnn.json:test"], repo, env, 120)
    assert rc == 0 and "reports/metrics/rnn.json:test" in out, out
    rc, out = run_cmd([dvc, "metrics", "diff", "--json"], repo, env, 120)
    assert rc == 0, out
    diff = json.loads(out[out.index("{") :])
    assert set(diff) == {"reports/metrics/rnn.json"}, diff
