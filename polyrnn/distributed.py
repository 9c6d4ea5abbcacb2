"""Data-parallel training across processes: ``torchrun --nproc_per_node N -m polyrnn.cli train ...`` (or
``polyrnn train --nproc N``, which starts the same).

torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous address for each process;
:func:`setup` joins the process group (``gloo`` on CPU, ``nccl`` on CUDA, one GPU per local rank). Each rank
trains on its share of every global batch (:class:`polyrnn.data.dataset.LengthGroupedBatchSampler` with
``rank``/``world``), DistributedDataParallel averages the gradients, and rank 0 alone writes the run folder.
``batch_size`` in a recipe is per process: N processes train with N times the batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place: ``rank`` of ``world`` (``local_rank`` on its machine); ``main``: rank 0."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Dist()  # one process, no process group


def setup(device: str) -> tuple[Dist, torch.device]:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1); returns the place and the
    device this rank trains on (``cuda:LOCAL_RANK`` for CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), torch.device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local), dev


def barrier(place: Dist) -> None:
    if place.active:
        dist.barrier()


def all_sum(place: Dist, values: dict[str, float]) -> dict[str, float]:
    """Sum figures over the ranks (every rank gets the totals)."""
    if not place.active:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def teardown(place: Dist) -> None:
    if place.active and dist.is_initialized():
        dist.destroy_process_group()
