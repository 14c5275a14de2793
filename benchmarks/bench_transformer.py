"""Speed and memory of the Music Transformer against torch's built-in transformer.

Measures, in one run and on one device:

* training throughput (tokens/s of forward + backward + AdamW step) of our model and
  of a decoder-only ``nn.TransformerEncoder`` (pre-LN, causal mask, same d_model,
  layers, heads, d_ff and vocabulary), median of 5 timed repeats after a warm-up;
* generation throughput (tokens/s): ours samples with its key/value cache; torch's
  module has no cache, so it re-runs the whole prefix for every new token (how it
  is used for sampling);
* long generation (4 x seq_len tokens, past the training window): our sampler, which
  re-encodes its context every quarter window (`ContextWindow`), against the same
  model with a sliding key/value cache (the previous sampler: one cached step per
  token, but keys computed with more context than any training window), i.e. what
  sampling exactly as trained costs;
* peak memory of one forward + backward at sequence lengths 512, 1024 and 2048
  (batch 1): ``torch.cuda.max_memory_allocated`` on a GPU; on CPU the peak RSS
  (VmHWM, reset through ``/proc/self/clear_refs`` just before) minus the RSS before,
  in a fresh subprocess per measurement so that memory the allocator kept from an
  earlier measurement cannot hide this one's. On CPU it also measures a direct
  (Shaw et al. 2018) relative attention that gathers an (L, L, Dh) tensor, to show
  what the skewing trick saves (at 512 and 1024 only: it needs gigabytes at 2048).

Writes ``reports/bench/transformer.json``. Usage::

    python benchmarks/bench_transformer.py [--device auto|cpu|cuda] [--out PATH]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
import typer
from torch import nn

from pipeline.core.config import DEFAULT_PARAMS_FILE, ROOT
from pipeline.core.io import write_json
from pipeline.modeling.events import transformer
from pipeline.modeling.events.sampling import ContextWindow, generate_transformer, sample_next
from pipeline.modeling.events.transformer import MusicTransformer, sine_positions
from pipeline.modeling.sampling import SampleOptions
from pipeline.modeling.train import load_train_params
from pipeline.representations.events import BOS, VOCAB_SIZE

log = logging.getLogger("bench_transformer")

# The model the speed comparison uses: the default config (small, CPU-trainable).
DEFAULT_CONFIG = load_train_params("transformer", DEFAULT_PARAMS_FILE)[0]  # as params.yaml ships
SPEED_CONFIG = dataclasses.replace(DEFAULT_CONFIG, dropout=0.0)
SPEED_BATCH = 16
SPEED_SEQ_LEN = SPEED_CONFIG.seq_len
GENERATE_TOKENS = 128
LONG_TOKENS = 4 * SPEED_SEQ_LEN  # past the window: the sampler re-encodes its context
REPEATS = 5
# Memory: a small model at long sequence lengths, batch 1.
MEMORY_CONFIG = dataclasses.replace(
    DEFAULT_CONFIG,
    d_model=128,
    n_layers=2,
    n_heads=4,
    d_ff=512,
    dropout=0.0,
    max_relative_position=2048,
    seq_len=2048,
)
MEMORY_LENGTHS = (512, 1024, 2048)
DIRECT_MAX_LENGTH = 1024


class TorchDecoder(nn.Module):
    """Decoder-only baseline from torch's own layers: same sizes, causal mask, pre-LN."""

    def __init__(self, config: transformer.TransformerConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(VOCAB_SIZE, config.d_model)
        layer = nn.TransformerEncoderLayer(
            config.d_model,
            config.n_heads,
            config.d_ff,
            config.dropout,
            activation="relu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, VOCAB_SIZE, bias=False)
        self.head.weight = self.embed.weight

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.size(1)
        x = self.embed(tokens) * math.sqrt(self.config.d_model)  # (B, T, D)
        x = x + sine_positions(torch.arange(t, device=tokens.device), self.config.d_model)
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=tokens.device)
        x = self.encoder(x, mask=mask, is_causal=True)  # (B, T, D)
        return self.head(self.ln_f(x))  # (B, T, V)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens = batch["tokens"]
        logits = self.logits(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), tokens[:, 1:].reshape(-1))
        return {"loss": loss}

    @torch.no_grad()
    def generate_tokens(self, n_tokens: int, generator: torch.Generator) -> torch.Tensor:
        """Sample without a cache: the whole prefix is recomputed for every token."""
        tokens = torch.full((1, 1), BOS, device=self.embed.weight.device)
        for _ in range(n_tokens):
            probs = self.logits(tokens)[:, -1].softmax(-1).cpu()
            nxt = torch.multinomial(probs, 1, generator=generator).to(tokens.device)
            tokens = torch.cat([tokens, nxt], dim=1)
        return tokens


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fns: dict[str, Callable[[], Any]], device: torch.device) -> dict[str, float]:
    """Median wall time of each function over REPEATS rounds.

    The functions alternate within each round, so load from other processes on a
    shared machine slows both sides of a comparison alike.
    """
    for fn in fns.values():  # warm-up (allocator, kernels, lazy init)
        fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(REPEATS):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _train_step(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """One forward + backward + AdamW step on a fixed random batch."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, VOCAB_SIZE, (SPEED_BATCH, SPEED_SEQ_LEN + 1), generator=gen)
    batch = {"tokens": tokens.to(device)}

    def step() -> None:
        loss = model(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def train_speed(models: dict[str, nn.Module], device: torch.device) -> dict[str, float]:
    """Training tokens/s (forward + backward + AdamW step) per model, median of REPEATS."""
    seconds = _median_seconds({k: _train_step(m, device) for k, m in models.items()}, device)
    return {k: SPEED_BATCH * SPEED_SEQ_LEN / s for k, s in seconds.items()}


def _sampler(model: nn.Module, device: torch.device) -> tuple[Callable[[], None], int]:
    """A function sampling one sequence from BOS, and how many tokens it samples.

    The generator is reseeded on every call, so every repeat samples the same
    sequence (ours may stop early at EOS; the count is the tokens really sampled).
    """
    model.to(device).eval()
    gen = torch.Generator()
    if isinstance(model, MusicTransformer):

        def run() -> int:
            rows = generate_transformer(
                model, 1, SampleOptions(length=GENERATE_TOKENS), generator=gen.manual_seed(0)
            )
            tokens = rows[0]["tokens"][0]
            return len(tokens) - 2 + int(len(tokens) < GENERATE_TOKENS + 2)  # minus BOS, EOS

    else:

        def run() -> int:
            return model.generate_tokens(GENERATE_TOKENS, gen.manual_seed(0)).size(1) - 1

    return run, run()


def generate_speed(models: dict[str, nn.Module], device: torch.device) -> dict[str, float]:
    """Generation tokens/s for one sample of up to GENERATE_TOKENS tokens, median of REPEATS."""
    samplers = {k: _sampler(m, device) for k, m in models.items()}
    seconds = _median_seconds({k: fn for k, (fn, _) in samplers.items()}, device)
    return {k: samplers[k][1] / s for k, s in seconds.items()}


@torch.no_grad()
def _long_sample(
    model: MusicTransformer, n_tokens: int, gen: torch.Generator, sliding: bool
) -> None:
    """Draw `n_tokens` tokens from BOS (never stopping at EOS), one context per way.

    ``sliding``: the previous sampler's loop, the last seq_len - 1 cached positions and
    one cached step per token; otherwise `ContextWindow`, as `generate_transformer` does.
    """
    device = next(model.parameters()).device
    bos = torch.full((1, 1), BOS, device=device)
    if not sliding:
        context = ContextWindow(model, bos)
        for _ in range(n_tokens):
            context.push(sample_next(context.logits, gen))
        return
    keep = model.config.seq_len - 1
    logits, past = model.logits(bos)
    for position in range(1, n_tokens + 1):
        token = sample_next(logits[:, -1], gen)
        past = [(k[:, :, -keep:], v[:, :, -keep:]) for k, v in past]
        logits, past = model.logits(token[:, None], past, start_pos=position)


def generate_long_speed(model: MusicTransformer, device: torch.device) -> dict[str, float]:
    """Tokens/s sampling LONG_TOKENS tokens: re-encoding context vs a sliding cache."""
    model.to(device).eval()
    gen = torch.Generator()
    seconds = _median_seconds(
        {
            way: lambda sliding=(way == "sliding_cache"): _long_sample(
                model, LONG_TOKENS, gen.manual_seed(0), sliding
            )
            for way in ("reencode", "sliding_cache")
        },
        device,
    )
    return {way: LONG_TOKENS / s for way, s in seconds.items()}


def _direct_relative_logits(q: torch.Tensor, rel: torch.Tensor, n_keys: int) -> torch.Tensor:
    """Shaw et al.'s relative logits: gather an (H, Tq, Tk, Dh) tensor, O(L^2 D) memory."""
    n_q = q.size(2)
    rows = torch.arange(n_keys - n_q, n_keys, device=q.device)[:, None]
    cols = torch.arange(n_keys, device=q.device)[None, :]
    distance = (rows - cols).clamp(0, rel.size(1) - 1)  # (Tq, Tk)
    gathered = rel[:, distance]  # (H, Tq, Tk, Dh)
    return torch.einsum("bhqd,hqkd->bhqk", q, gathered)


def memory_probe(kind: str, length: int, device: torch.device) -> float:
    """Peak memory (MiB) of one forward + backward at `length` tokens, batch 1."""
    torch.manual_seed(0)
    if kind == "direct":
        transformer.relative_logits = _direct_relative_logits  # this process only
    model: nn.Module = (TorchDecoder if kind == "torch" else MusicTransformer)(MEMORY_CONFIG)
    model.to(device).train()
    batch = {"tokens": torch.randint(3, VOCAB_SIZE, (1, length + 1)).to(device)}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        model(batch)["loss"].backward()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    before_kib = _proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM), Linux
    model(batch)["loss"].backward()
    return (_proc_status_kib("VmHWM") - before_kib) / 1024


