"""Cost of train-time augmentation (`train.augment`) per training window.

Run by hand after `dvc repro` (it reads data/processed):
`.venv/bin/python benchmarks/bench_augment.py`. For the piano-roll and tuples train
datasets it times one pass over the first windows with augmentation off and with the
MAESTRO recipe on (transpositions -3..3, stretches 0.95..1.05), median of 5 passes,
and times `Augment.draw` against the numpy Generator per window it replaced (the peer,
measured in the same run). Writes reports/bench/augment.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.io import write_json  # noqa: E402
from pipeline.modeling import base  # noqa: E402
from pipeline.modeling.train import load_train_params  # noqa: E402
from pipeline.representations import load_store  # noqa: E402

RECIPE = base.Augment(
    transpositions=(-3, -2, -1, 0, 1, 2, 3), stretches=(0.95, 0.975, 1.0, 1.025, 1.05)
)


def median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def generator_draw(aug: base.Augment, seed: int, epoch: int, index: int) -> tuple[int, float]:
    """The draw `Augment.draw` replaced: a numpy Generator per window (the peer)."""
    rng = np.random.default_rng([seed, epoch, int(index), 0xA06])
    semitones = aug.transpositions[int(rng.integers(len(aug.transpositions)))]
    factor = aug.stretches[int(rng.integers(len(aug.stretches)))]
    return int(semitones), float(factor)


def window_cost(model: str, windows: int, repeats: int) -> dict[str, float]:
    """Median seconds per window of the model's train dataset, augmentation off and on."""
    spec = base.get(model)
    config, _ = load_train_params(model, REPO / "params.yaml")
    store = load_store(REPO / "data" / "processed" / spec.representation, spec.representation)
    if spec.prepare is not None:
        config = spec.prepare(store, config)
    torch.manual_seed(0)
    data = spec.make_dataset(store, config, "train")
    n = min(windows, len(data))
    off = median_s(lambda: [data[i] for i in range(n)], repeats) / n
    data.set_augment(RECIPE)
    on = median_s(lambda: [data[i] for i in range(n)], repeats) / n
    return {"windows": n, "off_ms": off * 1e3, "on_ms": on * 1e3, "ratio_on_off": on / off}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--windows", type=int, default=2000, help="windows per pass")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    draws = 20000
    ours = median_s(lambda: [RECIPE.draw(0, 1, i) for i in range(draws)], args.repeats)
    peer = median_s(lambda: [generator_draw(RECIPE, 0, 1, i) for i in range(draws)], args.repeats)
    result = {
        "draw_us": ours / draws * 1e6,
        "generator_draw_us": peer / draws * 1e6,
        "draw_speedup": peer / ours,
        "models": {m: window_cost(m, args.windows, args.repeats) for m in ("autoencoder", "rnn")},
    }
    print(f"Augment.draw {result['draw_us']:.2f} us, numpy Generator per window "
          f"{result['generator_draw_us']:.2f} us ({result['draw_speedup']:.1f}x), median of "
          f"{args.repeats}")  # fmt: skip
    for model, row in result["models"].items():
        print(f"{model}: {row['off_ms']:.3f} ms/window off, {row['on_ms']:.3f} on "
              f"({row['ratio_on_off']:.2f}x), {row['windows']} windows, median of "
              f"{args.repeats}")  # fmt: skip
    write_json(REPO / "reports" / "bench" / "augment.json", result)


if __name__ == "__main__":
    main()
