"""dvc.yaml's code deps are true: each stage depends on the `pipeline/` files it loads.

Issue 13. A module-scoped fixture builds a throwaway project: a copy of `pipeline/`,
the repository's dvc.yaml and .dvcignore as they are now, and a params.yaml derived
from the repository's with every budget shrunk (a dozen pieces, a few training steps,
one short sample), and runs `dvc repro` there. Every Python process runs with
tests/dagtrace on PYTHONPATH, whose sitecustomize records the files of the copied
`pipeline/` that the process loaded (modules, and files it opened: templates); a
process counts for the stage whose `etude` command it is or descends from (pool
workers included). The copy comes first on PYTHONPATH, so the files DVC hashes are
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
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TRACER = Path(__file__).resolve().parent / "dagtrace"  # holds sitecustomize.py
BIN = Path(sys.executable).parent  # the virtualenv's bin: etude and dvc live beside python
REPRO_TIMEOUT_S = 900  # the tiny pipeline takes ~2 min on 2 cores

# --- the tiny params ----------------------------------------------------------------

MAX_FILES = 12  # corpus pieces; enough for a train, a validation and a test split
SPLIT_FRACTION = 0.25  # validation and test share of ingest's hash split, for 12 files
MAX_STEPS = 2
TRAIN_BUDGET = {  # train.* and models.<m>.train.*: capped at these values
    "max_steps": MAX_STEPS,
    "eval_every": MAX_STEPS,
    "checkpoint_every": MAX_STEPS,
    "eval_batches": 1,
    "warmup_steps": 1,
    "batch_size": 4,
}
EVALUATE_BUDGET = {"n_samples": 1, "seconds": 4.0, "n_real": 1, "train_batches": 1, "batch_size": 4}
WORKERS = 2


def tiny_params(params: dict) -> dict:
    """The repository's params with budgets shrunk; every other value kept, no key added
    (each section is validated against its dataclass), the offline corpus as the source."""
    p = json.loads(json.dumps(params))  # deep copy
    p["sources"] = ["corpus"]  # the embedded, offline source: the others download
    p["corpus"]["max_files"] = MAX_FILES
    p["corpus"]["workers"] = WORKERS
    ing = p["ingest"]
    ing["workers"] = WORKERS
    for key in ("validation_fraction", "test_fraction"):
        if key in ing:
            ing[key] = SPLIT_FRACTION

    def cap(section: dict, budget: dict) -> None:
        for key, limit in budget.items():
            value = section.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                section[key] = type(value)(min(value, limit))  # the type params.yaml has

    cap(p["train"], TRAIN_BUDGET)
    for model in p["models"].values():
        if isinstance(model.get("train"), dict):
            cap(model["train"], TRAIN_BUDGET)
        if "kl_anneal_steps" in model:  # the VAE refuses a KL schedule longer than its run
            model["kl_anneal_steps"] = min(model["kl_anneal_steps"], MAX_STEPS)
    cap(p["evaluate"], EVALUATE_BUDGET)
    if "fake_pairs" in p.get("report", {}):
        p["report"]["fake_pairs"] = 1
    return p


# --- the project ----------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """As tests/test_interruptions.py runs commands: etude and dvc on PATH, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETUDE_TRACE")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    env.pop("PYTHONPATH", None)
    return env


def traced_env(project: Path, trace_dir: Path) -> dict[str, str]:
    """The copy of `pipeline/` first on the path, the tracer's sitecustomize after it."""
    return {
        **clean_env(),
        "PYTHONPATH": f"{project}{os.pathsep}{TRACER}",
        "ETUDE_TRACE_DIR": str(trace_dir),
        "ETUDE_TRACE_PROJECT": str(project),
    }


def run_cmd(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run `cmd` as a new session's leader; on timeout its whole group is killed (no
    stage or pool worker outlives the test) and the return code is -1."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        text = out.decode(errors="replace")
        return -1, f"{shlex.join(cmd)}: timed out after {timeout} s, killed\n{text}"


