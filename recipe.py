"""The training recipe, built from train.py's arguments: which layers train, the optimizer and learning-rate
schedule, the loss (label smoothing, class weights), mixup/CutMix, the weight average (EMA), the augmentation,
balanced sampling, early stopping and which epoch counts as best.

The tutorial's recipe is the default: SGD (momentum 0.9, weight decay 1e-4), a cosine from --lr down to
--lr x --lrf, random crop and flip, plain cross-entropy. `--recipe modern` switches on a measured
combination of the options (PRESETS; BENCHMARKS.md has the experiments); flags given explicitly win.
"""
import argparse
import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torchvision.transforms as T
from torch import nn

from cli import UsageError, parse_bool
from my_dataset import TrainTransform
from variants import VARIANTS
from weights import checkpoint_fields

# The recipe flags at the tutorial's values: the parser's defaults, and what runs saved before these flags
# existed were trained with. None means "depends on another flag" (fill_defaults settles it).
TUTORIAL: Mapping[str, Any] = {
    "recipe": "tutorial", "opt": "sgd", "weight_decay": None, "warmup_epochs": 0, "label_smoothing": 0.0,
    "ema": None, "auto_augment": "none", "random_erase": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
    "drop_path": None, "class_weights": "none", "balanced_sampling": False, "early_stopping": None,
    "best_metric": "acc",
}
# The measured combination (BENCHMARKS.md, "Training recipe"); README.md lists the same flags.
PRESETS: Mapping[str, Mapping[str, Any]] = {
    "tutorial": {},
    "modern": {"opt": "adamw", "lr": 0.002, "warmup_epochs": 2},
}
WEIGHT_DECAY = {"sgd": 1e-4, "adamw": 0.05}  # the tutorial's for SGD; the usual decoupled decay for AdamW
ADAMW_LR = 0.001  # --lr's default with --opt adamw (0.01, the tutorial's SGD rate, is far too high for Adam)
EMA_DECAY = 0.999  # --ema without a value
AUTO_AUGMENTS: Mapping[str, Callable[[], Callable] | None] = {
    "none": None, "trivialaugment": T.TrivialAugmentWide, "randaugment": T.RandAugment}
BEST_METRICS = {"acc": "val_acc", "macro_f1": "val_macro_f1"}  # --best-metric -> the history column
RECORDED = ("recipe", "epochs", "batch_size", "image_size", "freeze_layers", "opt", "lr", "lrf", "weight_decay",
            "warmup_epochs", "label_smoothing", "ema", "auto_augment", "random_erase", "mixup_alpha",
            "cutmix_alpha", "drop_path", "class_weights", "balanced_sampling", "early_stopping", "best_metric")


