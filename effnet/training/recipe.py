"""The training recipe, built from a run's settings: the starting weights and which layers train, the optimizer and
learning-rate schedule, the loss (label smoothing, class weights), mixup/CutMix, the weight average (EMA), balanced
sampling and early stopping. The augmentation is my_dataset.train_transform; the settings and presets, settings.py.
"""
import copy
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from effnet.checkpoints import WeightsError, checkpoint_fields
from effnet.command_line import UsageError
from effnet.training.settings import TrainSettings
from effnet.weights import load_weights
from model import InvertedResidual

# ---------------------------------------------------------------------------------------------------------------
# Which layers train, the optimizer and the schedule


def load_starting_weights(model: nn.Module, settings: TrainSettings, resumed: Mapping[str, Any] | None = None,
                          verbose: bool = True) -> None:
    """The weights a run starts from: a resumed run's own (the ones that train, not their moving average), else
    --weights (ImageNet's, a .pth file, or none: the fresh initialisation, with --zero-init-residual's identity
    blocks). Warns about a head trained on a random backbone."""
    if resumed is not None:
        load_weights(model, trained_weights(resumed), verbose=False)
        return
    if settings.weights.lower() != "none":
        try:
            load_weights(model, settings.weights, verbose=verbose)
        except WeightsError as error:
            raise UsageError(f"{error} (or train from scratch, which needs no download: add --weights none)") from None
        return
    if settings.zero_init_residual:
        residual_blocks_start_as_identity(model)
    if settings.freeze_layers and verbose:
        print("warning: --freeze-layers true with --weights none trains only the head, on a backbone that keeps its "
              f"random initial weights{' (its residual blocks the identity)' if settings.zero_init_residual else ''}; "
              "start from pretrained --weights (imagenet, the default) or train every layer (--freeze-layers false)",
              file=sys.stderr)


def residual_blocks_start_as_identity(model: nn.Module) -> None:
    """Zero the scale of the BatchNorm that ends each residual branch (MBConv's projection), so that every block
    with a skip connection starts by passing its input through unchanged. From scratch, the deep network then
    trains like a shallow one at first (Goyal et al. 2017's zero-gamma, torchvision ResNet's zero_init_residual):
    measured in docs/benchmarks.md, "Time to accuracy", the validation accuracy leaves chance epochs earlier."""
    for block in model.modules():
        if isinstance(block, InvertedResidual) and block.use_res_connect:
            nn.init.zeros_(block.block.project_conv[1].weight)


def freeze_all_but_head(model: nn.Module) -> None:
    """Train only the last block of `model.features` (the 1x1 head conv) and the classifier, as the
    tutorial's --freeze-layers does; works for this project's and torchvision's module layout alike."""
    head = list(model.features.children())[-1]
    trainable = {id(p) for module in (head, model.classifier) for p in module.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trainable)


class CosineFactor:
    """Learning-rate factor per epoch: with `warmup` epochs, k/(warmup+1) in epoch k (from 1); then the
    tutorial's half cosine from 1 down to `lrf` over the remaining epochs."""

    def __init__(self, epochs: int, lrf: float, warmup: int = 0) -> None:
        self.epochs = epochs
        self.lrf = lrf
        self.warmup = warmup

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        progress = (epoch - self.warmup) / (self.epochs - self.warmup)
        return ((1 + math.cos(progress * math.pi)) / 2) * (1 - self.lrf) + self.lrf


class OneCycleFactor:
    """Learning-rate factor per optimizer step, the one-cycle shape that fits a short budget: a linear rise from
    1/25 to 1 over the first `warmup` steps, then a half cosine down to `lrf` at the last step. Stepped after
    every batch, so that no part of an epoch runs at a stale rate (8 epochs stepped per epoch are 8 plateaus)."""

    START = 1 / 25  # where the rise starts, as a share of --lr (fastai's and PyTorch's OneCycleLR default)

    def __init__(self, total_steps: int, warmup_steps: int, lrf: float) -> None:
        self.total = total_steps
        self.warmup = min(warmup_steps, total_steps - 1)
        self.lrf = lrf

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.START + (1 - self.START) * step / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - 1 - self.warmup))
        return self.lrf + (1 - self.lrf) * (1 + math.cos(math.pi * progress)) / 2


class Schedule:
    """The learning-rate schedule and when it steps: once per epoch (--lr-schedule cosine, the tutorial's), or
    after every batch (onecycle). Checkpoints hold its scheduler's state."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler, per_batch: bool) -> None:
        self.scheduler = scheduler
        self.per_batch = per_batch

    def after_batch(self) -> None:
        if self.per_batch:
            self.scheduler.step()

    def after_epoch(self) -> None:
        if not self.per_batch:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def build_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """The optimizer over the parameters that train (not the frozen ones), weight decay on all of them: SGD with
    momentum 0.9, as the tutorial's, or AdamW."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if settings.opt == "adamw":
        return torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(parameters, lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings, steps_per_epoch: int = 1) -> Schedule:
    """The learning-rate schedule: --warmup-epochs of warm-up, then a cosine down to --lr x --lrf; stepped once per
    epoch (cosine: CosineFactor, the tutorial's) or after each of the `steps_per_epoch` batches (OneCycleFactor)."""
    if settings.lr_schedule == "onecycle":
        factor = OneCycleFactor(settings.epochs * steps_per_epoch, settings.warmup_epochs * steps_per_epoch,
                                settings.lrf)
    else:
        factor = CosineFactor(settings.epochs, settings.lrf, settings.warmup_epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
    return Schedule(scheduler, per_batch=settings.lr_schedule == "onecycle")


# ---------------------------------------------------------------------------------------------------------------
# Balanced sampling and class weights


def inverse_frequency(labels: Sequence[int], num_classes: int) -> list[float]:
    """n / (classes x n_c) for each class c: 1 for every class when balanced (every class has a training image:
    the split puts a class's only image into training)."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.int64), minlength=num_classes).double()
    return (len(labels) / (num_classes * counts.clamp(min=1))).tolist()


def sample_weights(labels: Sequence[int], num_classes: int, settings: TrainSettings) -> list[float] | None:
    """Per-image draw weights for --balanced-sampling (each class drawn equally often), else None."""
    if not settings.balanced_sampling:
        return None
    per_class = inverse_frequency(labels, num_classes)
    return [per_class[label] for label in labels]


# ---------------------------------------------------------------------------------------------------------------
# The training step: loss, mixup/CutMix, weight average


class BatchMixer:
    """Mixup and CutMix: each image is blended with (mixup) or gets a box pasted from (CutMix) the image at a
    shuffled position of the batch, and its one-hot label is mixed in the same proportion. The draws come
    from torch's global generator, which train.py seeds every epoch, so a resumed run mixes alike."""

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> None:
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.num_classes = num_classes

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, (N, classes) target probabilities)."""
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or torch.rand(1).item() < 0.5)
        alpha = torch.tensor(self.cutmix_alpha if cutmix else self.mixup_alpha)
        lam = torch.distributions.Beta(alpha, alpha).sample().item()
        order = torch.randperm(images.shape[0]).to(images.device)
        if cutmix:
            images, lam = self._paste_box(images, order, lam)
        else:
            images = images * lam + images[order] * (1 - lam)
        one_hot = nn.functional.one_hot(labels, self.num_classes).to(images.dtype)
        return images, one_hot * lam + one_hot[order] * (1 - lam)

    @staticmethod
    def _paste_box(images: torch.Tensor, order: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
        """Paste a box of about (1 - lam) of the area from images[order]; lam becomes the area kept."""
        height, width = images.shape[-2:]
        ratio = math.sqrt(1 - lam)
        centre_y, centre_x = torch.randint(height, (1,)).item(), torch.randint(width, (1,)).item()
        half_h, half_w = int(height * ratio) // 2, int(width * ratio) // 2
        top, bottom = max(centre_y - half_h, 0), min(centre_y + half_h, height)
        left, right = max(centre_x - half_w, 0), min(centre_x + half_w, width)
        mixed = images.clone()
        mixed[:, :, top:bottom, left:right] = images[order, :, top:bottom, left:right]
        return mixed, 1 - (bottom - top) * (right - left) / (height * width)


class ModelEMA:
    """An exponential moving average of a model's weights and BatchNorm statistics, updated after each
    optimizer step: average <- decay x average + (1 - decay) x weights. After n updates the decay used is
    min(decay, (1 + n) / (10 + n)), so the random weights of the first steps are soon forgotten."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.source = model
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, current in zip(self.module.state_dict().values(), self.source.state_dict().values()):
            if average.is_floating_point():
                average.lerp_(current, 1 - decay)
            else:  # BatchNorm's num_batches_tracked
                average.copy_(current)


@dataclass
class TrainingSteps:
    """What the recipe adds to every training step: the loss, the batch mixing and the weight average."""

    loss_function: nn.Module
    mixer: BatchMixer | None = None
    ema: ModelEMA | None = None
    class_weights: list[float] | None = None
    schedule: Schedule | None = None  # stepped after every batch when it steps per batch (onecycle)

    @classmethod
    def build(cls, settings: TrainSettings, train_labels: Sequence[int], num_classes: int, model: nn.Module,
              device: torch.device, schedule: Schedule | None = None) -> "TrainingSteps":
        """From the run's settings; `model` is the plain model that trains (no DDP or compile wrapper)."""
        weights = inverse_frequency(train_labels, num_classes) if settings.class_weights == "auto" else None
        loss = nn.CrossEntropyLoss(weight=None if weights is None else torch.tensor(weights, device=device),
                                   label_smoothing=settings.label_smoothing)
        mixing = settings.mixup_alpha > 0 or settings.cutmix_alpha > 0
        return cls(loss, BatchMixer(settings.mixup_alpha, settings.cutmix_alpha, num_classes) if mixing else None,
                   ModelEMA(model, settings.ema) if settings.ema else None, weights, schedule)

    def mix(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, targets) to train on: the batch itself, or mixed with mixup/CutMix."""
        return self.mixer(images, labels) if self.mixer is not None else (images, labels)

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update()
        if self.schedule is not None:
            self.schedule.after_batch()

    def evaluated(self, model: nn.Module) -> nn.Module:
        """The model validation scores and checkpoints hold: the weight average when there is one."""
        return self.ema.module if self.ema is not None else model

    def checkpoint_fields(self, model: nn.Module) -> dict[str, Any]:
        """Checkpoint entries: "model" is what validation scored; with EMA, the weights that train are kept
        too ("trained_model"), with the update count, so a resumed run continues both exactly."""
        if self.ema is None:
            return checkpoint_fields(model)
        return {**checkpoint_fields(self.ema.module), "trained_model": model.state_dict(),
                "ema_updates": self.ema.updates}

    def restore(self, checkpoint: Mapping[str, Any]) -> None:
        if self.ema is not None:
            self.ema.module.load_state_dict(checkpoint["model"])
            self.ema.updates = checkpoint["ema_updates"]


def trained_weights(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The checkpoint with the weights that train as its "model" (they differ from it with EMA)."""
    if "trained_model" in checkpoint:
        return {**checkpoint, "model": checkpoint["trained_model"]}
    return checkpoint


# ---------------------------------------------------------------------------------------------------------------
# Early stopping


def early_stop(settings: TrainSettings, best_epoch: int, epochs_done: int, say: Callable[[str], None]) -> bool:
    """Whether to stop now (and `say` why): --best-metric has not improved for --early-stopping epochs. Counted
    from the saved best epoch, so a resumed run counts on."""
    if settings.early_stopping is None or best_epoch < 1 or epochs_done - best_epoch < settings.early_stopping:
        return False
    say(f"early stopping: validation {settings.best_metric} has not improved for {epochs_done - best_epoch} epochs "
        f"(best at epoch {best_epoch})")
    return True
