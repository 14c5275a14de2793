"""Forward passes shared by the train and evaluate stages.

A model's mean terms over a loader (`evaluate_loader`), the validation batches of a
training run (`validation_loader`), the scalar terms of a forward output
(`scalar_terms`) and the precision a forward pass runs in (`autocast`). The training
loop (`pipeline.modeling.fit`) validates with them and the evaluate stage scores the
test split with them, so evaluation loads this module, not the loop.

A forward output ``n_units`` (`WEIGHT_KEY`: the number of scored cells, notes or tokens
in the batch) weights batch means so that means are per unit; it is not a term.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from pipeline.modeling.base import TrainParams

log = logging.getLogger(__name__)

WEIGHT_KEY = "n_units"  # optional forward output: batch weight, not a logged term


class FitError(RuntimeError):
    """Training cannot run or went wrong (empty split, non-finite loss, no CUDA).

    Defined here, beside `autocast` (which raises it), so that evaluation can use the
    forward-pass helpers without loading the training loop.
    """


def scalar_terms(out: dict[str, Any]) -> dict[str, float]:
    """The scalar entries of a forward output as floats (the weight key excluded)."""
    terms = {}
    for key, value in out.items():
        if key == WEIGHT_KEY:
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            terms[key] = float(value.detach())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            terms[key] = float(value)
    return terms


# --------------------------------------------------------------------------------------
# Precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context of a forward pass in `precision` (``train.precision``) on `device`.

    ``bf16``: ``torch.autocast`` with bfloat16, on CPU as on CUDA: matmuls, linear
    layers, convolutions and LSTMs run in bf16, log-softmax and the losses in fp32
    (tests/modeling/test_precision.py says what each model runs in which). On a CPU
    whose oneDNN has no bf16 kernels (`cpu_bf16_kernels`; e.g. AVX2 without AVX-512),
    oneDNN's LSTM refuses bf16, so the forward runs with oneDNN off: torch's own CPU
    kernels serve every op (LSTMs then compute in fp32, the rest stays bf16), and a
    warning says so once. A CUDA device without bf16 is refused. ``fp32``: no context
    at all, so the default run computes exactly what it computed before.

    Raises:
        FitError: an unknown precision, or bf16 on a GPU without it.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise FitError(f"train.precision must be fp32 or bf16, got {precision!r}")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise FitError(
            f"train.precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 "
            "support; set train.precision: fp32"
        )
    bf16 = torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if device.type != "cpu" or cpu_bf16_kernels():
        return bf16
    _warn_once(
        "train.precision bf16: this CPU's oneDNN has no bfloat16 kernels; running bf16 on "
        "torch's own CPU kernels (oneDNN off: LSTMs in fp32, slower than on a bf16 CPU)"
    )
    stack = contextlib.ExitStack()
    stack.enter_context(_onednn_off())
    stack.enter_context(bf16)
    return stack


@contextlib.contextmanager
def _onednn_off() -> Iterator[None]:
    """oneDNN off for the forward (torch's ``mkldnn.flags`` would also warn about TF32)."""
    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


def cpu_bf16_kernels() -> bool:
    """Whether oneDNN (torch's CPU kernel library) runs bfloat16 on this CPU.

    Asked of torch, never inferred from the CPU's name: its own check
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``, what decides whether oneDNN
    takes bf16) and a probe of the op that failed without it, a tiny LSTM under bf16
    autocast (oneDNN: "could not create a primitive descriptor for the LSTM forward
    propagation primitive"). The answer is cached per process.
    """
    global _CPU_BF16
    if _CPU_BF16 is None:
        _CPU_BF16 = _probe_cpu_bf16()
    return _CPU_BF16


_CPU_BF16: bool | None = None


def _probe_cpu_bf16() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is not None and not check():
        return False
    try:  # a forked RNG: the probe's weight init must not shift the training stream
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            lstm = torch.nn.LSTM(4, 4, batch_first=True)
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                lstm(torch.zeros(1, 2, 4))
    except RuntimeError:
        return False
    return True


# --------------------------------------------------------------------------------------
# Loaders


@torch.no_grad()
def evaluate_loader(
    model: torch.nn.Module,
    loader: Any,
    max_batches: int | None,
    device: torch.device,
    seed: int,
    precision: str = "fp32",
) -> dict[str, float]:
    """Weighted mean of every scalar forward term over `max_batches` batches (None: all).

    Runs in eval mode under a forked RNG seeded with `seed`, so stochastic terms (the
    VAE's sampled code, the autoencoder's corruption) are the same at every call and
    the caller's random stream is untouched. `precision` is the training run's (its
    validation steps run as its training steps do); the evaluate stage scores in fp32.
    """
    was_training = model.training
    model.eval()
    devices = [device.index or 0] if device.type == "cuda" else []
    sums: dict[str, float] = {}
    total = 0.0
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                with autocast(precision, device):
                    out = model(to_device(batch, device))
                w = float(out.get(WEIGHT_KEY, _batch_size(batch)))
                for key, value in scalar_terms(out).items():
                    sums[key] = sums.get(key, 0.0) + value * w
                total += w
    finally:
        model.train(was_training)
    return {k: v / total for k, v in sums.items()} if total else {}


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return int(value.size(0))
    return 1


def validation_loader(data: Any, tp: TrainParams) -> DataLoader:
    """The validation batches of every evaluation (the same ones each time).

    ``train.eval_batches: 0`` (the default): the whole split, in order. ``N > 0``: a
    fixed sample of ``N * batch_size`` items drawn once without replacement (numpy
    generator seeded with ``train.seed``) from the whole split, in index order, so a
    cap on a large corpus still sees every part of it, not only the first pieces.
    """
    items: Any = data
    size = tp.eval_batches * tp.batch_size
    if tp.eval_batches > 0 and size < len(data):
        rng = np.random.default_rng([tp.seed, 0xE7A1])
        chosen = np.sort(rng.choice(len(data), size=size, replace=False))
        items = torch.utils.data.Subset(data, chosen.tolist())
    return DataLoader(items, batch_size=tp.batch_size, shuffle=False, num_workers=0)


def to_device(batch: Any, device: torch.device) -> Any:
    """`batch` (a tensor, or a dict of them) on `device`; other values as they are."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return batch