def build_parser_recipe(parser: argparse.ArgumentParser) -> None:
    """Add the recipe's flags to train.py's parser, as their own group of --help."""
    group = parser.add_argument_group("training recipe (defaults: the tutorial's)")
    add, default = group.add_argument, TUTORIAL
    modern = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in PRESETS["modern"].items())
    add("--recipe", choices=list(PRESETS), default=default["recipe"],
        help=f"a preset of the flags below; 'modern' = {modern}; flags given explicitly win (default tutorial)")
    add("--opt", choices=list(WEIGHT_DECAY), default=default["opt"],
        help="optimizer: SGD with momentum 0.9 (the tutorial's) or AdamW (default sgd)")
    add("--weight-decay", type=float, default=default["weight_decay"], metavar="WD",
        help=f"weight decay (default {WEIGHT_DECAY['sgd']:g} with SGD, {WEIGHT_DECAY['adamw']:g} with AdamW)")
    add("--warmup-epochs", type=int, default=default["warmup_epochs"], metavar="N",
        help="raise the learning rate linearly over the first N epochs (--lr x k/(N+1) in epoch k), then "
             "follow the cosine over the remaining epochs (default 0)")
    add("--label-smoothing", type=float, default=default["label_smoothing"], metavar="EPS",
        help="train towards 1-EPS on the true class and EPS spread over all classes (default 0)")
    add("--ema", type=float, nargs="?", const=EMA_DECAY, default=default["ema"], metavar="DECAY",
        help=f"keep an exponential moving average of the weights (DECAY per step, {EMA_DECAY} when omitted); "
             f"validation scores it and best.pth holds it (default off)")
    add("--auto-augment", choices=list(AUTO_AUGMENTS), default=default["auto_augment"],
        help="extra augmentation after the crop and flip: torchvision's TrivialAugmentWide or RandAugment "
             "(default none)")
    add("--random-erase", type=float, default=default["random_erase"], metavar="P",
        help="erase a random rectangle of each training image with probability P (default 0)")
    add("--mixup-alpha", type=float, default=default["mixup_alpha"], metavar="ALPHA",
        help="blend each batch with a shuffled copy of itself, pixels and labels, by a Beta(ALPHA, ALPHA) "
             "weight (default 0: off)")
    add("--cutmix-alpha", type=float, default=default["cutmix_alpha"], metavar="ALPHA",
        help="paste a box of another image of the batch, labels mixed by area, Beta(ALPHA, ALPHA); with "
             "--mixup-alpha too, each batch gets one of the two at random (default 0: off)")
    add("--drop-path", type=float, default=default["drop_path"], metavar="RATE",
        help="stochastic depth: the last block's residual branch is dropped with probability RATE, block i of "
             "N with RATE x i/N (default: the variant table's, 0.2 as torchvision's)")
    add("--class-weights", choices=("none", "auto"), default=default["class_weights"],
        help="'auto': weight the loss of each class by n / (classes x n_class), its inverse frequency in "
             "training (default none)")
    add("--balanced-sampling", type=parse_bool, nargs="?", const=True, default=default["balanced_sampling"],
        metavar="{true,false}", help="draw training images with replacement so that every class is drawn "
                                     "equally often (default false)")
    add("--early-stopping", type=int, default=default["early_stopping"], metavar="PATIENCE",
        help="stop when the best metric has not improved for PATIENCE epochs; a resumed run counts on "
             "(default off)")
    add("--best-metric", choices=list(BEST_METRICS), default=default["best_metric"],
        help="what best.pth and early stopping go by: validation accuracy or macro F1 (default acc)")


def resolve(args: argparse.Namespace, given: set[str] | frozenset[str]) -> argparse.Namespace:
    """Apply --recipe's preset to the flags not written on the command line (`given`), then the defaults
    that depend on other flags. A new run's settings; a resumed run keeps its saved ones."""
    preset = PRESETS[args.recipe]
    for key, value in preset.items():
        if key not in given:
            setattr(args, key, value)
    if args.opt == "adamw" and "lr" not in given and "lr" not in preset:
        args.lr = ADAMW_LR
    return fill_defaults(args)


def fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Settle the defaults that depend on other flags; a run saved before a flag existed gets its tutorial value."""
    for key, value in TUTORIAL.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    if args.weight_decay is None:
        args.weight_decay = WEIGHT_DECAY[args.opt]
    if args.drop_path is None:
        args.drop_path = VARIANTS[args.model].drop_connect_rate
    return args


def check_args(args: argparse.Namespace) -> None:
    """Reject impossible recipe settings and combinations, one clear line, before any work starts."""
    problems = [
        (args.weight_decay is not None and args.weight_decay < 0, f"--weight-decay {args.weight_decay}: use 0 or more"),
        (not 0 <= args.warmup_epochs < args.epochs,
         f"--warmup-epochs {args.warmup_epochs}: use 0 or more, fewer than --epochs {args.epochs}"),
        (not 0 <= args.label_smoothing < 1, f"--label-smoothing {args.label_smoothing}: use a value in [0, 1)"),
        (args.ema is not None and not 0 < args.ema < 1, f"--ema {args.ema}: the decay must be between 0 and 1"),
        (not 0 <= args.random_erase <= 1, f"--random-erase {args.random_erase}: a probability, within 0 ... 1"),
        (args.mixup_alpha < 0, f"--mixup-alpha {args.mixup_alpha}: use 0 (off) or a positive alpha"),
        (args.cutmix_alpha < 0, f"--cutmix-alpha {args.cutmix_alpha}: use 0 (off) or a positive alpha"),
        (args.drop_path is not None and not 0 <= args.drop_path < 1,
         f"--drop-path {args.drop_path}: use a rate in [0, 1)"),
        (args.early_stopping is not None and args.early_stopping < 1,
         f"--early-stopping {args.early_stopping}: the patience is a number of epochs, 1 or more"),
        (args.class_weights == "auto" and args.balanced_sampling,
         "--class-weights auto with --balanced-sampling corrects the imbalance twice; use one of them"),
    ]
    for failed, message in problems:
        if failed:
            raise UsageError(message)


def describe(args: argparse.Namespace, class_names: Sequence[str], class_weights: Sequence[float] | None) -> dict:
    """The resolved recipe of a run, for its recipe.json."""
    settings = {key: getattr(args, key) for key in RECORDED}
    if class_weights is not None:
        settings["class_weight_values"] = dict(zip(class_names, class_weights))
    return settings


# ---------------------------------------------------------------------------------------------------------------
# Which layers train, the optimizer and the schedule


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


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> tuple[torch.optim.Optimizer,
                                                                           torch.optim.lr_scheduler.LRScheduler]:
    """(optimizer over the parameters that train, its schedule stepped once per epoch)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if args.opt == "adamw":
        optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.SGD(parameters, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    factor = CosineFactor(args.epochs, args.lrf, args.warmup_epochs)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)


