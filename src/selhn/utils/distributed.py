"""torch.distributed plumbing for training under ``torchrun``: process group, device, gradients.

Nothing here is home-made transport: the process group, the sampler and DistributedDataParallel
are PyTorch's own (the losses gather their own batches: ``selhn.losses.gather``). One process
runs per device; ``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. Without them (a
plain ``selhn train``) everything here degrades to the single-process path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The one process that writes logs and checkpoints and evaluates."""
        return self.rank == 0

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (what rank 0 passed, when not distributed)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE_PROCESS = Distributed()


def from_environment() -> Distributed:
    """Read torchrun's variables; a job of one process is not distributed."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE_PROCESS
    return Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str) -> torch.device:
    """``train.device``/``--device``: auto (CUDA if available), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available")
    return device


@contextlib.contextmanager
def process_group(job: Distributed, device: torch.device) -> Iterator[None]:
    """The job's process group (NCCL on CUDA, gloo on the CPU), joined for the block unless the
    caller already joined it (then it is left as it was)."""
    if not job.enabled or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def device_for(job: Distributed, device: torch.device) -> torch.device:
    """Each process of a CUDA job takes the GPU of its local rank."""
    if job.enabled and device.type == "cuda":
        return torch.device("cuda", job.local_rank)
    return device
