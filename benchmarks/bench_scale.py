"""Ingest memory and time as the file count grows, and sharded ingest.

Usage: `.venv/bin/python benchmarks/bench_scale.py [--files 180000] [--sizes 10000,50000]`

Generates `--files` small synthetic MIDI files (Lakh-sized folder, tiny files: a
hand-built format-0 template with 16-64 notes of random pitch, velocity and length;
never committed), then ingests the first 10k, 50k and all N of them, each in a fresh
child process whose process tree (parent + pool workers) is sampled for peak RSS. The
claim under test: peak memory is bounded by the largest piece, not by the file count
(target < 1 GiB at N). Then ingests the N-file folder as 4 shards (`shard=(i, 4)`),
one after another, and checks that the shards together account for every file once.
Writes reports/bench/scale.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    MIB,
    ingest_command,
    machine_info,
    markdown_table,
    run_tree_measured,
    write_report,
)

TARGET_PEAK_RSS_MIB = 1024.0
NOTE_COUNTS = (16, 32, 48, 64)


def synthetic_midi(rng: np.random.Generator, n_notes: int) -> bytes:
    """A format-0 file: tempo, program change, then `n_notes` notes, one after another.

    Each note is `00 90 pp vv` + a 2-byte delta (128..16383 ticks) + `80 pp 40`.
    """
    pitch = rng.integers(21, 109, n_notes, dtype=np.uint8)
    velocity = rng.integers(20, 128, n_notes, dtype=np.uint8)
    ticks = rng.integers(128, 1920, n_notes)
    ev = np.empty((n_notes, 9), np.uint8)
    ev[:, 0], ev[:, 1], ev[:, 2], ev[:, 3] = 0x00, 0x90, pitch, velocity
    ev[:, 4], ev[:, 5] = 0x80 | (ticks >> 7), ticks & 0x7F  # 2-byte variable-length delta
    ev[:, 6], ev[:, 7], ev[:, 8] = 0x80, pitch, 0x40
    program = int(rng.integers(0, 128))
    body = (
        b"\x00\xff\x51\x03"
        + int(rng.integers(300_000, 1_000_000)).to_bytes(3, "big")
        + bytes([0x00, 0xC0, program])
        + ev.tobytes()
        + b"\x00\xff\x2f\x00"
    )
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480)
    return header + b"MTrk" + struct.pack(">I", len(body)) + body


def generate(root: Path, n_files: int, seed: int) -> list[Path]:
    """Write `n_files` synthetic files under `root`, 1,000 per folder (as Lakh is laid out)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n_files):
        path = root / f"d{i // 1000:04d}" / f"s{i:06d}.mid"
        if i % 1000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(synthetic_midi(rng, NOTE_COUNTS[i % len(NOTE_COUNTS)]))
        paths.append(path)
    return paths