# ---------------------------------------------------------------------------------------------------------------
# Data: augmentation, balanced sampling, class weights


def train_transform(size: int, args: argparse.Namespace) -> TrainTransform:
    """The tutorial's crop and flip, plus --auto-augment and --random-erase."""
    make_augment = AUTO_AUGMENTS[args.auto_augment]
    return TrainTransform(size, augment=make_augment() if make_augment else None, random_erase=args.random_erase)


def inverse_frequency(labels: Sequence[int], num_classes: int) -> list[float]:
    """n / (classes x n_c) for each class c: 1 for every class when balanced (every class has a training image:
    the split puts a class's only image into training)."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.int64), minlength=num_classes).double()
    return (len(labels) / (num_classes * counts.clamp(min=1))).tolist()


def sample_weights(labels: Sequence[int], num_classes: int, args: argparse.Namespace) -> list[float] | None:
    """Per-image draw weights for --balanced-sampling (each class drawn equally often), else None."""
    if not args.balanced_sampling:
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

    @classmethod
    def build(cls, args: argparse.Namespace, train_labels: Sequence[int], num_classes: int, model: nn.Module,
              device: torch.device) -> "TrainingSteps":
        """From the arguments; `model` is the plain model that trains (no DDP or compile wrapper)."""
        weights = inverse_frequency(train_labels, num_classes) if args.class_weights == "auto" else None
        loss = nn.CrossEntropyLoss(weight=None if weights is None else torch.tensor(weights, device=device),
                                   label_smoothing=args.label_smoothing)
        mixing = args.mixup_alpha > 0 or args.cutmix_alpha > 0
        return cls(loss, BatchMixer(args.mixup_alpha, args.cutmix_alpha, num_classes) if mixing else None,
                   ModelEMA(model, args.ema) if args.ema else None, weights)

    def mix(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, targets) to train on: the batch itself, or mixed with mixup/CutMix."""
        return self.mixer(images, labels) if self.mixer is not None else (images, labels)

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update()

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
# Best epoch and early stopping


def score(args: argparse.Namespace, row: Mapping[str, float]) -> float:
    """The --best-metric value of an epoch's history row."""
    return row[BEST_METRICS[args.best_metric]]


def early_stop(args: argparse.Namespace, best_epoch: int, epochs_done: int) -> str | None:
    """Why to stop now, or None: --best-metric has not improved for --early-stopping epochs. Counted from
    the saved best epoch, so a resumed run counts on."""
    if args.early_stopping is None or best_epoch < 1 or epochs_done - best_epoch < args.early_stopping:
        return None
    return (f"early stopping: validation {args.best_metric} has not improved for {epochs_done - best_epoch} "
            f"epochs (best at epoch {best_epoch})")
