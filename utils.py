"""Training plumbing: the data split, the dataset download, train / evaluate loops, checkpoints and plots."""
import contextlib
import csv
import ctypes
import io
import json
import math
import os
import random
import shutil
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from download import download_file
from my_dataset import IMAGE_EXTENSIONS, is_image_name, open_image

FLOWER_PHOTOS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
FLOWER_PHOTOS_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"
FLOWER_PHOTOS_BYTES = 228_813_984
FLOWER_PHOTOS_URL_ENV = "FLOWER_PHOTOS_URL"  # a mirror of the archive (same bytes) for users who need one


def keep_freed_memory_for_reuse(enable: bool = True) -> bool:
    """Tell glibc's malloc to keep freed memory instead of handing it back to the OS (Linux only).

    Every training and inference step frees and reallocates the same large activation tensors. By default
    glibc serves each from fresh mmap pages, and the kernel's page faults to zero them cost more than the
    arithmetic of the elementwise layers: on our 2-core machines torchvision's B0 forward pass runs about
    2.5x faster with this setting (BENCHMARKS.md). Peak memory is unchanged; memory simply stays with the
    process until it exits. `enable=False` restores what glibc settles on by itself (32 MiB mmap threshold,
    64 MiB trim threshold) and hands back what was kept, as a process that never enabled it would be
    (benchmark.py switches between the two). Returns False where there is no glibc.
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


class UsageError(Exception):
    """Bad input from the user: the command-line programs print the message on one line and exit 2."""


# ---------------------------------------------------------------------------------------------------------------
# Data on disk


@dataclass
class DataSplit:
    """A stratified train/validation split of a class-per-folder tree."""

    root: str
    classes: list[str]
    train_paths: list[str] = field(default_factory=list)
    train_labels: list[int] = field(default_factory=list)
    val_paths: list[str] = field(default_factory=list)
    val_labels: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: reason" for each file left out

    def counts(self, labels: Sequence[int]) -> list[int]:
        counts = [0] * len(self.classes)
        for label in labels:
            counts[label] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        """The split with paths relative to the data root, so a moved dataset still resumes."""
        def relative(paths: list[str]) -> list[str]:
            return [os.path.relpath(p, self.root) for p in paths]
        return {"root": os.path.abspath(self.root), "classes": self.classes,
                "train": [list(pair) for pair in zip(relative(self.train_paths), self.train_labels)],
                "val": [list(pair) for pair in zip(relative(self.val_paths), self.val_labels)]}

    @classmethod
    def from_json(cls, saved: Mapping[str, Any], root: str) -> "DataSplit":
        split = cls(root=root, classes=list(saved["classes"]))
        for name, paths, labels in (("train", split.train_paths, split.train_labels),
                                    ("val", split.val_paths, split.val_labels)):
            for relative, label in saved[name]:
                paths.append(os.path.join(root, relative))
                labels.append(int(label))
        missing = [p for p in split.train_paths + split.val_paths if not os.path.isfile(p)]
        if missing:
            raise UsageError(f"{len(missing)} images of the saved split are gone from {root} "
                             f"(first: {missing[0]}); restore them or start a new run")
        return split


def check_image_header(path: str) -> str | None:
    """Why the file at `path` cannot be an image we can read, or None if its header looks fine."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with open_image(path) as image:
            image.size  # noqa: B018 - reading the header is the check
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def read_split_data(root: str | os.PathLike, val_rate: float = 0.2, seed: int = 0, report: bool = True) -> DataSplit:
    """Split a class-per-folder tree into training and validation images.

    Classes are the sub-folders of `root` (sorted; hidden ones ignored), images the files directly inside
    them with an image extension, in any letter case. Each class is shuffled with `seed` on its own, and
    round(n * val_rate) of its images, at least one when it has two or more, go to validation. Files whose
    header cannot be read (empty, truncated before the header, not an image) are left out and listed in
    `skipped`; deeper sub-folders and other files are ignored. Warnings go to stderr when `report`.
    """
    def warn(message: str) -> None:
        if report:
            print(f"warning: {message}", file=sys.stderr)

    root = os.fspath(root)
    if not 0.0 < val_rate < 1.0:
        raise UsageError(f"--val-rate {val_rate} must be between 0 and 1 (exclusive)")
    if not os.path.isdir(root):
        raise UsageError(f"data path {root} does not exist or is not a folder; give a folder with one "
                         f"sub-folder of images per class via --data-path")
    class_dirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    split = DataSplit(root=root, classes=[])
    rng = random.Random(seed)
    for class_name in class_dirs:
        class_dir = os.path.join(root, class_name)
        names = sorted(e.name for e in os.scandir(class_dir) if e.is_file() and is_image_name(e.name))
        paths = []
        for name in names:
            path = os.path.join(class_dir, name)
            problem = check_image_header(path)
            if problem:
                split.skipped.append(f"{path}: {problem}")
            else:
                paths.append(path)
        if not paths:
            warn(f"class folder {class_dir} holds no readable images; it is not a class")
            continue
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
    for line in split.skipped:
        warn(f"skipping unreadable image {line}")
    if not split.classes:
        raise UsageError(f"data path {root} holds no class folders with images "
                         f"({', '.join(IMAGE_EXTENSIONS)}); expected {root}/<class name>/<image files>")
    return split


