"""What every training and evaluation step shares: how batches are moved and computed on the device
(StepSettings: channels_last, mixed precision), what an epoch returns (EpochResult), the error a diverging loss
raises, and the training mode that keeps frozen BatchNorm statistics. utils.py's loops use them."""
import contextlib
from dataclasses import dataclass

import torch
from torch import nn


def train_mode(model: nn.Module) -> None:
    """model.train(), but BatchNorm layers whose parameters are frozen keep their running statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters()):
            module.eval()


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    images: int
    seconds: float
    confusion: torch.Tensor | None = None  # rows: true class, columns: predicted class

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class StepSettings:
    """How batches are moved and computed on the device."""

    device: torch.device
    channels_last: bool = True
    autocast_dtype: torch.dtype | None = None  # bfloat16 / float16 autocast, or None for float32
    scaler: torch.amp.GradScaler | None = None  # for float16 on CUDA
    non_blocking: bool = False

    def to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.to(self.device, non_blocking=self.non_blocking, memory_format=memory_format)
        return images, labels.to(self.device, non_blocking=self.non_blocking)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @classmethod
    def for_device(cls, device: torch.device, channels_last: bool = True, amp: bool = True) -> "StepSettings":
        """The fastest settings for `device`: on CUDA cudnn benchmark mode and, with `amp`, bfloat16 autocast
        where supported, else float16 with a gradient scaler; the CPU trains in float32, faster there."""
        settings = cls(device=device, channels_last=channels_last, non_blocking=device.type == "cuda")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            if amp and torch.cuda.is_bf16_supported():
                settings.autocast_dtype = torch.bfloat16
            elif amp:
                settings.autocast_dtype = torch.float16
                settings.scaler = torch.amp.GradScaler("cuda")
        return settings
