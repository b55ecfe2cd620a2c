"""The tutorial's helpers: the train/validation split, and the train / evaluate loops."""
import contextlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from effnet.command_line import UsageError
from effnet.training.distributed import all_reduce_sum, true_on_every_process
from effnet.data.class_folders import ClassFolders, presplit_folders, scan_class_folders
from effnet.data.images import IMAGE_EXTENSIONS
from effnet.training.recipe import TrainingSteps

DEFAULT_VAL_RATE = 0.2

# ---------------------------------------------------------------------------------------------------------------
# Data on disk


@dataclass
class DataSplit:
    """Training, validation and (optionally) test images of a class-per-folder tree, with their labels."""

    root: str
    classes: list[str]
    train_paths: list[str] = field(default_factory=list)
    train_labels: list[int] = field(default_factory=list)
    val_paths: list[str] = field(default_factory=list)
    val_labels: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: reason" for each file left out
    test_paths: list[str] = field(default_factory=list)  # from a pre-split dataset's test/ folder
    test_labels: list[int] = field(default_factory=list)
    # (path, label, part, why) of each image --drop-duplicates took out of the split
    left_out: list[tuple[str, int, str, str]] = field(default_factory=list)

    def counts(self, labels: Sequence[int]) -> list[int]:
        counts = [0] * len(self.classes)
        for label in labels:
            counts[label] += 1
        return counts

    def describe(self) -> str:
        """'240 training and 60 validation images', or '..., 60 validation and 50 test images'."""
        train, val, test = len(self.train_paths), len(self.val_paths), len(self.test_paths)
        if test:
            return f"{train} training, {val} validation and {test} test images"
        return f"{train} training and {val} validation images"

    def parts(self) -> tuple[tuple[str, list[str], list[int]], ...]:
        """("train" | "val" | "test", paths, labels) for each part of the split."""
        return (("train", self.train_paths, self.train_labels), ("val", self.val_paths, self.val_labels),
                ("test", self.test_paths, self.test_labels))

    def images(self) -> list[tuple[str, str, str]]:
        """(path, class name, part) of every image of the split, and of those left out of it."""
        listed = [(path, self.classes[label], name) for name, paths, labels in self.parts()
                  for path, label in zip(paths, labels)]
        return listed + [(path, self.classes[label], part) for path, label, part, _ in self.left_out]

    def leave_out(self, reasons: Mapping[str, str]) -> None:
        """Take the images named in `reasons` (path -> why) out of the split, recording them in `left_out`."""
        for name, paths, labels in self.parts():
            pairs = list(zip(paths, labels))
            self.left_out += [(path, label, name, reasons[path]) for path, label in pairs if path in reasons]
            paths[:] = [path for path, _ in pairs if path not in reasons]
            labels[:] = [label for path, label in pairs if path not in reasons]

    def to_json(self) -> dict[str, Any]:
        """The split with paths relative to the data root, so a moved dataset still resumes."""
        saved: dict[str, Any] = {"root": os.path.abspath(self.root), "classes": self.classes}
        for name, paths, labels in self.parts():
            if name != "test" or paths:
                saved[name] = [[os.path.relpath(p, self.root), label] for p, label in zip(paths, labels)]
        if self.left_out:
            saved["left_out"] = [[os.path.relpath(path, self.root), label, part, why]
                                 for path, label, part, why in self.left_out]
        return saved

    @staticmethod
    def json_problem(saved: Any) -> str | None:
        """What is wrong with a loaded split.json (hand-edited or damaged), or None if from_json can read it."""
        if not isinstance(saved, dict) or not isinstance(saved.get("classes"), list):
            return "no list of 'classes'"
        classes = saved["classes"]
        if len(classes) < 2 or not all(isinstance(name, str) for name in classes):
            return "'classes' must name two or more classes"
        if not isinstance(saved.get("root", ""), str):
            return "'root' is not a folder name"
        for part in ("train", "val"):
            pairs = saved.get(part)
            if not isinstance(pairs, list) or not all(
                    isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
                    and type(pair[1]) is int and 0 <= pair[1] < len(classes) for pair in pairs):
                return f"'{part}' must list [image path, class index] pairs"
        left_out = saved.get("left_out", [])
        if not isinstance(left_out, list) or not all(
                isinstance(item, list) and len(item) == 4 and isinstance(item[0], str) and type(item[1]) is int
                and 0 <= item[1] < len(classes) and item[2] in ("train", "val", "test") and isinstance(item[3], str)
                for item in left_out):
            return "'left_out' must list [image path, class index, part, reason] entries"
        return None

    @classmethod
    def from_json(cls, saved: Mapping[str, Any], root: str) -> "DataSplit":
        split = cls(root=root, classes=list(saved["classes"]))
        for name, paths, labels in split.parts():
            for relative, label in saved.get(name, []):
                paths.append(os.path.join(root, relative))
                labels.append(int(label))
        split.left_out = [(os.path.join(root, relative), int(label), part, why)
                          for relative, label, part, why in saved.get("left_out", [])]
        missing = [p for p in split.train_paths + split.val_paths + split.test_paths if not os.path.isfile(p)]
        if missing:
            raise UsageError(f"{len(missing)} images of the saved split are gone from {root} "
                             f"(first: {missing[0]}); restore them or start a new run")
        return split


