"""Training throughput of every registered model: samples/s and units/s of real steps.

Usage: `.venv/bin/python benchmarks/bench_train.py [--repeats 5] [--steps 10] [--warmup 2]
[--threads 1] [--device auto] [--models autoencoder,vae,...]`

For each model, with its real default params (params.yaml `models.<name>` plus the
shared `train` section and its `models.<name>.train` overrides, read by
`pipeline.modeling.train.load_train_params`) and its real processed store
(data/processed/<representation>/, loaded once per representation by
`load_store_for`; a missing store stops the script, it is never rebuilt here), one
repeat is one call of the trainer's own loop, `pipeline.modeling.fit.fit_model`, on a
fresh model: `--warmup` optimizer steps that are not timed, then `--steps` timed ones.
So the model, its `prepare`, its dataset (`make_dataset`), the batch order and
collation (`_batches`: DistributedSampler shuffle + DataLoader, `set_epoch`), the loss
(the model's own `forward(batch)["loss"]`), AdamW, the LR schedule, gradient clipping
and the per-step loss check are exactly what `etude train` runs. A timed step is
everything between two optimizer steps: fetching and collating the batch in this
process (num_workers=0, as the trainer), forward, backward, clipping, AdamW and the
scheduler. The fraction spent fetching the batch is in the JSON (`data_fraction`).

No package function runs N steps without validation or checkpoints, so instead of
re-writing the loop this script drives `fit_model` with:

* `eval_every` and `checkpoint_every` above the last step (no validation, no
  checkpoint is written; dvclive and the model folder go to a temporary folder);
* `fit`'s documented `on_step` hook, which records a timestamp after each optimizer
  step and raises to stop the run after warmup + steps (how the tests interrupt it);
* a forward pre-hook on the model (registered by a wrapping `model_cls`), which
  records each batch, so samples and units are counted from the batches really
  trained on (the last batch of an epoch may be short: `drop_last=False`).

`max_steps` is max(the model's own, warmup + steps + 1), so the LR schedule is the
real one; `seed` is `--seed` (default 0) and every repeat trains on the same batches,
so repeats differ only in time. Repeats run in rounds (every model, then the next
round), so load drift on a shared machine hits every model alike; the table shows
the median over repeats.

Units (what one sample and one unit are, from each model's dataset code):

* autoencoder, vae (pianoroll store): a sample is one window of `window_frames`
  (64) frames x 88 pitches (A0..C8); the unit is a *frame* (50 ms across the 88
  pitches) inside the piece (`mask` = 1; frames past a piece's end are padding the
  loss ignores). The loss is per cell (frame x pitch): cells = frames x 88.
* rnn (tuples store): a sample is one window of `seq_len` (25) note tuples (stride-1
  windows); the unit is a *note*, one (pitch, step, duration) target: the rnn's
  token (`mask` = 1; positions past a piece's last note are padding).
* transformer (events store): a sample is one window of `seq_len` + 1 (129) event
  tokens; the unit is a *token*, one scored next-token target (target != PAD; at most
  `seq_len` = 128 per window).
* biaxial, poph (prv store): a sample is one window of `seq_len` (32) time steps
  (+1 context step) x 48 pitches x (play, replay, volume), with its style; the unit
  is a *step* (1/8 s across the 48 pitches) inside the piece (`mask` = 1). The loss is
  per pitch-step: cells = steps x 48.

`units_padded` in the JSON counts padding too (samples x window length).

Threads: `--threads` (default 1, as params.yaml `train.num_threads`) is passed to
`torch.set_num_threads` (through the train params; 0 = torch's default). The CUDA row
(only when `torch.cuda.is_available()`) uses the same threads for batch fetching.

Default runtime on 2 cores at 1 thread (CPU only): about 2-2.5 minutes, i.e. 5 repeats
x 6 models x (2 + 10) steps at about 1.9 s per step summed over the six models
(autoencoder, vae, poph ~0.4 s; transformer, biaxial ~0.3 s; rnn ~0.03 s), plus about
0.4 s of set-up per run; more on a loaded machine, and a CUDA row adds its own runs.
Writes reports/bench/train.json (raw per-repeat numbers, config, machine) and prints
a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import machine_info, markdown_table, summarize, write_report

from pipeline.core.config import ROOT
from pipeline.modeling import base
from pipeline.modeling.checkpoint import describe
from pipeline.modeling.fit import fit_model
from pipeline.modeling.train import load_store_for, load_train_params
from pipeline.representations.events import PAD

PARAMS_FILE = ROOT / "params.yaml"
PROCESSED = ROOT / "data" / "processed"

MODELS = ("autoencoder", "vae", "rnn", "transformer", "biaxial", "poph")
# representation -> (unit name, the batch tensor whose entries count units)
UNITS = {
    "pianoroll": ("frames", "mask"),
    "tuples": ("notes", "mask"),
    "events": ("tokens", "tokens"),
    "prv": ("steps", "mask"),
}
NEVER = 10**9  # eval_every / checkpoint_every that no benchmark run reaches

log = logging.getLogger("bench_train")


class _Stop(Exception):
    """Raised from `on_step` once the timed steps are done (ends `fit_model`)."""


class Probe:
    """The hooks of one run: timestamps of forwards and optimizer steps, the batches."""

    def __init__(self, spec: base.ModelSpec, stop_at: int, device: torch.device):
        self.spec = spec
        self.stop_at = stop_at
        self.device = device
        self.model: torch.nn.Module | None = None
        self.config: Any = None
        self.threads = 0
        self.forward_at: list[float] = []  # perf_counter at each forward (step k: index k-1)
        self.step_at: list[tuple[float, float]] = []  # (perf_counter, process_time) after step k
        self.batches: list[dict[str, Any]] = []

    def model_cls(self, config: Any) -> torch.nn.Module:
        """Build the model as the spec does, and hook its forward."""
        model = self.spec.model_cls(config)
        model.register_forward_pre_hook(self._pre_forward)
        self.model, self.config = model, config
        return model

    def _pre_forward(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self.forward_at.append(time.perf_counter())
        self.batches.append(args[0])  # a reference only; counted after the run
        if not self.threads:
            self.threads = torch.get_num_threads()

    def on_step(self, step: int) -> None:
        if self.device.type == "cuda":  # fit already syncs on the loss terms; be explicit
            torch.cuda.synchronize(self.device)
        self.step_at.append((time.perf_counter(), time.process_time()))
        if step >= self.stop_at:
            raise _Stop


def count_units(representation: str, batch: dict[str, Any]) -> tuple[int, int, int]:
    """(samples, units, units_padded) of one collated batch (see the module docstring)."""
    _, key = UNITS[representation]
    tensor = batch[key]
    samples = int(tensor.size(0))
    if key == "tokens":  # (B, T+1): targets are tokens[:, 1:], PAD is not scored
        targets = tensor[:, 1:]
        return samples, int((targets != PAD).sum()), int(targets.numel())
    return samples, int(tensor.sum()), int(tensor.numel())  # mask (B, T)


def run_once(
    name: str,
    store: base.StoreData,
    device: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One fresh training run of `name`: warm-up steps, then timed steps; per-run numbers."""
    spec = base.get(name)
    config, train = load_train_params(name, args.params)
    total = args.warmup + args.steps
    train = dataclasses.replace(
        train,
        seed=args.seed,
        device=device,
        num_threads=args.threads,
        precision=args.precision,
        max_steps=max(train.max_steps, total + 1),
        eval_every=NEVER,
        checkpoint_every=NEVER,
        patience=0,
    )
    probe = Probe(spec, stop_at=total, device=torch.device(device))
    hooked = dataclasses.replace(spec, model_cls=probe.model_cls)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench_train_{name}_") as tmp:
        try:
            fit_model(
                hooked,
                config,
                train,
                store,
                Path(tmp) / "model",
                Path(tmp) / "live",
                resume=False,
                on_step=probe.on_step,
            )
        except _Stop:
            pass
        else:
            raise RuntimeError(f"{name}: fit ended before {total} steps")
    wall = time.perf_counter() - began
    if len(probe.step_at) != total or probe.model is None:
        raise RuntimeError(f"{name}: expected {total} steps, saw {len(probe.step_at)}")

    w = args.warmup  # step k (1-based) ended at step_at[k - 1] and began at forward_at[k - 1]
    t0, c0 = probe.step_at[w - 1]
    t1, c1 = probe.step_at[total - 1]
    seconds, cpu_s = t1 - t0, c1 - c0
    data_s = sum(probe.forward_at[k] - probe.step_at[k - 1][0] for k in range(w, total))
    counts = [count_units(spec.representation, b) for b in probe.batches[w:total]]
    samples = sum(c[0] for c in counts)
    units = sum(c[1] for c in counts)
    padded = sum(c[2] for c in counts)
    return {
        "model": name,
        "device": device,
        "steps": args.steps,
        "seconds": seconds,
        "cpu_s": cpu_s,
        "data_s": data_s,
        "samples": samples,
        "units": units,
        "units_padded": padded,
        "samples_per_s": samples / seconds,
        "units_per_s": units / seconds,
        "ms_per_step": 1000 * seconds / args.steps,
        "setup_s": probe.forward_at[0] - began,  # store prep, datasets, model, optimizer
        "run_wall_s": wall,
        "threads": probe.threads,
        "n_parameters": sum(p.numel() for p in probe.model.parameters()),
        "batch_size": train.batch_size,
        "config": describe(probe.config),
        "train_params": dataclasses.asdict(train),
    }


