"""The settings of a training run: TrainSettings, built once from train.py's flags (with --recipe's preset and the
defaults that depend on other flags) or from a stopped run's checkpoint, checked as it is built, and never changed
after. No PyTorch here: an impossible value is refused before PyTorch's seconds of importing.

The tutorial's recipe is the default: SGD (momentum 0.9, weight decay 1e-4), a cosine from --lr down to
--lr x --lrf, random crop and flip, plain cross-entropy. `--recipe modern` switches on a measured combination of
the recipe's options (PRESETS; docs/benchmarks.md has the experiments); flags given explicitly win.
"""
import argparse
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from effnet.command_line import UsageError
from effnet.variants import VARIANTS, image_settings

DEFAULT_DATA_PATH = os.path.join("flower_data", "flower_photos")
MAX_IMAGE_SIZE = 2048  # pixels: over 3x B7's 600; training memory grows with its square, and few photos are larger

# The recipe at the tutorial's values: the flags' defaults, and what runs saved before a flag existed were trained
# with. None means "depends on another setting" (settled by `_settle`).
TUTORIAL: Mapping[str, Any] = {
    "recipe": "tutorial", "opt": "sgd", "weight_decay": None, "warmup_epochs": 0, "label_smoothing": 0.0,
    "ema": None, "auto_augment": "none", "random_erase": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
    "drop_path": None, "class_weights": "none", "balanced_sampling": False, "early_stopping": None,
    "best_metric": "acc", "lr_schedule": "cosine", "progressive_resizing": None, "train_crop": 1.0,
    "zero_init_residual": False, "report": True, "onnx": True,
}
# The measured combinations (docs/benchmarks.md, "Training recipe"); docs/training.md lists the same flags.
PRESETS: Mapping[str, Mapping[str, Any]] = {
    "tutorial": {},
    "modern": {"opt": "adamw", "lr": 0.002, "warmup_epochs": 2},
    # modern's optimizer for a short run on a CPU: a one-cycle schedule, small crops first, growing to 0.8 of the
    # validation size, and residual blocks that start as the identity (docs/benchmarks.md, "Time to accuracy")
    "fast": {"opt": "adamw", "lr": 0.002, "warmup_epochs": 1, "lr_schedule": "onecycle", "progressive_resizing": 0.4,
             "train_crop": 0.8, "zero_init_residual": True},
}
WEIGHT_DECAY = {"sgd": 1e-4, "adamw": 0.05}  # the tutorial's for SGD; the usual decoupled decay for AdamW
ADAMW_LR = 0.001  # --lr's default with --opt adamw (0.01, the tutorial's SGD rate, is far too high for Adam)
EMA_DECAY = 0.999  # --ema without a value
AUTO_AUGMENT_NAMES = ("none", "trivialaugment", "randaugment")  # my_dataset.train_transform has their transforms
BEST_METRICS = {"acc": "val_acc", "macro_f1": "val_macro_f1"}  # --best-metric -> the history column
# Where and how fast a run runs, not what it computes: a resumed run takes these from the command line.
MACHINE_SETTINGS = ("resume", "device", "workers", "progress", "channels_last", "compile", "grad_checkpointing",
                    "sync_bn", "report", "onnx")
