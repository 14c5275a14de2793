"""The tiny project that `dvc repro` runs in tests: shared by tests/test_dag.py (issue 13:
dvc.yaml's code deps are true) and tests/test_remote.py (issue 16: artifacts shared
through a DVC remote), so the ~2 min repro is paid once per session (the `tiny_run`
fixture in tests/conftest.py).

The project is a copy of `pipeline/`, the repository's dvc.yaml and .dvcignore as they
are now, and a params.yaml derived from the repository's with every budget shrunk (a
dozen pieces, a few training steps, one short sample). `tiny_repro` runs `dvc repro`
there with tests/dagtrace on PYTHONPATH, whose sitecustomize records the files of the
copied `pipeline/` that each process loaded (see tests/test_dag.py).
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


def copy_code(project: Path) -> None:
    """Create `project` with a copy of pipeline/ (its params.yaml symlink kept, no
    bytecode) and .dvcignore (so __pycache__ never enters a stage's code deps)."""
    project.mkdir(parents=True)
    shutil.copytree(
        ROOT / "pipeline",
        project / "pipeline",
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    if (ROOT / ".dvcignore").exists():
        shutil.copy2(ROOT / ".dvcignore", project / ".dvcignore")


def build_project(project: Path) -> None:
    """Copy pipeline/, .dvcignore and dvc.yaml; write the tiny params.yaml; `dvc init`
    with the repository's DVC config and no analytics."""
    copy_code(project)
    shutil.copy2(ROOT / "dvc.yaml", project / "dvc.yaml")
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


def tiny_repro(base: Path) -> Run:
    """Build the project under `base` (a fresh folder) and `dvc repro --keep-going` it,
    traced; the result says what ran, what each stage loaded, and what failed."""
    for tool in ("etude", "dvc"):
        if not (BIN / tool).exists():
            pytest.fail(f"{BIN / tool} is missing: install the project (pip install -e .)")
    base = base.resolve()
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


@dataclass
class Bench:
    """A benchmark's `dvc repro` in a bare project (`bench_repro`): what ran and loaded."""

    project: Path
    dvc_yaml: str  # relative to the project, e.g. benchmarks/jsb/dvc.yaml
    stages: dict[str, Stage]
    rc: int
    log: str
    seconds: float
    loaded: dict[str, set[str]] = field(default_factory=dict)  # stage -> pipeline/ files
    completed: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.project / Path(self.dvc_yaml).parent

    def require_ok(self) -> None:
        if self.rc != 0:
            pytest.fail(
                f"dvc repro {self.dvc_yaml} failed (rc {self.rc}):\n"
                + failed_stage_output(self.log, self.completed)
            )

    def check_second_repro(self) -> None:
        """A second `dvc repro` runs nothing and `dvc status` is clean (no stage reruns
        for a dep it wrote itself, a params key it does not track or an unstable output)."""
        env = traced_env(self.project, self.project.parent / "traces-again")
        rc, log = run_cmd([str(BIN / "dvc"), "repro", self.dvc_yaml], self.project, env, 300)
        assert rc == 0, log
        assert "Running stage" not in log, log
        rc, out = run_cmd(
            [str(BIN / "dvc"), "status", "--json", self.dvc_yaml], self.project, clean_env(), 120
        )
        assert rc == 0, out
        assert json.loads(out.strip().splitlines()[-1]) == {}, out


def init_bench_repo(project: Path) -> None:
    """git and DVC (no analytics) in a benchmark's bare project (its stages need git)."""
    git(project, "init", "-q")
    for cmd in (["init", "-q"], ["config", "core.analytics", "false"]):
        rc, out = run_cmd([str(BIN / "dvc"), *cmd], project, clean_env(), 120)
        assert rc == 0, f"dvc {cmd[0]} failed:\n{out}"


def bench_repro(project: Path, dvc_yaml: str, traces: Path, timeout: float) -> Bench:
    """`dvc repro dvc_yaml` in `project`, traced as `tiny_repro` traces the main pipeline."""
    for tool in ("etude", "dvc"):
        if not (BIN / tool).exists():
            pytest.fail(f"{BIN / tool} is missing: install the project (pip install -e .)")
    stages = read_stages(project)
    start = time.monotonic()
    rc, log = run_cmd(
        [str(BIN / "dvc"), "repro", dvc_yaml], project, traced_env(project, traces), timeout
    )
    result = Bench(project, dvc_yaml, stages, rc, log, time.monotonic() - start)
    by_argv = {tuple(s.argv[1:]): name for name, s in stages.items()}
    for trace in sorted(traces.glob("*.jsonl")) if traces.exists() else []:
        head, *records = (json.loads(line) for line in trace.read_text().splitlines())
        files = {r["open"] for r in records if "open" in r}
        for r in records:
            files |= set(r.get("modules", ()))
            result.problems += [f"loaded {f}, not the project's copy" for f in r.get("foreign", ())]
        if head["root"] is None:
            continue  # DVC and git: no stage code
        name = by_argv.get(tuple(head["root"][1:]))
        if name is None:
            result.problems.append(f"`{shlex.join(head['root'])}` ran but is no stage's cmd")
            continue
        result.loaded.setdefault(name, set()).update(files)
    lock = result.out / "dvc.lock"
    if lock.exists():
        result.completed = set((yaml.safe_load(lock.read_text()) or {}).get("stages", {}))
    return result


def bench_dep_problems(bench: Bench, costly: tuple[str, ...]) -> list[str]:
    """tests/test_dag.py's checks for a benchmark's stages: every file of pipeline/ a
    stage loads is covered by its deps, and a costly stage's (names starting with one of
    `costly`) deps cover no .py file it never loads (a needless dep reruns it)."""
    problems = []
    for name, stage in sorted(bench.stages.items()):
        loaded = bench.loaded.get(name)
        if not loaded:
            problems.append(f"{name}: no trace")
            continue
        missing = sorted(f for f in loaded if not any(covers(d, f) for d in stage.deps))
        if missing:
            problems.append(f"{name}: loads, but its deps do not cover: {', '.join(missing)}")
        if name.startswith(costly):
            extra = sorted(
                f
                for f in covered_files(bench.project, stage)
                if f.endswith(".py") and f not in loaded
            )
            if extra:
                problems.append(f"{name}: deps cover, but it never loads: {', '.join(extra)}")
    return problems


GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run `git args` in `repo` (a test identity, no signing); its output, or fail."""
    rc, out = run_cmd([*GIT, *args], repo, env or clean_env(), 120)
    assert rc == 0, f"git {shlex.join(args)} failed in {repo}:\n{out}"
    return out


def git_copy(project: Path, repo: Path) -> None:
    """A copy of `project` (after its repro) at `repo` as a git repository with one
    commit: DVC with git (no_scm dropped), and what DVC caches kept out of git by a
    .gitignore, as the repository's own .gitignore files do."""
    from configobj import ConfigObj
    from dvc.repo import Repo

    dvc_repo = Repo(str(project))
    try:
        cached = sorted(f"/{o}" for s in dvc_repo.index.stages for o in s.outs if o.use_cache)
    finally:
        dvc_repo.close()
    shutil.copytree(project, repo, symlinks=True)
    config = ConfigObj(str(repo / ".dvc" / "config"))
    config.get("core", {}).pop("no_scm", None)
    config.write()
    (repo / ".gitignore").write_text("\n".join(["__pycache__/", *cached]) + "\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "run")


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
