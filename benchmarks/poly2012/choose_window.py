"""Choose `frames.window` per data set and model on the VALIDATION split (issue #23).

Usage (from the repository root, after the data set's `dvc repro` or `dvc checkout`):

    .venv/bin/python benchmarks/poly2012/choose_window.py musedata \
        --models frame_transformer biaxial --seeds 0 1 2 --windows 64 128 256

Why: a model trained on 64-step windows may score worse run over a whole long piece
than in sliding windows (`pipeline.modeling.prv.frames`); which is better is a setting,
so it is chosen on validation, never on test. For each model and seed this scores the
validation split in sliding windows of each length asked for, beside the whole-piece
validation score the frames stage already wrote (results/<data set>/<run>.json,
``validation_frame_nll``, only when that result was scored whole). The pick is the
window with the lowest median over the seeds ("whole" when it ties or wins).

Writes windows/<data set>.json here (atomically, after every scoring, so an interrupted
run keeps what it measured; a rerun skips a score whose model file is unchanged). It
does not edit datasets/<data set>.yaml: copy the pick into its ``frames.window``
(a `dvc repro` then re-scores the frames stages, and the table says which window).
Test is not read.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WHOLE = "whole"


def sha256(path: Path) -> str:
    """The model file's hash: a saved score is reused only for the same model."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def whole_score(dataset: str, run: str) -> tuple[float, int] | None:
    """(validation NLL, training step) the frames stage wrote for `run`, if whole pieces.

    The result records no model hash, so the caller compares its step with the model's:
    a result of a training that stopped at another step is not mixed in, but a retrained
    model with the same step count cannot be told apart (re-run its frames stage first).
    """
    path = HERE / "results" / dataset / f"{run}.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    if result.get("window", 0) or result.get("validation_frame_nll") is None:
        return None
    return float(result["validation_frame_nll"]), int(result.get("step") or -1)


def pick(by_window: dict[str, dict[str, float]]) -> tuple[str, dict[str, float]]:
    """The window (or "whole") with the lowest median over seeds; whole wins ties."""
    medians = {w: statistics.median(s.values()) for w, s in by_window.items() if s}
    order = sorted(medians, key=lambda w: (medians[w], w != WHOLE, int(w) if w != WHOLE else 0))
    return order[0], medians


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", help="a data set of datasets/ (its name)")
    ap.add_argument("--models", nargs="+", default=["frame_transformer", "biaxial"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--windows", nargs="+", type=int, default=[64, 128, 256])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (frames.num_threads)")
    args = ap.parse_args()

    import torch

    from pipeline.core.io import write_json
    from pipeline.core.params import load_params
    from pipeline.evaluation.frames import load_reference, machine, score_model
    from pipeline.modeling.base import model_spec
    from pipeline.modeling.checkpoint import load_model
    from pipeline.modeling.frames import UNIT, FramesParams
    from pipeline.representations import load_store

    params_file = HERE / "datasets" / f"{args.dataset}.yaml"
    if not params_file.exists():
        raise SystemExit(f"{params_file}: no such data set (datasets/ holds one file per data set)")
    data_dir = HERE / "data" / args.dataset
    p = load_params("frames", FramesParams, params_file)
    threads = p.num_threads if args.threads is None else args.threads
    if threads:
        torch.set_num_threads(threads)
    out = HERE / "windows" / f"{args.dataset}.json"
    saved: dict[str, Any] = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    doc: dict[str, Any] = {
        "dataset": args.dataset,
        "split": "validation",
        "unit": UNIT,
        "rule": "lowest median over seeds of validation frame NLL; whole pieces win ties",
        "measured": {"date": datetime.date.today().isoformat(), "machine": None},
        "models": saved.get("models", {}),
    }
    reference = load_reference(data_dir / "raw")
    store = None
    for name in args.models:
        entry = doc["models"].setdefault(name, {"runs": {}})
        spec = model_spec(name)
        for seed in args.seeds:
            run = f"{name}-s{seed}"
            path = HERE / "models" / args.dataset / run / "model.pt"
            if not path.exists():
                raise SystemExit(f"{path}: missing (`dvc checkout` or `dvc repro` the data set)")
            digest = sha256(path)
            runs = entry["runs"]
            old = runs.get(run, {})
            scores = old.get("scores", {}) if old.get("model_sha256") == digest else {}
            model, spec, ckpt = load_model(path, name, "cpu")
            doc["measured"]["machine"] = machine(next(model.parameters()).device)
            whole = whole_score(args.dataset, run)
            if whole is not None and whole[1] == ckpt.get("step"):
                scores[WHOLE] = whole[0]
            # one record per run; `scores` fills in place, so each write below saves it
            runs[run] = {"model_sha256": digest, "step": ckpt.get("step"), "scores": scores}
            for w in args.windows:
                if str(w) in scores:
                    continue
                if store is None:
                    store = load_store(data_dir / "prv", spec.representation)
                t0 = time.perf_counter()
                q = dataclasses.replace(p, split="validation", window={name: w})
                result = score_model(spec, model, store, q, reference=reference)
                scores[str(w)] = result["frame_nll"]
                print(
                    f"{args.dataset} {run} window {w}: validation {result['frame_nll']:.4f} "
                    f"{UNIT} ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
                write_json(out, doc)
        by_window: dict[str, dict[str, float]] = {}
        for run, r in sorted(entry["runs"].items()):
            for w, v in r["scores"].items():
                by_window.setdefault(w, {})[run] = v
        # only windows every run of this model was scored with compete
        n = len(entry["runs"])
        complete = {w: s for w, s in by_window.items() if len(s) == n}
        chosen, medians = pick(complete)
        entry["median"] = medians
        entry["chosen"] = chosen
        write_json(out, doc)
        print(
            f"{args.dataset} {name}: median validation NLL "
            + ", ".join(f"{w} {m:.4f}" for w, m in sorted(medians.items(), key=lambda x: x[1]))
            + f" -> {chosen}",
            flush=True,
        )
    print(f"-> {out}")


if __name__ == "__main__":
    main()
