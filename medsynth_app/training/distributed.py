"""Multi-process data-parallel training under ``torchrun``: the process group, the rank's device, broadcasts.

``torchrun --nproc_per_node=N`` sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in every process.
With WORLD_SIZE > 1 the engine joins (or creates) the default process group: nccl when the device is CUDA, gloo on
CPU. Every rank trains on its share of the batches (DistributedSampler) and DistributedDataParallel averages the
gradients, so all ranks hold identical weights after every step; only rank 0 validates, writes files and calls the
progress callback, and broadcasts its decisions (stop or go on) to the others.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def env_rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def is_main_process() -> bool:
    """True on rank 0 of a torchrun launch, and in every non-distributed process (callers writing files use it)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_rank() == 0


@dataclass
class DistContext:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    created_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: torch.device) -> "DistContext":
        """Join the torchrun process group when WORLD_SIZE > 1 (creating it if nobody has); else a single process.
        On CUDA each rank uses the GPU of its LOCAL_RANK."""
        world = env_world_size()
        if world <= 1:
            return cls(device=device)
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
            torch.cuda.set_device(device)
        created = False
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
            created = True
        return cls(world_size=dist.get_world_size(), rank=dist.get_rank(), local_rank=local_rank, device=device,
                   created_group=created)

    def broadcast(self, values: list) -> list:
        """Rank 0's list of picklable values on every rank (unchanged without distribution)."""
        if not self.distributed:
            return values
        box = [values]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.created_group and dist.is_initialized():
            dist.destroy_process_group()
            self.created_group = False
