"""Running as one of several processes under torchrun: the process group and the collectives train.py uses.

Without torchrun every helper here is a no-op, so the training code reads the same either way.
"""
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from effnet.hardware import resolve_device


@dataclass
class Distributed:
    """This process's place under torchrun (rank 0 of 1 without it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False  # a process group exists (under torchrun, even with one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str | None) -> tuple[Distributed, torch.device]:
    """Join torchrun's process group when launched by it; returns this process's place and device."""
    if "LOCAL_RANK" not in os.environ:  # plain `python train.py`
        return Distributed(), resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank, distributed=True)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30),
                            device_id=device if device.type == "cuda" else None)
    return Distributed(dist.get_rank(), world_size, local_rank, active=True), device


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (a no-op when not distributed)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def true_on_every_process(condition: bool, device: torch.device) -> bool:
    """Whether `condition` holds in every process (just `condition` when not distributed). Processes that
    act on it together stay in step: one skipping a batch or stopping alone would leave the others waiting
    in the next collective."""
    if not is_distributed():
        return condition
    flag = torch.tensor(int(condition), device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def broadcast_buffers(module: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics drift apart in the last training step)."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def broadcast_object(value: object) -> object:
    """Rank 0's value on every process (the value itself when not distributed)."""
    if not is_distributed():
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()