def _proc_status_kib(field: str) -> int:
    """A memory field of /proc/self/status (Linux), in KiB."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if match is None:
        raise RuntimeError(f"/proc/self/status: no {field} line (CPU memory needs Linux)")
    return int(match.group(1))


def memory_table(device: torch.device) -> dict[str, dict[str, float | None]]:
    """Peak MiB per sequence length for ours, torch's and (CPU) the direct relative attention."""
    kinds = ["ours", "torch"] + (["direct"] if device.type == "cpu" else [])
    table: dict[str, dict[str, float | None]] = {}
    for length in MEMORY_LENGTHS:
        row: dict[str, float | None] = {}
        for kind in kinds:
            if kind == "direct" and length > DIRECT_MAX_LENGTH:
                row[kind] = None
                continue
            if device.type == "cuda":
                row[kind] = round(memory_probe(kind, length, device), 1)
                torch.cuda.empty_cache()
            else:  # a fresh process, so earlier peaks cannot mask this one
                out = subprocess.run(
                    [sys.executable, __file__, "--probe", f"{kind}:{length}", "--device", "cpu"],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                row[kind] = round(float(out.stdout.strip().splitlines()[-1]), 1)
            log.info("memory L=%d %s: %s MiB", length, kind, row[kind])
        table[str(length)] = row
    return table


def main(
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out: Annotated[Path, typer.Option(help="JSON report path.")] = ROOT
    / "reports"
    / "bench"
    / "transformer.json",
    threads: Annotated[int, typer.Option(help="torch CPU threads; 0 = default.")] = 0,
    probe: Annotated[str, typer.Option(hidden=True)] = "",
) -> None:
    """Benchmark the Music Transformer and write the JSON report."""
    if threads > 0:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if probe:  # subprocess mode: one memory measurement, printed for the parent
        kind, length = probe.split(":")
        print(memory_probe(kind, int(length), dev))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    torch.manual_seed(0)
    ours, theirs = MusicTransformer(SPEED_CONFIG), TorchDecoder(SPEED_CONFIG)
    train = train_speed({"ours": ours, "torch": theirs}, dev)
    log.info("train tokens/s: %s", train)
    generate = generate_speed({"ours": ours, "torch": theirs}, dev)
    log.info("generate tokens/s: %s", generate)
    generate_long = generate_long_speed(ours, dev)
    log.info("long generate tokens/s: %s", generate_long)
    memory = memory_table(dev)
    report = {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "speed_config": SPEED_CONFIG.__dict__,
        "n_parameters": {
            "ours": sum(p.numel() for p in ours.parameters()),
            "torch": sum(p.numel() for p in theirs.parameters()),
        },
        "train_tokens_per_s": {
            **{k: round(v, 1) for k, v in train.items()},
            "ratio_ours_over_torch": round(train["ours"] / train["torch"], 3),
            "batch": SPEED_BATCH,
            "seq_len": SPEED_SEQ_LEN,
            "repeats": REPEATS,
        },
        "generate_tokens_per_s": {
            **{k: round(v, 1) for k, v in generate.items()},
            "ratio_ours_over_torch": round(generate["ours"] / generate["torch"], 3),
            "tokens": GENERATE_TOKENS,
            "note": "ours uses its key/value cache; torch's module recomputes the prefix",
        },
        "generate_long_tokens_per_s": {
            **{k: round(v, 1) for k, v in generate_long.items()},
            "ratio_reencode_over_sliding": round(
                generate_long["reencode"] / generate_long["sliding_cache"], 3
            ),
            "tokens": LONG_TOKENS,
            "note": "ours: context re-encoded every seq_len // 4 tokens (as trained); "
            "sliding_cache: the previous sampler, one cached step per token",
        },
        "peak_memory_mib": {
            "what": "one forward+backward, batch 1; "
            + ("torch.cuda.max_memory_allocated" if dev.type == "cuda" else "peak RSS growth"),
            "memory_config": MEMORY_CONFIG.__dict__,
            "by_seq_len": memory,
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_json(out, report)
    log.info("wrote %s\n%s", out, json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