def build_project(project: Path) -> None:
    """Copy pipeline/ (its params.yaml symlink kept), dvc.yaml, .dvcignore; write the
    tiny params.yaml; `dvc init` with the repository's DVC config and no analytics."""
    project.mkdir(parents=True)
    shutil.copytree(
        ROOT / "pipeline",
        project / "pipeline",
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    shutil.copy2(ROOT / "dvc.yaml", project / "dvc.yaml")
    if (ROOT / ".dvcignore").exists():
        shutil.copy2(ROOT / ".dvcignore", project / ".dvcignore")
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params(params), sort_keys=False))
    rc, out = run_cmd([str(BIN / "dvc"), "init", "--no-scm", "-q"], project, clean_env(), 120)
    assert rc == 0, f"dvc init failed:\n{out}"
    from configobj import ConfigObj  # DVC's own config format

    config = ConfigObj(str(project / ".dvc" / "config"))  # core.no_scm from init
    if (ROOT / ".dvc" / "config").exists():  # e.g. plots.html_template (relative paths)
        theirs = ConfigObj(str(ROOT / ".dvc" / "config"))
        theirs.merge(config)  # ours wins: no_scm
        config.merge(theirs)
    config.setdefault("core", {})["analytics"] = "false"
    config.write()


def check_tracer(project: Path, trace_dir: Path) -> None:
    """With the traced environment, `import pipeline` finds the copy (not the editable
    install of the repository) and the tracer records it."""
    code = "import pipeline; print(pipeline.__file__)"
    env = traced_env(project, trace_dir)
    rc, out = run_cmd([sys.executable, "-c", code], trace_dir.parent, env, 60)
    assert rc == 0, f"import pipeline failed in the project:\n{out}"
    got = Path(out.strip().splitlines()[-1]).resolve()
    assert got == project / "pipeline" / "__init__.py", f"imported {got}, not the copy"
    records = [
        json.loads(ln) for f in trace_dir.glob("*.jsonl") for ln in f.read_text().splitlines()
    ]
    modules = [m for r in records for m in r.get("modules", ())]
    assert "pipeline/__init__.py" in modules, f"the tracer recorded {records}"


@dataclass
class Stage:
    name: str
    argv: list[str]
    deps: list[str]  # paths relative to the project (params deps left out)


def read_stages(project: Path) -> dict[str, Stage]:
    from dvc.repo import Repo

    repo = Repo(str(project))
    try:
        out = {}
        for s in repo.index.stages:
            deps = [
                Path(os.path.relpath(d.fs_path, project)).as_posix()
                for d in s.deps
                if type(d).__name__ != "ParamsDependency"
            ]
            out[s.name] = Stage(s.name, shlex.split(s.cmd), deps)
        return out
    finally:
        repo.close()


def covers(dep: str, file: str) -> bool:
    return dep in (".", file) or file.startswith(dep.rstrip("/") + "/")


