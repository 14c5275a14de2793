"""The package's shape (issue 21): every import points down, nothing loops, every room is
small enough to hold in mind.

- Layers: `pipeline/__init__.py`'s docstring lists them, top to bottom, once; this test
  reads that list. Every `import` and `from ... import` of every module under pipeline/
  (at the top of the file, inside functions, under TYPE_CHECKING: all of them, found with
  `ast`) must point to the importer's own layer or one below.
- Cycles: no loop among the modules (``pipeline.a.b`` as the node), nor among the
  names of the layer list (``pipeline.modeling`` and everything in it as one node).
  Importing ``pipeline.a.b`` also runs ``pipeline/a/__init__.py``; that parent step is
  Python's, not the module's, and is left out of both graphs.
- Size: no file under pipeline/ above 600 lines, no function above 80 (``def`` to its
  last line, docstring included, each nested function on its own), no function above
  cyclomatic complexity 15 as ruff's C901 (mccabe) measures it, run here as a subprocess
  (`ruff check --select C901 --config lint.mccabe.max-complexity=15 pipeline`).

Each check collects every offender before failing, so one run lists them all. The
checkers are also run on small made-up packages, so that a check that finds nothing
has been seen to find something.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import pipeline

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"

MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
MAX_COMPLEXITY = 15


# --- reading the package ---------------------------------------------------------------


def layers_from_docstring(doc: str) -> list[list[str]]:
    """The layers listed in the package docstring, top first: the indented lines of
    names that follow the line starting "Layers, top to bottom"."""
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Layers, top to")), None)
    if start is None:
        raise AssertionError("pipeline/__init__.py's docstring has no 'Layers, top to bottom'")
    layers: list[list[str]] = []
    for line in lines[start + 1 :]:
        if layers and not line.strip():
            break  # the blank line after the list ends it
        if line.startswith("    ") and line.strip():
            layers.append([name.strip() for name in line.split(",")])
    return layers


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """pipeline/a/b.py -> pipeline.a.b; pipeline/a/__init__.py -> pipeline.a."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_sources(root: Path = PACKAGE) -> dict[str, str]:
    """Module name -> source text, for every .py file under `root`."""
    return {module_name(p, root): p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py"))}


def _resolve(target: str, modules: Iterable[str]) -> str | None:
    """The module `target` names: itself, else its longest prefix that is a module."""
    known = set(modules)
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def imports_of(
    name: str, source: str, modules: Iterable[str], is_package: bool = False
) -> list[tuple[str, int]]:
    """(module imported, line) for every import of a package module in `source`.

    `from pipeline.a import b` names module ``pipeline.a.b`` when that is a module, else
    ``pipeline.a`` (b is a name defined there). Relative imports are resolved from `name`.
    """
    top = name.split(".")[0]
    modules = list(modules)
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                anchor = here[: len(here) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if target == top or target.startswith(top + "."):
                module = _resolve(target, modules)
                if module is not None and module != name:
                    found.append((module, node.lineno))
    return list(dict.fromkeys(found))  # `from a import b, c`: one entry per module and line


def import_graph(
    sources: Mapping[str, str], packages: Iterable[str] = ()
) -> dict[str, list[tuple[str, int]]]:
    """Module -> [(module it imports, line)], over `sources` (name -> source text)."""
    packages = set(packages)
    return {
        name: imports_of(name, text, sources, is_package=name in packages)
        for name, text in sources.items()
    }


def unit_of(module: str) -> str:
    """The name a module goes by in the layer list: pipeline.a.b -> a; the root -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(
    graph: Mapping[str, list[tuple[str, int]]], layers: list[list[str]]
) -> list[str]:
    """Every import from a layer into a higher one, and every module no layer names."""
    rank = {unit: depth for depth, names in enumerate(layers) for unit in names}
    problems = []
    for module, targets in sorted(graph.items()):
        unit = unit_of(module)
        if unit and unit not in rank:
            problems.append(f"{module}: '{unit}' is in no layer of pipeline/__init__.py")
            continue
        for target, line in targets:
            goes_to = unit_of(target)
            if not unit:
                problems.append(f"{module} (the package root) imports {target} (line {line})")
            elif goes_to in rank and rank[goes_to] < rank[unit]:
                problems.append(
                    f"{module} (layer '{unit}') imports {target} (layer '{goes_to}', higher) "
                    f"at line {line}"
                )
    return problems


def cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    nodes = sorted(set(edges) | {t for ts in edges.values() for t in ts})

    def visit(node: str) -> None:  # recursion depth <= the number of modules (~70)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(set(edges.get(node, ()))):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in nodes:
        if node not in index:
            visit(node)
    return sorted(found)


def module_cycles(graph: Mapping[str, list[tuple[str, int]]]) -> list[list[str]]:
    return cycles({m: [t for t, _ in ts] for m, ts in graph.items()})


def unit_cycles(graph: Mapping[str, list[tuple[str, int]]]) -> list[list[str]]:
    edges: dict[str, set[str]] = {}
    for module, targets in graph.items():
        unit = unit_of(module)
        for target, _ in targets:
            if unit_of(target) != unit:
                edges.setdefault(unit, set()).add(unit_of(target))
    return cycles(edges)


def long_functions(sources: Mapping[str, str], limit: int) -> list[str]:
    """`module.function: N lines` for each function (nested ones too) over `limit`."""
    problems = []
    for name, text in sorted(sources.items()):
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    problems.append(f"{name}.{node.name} (line {node.lineno}): {length} lines")
    return problems


def long_files(root: Path, limit: int) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > limit:
            problems.append(f"{path.relative_to(root.parent)}: {n} lines")
    return problems


def ruff_complexity(path: Path, limit: int) -> list[str]:
    """ruff's C901 findings over `path`, one line each: `file:line: message`."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed (it is a dev dependency: pip install -e '.[dev]')")
    cmd = [ruff, "check", "--no-cache", "--select", "C901", "--output-format", "json"]
    cmd += ["--config", f"lint.mccabe.max-complexity={limit}", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode not in (0, 1):  # 1 = findings; anything else is ruff failing
        pytest.fail(f"{' '.join(cmd)} failed (rc {done.returncode}): {done.stderr.strip()}")
    findings = json.loads(done.stdout or "[]")
    return sorted(
        f"{_shown(Path(f['filename']))}:{f['location']['row']}: {f['message']}" for f in findings
    )


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


# --- the package -------------------------------------------------------------------------

LAYERS = layers_from_docstring(pipeline.__doc__ or "")
SOURCES = package_sources()
PACKAGES = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
GRAPH = import_graph(SOURCES, PACKAGES)


def test_the_layer_list_names_each_part_of_the_package_once() -> None:
    names = [name for layer in LAYERS for name in layer]
    assert len(LAYERS) >= 5, f"layers read from the docstring: {LAYERS}"
    assert len(names) == len(set(names)), f"named twice: {names}"
    parts = {unit_of(m) for m in SOURCES} - {""}
    assert parts <= set(names), f"in no layer: {sorted(parts - set(names))}"
    assert set(names) <= parts, f"listed but not in pipeline/: {sorted(set(names) - parts)}"


def test_every_import_points_down() -> None:
    problems = upward_imports(GRAPH, LAYERS)
    assert not problems, "\n".join(problems)


def test_no_import_cycle_between_modules() -> None:
    found = module_cycles(GRAPH)
    assert not found, "\n".join(" <-> ".join(c) for c in found)


def test_no_import_cycle_between_parts_of_the_layer_list() -> None:
    found = unit_cycles(GRAPH)
    assert not found, "\n".join(" <-> ".join(c) for c in found)


def test_no_file_above_600_lines() -> None:
    problems = long_files(PACKAGE, MAX_FILE_LINES)
    assert not problems, "\n".join(problems)


def test_no_function_above_80_lines() -> None:
    problems = long_functions(SOURCES, MAX_FUNCTION_LINES)
    assert not problems, "\n".join(problems)


def test_no_function_above_complexity_15() -> None:
    problems = ruff_complexity(PACKAGE, MAX_COMPLEXITY)
    assert not problems, "\n".join(problems)


# --- the checkers on made-up packages -------------------------------------------------

FAKE_LAYERS = [["top"], ["mid", "side"], ["low"]]
FAKE = {
    "pkg": "",
    "pkg.top": "from pkg.mid import x\n",
    "pkg.mid": "import pkg.low.util\n\ndef f():\n    from pkg.top import y  # lazy, still up\n",
    "pkg.side": "from pkg import mid\nfrom . import low\n",
    "pkg.low": "",
    "pkg.low.util": "from .. import side  # up, relative\n",
}


def test_the_checkers_find_what_they_should() -> None:
    graph = import_graph(FAKE, packages={"pkg", "pkg.low"})
    assert graph["pkg.mid"] == [("pkg.low.util", 1), ("pkg.top", 4)]
    assert graph["pkg.side"] == [("pkg.mid", 1), ("pkg.low", 2)]
    assert graph["pkg.low.util"] == [("pkg.side", 1)]
    problems = upward_imports(graph, FAKE_LAYERS)
    assert problems == [
        "pkg.low.util (layer 'low') imports pkg.side (layer 'side', higher) at line 1",
        "pkg.mid (layer 'mid') imports pkg.top (layer 'top', higher) at line 4",
    ]
    assert module_cycles(graph) == [["pkg.low.util", "pkg.mid", "pkg.side", "pkg.top"]]
    assert unit_cycles(graph) == [["low", "mid", "side", "top"]]
    unlisted = upward_imports({"pkg.extra": []}, FAKE_LAYERS)
    assert unlisted == ["pkg.extra: 'extra' is in no layer of pipeline/__init__.py"]


def test_sideways_without_a_loop_is_allowed() -> None:
    graph = import_graph({"pkg.mid": "import pkg.side\n", "pkg.side": "import pkg.low\n"})
    assert upward_imports(graph, FAKE_LAYERS) == []
    assert module_cycles(graph) == [] and unit_cycles(graph) == []


def test_the_size_checkers_find_what_they_should(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(80))
    branches = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(16))
    source = f"def long():\n{body}\n\ndef short():\n    pass\n\n\ndef branchy(x):\n{branches}"
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "mod.py").write_text(source + "\n" * 600, encoding="utf-8")
    assert long_functions({"pkg.mod": source}, MAX_FUNCTION_LINES) == [
        "pkg.mod.long (line 1): 81 lines"
    ]
    assert long_files(root, MAX_FILE_LINES) == [
        f"pkg/mod.py: {len(source.splitlines()) + 600} lines"
    ]
    found = ruff_complexity(root, MAX_COMPLEXITY)
    assert len(found) == 1 and re.search(r"`branchy` is too complex \(17 > 15\)", found[0]), found
