"""Wall time of the default `dvc repro` from scratch and of a no-op `dvc repro`.

Run by hand: `.venv/bin/python benchmarks/bench_pipeline.py`. Clones the committed
HEAD into a temporary folder (so the working tree's data/ and DVC cache are not
reused), runs `dvc repro` there with this venv's tools, then runs it again (nothing
to do), and writes reports/bench/pipeline.json with per-stage wall times.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.io import write_json  # noqa: E402

STAGE = re.compile(r"^Running stage '([^']+)'")


def run_repro(workdir: Path, env: dict[str, str]) -> tuple[float, list[tuple[str, float]]]:
    """Run `dvc repro`, returning total wall time and (stage, seconds) in order."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["dvc", "repro"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stages: list[tuple[str, float]] = []
    current, since = None, start
    assert proc.stdout is not None
    for line in proc.stdout:
        match = STAGE.match(line)
        if match:
            now = time.perf_counter()
            if current:
                stages.append((current, now - since))
            current, since = match.group(1), now
    code = proc.wait()
    end = time.perf_counter()
    if current:
        stages.append((current, end - since))
    if code:
        raise SystemExit(f"dvc repro failed in {workdir} (exit {code})")
    return end - start, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="pipeline", help="report name under reports/bench/")
    args = parser.parse_args()
    env = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}")
    with tempfile.TemporaryDirectory(prefix="etude-bench-") as tmp:
        work = Path(tmp) / "main"
        subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
        # ../shared beside the clone, as in CI (the corpus source needs nothing from it)
        os.symlink(REPO.parent / "shared", Path(tmp) / "shared")
        scratch, stages = run_repro(work, env)
        noop, _ = run_repro(work, env)
        noop_runs = [noop] + [run_repro(work, env)[0] for _ in range(2)]
    result = {
        "from_scratch_s": round(scratch, 1),
        "noop_s_median_of_3": round(sorted(noop_runs)[1], 2),
        "noop_s_runs": [round(x, 2) for x in noop_runs],
        "stages_s": {name: round(sec, 1) for name, sec in stages},
        "cpus": os.cpu_count(),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }
    write_json(REPO / "reports" / "bench" / f"{args.out}.json", result)
    print(f"| from scratch | {result['from_scratch_s']} s |")
    print(f"| no-op (median of 3) | {result['noop_s_median_of_3']} s |")
    for name, sec in result["stages_s"].items():
        print(f"| {name} | {sec} s |")


if __name__ == "__main__":
    main()