def covered_files(project: Path, stage: Stage) -> set[str]:
    """The files under pipeline/ that the stage's deps cover (folders expanded)."""
    out = set()
    for dep in stage.deps:
        path = project / dep
        if not covers("pipeline", dep) and not covers(dep, "pipeline"):
            continue
        if path.is_dir():
            files = [f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
        else:
            files = [path] if path.exists() else []
        for f in files:
            rel = f.relative_to(project).as_posix()
            if rel.startswith("pipeline/") and not f.suffix == ".pyc":
                out.add(rel)
    return out


def failed_stage_output(log: str, completed: set[str], lines: int = 40) -> str:
    """The output of each stage that `dvc repro` ran but did not complete (its last
    `lines` lines; a stage failing with the same last error as an earlier one is only
    named); DVC's last lines if no stage failed."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"Running stage '([^']+)'", log)]
    parts, seen = [], {}
    for i, (start, name) in enumerate(starts):
        if name in completed:
            continue
        end = starts[i + 1][0] if i + 1 < len(starts) else len(log)
        text = [ln for ln in log[start:end].splitlines() if ln.strip()]
        errors = [ln for ln in text if not ln.lstrip().startswith(("WARNING", "ERROR"))]
        error = errors[-1].strip() if errors else ""
        if error and error in seen:
            parts.append(f"--- {name}: same error as {seen[error]}")
            continue
        seen[error] = name
        parts.append(f"--- {name} ---\n" + "\n".join(text[-lines:]))
    if not parts:  # DVC itself failed, or no stage output to show
        parts.append("\n".join(log.splitlines()[-lines:]))
    return "\n".join(parts)


@dataclass
class Run:
    project: Path
    stages: dict[str, Stage]
    rc: int
    log: str
    seconds: float
    loaded: dict[str, set[str]] = field(default_factory=dict)  # stage -> files
    completed: set[str] = field(default_factory=set)  # stages recorded in dvc.lock
    stage_seconds: dict[str, float] = field(default_factory=dict)  # first to last trace
    problems: list[str] = field(default_factory=list)  # tracing itself went wrong

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def not_run_note(self) -> str:
        missing = sorted(set(self.stages) - self.completed)
        if not missing:
            return ""
        return (
            f"\n(dvc repro failed, rc {self.rc}; not completed, so not or only partly "
            f"checked: {', '.join(missing)})"
        )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    for tool in ("etude", "dvc"):
        if not (BIN / tool).exists():
            pytest.fail(f"{BIN / tool} is missing: install the project (pip install -e .)")
    base = tmp_path_factory.mktemp("dag").resolve()
    project, traces = base / "proj", base / "traces"
    build_project(project)
    check_tracer(project, base / "check")
    stages = read_stages(project)
    start = time.monotonic()
    rc, log = run_cmd(
        [str(BIN / "dvc"), "repro", "--keep-going"],
        project,
        traced_env(project, traces),
        REPRO_TIMEOUT_S,
    )
    result = Run(project, stages, rc, log, time.monotonic() - start)
    by_argv = {tuple(s.argv[1:]): name for name, s in stages.items()}
    spans: dict[str, list[float]] = {}
    for trace in sorted(traces.glob("*.jsonl")) if traces.exists() else []:
        head, *records = (json.loads(line) for line in trace.read_text().splitlines())
        argv, root = shlex.join(head["argv"]), head["root"]
        files = {r["open"] for r in records if "open" in r}
        for r in records:
            files |= set(r.get("modules", ()))
            result.problems += [
                f"{argv}: loaded {f}, not the project's copy" for f in r.get("foreign", ())
            ]
        if root is None:  # DVC and other helpers; only etude's processes run stage code
            if files:
                result.problems.append(f"{argv} loaded {sorted(files)} outside any `etude` command")
            continue
        name = by_argv.get(tuple(root[1:]))
        if name is None:  # not a stage's command: nothing runs etude but the stages
            result.problems.append(f"`{shlex.join(root)}` ran but is no stage's cmd")
            continue
        result.loaded.setdefault(name, set()).update(files)
        span = spans.setdefault(name, [float("inf"), 0.0])
        span[0] = min(span[0], int(trace.name.split("-")[1].split(".")[0]) / 1e9)
        span[1] = max(span[1], trace.stat().st_mtime)
    result.stage_seconds = {n: end - start for n, (start, end) in spans.items()}
    lock = project / "dvc.lock"
    if lock.exists():
        result.completed = set((yaml.safe_load(lock.read_text()) or {}).get("stages", {}))
    return result


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
    gives every model's test metrics for both the commit and the experiment."""
    if not run.ok:
        pytest.fail(f"the tiny pipeline did not complete{run.not_run_note()}")
    from configobj import ConfigObj
    from dvc.repo import Repo

    dvc_repo = Repo(str(run.project))
    try:  # what DVC caches stays out of git, as in the repository's own .gitignore files
        cached = sorted(f"/{o}" for s in dvc_repo.index.stages for o in s.outs if o.use_cache)
    finally:
        dvc_repo.close()
    repo = tmp_path / "repo"
    shutil.copytree(run.project, repo, symlinks=True)
    config = ConfigObj(str(repo / ".dvc" / "config"))
    config.get("core", {}).pop("no_scm", None)
    config.write()
    (repo / ".gitignore").write_text("\n".join(["__pycache__/", *cached]) + "\n")
    env = {**clean_env(), "PYTHONPATH": str(repo)}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "run"]):
        rc, out = run_cmd(cmd, repo, env, 120)
        assert rc == 0, out
    tracked = run_cmd(["git", "ls-files"], repo, env, 60)[1].split()
    models = sorted(s.split("@")[1] for s in run.stages if s.startswith("evaluate@"))
    for model in models:
        assert f"reports/metrics/{model}.json" in tracked, "headline metrics must be in git"
        assert f"reports/evaluate/{model}.json" in tracked
    assert not [f for f in tracked if f.startswith(("data/", "models/", "reports/samples/"))]

    dvc = str(BIN / "dvc")
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
            numbers = row["data"][model]
            tests = [k for k in numbers if k.startswith("test_")]  # named for what it is
            assert len(tests) == 1 and isinstance(numbers[tests[0]], float), (model, numbers)
    rows = _metric_rows(shown, "reports/metrics/rnn.json")
    rnn = {r["data"]["rnn"]["test_pitch_nll"] for r in rows}
    assert len(rnn) == 2, f"the experiment changes rnn's test NLL and nothing else: {rnn}"
    rc, out = run_cmd([dvc, "metrics", "diff", "--json"], repo, env, 120)
    assert rc == 0, out
    diff = json.loads(out[out.index("{") :])
    assert set(diff) == {"reports/metrics/rnn.json"}, diff
