"""The process a program runs in: its device, the CPUs it may use, and the allocator setting."""
import ctypes
import os

import torch

from effnet.command_line import UsageError, check_device_name


def keep_freed_memory_for_reuse(enable: bool = True) -> bool:
    """Tell glibc's malloc to keep freed memory instead of handing it back to the OS (Linux only).

    Every training and inference step frees and reallocates the same large activation tensors. By default
    glibc serves each from fresh mmap pages, and the kernel's page faults to zero them cost more than the
    arithmetic of the elementwise layers: on our 2-core machines torchvision's B0 runs 1.6-2x faster at
    batch 32 with this setting alone (docs/benchmarks.md). The price is memory: freed blocks stay with the
    process, and a CPU training step's resident peak grows by about a quarter (docs/benchmarks.md).
    `enable=False` restores what glibc settles on by itself (32 MiB mmap threshold, 64 MiB trim threshold) and
    hands back what was kept, as a process that never enabled it would be (benchmarks/speed.py switches between
    the two). Returns False where there is no glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers from <malloc.h>
    mmap_threshold, trim_threshold = (2**30, 2**30) if enable else (32 * 2**20, 64 * 2**20)
    applied = bool(libc.mallopt(m_mmap_threshold, ctypes.c_int(mmap_threshold))) and bool(
        libc.mallopt(m_trim_threshold, ctypes.c_int(trim_threshold)))
    if not enable:
        libc.malloc_trim(0)
    return applied


def usable_cpus() -> int:
    """The CPUs this process may run on: fewer than the machine has under taskset, cpusets or a container's
    CPU list (the count DataLoader checks its workers against)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


SMALL_CPU = 2  # usable CPUs at or below which a run on the CPU loads its photos in its own process


def default_workers(batch_size: int, device: torch.device | None = None) -> int:
    """Data-loading processes: one per usable CPU, at most the batch size and 8 (0 for batch 1). A run on the
    CPU of a machine with SMALL_CPU usable CPUs or fewer gets none: its PyTorch threads already use every core, and
    worker processes only take turns with them (2 cores: a run 1.17x faster at 96 px and 1.25x at 224 px than
    with 2 workers; docs/benchmarks.md, "Time to accuracy")."""
    if device is not None and device.type == "cpu" and usable_cpus() <= SMALL_CPU:
        return 0
    return min(usable_cpus(), batch_size if batch_size > 1 else 0, 8)


def resolve_device(name: str | None, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """The requested device, checked to exist; by default this process's CUDA device, else the CPU."""
    if name is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank}, but only {torch.cuda.device_count()} CUDA device(s) "
                             f"exist; start at most that many processes per machine")
        return torch.device("cuda", local_rank)
    check_device_name(name)
    try:
        device = torch.device(name.strip())
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device name; use e.g. cpu, cuda or cuda:1") from None
    if distributed and device.index is not None:
        raise UsageError(f"--device {name}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                         f"pass --device {device.type} (choose GPUs with CUDA_VISIBLE_DEVICES)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available here; use --device cpu")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available here; use --device cpu")
    return device
