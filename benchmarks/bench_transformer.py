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
* long sequences: peak memory and time of one forward + backward (batch 1, no optimizer
  step) at 512, 1,024, 2,048 and 4,096 tokens, ours against the same torch decoder,
  both ratios (ours / torch) from numbers measured in the same run. Time: median of
  REPEATS rounds after a warm-up, the models alternating within each round. Peak
  memory: on CPU the peak RSS (VmHWM, reset through ``/proc/self/clear_refs`` just
  before) minus the RSS before, in a fresh subprocess per measurement so that memory
  the allocator kept from an earlier measurement cannot hide this one's;
  ``torch.cuda.max_memory_allocated`` on a GPU. CPU rows always (fp32); with
  ``--device cuda`` (or auto with a GPU) also CUDA rows in fp32 and in bf16 (autocast).
  Besides ours (blocked relative attention) and torch's, the table has the reference
  relative attention (the previous implementation: ``S_rel`` as an SDPA float mask,
  `pipeline.modeling.attention.relative_attention_reference`; up to 2,048
  tokens) and, on CPU, a direct (Shaw et al. 2018) relative attention that gathers an
  (L, L, Dh) tensor (memory only, up to 1,024: it needs gigabytes at 2,048).

Writes ``reports/bench/transformer.json``. Usage::

    python benchmarks/bench_transformer.py [--device auto|cpu|cuda] [--threads N] [--out PATH]
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
import typer
from torch import nn

from pipeline.core.config import DEFAULT_PARAMS_FILE, ROOT
from pipeline.core.io import write_json
from pipeline.modeling import attention
from pipeline.modeling.attention import sine_positions
from pipeline.modeling.events import transformer
from pipeline.modeling.events.sampling import ContextWindow, generate_transformer, sample_next
from pipeline.modeling.events.transformer import MusicTransformer
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
# Long sequences: the default width and depth, batch 1, the paper's relative span.
LONG_CONFIG = dataclasses.replace(
    DEFAULT_CONFIG,
    d_model=128,
    n_layers=3,
    n_heads=4,
    d_ff=512,
    dropout=0.0,
    max_relative_position=2048,
    seq_len=4096,
)
LONG_LENGTHS = (512, 1024, 2048, 4096)
REFERENCE_MAX_LENGTH = 2048  # the previous implementation: L x L tensors, slow at 4096
DIRECT_MAX_LENGTH = 1024  # Shaw et al.'s (L, L, Dh) gather: gigabytes at 2048


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
    """Median wall time of each function over REPEATS rounds (see `_median_times`)."""
    return {name: wall for name, (wall, _) in _median_times(fns, device).items()}


def _median_times(
    fns: dict[str, Callable[[], Any]], device: torch.device
) -> dict[str, tuple[float, float]]:
    """Median wall time and median CPU time (this process's) of each function over
    REPEATS rounds.

    The functions alternate within each round, so load from other processes on a
    shared machine slows both sides of a comparison alike. CPU time is what the
    process itself spent, all its threads together: on a busy machine it hardly
    depends on how often the process was scheduled out, which wall time does.
    """
    for fn in fns.values():  # warm-up (allocator, kernels, lazy init)
        fn()
    _sync(device)
    walls: dict[str, list[float]] = {name: [] for name in fns}
    cpus: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(REPEATS):
        for name, fn in fns.items():
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            walls[name].append(time.perf_counter() - start)
            cpus[name].append(time.process_time() - cpu)
    return {name: (statistics.median(walls[name]), statistics.median(cpus[name])) for name in fns}


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


def _reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    return attention.relative_attention_reference(q, k, v, rel, dropout_p)


@contextlib.contextmanager
def _attention(kind: str) -> Iterator[None]:
    """Our model with its attention computed the way `kind` says, for the block."""
    saved = attention.relative_attention, attention.relative_logits
    if kind in ("reference", "direct"):
        attention.relative_attention = _reference_attention
    if kind == "direct":
        attention.relative_logits = _direct_relative_logits
    try:
        yield
    finally:
        attention.relative_attention, attention.relative_logits = saved


# Long sequences: a row is (device, precision); its kinds are the models compared.
Row = tuple[str, str]


def _kinds(row: Row, length: int) -> list[str]:
    kinds = ["ours", "torch"]
    if length <= REFERENCE_MAX_LENGTH:
        kinds.append("reference")
    if row[0] == "cpu" and length <= DIRECT_MAX_LENGTH:
        kinds.append("direct")  # memory only
    return kinds


