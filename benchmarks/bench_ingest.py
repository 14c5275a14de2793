"""Ingest throughput at scale vs parse-only loops of pretty_midi, miditoolkit and symusic.

Usage: `.venv/bin/python benchmarks/bench_ingest.py [--files 20000] [--repeats 5]`

Builds a temp folder of `--files` hard links cycling over the 60 real fixtures (so the
folder has their mix of sizes: MAESTRO performances, Lakh multitracks, pop songs),
then, per repeat, in this order so that machine-load drift hits every row alike:

* `ingest_dir` on the whole folder with all cores, writing Parquet, in a fresh child
  process whose process tree (parent + pool workers) is sampled for peak RSS;
* a parse-only loop of symusic (`Score(path, ttype="second")`, what ingest calls) over a
  random sample of `--sample` files, in this process, one core;
* parse-only loops of pretty_midi and miditoolkit over a random sample of
  `--slow-sample` files (they take ~0.5-1 s per MAESTRO file, so all 20k would take hours).

Rates are notes/s and files/s; the table shows medians over repeats, and ratios are
ratios of median notes/s. Writes reports/bench/ingest.json. On 2 cores the default
run is dominated by ingest: about files / (ingest files/s) seconds per repeat.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    MIB,
    fixture_files,
    ingest_command,
    machine_info,
    markdown_table,
    replicate,
    run_tree_measured,
    sample,
    summarize,
    time_loop,
    write_report,
)

TARGET_VS_PRETTY_MIDI = 20.0
TARGET_VS_SYMUSIC = 0.5


def parsers() -> dict[str, Callable[[Path], int]]:
    """Parse-only functions returning the number of notes read."""
    import miditoolkit
    import pretty_midi
    import symusic

    def sym(path: Path) -> int:
        return int(symusic.Score(str(path), ttype="second").note_num())

    def pm(path: Path) -> int:
        return sum(len(i.notes) for i in pretty_midi.PrettyMIDI(str(path)).instruments)

    def mtk(path: Path) -> int:
        return sum(len(i.notes) for i in miditoolkit.MidiFile(str(path)).instruments)

    return {"symusic": sym, "pretty_midi": pm, "miditoolkit": mtk}


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    fixtures = fixture_files()
    fns = parsers()
    work = Path(tempfile.mkdtemp(prefix="etude-bench-ingest-", dir=args.tmp_dir))
    try:
        t0 = time.perf_counter()
        paths = replicate(fixtures, work / "in", args.files)
        build_s = time.perf_counter() - t0
        for p in paths:  # warm the page cache so no row pays for the first read
            p.read_bytes()
        raw: dict[str, list[dict[str, float]]] = {"ingest": [], **{k: [] for k in fns}}
        for r in range(args.repeats):
            out = work / f"out{r}"
            m = run_tree_measured(ingest_command(work / "in", out, workers=args.workers))
            res = m.result
            if res["pieces"] + res["rejects"] != args.files:
                raise RuntimeError(f"ingest accounted for {res['pieces'] + res['rejects']} files")
            raw["ingest"].append(
                {
                    "seconds": res["seconds"],
                    "cpu_s": m.cpu_s,
                    "files": res["files"],
                    "notes": res["notes"],
                    "rejects": res["rejects"],
                    "child_wall_s": m.wall_s,
                    "peak_rss_tree_mib": m.peak_rss_tree_bytes / MIB,
                    "peak_rss_process_mib": m.peak_rss_process_bytes / MIB,
                    "parent_maxrss_mib": res["maxrss_self_bytes"] / MIB,
                    "out_mib": res["out_bytes"] / MIB,
                }
            )
            shutil.rmtree(out)
            for name, fn in fns.items():
                k = args.sample if name == "symusic" else args.slow_sample
                picked = sample(paths, k, rng)
                seconds, cpu_s, notes = time_loop(fn, picked)
                raw[name].append(
                    {"seconds": seconds, "cpu_s": cpu_s, "files": len(picked), "notes": notes}
                )
            took = raw["ingest"][-1]["seconds"]
            print(f"repeat {r + 1}/{args.repeats}: ingest {took:.1f} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    rows = {}
    for name, runs in raw.items():
        rows[name] = {
            "files_per_s": summarize([x["files"] / x["seconds"] for x in runs]),
            "notes_per_s": summarize([x["notes"] / x["seconds"] for x in runs]),
            "notes_per_cpu_s": summarize([x["notes"] / x["cpu_s"] for x in runs]),
            "files_per_repeat": runs[0]["files"],
        }
    for key in ("peak_rss_tree_mib", "peak_rss_process_mib"):
        rows["ingest"][key] = summarize([x[key] for x in raw["ingest"]])

    def ratio(metric: str, name: str) -> float:
        return rows["ingest"][metric]["median"] / rows[name][metric]["median"]

    ratios = {f"ingest_vs_{name}": ratio("notes_per_s", name) for name in fns}
    cpu_ratios = {f"ingest_vs_{name}": ratio("notes_per_cpu_s", name) for name in fns}
    return {
        "config": {
            "files": args.files,
            "repeats": args.repeats,
            "symusic_sample": args.sample,
            "slow_sample": args.slow_sample,
            "workers": args.workers,
            "seed": args.seed,
            "distinct_fixtures": len(fixtures),
            "folder_build_s": build_s,
        },
        "machine": machine_info(),
        "rates": rows,
        "ratios_notes_per_s": ratios,
        "ratios_notes_per_cpu_s": cpu_ratios,
        "targets": {
            name: {"target": target, "met": ratios[name] >= target}
            for name, target in (
                ("ingest_vs_pretty_midi", TARGET_VS_PRETTY_MIDI),
                ("ingest_vs_symusic", TARGET_VS_SYMUSIC),
            )
        },
        "raw": raw,
        "notes": [
            "ingest: all cores, child process, writes Parquet; time inside ingest_dir",
            "targets are on wall-clock notes/s (ingest on all cores vs one-core loops); "
            "notes per CPU-second is the load-independent view of the same runs",
            "parse-only loops: one core, in process, random samples of the same folder",
            "peak_rss_tree: max over 50 ms samples of the summed RSS of the ingest process "
            "tree (shared pages counted per process, an upper bound)",
        ],
    }


def table(report: dict[str, Any]) -> str:
    """Markdown: medians per row, then the ratios against their targets."""
    rows = []
    for name, r in report["rates"].items():
        how = "all cores, Parquet" if name == "ingest" else "1 core, parse only"
        rss = r.get("peak_rss_tree_mib", {}).get("median", "")
        rows.append(
            [
                name,
                how,
                r["files_per_repeat"],
                r["files_per_s"]["median"],
                r["notes_per_s"]["median"],
                r["notes_per_cpu_s"]["median"],
                rss,
            ]
        )
    headers = ["what", "how", "files/repeat", "files/s", "notes/s", "notes/CPU-s", "peak RSS MiB"]
    ratio_rows = []
    for k, v in report["ratios_notes_per_s"].items():
        target = report["targets"].get(k, {})
        ratio_rows.append(
            [
                k,
                v,
                report["ratios_notes_per_cpu_s"][k],
                target.get("target", ""),
                target.get("met", ""),
            ]
        )
    ratio_headers = ["ratio", "notes/s", "notes/CPU-s", "target (notes/s)", "met"]
    return markdown_table(headers, rows) + "\n\n" + markdown_table(ratio_headers, ratio_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000, help="files in the ingested folder")
    parser.add_argument("--repeats", type=int, default=5, help="repeats; medians are reported")
    parser.add_argument("--sample", type=int, default=2_000, help="symusic files per repeat")
    parser.add_argument(
        "--slow-sample", type=int, default=20, help="pretty_midi / miditoolkit files per repeat"
    )
    parser.add_argument("--workers", type=int, default=0, help="ingest workers (0 = all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where the folder is built")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--out", default="ingest", help="report name under reports/bench/")
    args = parser.parse_args()
    report = run(args)
    path = write_report(args.out, report)
    print(table(report))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