def _check_archive_member(member: tarfile.TarInfo, target: Path) -> None:
    """Refuse members that would land outside `target` or are not plain files / folders."""
    destination = (target / member.name).resolve()
    if not destination.is_relative_to(target.resolve()) or os.path.isabs(member.name):
        raise UsageError(f"archive member {member.name!r} would be written outside {target}; refusing the archive")
    if not (member.isfile() or member.isdir()):
        raise UsageError(f"archive member {member.name!r} is a link or device; refusing the archive")


def extract_tar_safely(archive: str | os.PathLike, target: str | os.PathLike) -> None:
    """Extract a .tgz into `target`, refusing path traversal, links and devices.

    Extraction happens in a temporary folder beside `target` that is renamed into place at the end, so an
    interrupted extraction never leaves a half-filled dataset that looks complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_archive_member(member, staging)
            # Python's own "data" filter, where this Python has it, is a second line of defence
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staging, members=members, **safe)
        staging.rename(target)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise UsageError(f"could not extract {archive} ({error}); delete it and try again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_flower_photos(data_path: str | os.PathLike, url: str | None = None) -> None:
    """Download and unpack the flower photos so that `data_path` (…/flower_photos) exists.

    The archive (228,813,984 bytes) is checked against its sha256 before it is opened.
    """
    data_path = Path(data_path)
    if data_path.is_dir():
        return
    url = url or os.environ.get(FLOWER_PHOTOS_URL_ENV) or FLOWER_PHOTOS_URL
    archive = data_path.parent / "flower_photos.tgz"
    print(f"{data_path} is missing: downloading the flower photos ({FLOWER_PHOTOS_BYTES / 1e6:.0f} MB) "
          f"from {url}", file=sys.stderr)
    try:
        download_file(url, archive, FLOWER_PHOTOS_SHA256)
    except Exception as error:
        raise UsageError(f"{error}; then unpack it with 'tar -xzf {archive} -C {data_path.parent}', "
                         f"or point --data-path at your own class-per-folder images") from None
    extracted = data_path.parent / ".flower_photos_extracted"
    extract_tar_safely(archive, extracted)
    inner = extracted / data_path.name  # the archive holds a single flower_photos/ folder
    (inner if inner.is_dir() else extracted).rename(data_path)
    shutil.rmtree(extracted, ignore_errors=True)
    archive.unlink()


# ---------------------------------------------------------------------------------------------------------------
# Sampling


class EpochSampler(Sampler):
    """Yields (index, seed) pairs: a per-epoch order and a per-sample augmentation seed.

    Both depend only on (seed, epoch, index), so a resumed run sees exactly the batches and crops an
    uninterrupted run would, whatever the number of data-loading workers. With `num_replicas` > 1 each
    process takes every num_replicas-th sample. Training (`pad=True`) pads by repeating the first samples
    so every process runs the same number of steps; evaluation (`pad=False`) sees every sample exactly once
    across all processes.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, num_replicas: int = 1,
                 pad: bool = True) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.num_replicas = num_replicas
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.pad and order and len(order) % self.num_replicas:
            total = math.ceil(len(order) / self.num_replicas) * self.num_replicas
            order = (order * math.ceil(total / len(order)))[:total]  # fewer samples than processes repeat more
        return order[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        return iter([(index, (base + index) % 2**62) for index in self._indices()])

    def __len__(self) -> int:
        return len(self._indices())


# ---------------------------------------------------------------------------------------------------------------
# Training and evaluation


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


def freeze_all_but_head(model: nn.Module) -> None:
    """Train only the last block of `model.features` (the 1x1 head conv) and the classifier, as the
    tutorial's --freeze-layers does; works for this project's and torchvision's module layout alike."""
    head = list(model.features.children())[-1]
    trainable = {id(p) for module in (head, model.classifier) for p in module.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trainable)


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


def _progress(loader: DataLoader, description: str, enabled: bool) -> tqdm:
    return tqdm(loader, desc=description, disable=not enabled, file=sys.stdout, dynamic_ncols=True,
                leave=False)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_function: nn.Module,
               images: torch.Tensor, labels: torch.Tensor, settings: StepSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward and optimizer step on one batch already on the device; returns (loss, logits).

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
                    settings: StepSettings, epoch: int, progress: bool = True) -> EpochResult:
    """One pass over the training data (`epoch` counts from 1, for messages); stops with NonFiniteLossError
    as soon as the loss is NaN or infinite."""
    train_mode(model)
    loss_function = nn.CrossEntropyLoss()
    loss_sum = torch.zeros((), dtype=torch.float64, device=settings.device)
    correct = torch.zeros((), dtype=torch.int64, device=settings.device)
    seen = 0
    start = time.perf_counter()
    bar = _progress(data_loader, f"[train epoch {epoch}]", progress)
    for step, batch in enumerate(bar):
        if not true_on_every_process(batch is not None, settings.device):  # every image was unreadable
            continue
        images, labels = settings.to_device(*batch)
        loss, logits = train_step(model, optimizer, loss_function, images, labels, settings)
        batch_loss = loss.item()
        if not true_on_every_process(math.isfinite(batch_loss), settings.device):
            value = batch_loss if not math.isfinite(batch_loss) else "non-finite in another process"
            raise NonFiniteLossError(f"the training loss became {value} in epoch {epoch}, step {step + 1}")
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


