"""Which of the evaluation issue's (#14) model changes move the JSB Chorales number.

Usage: `.venv/bin/python benchmarks/jsb/jsb_ablations.py [--steps 600] [--seeds 0] [--threads 2]
[--only "NAME|NAME"]`

Run after `dvc repro benchmarks/jsb/dvc.yaml` has built the benchmark's prv store
(benchmarks/jsb/data/processed/prv; never rebuilt here). Each variant is the
benchmark's own biaxial or PopH (benchmarks/jsb/params.yaml `models.<m>` and `train`)
at the small size the issue's starting point measured (32/32 hidden units, 32-step
windows, `--steps` optimizer steps) with ONE #14 change undone, trained by the
trainer's own `fit` and scored by the `frames` stage's own `score_model` (test frame
NLL in nats per step, each piece whole). The variants:

* ``biaxial``: as #14 left it (DeepJ inputs, DeepJ loss averaging);
* ``biaxial, aux loss over played cells``: replay/dynamics averaged over played cells
  (before #14) instead of DeepJ's average over every pitch-step;
* ``biaxial, no DeepJ inputs``: without the vicinity convolution, the pitch-class
  context and the beat one-hot (the inputs #14 added);
* ``poph``: the seed's order (octave conv, attention, then the LSTMs);
* ``poph, attention after the LSTM``: the order before #14.

Writes benchmarks/jsb/ablations.json and prints a Markdown table (median over
`--seeds` when several). Wall times are the training's own, on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent  # benchmarks/jsb: its params.yaml and stores
REPO = BENCH.parents[1]
if str(REPO) not in sys.path:  # run as a file, not as an installed module
    sys.path.insert(0, str(REPO))

SMALL = {"time_hidden": 32, "note_hidden": 32, "seq_len": 32}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "biaxial": ("biaxial", {}),
    "biaxial, aux loss over played cells": ("biaxial", {"aux_loss_cells": "played"}),
    "biaxial, no DeepJ inputs": (
        "biaxial",
        {"vicinity_filters": 0, "pitch_class_context": False, "beat_period": 0},
    ),
    "poph": ("poph", {}),
    "poph, attention after the LSTM": ("poph", {"layer_order": "after_lstm"}),
}


def run_variant(
    model: str, changes: dict[str, Any], steps: int, seed: int, threads: int, store: Any
) -> dict[str, Any]:
    """Train one variant in a temporary folder and score it like the frames stage."""
    from pipeline.core.params import load_params
    from pipeline.evaluation.frames import score_model
    from pipeline.modeling.base import model_spec
    from pipeline.modeling.checkpoint import load_model
    from pipeline.modeling.fit import fit
    from pipeline.modeling.frames import FramesParams
    from pipeline.modeling.train import load_train_params

    params = BENCH / "params.yaml"
    spec = model_spec(model)
    config, train = load_train_params(model, params)
    config = dataclasses.replace(config, **SMALL, **changes)
    config.validate()
    train = dataclasses.replace(train, max_steps=steps, seed=seed, num_threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        out, live = Path(tmp) / "model", Path(tmp) / "live"
        began = time.perf_counter()
        summary = fit(spec, config, train, store, out, live, resume=False)
        seconds = time.perf_counter() - began
        trained, _, _ = load_model(out / "model.pt", model)
        scored = score_model(spec, trained, store, load_params("frames", FramesParams, params))
    return {
        "frame_nll": scored["frame_nll"],
        "frame_nll_windowed": scored["frame_nll_windowed"],
        "best_step": summary["best_step"],
        "train_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="variant names separated by |")
    args = parser.parse_args()
    from pipeline.representations import load_store

    store_dir = BENCH / "data" / "processed" / "prv"
    if not store_dir.exists():
        raise SystemExit(f"{store_dir}: missing; run `dvc repro benchmarks/jsb/dvc.yaml` first")
    store = load_store(store_dir, "prv")
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n for n in VARIANTS if not args.only or n in args.only.split("|")]
    results: dict[str, Any] = {}
    for name in names:
        model, changes = VARIANTS[name]
        runs = [run_variant(model, changes, args.steps, s, args.threads, store) for s in seeds]
        results[name] = {
            "model": model,
            "changes": changes,
            "runs": runs,
            "frame_nll_median": statistics.median(r["frame_nll"] for r in runs),
            "train_seconds_median": statistics.median(r["train_seconds"] for r in runs),
        }
        print(f"{name}: {results[name]['frame_nll_median']:.4f}", flush=True)
    out = {
        "date": datetime.date.today().isoformat(),
        "steps": args.steps,
        "seeds": seeds,
        "threads": args.threads,
        "size": SMALL,
        "variants": results,
    }
    from pipeline.core.io import write_json

    write_json(BENCH / "ablations.json", out)
    print("\n| variant | test frame NLL (nats/step) | vs first of its model | train (s) |")
    print("|---|---:|---:|---:|")
    reference: dict[str, float] = {}
    for name, r in results.items():
        ref = reference.setdefault(r["model"], r["frame_nll_median"])
        print(
            f"| {name} | {r['frame_nll_median']:.3f} | {r['frame_nll_median'] - ref:+.3f} "
            f"| {r['train_seconds_median']:.0f} |"
        )


if __name__ == "__main__":
    main()
