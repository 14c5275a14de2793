"""A team shares artifacts through a DVC remote, and nothing in the default run needs one.

Issue 16. The round trip reuses the session's tiny `dvc repro` (`tiny_run`,
tests/conftest.py; no second repro): a git copy of that project gets a local-folder
remote (`dvc remote add -d`), `dvc push`es, commits the remote; a fresh `git clone`
has no stores or checkpoints until `dvc pull`, after which `dvc status` (workspace and
`--cloud`) says everything is up to date, `dvc repro --dry` would run nothing, and every
file DVC caches (stores, checkpoints, samples) is byte-identical to the original run's.
Everything lives under pytest's tmp folders; no network, no ../shared.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from tiny_project import BIN, ROOT, Run, clean_env, git, git_copy

DVC_TIMEOUT_S = 300


def dvc(repo: Path, *args: str) -> str:
    """Run `dvc args` in `repo`; its stdout (stderr kept apart: warnings are not JSON)."""
    cmd = [str(BIN / "dvc"), *args]
    proc = subprocess.run(
        cmd, cwd=repo, env=clean_env(), capture_output=True, text=True, timeout=DVC_TIMEOUT_S
    )
    assert proc.returncode == 0, (
        f"dvc {' '.join(args)} failed in {repo} (rc {proc.returncode}):\n"
        f"{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout


def status(repo: Path, *args: str) -> dict:
    """`dvc status --json` (with `args`, e.g. --cloud): {} when all is up to date."""
    out = dvc(repo, "status", "--json", *args)
    return json.loads(out[out.index("{") :])


def cached_outs(project: Path) -> list[str]:
    """Every output of every stage that DVC caches (not the `cache: false` JSON in git)."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return sorted(str(o) for s in repo.index.stages for o in s.outs if o.use_cache)


def files_under(root: Path, outs: list[str]) -> dict[str, bytes]:
    """Each file of `outs` (files or folders) under `root`, by relative path: its bytes."""
    found = {}
    for out in outs:
        path = root / out
        for f in [path] if path.is_file() else sorted(path.rglob("*")):
            if f.is_file():
                found[f.relative_to(root).as_posix()] = f.read_bytes()
    return found


def yaml_keys(node: object) -> set[str]:
    """Every mapping key anywhere in a parsed YAML document."""
    if isinstance(node, dict):
        return set(map(str, node)).union(*(yaml_keys(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(yaml_keys(v) for v in node))
    return set()


def test_default_pipelines_need_no_remote() -> None:
    """The repository configures no remote, no default one, and no pipeline (the main
    dvc.yaml, the benchmark's) or .dvc file names a remote or imports from another repo,
    so `dvc repro` on a fresh checkout needs none (tests/test_dag.py runs it that way)."""
    from configobj import ConfigObj

    config = ConfigObj(str(ROOT / ".dvc" / "config"))
    assert "remote" not in config.get("core", {}), f"core.remote is set: {dict(config)}"
    remotes = [section for section in config if section.startswith("remote")]
    assert not remotes, f".dvc/config configures remotes: {remotes}"
    listed = git(
        ROOT, "ls-files", "--cached", "--others", "--exclude-standard", "--", "*dvc.yaml", "*.dvc"
    )
    files = [ROOT / f for f in listed.split()]
    assert ROOT / "dvc.yaml" in files, listed
    problems = []
    for file in files:
        keys = yaml_keys(yaml.safe_load(file.read_text(encoding="utf-8")))
        for key in sorted(keys & {"remote", "repo"}):  # an out's remote; an import's repo
            problems.append(f"{file.relative_to(ROOT)}: `{key}:` needs another store")
    assert not problems, "\n".join(problems)


def test_push_clone_pull_round_trip(tiny_run: Run, tmp_path: Path) -> None:
    """`dvc push` to a local-folder remote, `git clone`, `dvc pull`: the clone is up to
    date (`dvc status`, `dvc status --cloud`, `dvc repro --dry`) and its stores and
    checkpoints are byte-identical to the original run's."""
    if not tiny_run.ok:
        pytest.fail(f"the tiny pipeline did not complete{tiny_run.not_run_note()}")
    start = time.monotonic()
    origin, remote, clone = tmp_path / "origin", tmp_path / "remote", tmp_path / "clone"
    git_copy(tiny_run.project, origin)
    assert not dvc(origin, "remote", "list").strip(), "the tiny project ran with a remote"

    dvc(origin, "remote", "add", "-d", "shared", str(remote))
    dvc(origin, "push")
    assert status(origin, "--cloud") == {}, "after dvc push the remote lacks something"
    git(origin, "add", ".dvc/config")
    git(origin, "commit", "-qm", "a shared DVC remote")

    git(tmp_path, "clone", "-q", str(origin), str(clone))
    outs = cached_outs(clone)
    groups = ("data/interim/", "data/processed/", "models/")
    for group in groups:  # the stores and the checkpoints are all DVC-cached outputs
        assert any(o.startswith(group) for o in outs), f"no cached output under {group}: {outs}"
    assert not files_under(clone, outs), "git carried a DVC-cached output into the clone"
    before = status(clone)
    assert before, "dvc status in a clone without its data says all is up to date"
    dvc(clone, "pull")

    assert status(clone) == {}, f"after dvc pull: {status(clone)}"
    assert status(clone, "--cloud") == {}, "the clone's cache and the remote differ"
    dry = dvc(clone, "repro", "--dry")
    assert "Running stage" not in dry, f"dvc repro would rerun stages after a pull:\n{dry}"
    original, pulled = files_under(tiny_run.project, outs), files_under(clone, outs)
    assert sorted(pulled) == sorted(original), (
        f"missing in the clone: {sorted(set(original) - set(pulled))}; "
        f"extra: {sorted(set(pulled) - set(original))}"
    )
    differ = sorted(f for f in original if pulled[f] != original[f])
    assert not differ, f"pulled files differ from the original run's: {differ}"
    for group in groups:
        assert any(f.startswith(group) for f in pulled), f"no file under {group} compared"
    assert any(f.endswith(".pt") for f in pulled), "no checkpoint compared"
    size = sum(map(len, original.values()))
    print(
        f"\nround trip: {len(original)} files, {size / 1e6:.1f} MB in {len(outs)} outputs, "
        f"{time.monotonic() - start:.1f} s"
    )
