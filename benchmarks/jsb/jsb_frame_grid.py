"""Choose the frame transformer's JSB settings on VALIDATION frame NLL (test is never read).

Trains one setting of `pipeline.modeling.prv.frame_transformer` on this benchmark's prv
store (`dvc repro represent@prv` first) with a loop of its own (AdamW, weight decay 0.01,
20 warm-up steps then cosine to 0, batch 16, gradient clip 1.0), scores the validation
split's whole pieces every ``eval_every`` steps (`pipeline.modeling.prv.frames.play_logits`,
`pipeline.modeling.frames.frame_nll`: nats per step over 88 keys) and prints one JSON
line: the best validation number and its step, and the curve. With ``log`` it also
appends each evaluation to that file (for runs that may be cut off).

Run many settings side by side, e.g. one process per setting on a GPU::

    python benchmarks/jsb/jsb_frame_grid.py '{"over": {"name": "d32", "d_model": 32},
        "steps": 1000, "lr": 0.01, "seed": 0}' cuda

``frame_grid.json`` holds the two grids run for params.yaml's ``models.frame_transformer``
(on the H200 lent to the session of 2026-12-04).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.modeling import prv
from pipeline.modeling.frames import frame_nll
from pipeline.modeling.prv.frame_transformer import FrameTransformer, FrameTransformerConfig
from pipeline.modeling.prv.frames import play_logits
from pipeline.representations import load_store

STORE = Path(__file__).parent / "data" / "processed" / "prv"
BASE: dict[str, Any] = dict(
    d_model=64, n_layers=2, n_heads=4, d_ff=128, max_relative_position=64, note_hidden=64,
    style_dim=0, neighbour_window=12, vicinity_filters=64, vicinity_kernel=24,
    pitch_class_context=True, beat_period=4, aux_loss_cells="all", seq_len=64, dropout=0.3,
    attention_dropout=0.0, style_dropout=0.0, styles=(),
)  # fmt: skip
WARMUP = 20


def validation_nll(model: FrameTransformer, store: Any) -> float:
    """Frame NLL (nats per step) of the validation split, each piece whole."""
    model.eval()
    with torch.no_grad():
        scored = play_logits(model, store, "validation")
    return frame_nll(scored.whole, scored.rolls, min_pitch=scored.min_pitch, logits=True)


def run(spec: dict[str, Any], device: str) -> dict[str, Any]:
    """Train one setting (``spec``: over, steps, lr, seed, eval_every, log)."""
    over, steps, lr = dict(spec["over"]), int(spec["steps"]), float(spec["lr"])
    seed, every, log = int(spec.get("seed", 0)), int(spec.get("eval_every", 100)), spec.get("log")
    store = load_store(STORE, "prv")
    config = prv.prepare(
        store, FrameTransformerConfig(**{**BASE, **{k: v for k, v in over.items() if k in BASE}})
    )
    torch.manual_seed(seed)
    model = FrameTransformer(config).to(device)
    data = prv.make_dataset(store, config, "train")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)

    def cosine(s: int) -> float:
        warm = min(1.0, (s + 1) / WARMUP)
        return warm * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    order_gen = torch.Generator().manual_seed(seed)
    best, curve, step, epoch, start = (math.inf, 0), [], 0, 0, time.time()
    while step < steps:
        data.set_epoch(epoch)
        epoch += 1
        order = torch.randperm(len(data), generator=order_gen).tolist()
        for i in range(0, len(order) - 15, 16):
            items = [data[j] for j in order[i : i + 16]]
            batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
            model.train()
            loss = model(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % every == 0 or step == steps:
                nll = validation_nll(model, store)
                curve.append((step, round(nll, 4)))
                best = min(best, (nll, step))
                if log:
                    with open(log, "a") as fh:
                        row = {"name": over.get("name"), "step": step, "valid": round(nll, 4)}
                        fh.write(json.dumps({**row, "t": round(time.time() - start, 1)}) + "\n")
            if step >= steps:
                break
    return {
        "over": over, "lr": lr, "seed": seed, "steps": steps, "best_valid": round(best[0], 4),
        "best_step": best[1], "hist": curve, "seconds": round(time.time() - start, 1),
    }  # fmt: skip


if __name__ == "__main__":
    setting = json.loads(sys.argv[1])
    torch.set_num_threads(int(setting.get("threads", 1)))
    print(json.dumps(run(setting, sys.argv[2] if len(sys.argv) > 2 else "cpu")), flush=True)