def _warner(report: bool) -> Callable[[str], None]:
    def warn(message: str) -> None:
        if report:
            print(f"warning: {message}", file=sys.stderr)
    return warn


def _check_data_root(root: str) -> None:
    if not os.path.isdir(root):
        raise UsageError(f"data path {root} does not exist or is not a folder; give a folder with one "
                         f"sub-folder of images per class via --data-path")


def _check_classes(classes: list[str], root: str) -> None:
    """A classifier needs two classes or more: refuse none, and refuse one (it would "learn" to always
    answer that class, with accuracy 1.0)."""
    if not classes:
        raise UsageError(f"data path {root} holds no class folders with images ({', '.join(IMAGE_EXTENSIONS)}); "
                         f"expected {root}/<class name>/<image files>, or train/ and val/ folders of those")
    if len(classes) == 1:
        raise UsageError(f"data path {root} holds images of one class only ({classes[0]}); a classifier "
                         f"needs two or more class folders, each with its images")


def _scan(root: str, warn: Callable[[str], None]) -> ClassFolders:
    """The class folders of `root`, warning about unreadable files and folders without images."""
    found = scan_class_folders(root)
    for class_dir in found.empty:
        warn(f"class folder {class_dir} holds no readable images; it is not a class")
    for line in found.skipped:
        warn(f"skipping unreadable image {line}")
    return found


def _random_split(split: DataSplit, found: ClassFolders, val_rate: float, seed: int,
                  warn: Callable[[str], None]) -> None:
    """Shuffle each class with `seed` on its own and hold out round(n * val_rate) of it (at least one of
    two or more images) for validation; the classes are appended to `split.classes`."""
    rng = random.Random(seed)
    for class_name, class_paths in found.images.items():
        paths = list(class_paths)
        label = len(split.classes)
        split.classes.append(class_name)
        rng.shuffle(paths)
        n_val = min(max(1, round(len(paths) * val_rate)), len(paths) - 1) if len(paths) >= 2 else 0
        if n_val == 0:
            warn(f"class {class_name} has a single image; it goes to training only")
        split.val_paths += paths[:n_val]
        split.val_labels += [label] * n_val
        split.train_paths += paths[n_val:]
        split.train_labels += [label] * (len(paths) - n_val)


def read_split_data(root: str | os.PathLike, val_rate: float = DEFAULT_VAL_RATE, seed: int = 0,
                    report: bool = True) -> DataSplit:
    """Split a class-per-folder tree into training and validation images.

    Classes are the sub-folders of `root` (sorted; hidden ones ignored), images the files directly inside
    them with an image extension, in any letter case. Each class is shuffled with `seed` on its own, and
    round(n * val_rate) of its images, at least one when it has two or more, go to validation. Files whose
    header cannot be read (empty, truncated before the header, not an image) are left out and listed in
    `skipped`; deeper sub-folders and other files are ignored. Warnings go to stderr when `report`.
    """
    root = os.fspath(root)
    if not 0.0 < val_rate < 1.0:
        raise UsageError(f"--val-rate {val_rate} must be between 0 and 1 (exclusive)")
    _check_data_root(root)
    found = _scan(root, _warner(report))
    split = DataSplit(root=root, classes=[], skipped=found.skipped)
    _random_split(split, found, val_rate, seed, _warner(report))
    _check_classes(split.classes, root)
    return split


def read_presplit_data(root: str | os.PathLike, val_rate: float | None = None, seed: int = 0,
                       report: bool = True) -> DataSplit:
    """The split a pre-split dataset comes with: root/train/, root/val/ and root/test/ class folders.

    The classes are train/'s; val/ and test/ may hold any of them (a class they do not know is an error).
    Without val/, train/ is split at random as read_split_data does (`val_rate`, default 0.2); with val/,
    `val_rate` must be None: the dataset's own validation set is used as it is.
    """
    root = os.fspath(root)
    _check_data_root(root)
    folders = presplit_folders(root)
    if folders is None:
        raise UsageError(f"{root} is not split into train/ and val/ (or test/) class folders")
    if "val" in folders and val_rate is not None:
        raise UsageError(f"--val-rate {val_rate}: {root} is split already (it has train/ and val/ folders), "
                         f"so its val/ images are the validation set; leave --val-rate out")
    warn = _warner(report)
    train = _scan(folders["train"], warn)
    split = DataSplit(root=root, classes=[], skipped=list(train.skipped))
    if "val" in folders:
        split.classes = train.classes
        for class_name, paths in train.images.items():
            split.train_paths += paths
            split.train_labels += [split.classes.index(class_name)] * len(paths)
    else:
        _random_split(split, train, DEFAULT_VAL_RATE if val_rate is None else val_rate, seed, warn)
    _check_classes(split.classes, folders["train"])
    for name, paths, labels in split.parts()[1:]:
        if name in folders:
            _add_presplit_part(split, folders[name], paths, labels, warn)
    return split


