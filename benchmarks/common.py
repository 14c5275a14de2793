"""Shared helpers for the benchmark scripts: fixture folders, timing, peak memory.

Benchmarks are scripts run by hand (`.venv/bin/python benchmarks/<name>.py`); they
write `reports/bench/<name>.json` atomically and print a markdown table. A
measurement that needs its own peak memory runs in a child process
(`python benchmarks/common.py ingest ...`), so one run cannot inherit another's peak,
and its whole process tree (the ingest parent plus its pool workers, which are
grandchildren under the forkserver start method) is sampled with psutil.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "midi"
BENCH_REPORTS = REPO / "reports" / "bench"
MIB = 1 << 20

if str(REPO) not in sys.path:  # scripts run as files, not as installed modules
    sys.path.insert(0, str(REPO))


def fixture_files(root: Path = FIXTURES) -> list[Path]:
    """The real MIDI fixtures below `root`, sorted (the 60 files in tests/fixtures/midi)."""
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".mid", ".midi")
    )
    if not files:
        raise FileNotFoundError(f"{root}: no MIDI fixtures (expected tests/fixtures/midi)")
    return files


def replicate(files: Sequence[Path], dest: Path, n_files: int, root: Path = FIXTURES) -> list[Path]:
    """Fill `dest` with `n_files` hard links (copies across devices) cycling over `files`.

    Copy k of a fixture goes to `dest/c<k>/<its path below root>`, so relative paths
    stay unique and the folder has the fixtures' mix of sizes.
    """
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    can_link = True
    for i in range(n_files):
        src = files[i % len(files)]
        target = dest / f"c{i // len(files):05d}" / src.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if can_link:
            try:
                os.link(src, target)
            except OSError:
                can_link = False
        if not can_link:
            shutil.copyfile(src, target)
        out.append(target)
    return out


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and count of repeated measurements."""
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
        "n": len(values),
    }


def time_loop(fn: Callable[[Path], int], paths: Sequence[Path]) -> tuple[float, float, int]:
    """Run `fn` (returns a note count) over `paths`; return (seconds, CPU seconds, notes)."""
    notes = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for p in paths:
        notes += fn(p)
    return time.perf_counter() - t0, time.process_time() - c0, notes


def sample(paths: Sequence[Path], k: int, rng: random.Random) -> list[Path]:
    """`k` distinct paths drawn at random (all of them when k >= len(paths))."""
    return list(paths) if k >= len(paths) else rng.sample(list(paths), k)


# --- peak memory of a child process tree ------------------------------------------


@dataclass
class TreeMeasurement:
    """One child run: its JSON result and the memory its process tree reached."""

    result: dict[str, Any]
    wall_s: float  # outside view, including interpreter start-up and imports
    peak_rss_tree_bytes: int  # max over samples of the summed RSS of the tree
    peak_rss_process_bytes: int  # max RSS of any one process of the tree
    cpu_s: float  # user + system seconds of the tree (last sample of each process)
    samples: int
    notes: list[str] = field(default_factory=list)