def unit_meaning(representation: str, config: dict[str, Any]) -> str:
    """One line: what a sample and a unit are for this model's batches."""
    if representation == "pianoroll":
        pitches = config.get("n_pitches", "?")
        return (
            f"sample = window of {config.get('window_frames')} frames x {pitches} pitches; "
            f"unit = frame ({config.get('frame_ms', 0):g} ms) inside the piece (mask=1)"
        )
    if representation == "tuples":
        return (
            f"sample = window of {config.get('seq_len')} note tuples; unit = note "
            "(one pitch/step/duration target, the rnn's token; mask=1)"
        )
    if representation == "events":
        return (
            f"sample = window of {config.get('seq_len', 0) + 1} event tokens; unit = "
            "token (scored next-token target, != PAD)"
        )
    sps = config.get("steps_per_second") or 0
    step = f"1/{sps:g} s" if sps else "one prv step"
    return (
        f"sample = window of {config.get('seq_len')} steps x {config.get('n_pitches')} "
        f"pitches x (play, replay, volume); unit = step ({step} x all pitches) inside "
        "the piece (mask=1)"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    elif args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    else:
        devices = [args.device]

    specs = {name: base.get(name) for name in args.models}
    stores_needed = sorted({s.representation for s in specs.values()})
    missing = [r for r in stores_needed if not (PROCESSED / r / "params.json").exists()]
    if missing:
        raise SystemExit(
            "missing processed store(s): "
            + ", ".join(str(PROCESSED / r) for r in missing)
            + " (build them with `dvc repro`; this benchmark does not rebuild the pipeline)"
        )
    load_began = time.perf_counter()
    stores = {
        r: load_store_for(next(s for s in specs.values() if s.representation == r), PROCESSED / r)
        for r in stores_needed
    }
    load_s = time.perf_counter() - load_began

    raw: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for device in devices:
            for name in args.models:
                rec = run_once(name, stores[specs[name].representation], device, args)
                rec["repeat"] = repeat
                raw.append(rec)
                print(
                    f"[{repeat + 1}/{args.repeats}] {name}@{device}: "
                    f"{rec['samples_per_s']:,.1f} samples/s, {rec['units_per_s']:,.0f} "
                    f"{UNITS[specs[name].representation][0]}/s, "
                    f"{rec['ms_per_step']:.1f} ms/step",
                    file=sys.stderr,
                    flush=True,
                )

    results: dict[str, Any] = {}
    for device in devices:
        for name in args.models:
            runs = [r for r in raw if r["model"] == name and r["device"] == device]
            first = runs[0]
            rep = specs[name].representation
            results[f"{name}@{device}"] = {
                "model": name,
                "device": device,
                "representation": rep,
                "unit": UNITS[rep][0],
                "unit_meaning": unit_meaning(rep, first["config"]),
                "n_parameters": first["n_parameters"],
                "threads": first["threads"],
                "batch_size": first["batch_size"],
                "steps": args.steps,
                "samples_per_repeat": first["samples"],
                "units_per_repeat": first["units"],
                "units_padded_per_repeat": first["units_padded"],
                "samples_per_s": summarize([r["samples_per_s"] for r in runs]),
                "units_per_s": summarize([r["units_per_s"] for r in runs]),
                "units_per_cpu_s": summarize([r["units"] / r["cpu_s"] for r in runs]),
                "ms_per_step": summarize([r["ms_per_step"] for r in runs]),
                "data_fraction": summarize([r["data_s"] / r["seconds"] for r in runs]),
                "setup_s": summarize([r["setup_s"] for r in runs]),
                "config": first["config"],
                "train_params": first["train_params"],
            }

    machine = machine_info()
    machine["torch_version"] = torch.__version__
    machine["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "config": {
            "models": list(args.models),
            "devices": devices,
            "repeats": args.repeats,
            "steps": args.steps,
            "warmup": args.warmup,
            "threads": args.threads,
            "seed": args.seed,
            "precision": args.precision,
            "params": str(args.params),
            "stores": {r: str(PROCESSED / r) for r in stores_needed},
            "store_load_s": load_s,
        },
        "machine": machine,
        "results": results,
        "raw": [{k: v for k, v in r.items() if k not in ("config", "train_params")} for r in raw],
        "notes": [
            "one repeat = one fresh fit_model run (the trainer's loop) with validation and "
            "checkpoints disabled: --warmup untimed steps, then --steps timed steps",
            "a timed step = batch fetch + collate (num_workers=0) + forward + backward + "
            "grad clip + AdamW + LR scheduler; data_fraction = share of the fetch",
            "units count real (unpadded) units; units_padded_per_repeat includes padding",
            "every repeat trains on the same batches (fixed seed): only the time varies",
            "units_per_cpu_s: units per CPU-second of this process, steadier than wall "
            "time on a shared machine",
        ],
        "wall_s": time.perf_counter() - started,
    }


def table(report: dict[str, Any]) -> str:
    rows = [
        [
            r["model"],
            r["unit"],
            r["samples_per_s"]["median"],
            r["units_per_s"]["median"],
            r["n_parameters"],
            r["threads"],
            r["device"],
        ]
        for r in report["results"].values()
    ]
    headers = ["model", "unit", "samples/s", "units/s", "params", "threads", "device"]
    return markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per model; medians shown")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed optimizer steps before the timed ones (>= 1)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads for training (default 1, as "
        "params.yaml train.num_threads; 0 = torch's default)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto = a CPU row per model, plus a CUDA row when available",
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated model names (default: all six)"
    )
    parser.add_argument("--seed", type=int, default=0, help="train seed of every run")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="train.precision of every run (bf16: autocast; the GPU recipe's setting)",
    )
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params.yaml to read")
    parser.add_argument("--out", default="train", help="report name under reports/bench/")
    args = parser.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(base.names()))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {base.names()}")
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--warmup, --steps and --repeats must be >= 1")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    report = run(args)
    path = write_report(args.out, report)
    print(table(report))
    print(f"\nwrote {path} ({report['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