def _add_presplit_part(split: DataSplit, folder: str, paths: list[str], labels: list[int],
                       warn: Callable[[str], None]) -> None:
    found = _scan(folder, warn)
    unknown = [name for name in found.classes if name not in split.classes]
    if unknown:
        raise UsageError(f"{os.path.join(folder, unknown[0])}: class '{unknown[0]}' has no folder in "
                         f"{os.path.join(split.root, 'train')}; add its training images there or remove it")
    if not found.count:
        raise UsageError(f"{folder} holds no class folders with images; fill it, or remove it")
    split.skipped += found.skipped
    for class_name, class_paths in found.images.items():
        paths += class_paths
        labels += [split.classes.index(class_name)] * len(class_paths)


def read_data(root: str | os.PathLike, val_rate: float | None = None, seed: int = 0,
              report: bool = True) -> DataSplit:
    """A pre-split dataset's own split (read_presplit_data), else a random one (read_split_data); `val_rate`
    None means the user did not choose one."""
    if os.path.isdir(root) and presplit_folders(root) is not None:
        return read_presplit_data(root, val_rate, seed, report)
    return read_split_data(root, DEFAULT_VAL_RATE if val_rate is None else val_rate, seed, report)


# ---------------------------------------------------------------------------------------------------------------
# Training and evaluation


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


def _progress(loader: DataLoader, description: str, enabled: bool) -> tqdm:
    return tqdm(loader, desc=description, disable=not enabled, file=sys.stdout, dynamic_ncols=True,
                leave=False)


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


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data_loader: DataLoader,
                    settings: StepSettings, epoch: int, progress: bool = True,
                    steps: TrainingSteps | None = None, smallest_batch: int = 1) -> EpochResult:
    """One pass over the training data (`epoch` counts from 1, for messages); stops with NonFiniteLossError
    as soon as the loss is NaN or infinite. `steps` is the recipe's loss, batch mixing and weight average
    (default: plain cross-entropy, as in the tutorial); accuracy counts the unmixed labels. A batch left with
    fewer than `smallest_batch` images by unreadable ones is passed over (train.py: 2, as BatchNorm cannot train
    on a single 32 px image)."""
    train_mode(model)
    steps = steps if steps is not None else TrainingSteps(nn.CrossEntropyLoss())
    loss_sum = torch.zeros((), dtype=torch.float64, device=settings.device)
    correct = torch.zeros((), dtype=torch.int64, device=settings.device)
    seen = 0
    start = time.perf_counter()
    bar = _progress(data_loader, f"[train epoch {epoch}]", progress)
    for step, batch in enumerate(bar):
        if not true_on_every_process(batch is not None and len(batch[1]) >= smallest_batch, settings.device):
            continue  # every image was unreadable (or all but one, when one is too few)
        images, labels = settings.to_device(*batch)
        loss, logits = train_step(model, optimizer, steps.loss_function, *steps.mix(images, labels), settings)
        batch_loss = loss.item()
        if not true_on_every_process(math.isfinite(batch_loss), settings.device):
            value = batch_loss if not math.isfinite(batch_loss) else "non-finite in another process"
            raise NonFiniteLossError(f"the training loss became {value} in epoch {epoch}, step {step + 1}")
        steps.after_step()
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


@torch.inference_mode()
def evaluate(model: nn.Module, data_loader: DataLoader, settings: StepSettings, num_classes: int,
             description: str = "[valid]", progress: bool = True) -> EpochResult:
    """Loss, accuracy and confusion matrix over the loader (summed over all processes when distributed)."""
    model.eval()
    loss_function = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = torch.zeros((), dtype=torch.float64, device=settings.device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=settings.device)
    start = time.perf_counter()
    bar = _progress(data_loader, description, progress)
    seen = 0
    for batch in bar:
        if batch is None:
            continue
        images, labels = settings.to_device(*batch)
        with settings.autocast():
            logits = model(images)
        loss_sum += loss_function(logits.float(), labels)
        confusion += torch.bincount(labels * num_classes + logits.argmax(1),
                                    minlength=num_classes * num_classes).view(num_classes, num_classes)
        seen += labels.numel()
        bar.set_postfix(acc=f"{confusion.diag().sum().item() / seen:.3f}",
                        img_s=f"{seen / (time.perf_counter() - start):.1f}")
    all_reduce_sum(loss_sum)
    all_reduce_sum(confusion)
    total = int(confusion.sum().item())
    return EpochResult(loss=loss_sum.item() / max(total, 1), accuracy=confusion.diag().sum().item() / max(total, 1),
                       images=total, seconds=time.perf_counter() - start, confusion=confusion.cpu())