def precision_recall(confusion: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-class precision and recall from a confusion matrix (rows: true class)."""
    true_positives = confusion.diag().double()
    precision = (true_positives / confusion.sum(0).clamp(min=1)).tolist()
    recall = (true_positives / confusion.sum(1).clamp(min=1)).tolist()
    return precision, recall


class CosineFactor:
    """Learning-rate factor of the tutorial: from 1 down to `lrf` along half a cosine over `epochs`."""

    def __init__(self, epochs: int, lrf: float) -> None:
        self.epochs = epochs
        self.lrf = lrf

    def __call__(self, epoch: int) -> float:
        return ((1 + math.cos(epoch * math.pi / self.epochs)) / 2) * (1 - self.lrf) + self.lrf


# ---------------------------------------------------------------------------------------------------------------
# Files written atomically


def _current_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; done once, at import, before any threads
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step, else it is removed.

    A crash, SIGKILL or Ctrl-C at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes it private; give it the mode open() would
    try:
        yield temporary
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    with atomic_path(path) as temporary:
        torch.save(dict(checkpoint), temporary)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        Path(temporary).write_text(text)


def write_json(path: str | os.PathLike, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def write_metrics_csv(path: str | os.PathLike, history: Sequence[Mapping[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------------------------
# Plots (headless: the Agg backend writes files and never opens a window)


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight")
    _figure().close(figure)


def plot_curves(history: Sequence[Mapping[str, float]], path: str | os.PathLike) -> None:
    """Loss, accuracy and learning rate per epoch."""
    plt = _figure()
    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for axis, (title, keys) in zip(axes, (("loss", ("train_loss", "val_loss")),
                                          ("accuracy", ("train_acc", "val_acc")),
                                          ("learning rate", ("lr",)))):
        for key in keys:
            axis.plot(epochs, [row[key] for row in history], marker="o", label=key)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.legend()
        axis.grid(alpha=0.3)
    _save_figure(figure, path)


def plot_confusion_matrix(confusion: torch.Tensor, classes: Sequence[str], path: str | os.PathLike,
                          title: str = "validation confusion matrix") -> None:
    plt = _figure()
    size = max(5.0, 0.6 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    image = axis.imshow(confusion.numpy(), cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    threshold = confusion.max().item() / 2
    if len(classes) <= 30:
        for row in range(len(classes)):
            for column in range(len(classes)):
                value = int(confusion[row, column])
                axis.text(column, row, value, ha="center", va="center",
                          color="white" if value > threshold else "black")
    _save_figure(figure, path)


def plot_class_distribution(classes: Sequence[str], train_counts: Sequence[int], val_counts: Sequence[int],
                            path: str | os.PathLike) -> None:
    plt = _figure()
    figure, axis = plt.subplots(figsize=(max(6.0, 0.5 * len(classes) + 2), 4))
    positions = range(len(classes))
    axis.bar(positions, train_counts, label="train")
    axis.bar(positions, val_counts, bottom=train_counts, label="validation")
    for x, (train, val) in enumerate(zip(train_counts, val_counts)):
        axis.text(x, train + val, str(train + val), ha="center", va="bottom")
    axis.set_xticks(list(positions), classes, rotation=45, ha="right")
    axis.set_ylabel("images")
    axis.set_title("images per class")
    axis.legend()
    _save_figure(figure, path)


def class_table(classes: Sequence[str], confusion: torch.Tensor) -> str:
    """Per-class precision and recall as a text table."""
    precision, recall = precision_recall(confusion)
    width = max(10, *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  precision  recall  images"]
    for name, p, r, count in zip(classes, precision, recall, confusion.sum(1).tolist()):
        lines.append(f"{name:<{width}}  {p:9.3f}  {r:6.3f}  {count:6d}")
    return "\n".join(lines)

