"""Compare a model's training settings on one data set's VALIDATION split (issue #23).

Usage (from the repository root, after the data set's `dvc repro`, or its stages up to
``validate@<d>``):

    .venv/bin/python benchmarks/poly2012/ablate.py musedata --model biaxial --seed 0 \
        --variant 'lr02:dropout=0.0,train.learning_rate=0.02' \
        --variant 'lr03:dropout=0.0,train.learning_rate=0.03'

Why: a setting that a data set needs (its own learning rate, dropout, steps) is chosen
on validation, never on test (the issue: "ablations on validation too"). Each variant
is ``name:key=value,...``, keys under ``models.<model>`` (``train.*`` for its training
overrides), applied over ``datasets/<d>.yaml`` as it stands: name every key compared in
every variant, since the file changes once a setting is chosen (a finished run whose
settings resolve differently now is refused, never retrained over). For each one this trains
the model (`etude train`, into ``models/<d>/ablation/<model>-<name>-s<seed>``, outside
the DVC stages, its params file beside it) and scores the validation split's frames as
the frames stage would (the reference rolls, whole pieces or ``frames.window``), then
records the variant's resolved settings, its training curve (the validation loss that
training logs) and the score in ``ablations/<d>.json`` here, written atomically after
each variant. A rerun skips a finished training whose params file is the same and a
score whose model file is unchanged; a run dir trained with other settings is refused
(remove it to retrain). Test is not read.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,...`` -> (name, {dotted key: YAML value}); refuses a bad form."""
    import yaml

    name, sep, rest = text.partition(":")
    if not sep or not name.isidentifier():
        raise SystemExit(f"--variant {text!r}: expected NAME:key=value,... (NAME a word)")
    changes: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SystemExit(f"--variant {text!r}: {item!r} is not key=value")
        changes[key.strip()] = yaml.safe_load(value)
    return name, changes


def variant_params(dataset: str, model: str, changes: dict[str, Any]) -> str:
    """The run's params file: datasets/<d>.yaml with `changes` under models.<model>."""
    import yaml

    section: dict[str, Any] = {}
    for key, value in changes.items():
        node = section
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    doc = {"extends": f"../../../../datasets/{dataset}.yaml", "models": {model: section}}
    return yaml.safe_dump(doc, sort_keys=True)


def curve(live: Path) -> list[list[float]]:
    """[step, validation loss] at each of training's evals (play NLL, nats per
    pitch-step, on ``train.eval_batches`` windows: a quick reading, not the frame NLL)."""
    path = live / "plots" / "metrics" / "val" / "nll.tsv"
    if not path.exists():
        return []
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    return [[int(step), float(value)] for step, value in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", help="a data set of datasets/ (its name)")
    ap.add_argument("--model", default="biaxial")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", action="append", required=True, help="NAME:key=value,...")
    args = ap.parse_args()
    variants = dict(parse_variant(v) for v in args.variant)

    import torch
    from choose_window import sha256  # this folder is on sys.path when run as a script

    from pipeline.core.io import atomic_path, write_json
    from pipeline.core.params import load_params
    from pipeline.evaluation.frames import load_reference, machine, score_model
    from pipeline.modeling.checkpoint import load_model
    from pipeline.modeling.frames import UNIT, FramesParams
    from pipeline.modeling.train import load_train_params
    from pipeline.representations import load_store

    params_file = HERE / "datasets" / f"{args.dataset}.yaml"
    if not params_file.exists():
        raise SystemExit(f"{params_file}: no such data set (datasets/ holds one file per data set)")
    data_dir = HERE / "data" / args.dataset
    if not (data_dir / "prv").exists():
        raise SystemExit(f"{data_dir / 'prv'}: missing (`dvc repro` the data set's stages first)")
    frames = load_params("frames", FramesParams, params_file)
    if frames.num_threads:
        torch.set_num_threads(frames.num_threads)
    out = HERE / "ablations" / f"{args.dataset}.json"
    doc: dict[str, Any] = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    doc.update(dataset=args.dataset, split="validation", unit=UNIT)
    doc.setdefault("runs", {})
    reference = store = None
    for name, changes in variants.items():
        run = f"{args.model}-{name}-s{args.seed}"
        run_dir = HERE / "models" / args.dataset / "ablation" / run
        text = variant_params(args.dataset, args.model, changes)
        params = run_dir / "params.yaml"
        if params.exists() and params.read_text(encoding="utf-8") != text:
            raise SystemExit(
                f"{run_dir}: trained with other settings ({params}); remove it to retrain"
            )
        params.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(params) as tmp:
            tmp.write_text(text, encoding="utf-8")
        config, train = load_train_params(args.model, params)  # refuses a bad key here
        resolved = {"config": dataclasses.asdict(config), "train": dataclasses.asdict(train)}
        settings = run_dir / "settings.json"  # what the run was trained with, resolved
        if settings.exists() and json.loads(settings.read_text()) != json.loads(
            json.dumps(resolved)
        ):
            raise SystemExit(
                f"{run_dir}: trained with other settings than {name!r} resolves to now "
                f"(datasets/{args.dataset}.yaml changed?); name every compared key in the "
                "variant, or remove the dir to retrain"
            )
        write_json(settings, resolved)
        live = run_dir / "live"
        summary_path = live / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        if summary.get("steps") != train.max_steps:
            cmd = [
                str(Path(sys.executable).parent / "etude"), "train", args.model,
                "--seed", str(args.seed), "--store", str(data_dir / "prv"),
                "--out", str(run_dir / "model"), "--live", str(live), "--params", str(params),
            ]  # fmt: skip
            print(f"{args.dataset} {run}: training ({train.max_steps} steps)", flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
            summary = json.loads(summary_path.read_text())
        path = run_dir / "model" / "model.pt"
        digest = sha256(path)
        old = doc["runs"].get(run, {})
        record = {
            "changes": changes,
            "resolved": resolved,
            "seed": args.seed,
            "steps": summary.get("steps"),
            "best_step": summary.get("best_step"),
            "train_wall_s": summary.get("wall_time_s"),
            "training_validation_curve": curve(live),
            "model_sha256": digest,
        }
        if old.get("model_sha256") == digest and "validation_frame_nll" in old:
            record.update({k: old[k] for k in ("validation_frame_nll", "window", "machine")})
            record["measured"] = old.get("measured")
        else:
            model, spec, _ = load_model(path, args.model, "cpu")
            if reference is None:
                reference = load_reference(data_dir / "raw")
                store = load_store(data_dir / "prv", spec.representation)
            t0 = time.perf_counter()
            q = dataclasses.replace(frames, split="validation")
            result = score_model(spec, model, store, q, reference=reference)
            record.update(
                validation_frame_nll=result["frame_nll"],
                window=result.get("window", 0),
                machine=machine(next(model.parameters()).device),
                measured=datetime.date.today().isoformat(),
            )
            print(
                f"{args.dataset} {run}: validation {result['frame_nll']:.4f} {UNIT} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        doc["runs"][run] = record
        write_json(out, doc)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
