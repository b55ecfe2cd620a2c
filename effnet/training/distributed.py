"""Running as one of several processes under torchrun: the process group, the collectives train.py uses, and the
model placed on its device (wrapped for DistributedDataParallel).

Without torchrun every helper here is a no-op, so the training code reads the same either way.
"""
import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from effnet.command_line import UsageError
from effnet.hardware import resolve_device
from effnet.training.settings import TrainSettings


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

    @property
    def processes(self) -> str:
        """' x 4 processes' under torchrun with several, else nothing: for the line that says where a run trains."""
        return f" x {self.world_size} processes" if self.world_size > 1 else ""

    def print(self, message: str) -> None:
        """Print on the main process only: under torchrun, once."""
        if self.is_main:
            print(message, flush=True)


def init_distributed(device_name: str | None, sync_bn: bool = False) -> tuple[Distributed, torch.device]:
    """Join torchrun's process group when launched by it; returns this process's place and device. `sync_bn`
    (BatchNorm statistics shared across GPUs) needs CUDA processes under torchrun."""
    if "LOCAL_RANK" not in os.environ:  # plain `python train.py`
        if sync_bn:
            raise UsageError("--sync-bn needs CUDA processes under torchrun; leave it out here")
        return Distributed(), resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank, distributed=True)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if sync_bn and device.type != "cuda":
        raise UsageError("--sync-bn needs CUDA processes under torchrun; leave it out here")
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


def main_first(ddp: Distributed, work: Callable[..., object], *arguments: object) -> None:
    """`work(*arguments)` on the main process while the others wait (a download, say), then on with all."""
    if ddp.is_main:
        work(*arguments)
    barrier()


def place_model(model: nn.Module, device: torch.device, ddp: Distributed, settings: TrainSettings) -> tuple[
        nn.Module, nn.Module]:
    """The model made ready for the hardware as the settings ask: gradient checkpointing, BatchNorm synchronised
    across GPUs, moved to the device in channels_last, wrapped for DistributedDataParallel, compiled. Returns (the
    model to train, the model to evaluate: the same outside DDP, since the processes may hold different numbers of
    validation batches); checkpoints hold the `model` given."""
    if settings.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if settings.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=torch.channels_last if settings.channels_last else torch.contiguous_format)
    trained = model
    if ddp.active:
        device_ids = [device.index] if device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if settings.compile:
        trained = torch.compile(trained)
    return trained, model if ddp.active else trained
