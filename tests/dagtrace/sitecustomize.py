"""Records which files of a project's `pipeline/` package a process loads (tests/test_dag.py).

Inert unless ETUDE_TRACE_DIR and ETUDE_TRACE_PROJECT are set. Then each Python process
started with this folder on PYTHONPATH writes `<ETUDE_TRACE_DIR>/<pid>-<ns>.jsonl`:

    {"argv": sys.argv, "root": argv of the `etude` process it descends from, or null}
    {"open": "pipeline/x/y.py"}      one line per file of <project>/pipeline/ it opened,
                                     written at once (pool workers are often killed)
    {"modules": [...], "foreign": [...]}   at exit, if it exits normally

Importing a module opens its source or its cached bytecode, so the `open` lines
list the imported modules (a `__pycache__/y.cpython-311.pyc` is written as `y.py`)
and every other file read there (templates); they are recorded only in processes
of an `etude` command (DVC itself opens the deps to hash them). `modules` lists the
files of the loaded modules that lie under the project's `pipeline/`; `foreign`
names `pipeline` modules loaded from anywhere else (there should be none).

The first `etude` process of a tree exports its argv as ETUDE_TRACE_ROOT; its
children (pool workers, forkservers) inherit it and so count for the same stage.
"""

from __future__ import annotations


def _install() -> None:
    import atexit
    import json
    import os
    import sys
    import time

    out_dir = os.environ.get("ETUDE_TRACE_DIR")
    project = os.environ.get("ETUDE_TRACE_PROJECT")
    if not out_dir or not project:
        return
    project = os.path.realpath(project)
    package = os.path.join(project, "pipeline") + os.sep
    if "ETUDE_TRACE_ROOT" not in os.environ and os.path.basename(sys.argv[0]) == "etude":
        os.environ["ETUDE_TRACE_ROOT"] = json.dumps(sys.argv)
    root = os.environ.get("ETUDE_TRACE_ROOT")
    state: dict = {"pid": None, "path": None, "seen": set()}

    def write(record: dict) -> None:
        if state["pid"] != os.getpid():  # first record of this process (or of a fork)
            state.update(
                pid=os.getpid(),
                path=os.path.join(out_dir, f"{os.getpid()}-{time.time_ns()}.jsonl"),
                seen=set(),
            )
            os.makedirs(out_dir, exist_ok=True)
            head = {"argv": list(sys.argv), "root": json.loads(root) if root else None}
            _append(state["path"], head)
        _append(state["path"], record)

    def _append(path: str, record: dict) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)

    def source_of(path: str) -> str:
        """`.../__pycache__/y.cpython-311.pyc` -> `.../y.py`; others unchanged."""
        folder, name = os.path.split(path)
        if os.path.basename(folder) == "__pycache__" and name.endswith(".pyc"):
            return os.path.join(os.path.dirname(folder), name.split(".", 1)[0] + ".py")
        return path

    def audit(event: str, args: tuple) -> None:
        if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        try:
            path = os.fsdecode(args[0])
            if os.path.isabs(path) and "pipeline" not in path:
                return  # the common case, kept cheap
            path = source_of(os.path.realpath(os.path.join(os.getcwd(), path)))
            if not path.startswith(package):
                return
            rel = os.path.relpath(path, project)
            if state["pid"] == os.getpid() and rel in state["seen"]:
                return
            write({"open": rel})
            state["seen"].add(rel)
        except Exception:  # never break the traced program
            return

    if root:
        sys.addaudithook(audit)

    def at_exit() -> None:
        modules, foreign = set(), set()
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if not isinstance(file, str):
                continue
            path = os.path.realpath(file)
            if path.startswith(package):
                modules.add(os.path.relpath(path, project))
            elif name == "pipeline" or name.startswith("pipeline."):
                foreign.add(f"{name}: {path}")
        if modules or foreign or state["pid"] == os.getpid():
            write({"modules": sorted(modules), "foreign": sorted(foreign)})

    atexit.register(at_exit)


_install()
del _install