# What recipe.json records of a run.
RECORDED = ("recipe", "epochs", "batch_size", "image_size", "freeze_layers", "opt", "lr", "lrf", "weight_decay",
            "warmup_epochs", "label_smoothing", "ema", "auto_augment", "random_erase", "mixup_alpha",
            "cutmix_alpha", "drop_path", "class_weights", "balanced_sampling", "early_stopping", "best_metric",
            "lr_schedule", "progressive_resizing", "train_crop", "zero_init_residual")


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run is told, one field per flag of train.py (`--batch-size` is batch_size)."""

    # the photos
    data_path: str  # a folder of class folders, or of train/ val/ (test/) folders of them
    num_classes: int | None  # must equal the number of class folders; None: however many there are
    val_rate: float | None  # share of each class held out for validation; None: 0.2, or a pre-split val/ as given
    seed: int  # of the split, the initialisation, the sampling and the augmentation
    check_data: str | None  # check the photos for copies and stop: "" (print them) or a CSV to write; None: train
    drop_duplicates: bool  # leave copies out of the split (split.json says which and why)
    # the model
    model: str  # the variant, b0 ... b7
    weights: str  # starting weights: "imagenet", "none" (from scratch) or a .pth file
    freeze_layers: bool  # train only the head conv and the classifier
    image_size: int | None  # evaluation crop in pixels, and the training size train_crop scales; None: the variant's
    # the training
    epochs: int
    batch_size: int  # images per step, per process under torchrun
    lr: float  # learning rate at the top of the schedule
    lrf: float  # final learning rate, as a fraction of lr
    # the recipe (defaults: TUTORIAL; --recipe picks a preset of them)
    recipe: str  # the preset: "tutorial", "modern" or "fast"
    opt: str  # "sgd" (momentum 0.9) or "adamw"
    weight_decay: float
    warmup_epochs: int  # epochs of linear warm-up before the cosine
    label_smoothing: float
    ema: float | None  # decay of the weights' moving average, which validation scores; None: off
    auto_augment: str  # "none", "trivialaugment" or "randaugment"
    random_erase: float  # probability of erasing a rectangle of each training image
    mixup_alpha: float  # 0: off
    cutmix_alpha: float  # 0: off
    drop_path: float  # stochastic-depth rate of the last block
    class_weights: str  # "none", or "auto": the loss weighted by inverse class frequency
    balanced_sampling: bool  # draw every class equally often
    early_stopping: int | None  # stop after this many epochs without a better best_metric; None: off
    best_metric: str  # what best.pth and early stopping go by: "acc" or "macro_f1"
    lr_schedule: str  # "cosine": stepped once per epoch (the tutorial's); "onecycle": stepped after every batch
    progressive_resizing: float | None  # the first epochs' crop as a share of image_size, growing; None: off
    train_crop: float  # the (last) training crop as a share of the training size; validation keeps its own
    zero_init_residual: bool  # from scratch: each residual branch's last BatchNorm scale starts at 0
    # where and how it runs (MACHINE_SETTINGS: a resumed run takes these anew)
    device: str | None  # "cpu", "cuda", "cuda:1", ...; None: the first GPU, else the CPU
    workers: int | None  # data-loading processes; None: hardware.default_workers
    channels_last: bool  # NHWC memory layout
    amp: bool  # mixed precision on CUDA
    compile: bool  # torch.compile the model
    grad_checkpointing: bool  # recompute activations in the backward pass: less memory, slower
    sync_bn: bool  # BatchNorm statistics synchronised across GPUs
    progress: bool  # progress bars (by default only when the output is a terminal)
    # the run folder
    output_dir: str  # where run folders are created
    name: str | None  # the run folder's name; None: <date>-<time>-<variant>
    resume: str | None  # the run folder (or its last.pth) this invocation continues
    report: bool  # after the last epoch: report.html, label_issues.csv and the test set's scores
    onnx: bool  # after the last epoch: best.onnx beside best.pth, predict.py's fast path

    def __post_init__(self) -> None:
        for failed, message in _problems(self):
            if failed:
                raise UsageError(message)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a checkpoint saves them (its "args")."""
        return asdict(self)

    def recipe_record(self, class_names: Sequence[str], class_weights: Sequence[float] | None) -> dict[str, Any]:
        """The resolved recipe of the run, for its recipe.json."""
        recorded = {key: getattr(self, key) for key in RECORDED}
        if class_weights is not None:
            recorded["class_weight_values"] = dict(zip(class_names, class_weights))
        return recorded

    def train_sizes(self, full: int) -> list[int]:
        """The training crop of each epoch, for a training size of `full` pixels (--image-size, or the
        variant's): --train-crop x full (all of it at 1), or with --progressive-resizing START stages of equal
        length (up to 4) whose size grows from START x full to that, so that the first epochs cost a fraction of
        the last (a step costs about the square of the size). Sizes other than `full` are rounded to 16 px, at
        least 32, and never above the last one."""
        end = full if self.train_crop == 1 else min(full, _multiple_of_16(self.train_crop * full))
        if self.progressive_resizing is None:
            return [end] * self.epochs
        stages = min(4, self.epochs)
        start = self.progressive_resizing * full
        grown = [start + (end - start) * stage / max(1, stages - 1) for stage in range(stages - 1)]
        sizes = [min(end, _multiple_of_16(size)) for size in grown] + [end]
        return [sizes[epoch * stages // self.epochs] for epoch in range(self.epochs)]

    def image_settings(self) -> dict[str, Any]:
        """The training and evaluation sizes and normalisation: the variant's, or scaled to --image-size."""
        return image_settings(self.model, self.image_size)

    def best_metric_of(self, row: Mapping[str, float]) -> float:
        """The --best-metric value of an epoch's history row."""
        return row[BEST_METRICS[self.best_metric]]


def _multiple_of_16(size: float) -> int:
    return max(32, round(size / 16) * 16)


def describe_sizes(sizes: Sequence[int], validated: int | None = None) -> str:
    """'224 px', or with progressive resizing '128 px (epochs 1-2), 160 px (3-4), ...'; with `validated`, the
    validation size after it where any training size differs from it ('176 px, validated at 224 px')."""
    if validated is not None and set(sizes) != {validated}:
        return f"{describe_sizes(sizes)}, validated at {validated} px"
    if len(set(sizes)) == 1:
        return f"{sizes[0]} px"
    stages = [(size, [epoch for epoch, each in enumerate(sizes, 1) if each == size]) for size in sorted(set(sizes))]
    def when(epochs: list[int], first: bool) -> str:
        label = ("epochs " if len(epochs) > 1 else "epoch ") if first else ""
        return f"{label}{epochs[0]}" + (f"-{epochs[-1]}" if len(epochs) > 1 else "")

    return ", ".join(f"{size} px ({when(epochs, index == 0)})" for index, (size, epochs) in enumerate(stages))


def is_folder_name(name: str) -> bool:
    """A name for one folder: not empty, not . or .., without a path separator, a NUL or another control
    character (a newline in a folder name breaks every listing and log line that shows it)."""
    return (name not in ("", ".", "..") and not any(sep and sep in name for sep in ("/", os.sep, os.altsep))
            and not re.search("[\x00-\x1f\x7f]", name))


def _positive_or_zero(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def _problems(s: TrainSettings) -> list[tuple[bool, str]]:
    """(failed, the one-line message) for each impossible value or combination."""
    return [
        (s.epochs < 1, f"--epochs {s.epochs}: train for at least 1 epoch"),
        (s.batch_size < 1, f"--batch-size {s.batch_size}: use 1 or more"),
        (not (s.lr > 0 and math.isfinite(s.lr)), f"--lr {s.lr}: the learning rate must be a positive, finite number"),
        (not 0 <= s.lrf <= 1, f"--lrf {s.lrf}: the final learning-rate fraction must be within 0 ... 1"),
        (s.val_rate is not None and not 0 < s.val_rate < 1,
         f"--val-rate {s.val_rate}: hold out a fraction between 0 and 1"),
        (s.workers is not None and s.workers < 0, f"--workers {s.workers}: use 0 or more"),
        (s.image_size is not None and not 32 <= s.image_size <= MAX_IMAGE_SIZE,
         f"--image-size {s.image_size}: use 32 to {MAX_IMAGE_SIZE} pixels"),
        # at 32 px the last feature maps are 1 x 1, and BatchNorm cannot train on a single value per channel
        (s.batch_size == 1 and s.image_size == 32,
         "--batch-size 1 at --image-size 32: BatchNorm needs two images per step at this size; use --batch-size "
         "2 or more, or --image-size 33 or more"),
        (not 0 <= s.seed < 2**32, f"--seed {s.seed}: use a whole number from 0 to {2**32 - 1}"),
        (s.name is not None and not is_folder_name(s.name),
         f"--name {s.name}: give the run folder's own name, without '/' or control characters (it is created "
         f"in --output-dir {s.output_dir})"),
        (not _positive_or_zero(s.weight_decay), f"--weight-decay {s.weight_decay}: use 0 or more"),
        (not 0 <= s.warmup_epochs < s.epochs,
         f"--warmup-epochs {s.warmup_epochs}: use 0 or more, fewer than --epochs {s.epochs}"),
        (not 0 <= s.label_smoothing < 1, f"--label-smoothing {s.label_smoothing}: use a value in [0, 1)"),
        (s.ema is not None and not 0 < s.ema < 1, f"--ema {s.ema}: the decay must be between 0 and 1"),
        (not 0 <= s.random_erase <= 1, f"--random-erase {s.random_erase}: a probability, within 0 ... 1"),
        (not _positive_or_zero(s.mixup_alpha), f"--mixup-alpha {s.mixup_alpha}: use 0 (off) or a positive alpha"),
        (not _positive_or_zero(s.cutmix_alpha), f"--cutmix-alpha {s.cutmix_alpha}: use 0 (off) or a positive alpha"),
        (not 0 <= s.drop_path < 1, f"--drop-path {s.drop_path}: use a rate in [0, 1)"),
        (s.early_stopping is not None and s.early_stopping < 1,
         f"--early-stopping {s.early_stopping}: the patience is a number of epochs, 1 or more"),
        (s.progressive_resizing is not None and not 0.1 <= s.progressive_resizing <= 1,
         f"--progressive-resizing {s.progressive_resizing}: the first size as a share of --image-size, 0.1 to 1"),
        (not 0.1 <= s.train_crop <= 1, f"--train-crop {s.train_crop}: a share of --image-size, 0.1 to 1"),
        (s.progressive_resizing is not None and s.progressive_resizing > s.train_crop,
         f"--progressive-resizing {s.progressive_resizing} starts above --train-crop {s.train_crop}, where the "
         f"crops grow to; give a START of at most {s.train_crop}"),
        (s.class_weights == "auto" and s.balanced_sampling,
         "--class-weights auto with --balanced-sampling corrects the imbalance twice; use one of them"),
    ]


def _note(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once
        print(f"note: {message}", file=sys.stderr)


def _settle(values: dict[str, Any]) -> TrainSettings:
    """TrainSettings from flag values: a setting the values lack (a run saved before it existed) takes its tutorial
    value, then the defaults that depend on other settings; checked as it is built."""
    values = {**TUTORIAL, **values}
    if values["weight_decay"] is None:
        values["weight_decay"] = WEIGHT_DECAY[values["opt"]]
    if values["drop_path"] is None:
        values["drop_path"] = VARIANTS[values["model"]].drop_connect_rate
    if values.get("progress") is None:  # progress bars on a terminal; a log file gets one line per epoch
        values["progress"] = sys.stdout.isatty()
    return TrainSettings(**{field.name: values.get(field.name) for field in fields(TrainSettings)})


def settings_from_flags(flags: argparse.Namespace, given: set[str] | frozenset[str]) -> TrainSettings:
    """A new run's settings: --recipe's preset for the flags not written on the command line (`given`), then the
    defaults that depend on other flags."""
    values = vars(flags).copy()
    if "val_rate" not in given:  # None: 0.2, or a pre-split dataset's own val/ (where choosing a rate is an error)
        values["val_rate"] = None
    preset = PRESETS[values["recipe"]]
    values.update({key: value for key, value in preset.items() if key not in given})
    if values["data_path"] is None:
        values["data_path"] = DEFAULT_DATA_PATH
    epochs = values["epochs"]
    if "warmup_epochs" not in given and values["warmup_epochs"] >= epochs >= 1:  # the preset's, too long here
        shortened = epochs - 1
        _note(f"--recipe {values['recipe']} warms up over {values['warmup_epochs']} epochs; with --epochs {epochs} "
              f"the warm-up is {shortened} epoch{'s' if shortened != 1 else ''}")
        values["warmup_epochs"] = shortened
    if "zero_init_residual" in given and values["zero_init_residual"] and values["weights"].lower() != "none":
        _note(f"--zero-init-residual changes only a run from scratch (--weights none); --weights "
              f"{values['weights']} replaces it")
    if values["opt"] == "adamw" and "lr" not in given and "lr" not in preset:
        values["lr"] = ADAMW_LR
    return _settle(values)


def resumed_settings(saved: Mapping[str, Any], flags: argparse.Namespace, given: set[str],
                     data_path: str) -> TrainSettings:
    """A stopped run's own settings (a checkpoint's "args"), with this invocation's MACHINE_SETTINGS and the
    place its photos are now; notes the flags given that it does not use."""
    known = {field.name for field in fields(TrainSettings)}
    command_line = vars(flags)
    # what the run saved; a recipe setting it never saved (a newer flag) at the tutorial's value, any other at
    # this invocation's; a setting dropped since is passed over
    values = {**command_line, **TUTORIAL, **{key: value for key, value in saved.items() if key in known}}
    for key in MACHINE_SETTINGS:
        values[key] = command_line[key]
    ignored = [f"--{key.replace('_', '-')}" for key in sorted(given) if key in saved and key not in MACHINE_SETTINGS
               and key != "data_path" and command_line[key] != saved[key]]
    if ignored:
        _note(f"a resumed run keeps its own settings; ignoring {', '.join(ignored)}")
    return _settle({**values, "data_path": data_path, "check_data": None})