def link_subset(paths: list[Path], src_root: Path, dest: Path) -> None:
    """Hard-link `paths` (below `src_root`) into `dest`, keeping relative paths."""
    for p in paths:
        target = dest / p.relative_to(src_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(p, target)


def measure(
    in_dir: Path, out_dir: Path, workers: int, shard: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Ingest in a child process; its time, CPU, peak RSS and output size."""
    m = run_tree_measured(ingest_command(in_dir, out_dir, workers=workers, shard=shard))
    res = m.result
    shutil.rmtree(out_dir, ignore_errors=True)
    return {
        "files": res["files"],
        "pieces": res["pieces"],
        "rejects": res["rejects"],
        "notes": res["notes"],
        "seconds": res["seconds"],
        "cpu_s": m.cpu_s,
        "files_per_s": res["files"] / res["seconds"],
        "peak_rss_tree_mib": m.peak_rss_tree_bytes / MIB,
        "peak_rss_process_mib": m.peak_rss_process_bytes / MIB,
        "parent_maxrss_mib": res["maxrss_self_bytes"] / MIB,
        "notes_row_groups": res.get("notes_row_groups"),
        "out_mib": res["out_bytes"] / MIB,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = sorted({*(s for s in args.sizes if s < args.files), args.files})
    work = Path(tempfile.mkdtemp(prefix="etude-bench-scale-", dir=args.tmp_dir))
    try:
        t0 = time.perf_counter()
        paths = generate(work / "all", args.files, args.seed)
        gen_s = time.perf_counter() - t0
        print(f"generated {args.files} files in {gen_s:.1f} s", flush=True)
        by_size = []
        for n in sizes:
            in_dir = work / "all"
            if n < args.files:
                in_dir = work / f"first{n}"
                link_subset(paths[:n], work / "all", in_dir)
            row = measure(in_dir, work / "out", args.workers)
            row["n"] = n
            by_size.append(row)
            print(
                f"{n} files: {row['seconds']:.1f} s, peak RSS {row['peak_rss_tree_mib']:.0f} MiB",
                flush=True,
            )
            if in_dir != work / "all":
                shutil.rmtree(in_dir)
        shards = []
        for i in range(args.shards):
            row = measure(work / "all", work / "out", args.workers, shard=(i, args.shards))
            row["shard"] = i
            shards.append(row)
            print(
                f"shard {i}/{args.shards}: {row['files']} files, {row['seconds']:.1f} s", flush=True
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    accounted = sum(s["pieces"] + s["rejects"] for s in shards)
    if shards and accounted != args.files:
        raise RuntimeError(f"shards accounted for {accounted} of {args.files} files")
    full = by_size[-1]
    smallest = by_size[0]
    peak = max(r["peak_rss_tree_mib"] for r in by_size)
    return {
        "config": {
            "files": args.files,
            "sizes": sizes,
            "shards": args.shards,
            "workers": args.workers,
            "seed": args.seed,
            "notes_per_file": list(NOTE_COUNTS),
            "generate_s": gen_s,
        },
        "machine": machine_info(),
        "by_size": by_size,
        "rss_growth": {
            "peak_rss_tree_mib_at_n": full["peak_rss_tree_mib"],
            "peak_rss_tree_mib_at_smallest": smallest["peak_rss_tree_mib"],
            "ratio_n_vs_smallest": full["peak_rss_tree_mib"] / smallest["peak_rss_tree_mib"],
            "parent_mib_per_10k_files": (full["parent_maxrss_mib"] - smallest["parent_maxrss_mib"])
            / max(1, (full["n"] - smallest["n"]))
            * 10_000,
            "target_mib": TARGET_PEAK_RSS_MIB,
            "met": peak < TARGET_PEAK_RSS_MIB,
        },
        "sharded": {
            "shards": shards,
            "total_seconds": sum(s["seconds"] for s in shards),
            "max_shard_seconds": max((s["seconds"] for s in shards), default=0.0),
            "unsharded_seconds": full["seconds"],
            "max_shard_peak_rss_tree_mib": max(
                (s["peak_rss_tree_mib"] for s in shards), default=0.0
            ),
            "files_accounted": accounted,
        },
        "notes": [
            "each measurement is a fresh child process; peak RSS sums the process tree "
            "(parent + forkserver + pool workers) over 50 ms samples",
            "shards ran one after another on this machine; as separate jobs they run in parallel",
        ],
    }


def table(report: dict[str, Any]) -> str:
    """Markdown: one row per folder size, then one per shard."""
    headers = [
        "run",
        "files",
        "seconds",
        "files/s",
        "CPU-s",
        "peak RSS tree MiB",
        "parent MiB",
        "notes row groups",
    ]
    rows = [
        [
            f"{r['n']:,} files",
            r["files"],
            r["seconds"],
            r["files_per_s"],
            r["cpu_s"],
            r["peak_rss_tree_mib"],
            r["parent_maxrss_mib"],
            r["notes_row_groups"],
        ]
        for r in report["by_size"]
    ]
    for s in report["sharded"]["shards"]:
        rows.append(
            [
                f"shard {s['shard']}/{report['config']['shards']}",
                s["files"],
                s["seconds"],
                s["files_per_s"],
                s["cpu_s"],
                s["peak_rss_tree_mib"],
                s["parent_maxrss_mib"],
                s["notes_row_groups"],
            ]
        )
    g, sh = report["rss_growth"], report["sharded"]
    summary = [
        ["peak RSS at N / at smallest", g["ratio_n_vs_smallest"]],
        ["parent RSS growth, MiB per 10k files", g["parent_mib_per_10k_files"]],
        [f"peak RSS < {g['target_mib']:.0f} MiB", g["met"]],
        ["sharded total s (sequential)", sh["total_seconds"]],
        ["slowest shard s", sh["max_shard_seconds"]],
        ["unsharded s", sh["unsharded_seconds"]],
    ]
    return markdown_table(headers, rows) + "\n\n" + markdown_table(["summary", "value"], summary)


def parse_sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=180_000, help="N: files generated")
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=[10_000, 50_000],
        help="smaller folder sizes to ingest besides N (comma-separated)",
    )
    parser.add_argument("--shards", type=int, default=4, help="0 skips the sharded runs")
    parser.add_argument("--workers", type=int, default=0, help="ingest workers (0 = all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--out", default="scale", help="report name under reports/bench/")
    args = parser.parse_args()
    report = run(args)
    path = write_report(args.out, report)
    print(table(report))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