def run_tree_measured(
    argv: Sequence[str], poll_s: float = 0.05, timeout_s: float | None = None
) -> TreeMeasurement:
    """Run `argv`, sampling its process tree's RSS and CPU time; the child prints one
    JSON line last.

    The summed RSS counts pages shared by forked workers once per process, so it is
    an upper bound on the tree's real footprint. CPU time is what the tree used, which
    stays comparable on a machine shared with other jobs, where wall time does not.
    Without psutil, only the largest single process is known (getrusage).
    """
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is in the dev venv
        psutil = None
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_sum = peak_one = n = 0
    cpu: dict[int, float] = {}
    notes: list[str] = []
    if psutil is not None:
        stop = threading.Event()

        def poll() -> None:
            nonlocal peak_sum, peak_one, n
            try:
                root = psutil.Process(proc.pid)
            except psutil.NoSuchProcess:
                return
            while not stop.is_set():
                total = 0
                try:
                    procs = [root, *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    break
                for p in procs:
                    try:
                        rss = p.memory_info().rss
                        times = p.cpu_times()
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    cpu[p.pid] = times.user + times.system
                    total += rss
                    peak_one = max(peak_one, rss)
                peak_sum = max(peak_sum, total)
                n += 1
                stop.wait(poll_s)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise RuntimeError(f"{argv}: timed out after {timeout_s} s") from None
    finally:
        if psutil is not None:
            stop.set()
            thread.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))}: exit {proc.returncode}\n{stderr[-2000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    # ru_maxrss of reaped children is in KiB on Linux: a floor for the largest process.
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    peak_one = max(peak_one, int(result.get("maxrss_self_bytes", 0)))
    if psutil is None:
        notes.append("no psutil: no tree peak; largest process from getrusage, over all runs")
        peak_one = max(peak_one, reaped)
    cpu_s = max(sum(cpu.values()), float(result.get("cpu_self_s", 0.0)))
    return TreeMeasurement(result, wall, peak_sum, peak_one, cpu_s, n, notes)


def ingest_command(
    in_dir: Path, out_dir: Path, workers: int = 0, shard: tuple[int, int] | None = None
) -> list[str]:
    """argv that ingests `in_dir` in a fresh interpreter (see `_child_ingest`)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "ingest", str(in_dir), str(out_dir)]
    argv += ["--workers", str(workers)]
    if shard is not None:
        argv += ["--shard", str(shard[0]), str(shard[1])]
    return argv


def _child_ingest(args: argparse.Namespace) -> dict[str, Any]:
    """Child side: ingest once and report the time spent inside `ingest_dir`."""
    import dataclasses

    from pipeline.core.params import default_params
    from pipeline.ingest import IngestParams, ingest_dir

    DEFAULT_PARAMS = default_params("ingest", IngestParams)

    params = dataclasses.replace(DEFAULT_PARAMS, workers=args.workers, max_reject_rate=1.0)
    shard = tuple(args.shard) if args.shard else None
    t0 = time.perf_counter()
    summary = ingest_dir(
        args.in_dir, args.out_dir, source="bench", params=params, shard=shard, progress=False
    )
    seconds = time.perf_counter() - t0
    out_bytes = sum(p.stat().st_size for p in Path(args.out_dir).iterdir())
    import pyarrow.parquet as pq

    row_groups = pq.ParquetFile(Path(args.out_dir) / "notes.parquet").metadata.num_row_groups
    return {
        "seconds": seconds,
        "files": summary.files,
        "pieces": summary.pieces,
        "rejects": summary.rejects,
        "notes": summary.notes,
        "reject_reasons": summary.reject_reasons,
        "out_bytes": out_bytes,
        "notes_row_groups": row_groups,
        "maxrss_self_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "cpu_self_s": time.process_time(),
    }


# --- reporting ---------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats get thousands separators."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """Context that a reader needs to compare runs: cores, load, Python, versions."""
    import platform

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for mod in ("symusic", "pretty_midi", "miditoolkit", "pyarrow"):
        try:
            info[f"{mod}_version"] = __import__(mod).__version__
        except Exception:  # a missing optional parser only drops its row
            info[f"{mod}_version"] = None
    return info


def write_report(name: str, payload: dict[str, Any]) -> Path:
    """Write `reports/bench/<name>.json` atomically and return its path."""
    from pipeline.core.io import write_json

    path = BENCH_REPORTS / f"{name}.json"
    write_json(path, payload)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="benchmark child processes")
    sub = parser.add_subparsers(dest="cmd", required=True)
    ing = sub.add_parser("ingest", help="ingest a folder once and print a JSON line")
    ing.add_argument("in_dir", type=Path)
    ing.add_argument("out_dir", type=Path)
    ing.add_argument("--workers", type=int, default=0)
    ing.add_argument("--shard", type=int, nargs=2, default=None)
    args = parser.parse_args(argv)
    if args.cmd == "ingest":
        print(json.dumps(_child_ingest(args)))


if __name__ == "__main__":
    main()
