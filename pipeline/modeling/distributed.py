"""The training loop's distributed context: one process, or a rank of torchrun's group.

Under ``torch.distributed.run`` (``WORLD_SIZE > 1``; `pipeline.modeling.train`
launches it from ``train.nproc_per_node``/``nnodes``, or a person runs ``torchrun``)
`init_distributed` joins the process group (gloo on CPU, nccl on CUDA). Only rank 0
evaluates, logs and writes files; the helpers here hand its decisions to every rank
and add the other ranks' training terms to its own. With world size 1 each of them
returns its input unchanged and touches no collective.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pipeline.modeling.base import TrainParams

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Dist:
    """Distributed context: world size 1 means a plain single process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(tp: TrainParams) -> Dist:
    """Join the process group that torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dist = Dist(rank=rank, local_rank=local_rank, world_size=world_size)
    if not torch.distributed.is_initialized():
        use_cuda = tp.device != "cpu" and torch.cuda.is_available()
        torch.distributed.init_process_group(
            backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size
        )
        dist.initialised_here = True
    log.info("distributed: rank %d of %d", rank, world_size)
    return dist


def sum_over_ranks(
    sums: dict[str, float], weight: float, dist: Dist, device: torch.device
) -> tuple[dict[str, float], float]:
    """`sums` and `weight` added over every rank, so that rank 0 logs the training terms
    of the whole global batch stream, not of its own shard alone."""
    if dist.world_size == 1:
        return sums, weight
    keys = sorted(sums)  # every rank runs the same model: the same terms
    target = device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    values = [sums[k] for k in keys] + [weight]
    tensor = torch.tensor(values, dtype=torch.float64, device=target)
    torch.distributed.all_reduce(tensor)
    total = tensor.tolist()
    return dict(zip(keys, total[:-1], strict=True)), total[-1]


def broadcast(value: float, dist: Dist, device: torch.device) -> float:
    """Rank 0's value on every rank (so that all ranks stop at the same step)."""
    if dist.world_size == 1:
        return value
    target = device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([value], dtype=torch.float64, device=target)
    torch.distributed.broadcast(tensor, src=0)
    return float(tensor.item())


def broadcast_object(value: object, dist: Dist) -> object:
    """Rank 0's (picklable) `value` on every rank."""
    if dist.world_size == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: object, dist: Dist) -> list[object]:
    """Every rank's (picklable) `value`, in rank order."""
    if dist.world_size == 1:
        return [value]
    gathered: list[object] = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered
