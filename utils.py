"""The tutorial's helpers: the train/validation split of a folder of class folders (read_split_data), a look at a
batch (plot_data_loader_image), and the loops over batches that train and validate (train_one_epoch, evaluate).

The tutorial's own calls work as it writes them and return what it expects: four lists, the mean loss as a float,
the accuracy as a float. train.py runs the same loops through train_epoch and evaluate_epoch, which return the
whole EpochResult (loss, accuracy, images, seconds, confusion matrix) and take this project's extras as keyword
arguments: the recipe's loss, batch mixing and weight average, mixed precision and channels_last (a StepSettings
in place of the device), progress bars, and torchrun's processes.
"""
import math
import os
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from effnet.atomic_files import write_json
from effnet.data.split import DataSplit, read_data, split_class_folders  # noqa: F401 (DataSplit, read_data: for train.py)
from effnet.inference.class_names import read_class_names
from effnet.reports import figures
from effnet.training.distributed import all_reduce_sum, true_on_every_process
from effnet.training.recipe import TrainingSteps
from effnet.training.steps import EpochResult, NonFiniteLossError, StepSettings, train_mode
from effnet.variants import MEAN, STD

Device = torch.device | str | StepSettings  # where batches are computed; a StepSettings also says how


# ---------------------------------------------------------------------------------------------------------------
# The photos


def read_split_data(root: str | os.PathLike, val_rate: float = 0.2, *, seed: int = 0,
                    class_indices: str | os.PathLike | None = "class_indices.json", plot_image: bool = False,
                    report: bool = True) -> tuple[list[str], list[int], list[str], list[int]]:
    """The tutorial's split: (train image paths, train labels, val image paths, val labels).

    The classes are the sub-folders of `root`, sorted, and numbered in that order; each class is shuffled with
    `seed` on its own and round(n x val_rate) of its images (at least one, when it has two) go to validation.
    Writes the numbering to `class_indices` ({"0": "daisy", ...}, as the tutorial's predict.py reads it; None:
    not written), prints the counts and, with `plot_image`, shows the images per class. Unlike the tutorial's,
    any image format counts (.jpeg, .webp, ... in any letter case) and a file whose header cannot be read is
    left out with a warning (when `report`).
    """
    split = split_class_folders(root, val_rate, seed, report)
    if class_indices is not None:
        write_json(class_indices, {str(index): name for index, name in enumerate(split.classes)})
    if report:
        print(f"{len(split.train_paths) + len(split.val_paths)} images were found in the dataset.\n"
              f"{len(split.train_paths)} images for training.\n{len(split.val_paths)} images for validation.")
    if plot_image:
        figures.class_distribution_figure(split.classes, split.counts(split.train_labels),
                                          split.counts(split.val_labels), show=True)
        figures.show()
    return split.train_paths, split.train_labels, split.val_paths, split.val_labels


def plot_data_loader_image(data_loader: DataLoader, class_indices: str | os.PathLike = "class_indices.json", *,
                           batches: int | None = None, save: str | os.PathLike | None = None) -> None:
    """Show the first (up to 4) photos of each batch as the loader gives them, undoing the normalisation, each
    with its class name from `class_indices`, as the tutorial does: batch after batch, or the first `batches`.
    With `save`, the first batch's figure is written to that file (.png, .jpg, .svg, .pdf) instead of shown."""
    names = read_class_names(class_indices)
    for number, batch in enumerate(data_loader, start=1):
        if batch is None:  # every photo of the batch was unreadable
            continue
        images, labels = batch
        shown = images[:4].float().permute(0, 2, 3, 1).cpu().numpy() * np.array(STD) + np.array(MEAN)
        pixels = [np.clip(image * 255, 0, 255).round().astype(np.uint8) for image in shown]
        figure = figures.batch_figure(pixels, [names[int(label)] for label in labels[:4]], show=save is None)
        if save is not None:
            figures.save_figure(figure, save)
            return
        figures.show()
        if batches is not None and number >= batches:
            return


# ---------------------------------------------------------------------------------------------------------------
# Training and validation


def _step_settings(device: Device) -> StepSettings:
    """A StepSettings as given, or the tutorial's way of computing on a device: float32, NCHW."""
    if isinstance(device, StepSettings):
        return device
    return StepSettings(torch.device(device), channels_last=False)


def _progress(loader: DataLoader, description: str, enabled: bool) -> tqdm:
    return tqdm(loader, desc=description, disable=not enabled, file=sys.stdout, dynamic_ncols=True, leave=False)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_function: nn.Module,
               images: torch.Tensor, labels: torch.Tensor, settings: StepSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward and optimizer step on one batch already on the device; returns (loss, logits).
    `labels` are class indices, or (N, classes) target probabilities for mixed batches.

    A non-finite loss still updates the weights: the caller stops and never saves them.
    """
    with settings.autocast():
        logits = model(images)
        loss = loss_function(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    if settings.scaler is not None:
        settings.scaler.scale(loss).backward()
        settings.scaler.step(optimizer)
        settings.scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach(), logits.detach()


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data_loader: DataLoader, device: Device,
                    epoch: int, **extras: Any) -> float:
    """The tutorial's: one pass over the training data; returns the mean loss. `extras`: as train_epoch's."""
    return train_epoch(model, optimizer, data_loader, device, epoch, **extras).loss


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data_loader: DataLoader, device: Device,
                epoch: int, *, recipe: TrainingSteps | None = None, progress: bool = True,
                smallest_batch: int = 1) -> EpochResult:
    """One pass over the training data: loss and accuracy (of the unmixed labels) over every image, summed over
    torchrun's processes; `epoch` is only shown. Stops with NonFiniteLossError as soon as the loss is NaN or
    infinite. `recipe`: the loss, batch mixing and weight average (default: plain cross-entropy, as in the
    tutorial). A batch left with fewer than `smallest_batch` readable images is passed over (train.py: 2, since
    BatchNorm cannot train on a single 32 px image)."""
    settings = _step_settings(device)
    train_mode(model)
    recipe = recipe if recipe is not None else TrainingSteps(nn.CrossEntropyLoss())
    loss_sum = torch.zeros((), dtype=torch.float64, device=settings.device)
    correct = torch.zeros((), dtype=torch.int64, device=settings.device)
    seen, start = 0, time.perf_counter()
    bar = _progress(data_loader, f"[train epoch {epoch}]", progress)
    for step, batch in enumerate(bar):
        if not true_on_every_process(batch is not None and len(batch[1]) >= smallest_batch, settings.device):
            continue  # every image was unreadable (or all but one, when one is too few)
        images, labels = settings.to_device(*batch)
        loss, logits = train_step(model, optimizer, recipe.loss_function, *recipe.mix(images, labels), settings)
        batch_loss = loss.item()
        if not true_on_every_process(math.isfinite(batch_loss), settings.device):
            value = batch_loss if not math.isfinite(batch_loss) else "non-finite in another process"
            raise NonFiniteLossError(f"the training loss became {value} in epoch {epoch}, step {step + 1}")
        recipe.after_step()
        loss_sum += loss * labels.numel()
        correct += (logits.argmax(1) == labels).sum()
        seen += labels.numel()
        bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                        img_s=f"{seen / (time.perf_counter() - start):.1f}")
    totals = all_reduce_sum(torch.stack([loss_sum, correct.double(),
                                         torch.tensor(float(seen), dtype=torch.float64, device=settings.device)]))
    total_seen = int(totals[2].item())
    return EpochResult(loss=totals[0].item() / max(total_seen, 1), accuracy=totals[1].item() / max(total_seen, 1),
                       images=total_seen, seconds=time.perf_counter() - start)


def _class_count(model: nn.Module) -> int | None:
    """num_classes of an EfficientNet of model.py, also inside DistributedDataParallel or torch.compile."""
    inner = getattr(model, "module", model)
    return getattr(getattr(inner, "_orig_mod", inner), "num_classes", None)


def _zero_confusion(num_classes: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)


def evaluate(model: nn.Module, data_loader: DataLoader, device: Device, **extras: Any) -> float:
    """The tutorial's: the share of images whose top class is their label. `extras`: as evaluate_epoch's."""
    return evaluate_epoch(model, data_loader, device, **extras).accuracy


@torch.inference_mode()
def evaluate_epoch(model: nn.Module, data_loader: DataLoader, device: Device, *, num_classes: int | None = None,
                   description: str = "[valid]", progress: bool = True) -> EpochResult:
    """Loss, accuracy and confusion matrix over the loader, summed over torchrun's processes (whose samplers
    must not pad: EpochSampler(pad=False) gives each image to one process). Unreadable images are left out, so
    the accuracy is over the images read. `num_classes`: the model's (by default its num_classes attribute)."""
    settings = _step_settings(device)
    model.eval()
    num_classes = num_classes or _class_count(model)
    loss_function = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = torch.zeros((), dtype=torch.float64, device=settings.device)
    confusion = None if num_classes is None else _zero_confusion(num_classes, settings.device)
    seen, start = 0, time.perf_counter()
    bar = _progress(data_loader, description, progress)
    for batch in bar:
        if batch is None:
            continue
        images, labels = settings.to_device(*batch)
        with settings.autocast():
            logits = model(images)
        if confusion is None:  # a model that does not say how many classes it has: as many as it answers
            num_classes = logits.shape[1]
            confusion = _zero_confusion(num_classes, settings.device)
        loss_sum += loss_function(logits.float(), labels)
        confusion += torch.bincount(labels * num_classes + logits.argmax(1),
                                    minlength=num_classes * num_classes).view(num_classes, num_classes)
        seen += labels.numel()
        bar.set_postfix(acc=f"{confusion.diag().sum().item() / seen:.3f}",
                        img_s=f"{seen / (time.perf_counter() - start):.1f}")
    confusion = confusion if confusion is not None else _zero_confusion(0, settings.device)
    all_reduce_sum(loss_sum)
    all_reduce_sum(confusion)
    total = int(confusion.sum().item())
    return EpochResult(loss=loss_sum.item() / max(total, 1), accuracy=confusion.diag().sum().item() / max(total, 1),
                       images=total, seconds=time.perf_counter() - start, confusion=confusion.cpu())


__all__ = ["DataSplit", "EpochResult", "StepSettings", "evaluate", "evaluate_epoch", "plot_data_loader_image",
           "read_data", "read_split_data", "train_epoch", "train_one_epoch", "train_step"]
