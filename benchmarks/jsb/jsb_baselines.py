"""The two data-only baselines of the JSB Chorales table (Boulanger-Lewandowski et al. 2012).

Usage: `.venv/bin/python benchmarks/jsb/jsb_baselines.py [--data PATH]`

Reads the benchmark file (default: ../shared/data/jsb-chorales-quarter.json beside the
repository, see SOURCES.txt there), checks its SHA-256 against params.yaml's `jsb.sha256`,
and prints the frame NLL (nats per quarter-note step, summed over the 88 keys, pooled
over all frames) of the paper's "Random" and "Note 1-Gram" on each split, with
`pipeline.modeling.frames`. The paper's Table 1 gives 61.00 and 11.06 on test.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from pipeline.core.params import default_params
from pipeline.modeling.frames import (
    N_KEYS,
    frame_nll,
    note_unigram_baseline,
    random_baseline,
    roll_from_steps,
)
from pipeline.sources.jsb import OFFICIAL_SPLITS, Params, read_chorales

REPO = Path(__file__).resolve().parents[2]  # benchmarks/jsb/ -> the repository
DEFAULT_DATA = REPO.parent / "shared" / "data" / "jsb-chorales-quarter.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    want = default_params("jsb", Params).sha256
    got = hashlib.sha256(args.data.read_bytes()).hexdigest()
    if want and got != want:
        raise SystemExit(f"{args.data}: SHA256 {got}, expected {want} (jsb.sha256)")
    rolls: dict[str, list[np.ndarray]] = {s: [] for s in OFFICIAL_SPLITS}
    for c in read_chorales(args.data):
        rolls[c.official].append(roll_from_steps(c.steps))
    print(f"{args.data} (sha256 {got[:12]}...)")
    print("| split | pieces | frames | Random (nats/frame) | Note 1-Gram (nats/frame) |")
    print("|---|---|---|---|---|")
    for split, split_rolls in rolls.items():
        frames = sum(len(r) for r in split_rolls)
        half = [np.full((len(r), N_KEYS), 0.5) for r in split_rolls]
        measured_random = frame_nll(half, split_rolls)
        assert abs(measured_random - random_baseline()) < 1e-9  # 88 ln 2 whatever the data
        unigram = note_unigram_baseline(rolls["train"], split_rolls)
        print(
            f"| {split} | {len(split_rolls)} | {frames} | {measured_random:.4f} | {unigram:.4f} |"
        )
    print(f"random_baseline() = 88 ln 2 = {random_baseline():.6f}")
    print(f"Note 1-Gram on test = {note_unigram_baseline(rolls['train'], rolls['test']):.6f}")


if __name__ == "__main__":
    main()