def _long_model(kind: str, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = (TorchDecoder if kind == "torch" else MusicTransformer)(LONG_CONFIG)
    return model.to(device).train()


def _forward_backward(
    model: nn.Module, kind: str, batch: dict[str, torch.Tensor], precision: str
) -> None:
    """One forward + backward of `model` (as `kind`) in `precision`; grads dropped."""
    device = batch["tokens"].device
    cast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    with _attention(kind):
        with cast:
            loss = model(batch)["loss"]
        loss.backward()
    model.zero_grad(set_to_none=True)


def long_probe(kind: str, length: int, device: torch.device, precision: str = "fp32") -> float:
    """Peak memory (MiB) of one forward + backward at `length` tokens, batch 1.

    On CPU, call it in a fresh process (the peak RSS since the model was built).
    """
    model = _long_model(kind, device)
    batch = {"tokens": torch.randint(3, VOCAB_SIZE, (1, length + 1)).to(device)}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        _forward_backward(model, kind, batch, precision)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    before_kib = _proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM), Linux
    _forward_backward(model, kind, batch, precision)
    return (_proc_status_kib("VmHWM") - before_kib) / 1024


def _proc_status_kib(field: str) -> int:
    """A memory field of /proc/self/status (Linux), in KiB."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if match is None:
        raise RuntimeError(f"/proc/self/status: no {field} line (CPU memory needs Linux)")
    return int(match.group(1))


def _peak_mib(kind: str, length: int, row: Row, threads: int) -> float:
    device, precision = torch.device(row[0]), row[1]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return long_probe(kind, length, device, precision)
    probe = f"{kind}:{length}"  # a fresh process, so earlier peaks cannot mask this one
    command = [sys.executable, __file__, "--probe", probe, "--device", "cpu"]
    out = subprocess.run(
        [*command, "--threads", str(threads)], check=True, capture_output=True, text=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def _long_times(kinds: list[str], length: int, row: Row) -> dict[str, tuple[float, float]]:
    """Median wall and CPU seconds of one forward + backward per kind (`_median_times`)."""
    device, precision = torch.device(row[0]), row[1]
    batch = {"tokens": torch.randint(3, VOCAB_SIZE, (1, length + 1)).to(device)}
    fns = {}
    for kind in kinds:
        model = _long_model(kind, device)
        fns[kind] = lambda m=model, k=kind: _forward_backward(m, k, batch, precision)
    return _median_times(fns, device)


def long_table(rows: list[Row], threads: int) -> dict[str, dict[str, Any]]:
    """Peak MiB, seconds and ours/torch ratios per row and sequence length."""
    table: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_length: dict[str, Any] = {}
        for length in LONG_LENGTHS:
            kinds = _kinds(row, length)
            peak = {k: round(_peak_mib(k, length, row, threads), 1) for k in kinds}
            times = _long_times([k for k in kinds if k != "direct"], length, row)
            wall = {k: w for k, (w, _) in times.items()}
            result = {
                "peak_mib": peak,
                "seconds": {k: round(v, 4) for k, v in wall.items()},
                "memory_ratio_ours_over_torch": round(peak["ours"] / peak["torch"], 3),
                "time_ratio_ours_over_torch": round(wall["ours"] / wall["torch"], 3),
            }
            if row[0] == "cpu":  # a GPU's work is not this process's CPU time
                cpu = {k: c for k, (_, c) in times.items()}
                result["cpu_seconds"] = {k: round(v, 4) for k, v in cpu.items()}
                result["cpu_time_ratio_ours_over_torch"] = round(cpu["ours"] / cpu["torch"], 3)
            by_length[str(length)] = result
            log.info("long %s L=%d: %s", "/".join(row), length, result)
        table["_".join(row)] = by_length
    return table


def _markdown(table: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| device | tokens | peak MiB ours / torch | memory ratio | wall s ours / torch "
        "| time ratio | CPU time ratio | reference: MiB, wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, by_length in table.items():
        for length, r in by_length.items():
            ref = (
                f"{r['peak_mib']['reference']}, {r['seconds']['reference']}"
                if "reference" in r["peak_mib"]
                else ""
            )
            cpu = r.get("cpu_time_ratio_ours_over_torch")
            lines.append(
                f"| {row} | {length} | {r['peak_mib']['ours']} / {r['peak_mib']['torch']} "
                f"| {r['memory_ratio_ours_over_torch']}x "
                f"| {r['seconds']['ours']} / {r['seconds']['torch']} "
                f"| {r['time_ratio_ours_over_torch']}x | {f'{cpu}x' if cpu else ''} | {ref} |"
            )
    return "\n".join(lines)


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
        print(long_probe(kind, int(length), dev))
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
    rows: list[Row] = [("cpu", "fp32")]
    if dev.type == "cuda":
        rows += [("cuda", "fp32"), ("cuda", "bf16")]
    long = long_table(rows, threads)
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
        "long_forward_backward": {
            "what": "one forward+backward, batch 1, no optimizer step; peak memory: "
            "peak RSS growth in a fresh process (cpu), torch.cuda.max_memory_allocated "
            "(cuda); seconds: median wall time of REPEATS rounds, models alternating; "
            "cpu_seconds (cpu rows): median CPU time of this process, all threads",
            "config": LONG_CONFIG.__dict__,
            "repeats": REPEATS,
            "block_size": attention.BLOCK_SIZE,
            "by_device_precision": long,
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_json(out, report)
    log.info("wrote %s\n%s\n\n%s", out, json.dumps(report, indent=2), _markdown(long))


if __name__ == "__main__":
    typer.run(main)
