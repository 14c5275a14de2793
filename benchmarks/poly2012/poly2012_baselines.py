"""The 2012 paper's Note 1-Gram, reproduced on its four data sets (issue #23's first check).

Usage: `.venv/bin/python benchmarks/poly2012/poly2012_baselines.py [--data DIR]`

Reads each data set's .mat file (default: ../shared/data beside the repository, see
SOURCES.txt there; each checked against its SHA-256 in `pipeline.sources.poly2012`),
and writes `baselines.json` here: per data set and split, the pieces, frames, and the
frame NLL (nats per frame, summed over the 88 keys, pooled over all frames) of "Random"
(every key 1/2: 88 ln 2) and of the "Note 1-Gram" (each key's frequency in the train
split; `pipeline.modeling.frames.note_unigram_baseline`), beside the paper's Table 1
value (published/<name>.yaml). tests/benchmarks check the committed file.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from pipeline.core.io import write_json
from pipeline.modeling.frames import frame_nll, note_unigram_baseline, random_baseline
from pipeline.report.table import read_published
from pipeline.sources.poly2012 import DATASETS, OFFICIAL_SPLITS, read_mat

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[2] / "shared" / "data"  # benchmarks/poly2012 -> repo -> beside it


def baselines(path: Path, dataset: str) -> dict[str, object]:
    """One data set's rows: per official split, pieces, frames, Random and Note 1-Gram."""
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != DATASETS[dataset].sha256:
        raise SystemExit(f"{path}: SHA256 {got}, expected {DATASETS[dataset].sha256}")
    rolls: dict[str, list[np.ndarray]] = {s: [] for s in OFFICIAL_SPLITS}
    for piece in read_mat(path, dataset):
        rolls[piece.official].append(piece.roll.astype(float))
    paper = {
        r["model"]: r["frame_nll"] for r in read_published(HERE / "published" / f"{dataset}.yaml")
    }
    splits = {}
    for split, split_rolls in rolls.items():
        half = [np.full(r.shape, 0.5) for r in split_rolls]
        splits[OFFICIAL_SPLITS[split]] = {
            "pieces": len(split_rolls),
            "frames": int(sum(len(r) for r in split_rolls)),
            "random": frame_nll(half, split_rolls),
            "note_1gram": note_unigram_baseline(rolls["train"], split_rolls),
        }
    return {
        "file": path.name,
        "sha256": got,
        "splits": splits,
        "paper_note_1gram_test": paper["Note 1-Gram"],
        "paper_random": 61.00,
        "random_exact": random_baseline(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    out = {name: baselines(args.data / info.file, name) for name, info in DATASETS.items()}
    write_json(HERE / "baselines.json", out)
    print("| data set | test frames | Note 1-Gram (Etude) | Note 1-Gram (paper) |")
    print("|---|---:|---:|---:|")
    for name, row in out.items():
        test = row["splits"]["test"]
        print(
            f"| {DATASETS[name].label} | {test['frames']:,} | {test['note_1gram']:.4f} "
            f"| {row['paper_note_1gram_test']:.2f} |"
        )


if __name__ == "__main__":
    main()
