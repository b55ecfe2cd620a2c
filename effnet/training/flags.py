"""train.py's command line: every flag (the training recipe's too), the recipe presets, and the checks that
refuse impossible settings. No PyTorch here, so that the flags are read before PyTorch's seconds of importing.

The tutorial's recipe is the default: SGD (momentum 0.9, weight decay 1e-4), a cosine from --lr down to
--lr x --lrf, random crop and flip, plain cross-entropy. `--recipe modern` switches on a measured
combination of the options (PRESETS; BENCHMARKS.md has the experiments); flags given explicitly win.
"""
import argparse
import math
import os
import sys
from typing import Any, Mapping, Sequence

from effnet.command_line import UsageError, parse_bool, parse_variant
from effnet.model_choices import IMAGENET, RUNS_DIR
from effnet.variants import VARIANTS
from effnet.command_line import ArgumentParser

DEFAULT_DATA_PATH = os.path.join("flower_data", "flower_photos")
MAX_IMAGE_SIZE = 2048  # pixels: over 3x B7's 600; training memory grows with its square, and few photos are larger

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
AUTO_AUGMENT_NAMES = ("none", "trivialaugment", "randaugment")  # recipe.AUTO_AUGMENTS has their transforms
BEST_METRICS = {"acc": "val_acc", "macro_f1": "val_macro_f1"}  # --best-metric -> the history column
RECORDED = ("recipe", "epochs", "batch_size", "image_size", "freeze_layers", "opt", "lr", "lrf", "weight_decay",
            "warmup_epochs", "label_smoothing", "ema", "auto_augment", "random_erase", "mixup_alpha",
            "cutmix_alpha", "drop_path", "class_weights", "balanced_sampling", "early_stopping", "best_metric")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--num_classes", "--num-classes", type=int, default=None,
        help="number of classes; must equal the class folders found (default: however many there are)")
    add("--epochs", type=int, default=30, help="training epochs (default 30)")
    add("--batch-size", type=int, default=16, help="images per step, per process under torchrun (default 16)")
    add("--lr", type=float, default=0.01, help="initial learning rate, not scaled by the number of processes "
                                                "(default 0.01; 0.001 with --opt adamw)")
    add("--lrf", type=float, default=0.01, help="final learning rate as a fraction of --lr, reached along a "
                                                 "cosine (default 0.01)")
    add("--data-path", default=None,
        help=f"folder with one sub-folder of images per class, or with train/ and val/ (and test/) folders of "
             f"those, a split used as given (default {DEFAULT_DATA_PATH}, downloaded when missing; with "
             f"--resume: where the run's images are now, if they moved)")
    add("--model", default="b0", type=parse_variant, metavar="{b0,...,b7}",
        help="EfficientNet variant, in any letter case (default b0)")
    add("--weights", default=IMAGENET,
        help="initial weights: 'imagenet' (torchvision's, downloaded once), a .pth path (this project's "
             "checkpoint, a tutorial or torchvision state_dict), or 'none' to train from scratch (default imagenet)")
    add("--freeze-layers", type=parse_bool, nargs="?", const=True, default=False, metavar="{true,false}",
        help="train only the last conv and the classifier, keeping the frozen BatchNorm statistics fixed "
             "(default false, as in the tutorial: every layer trains)")
    add("--device", default=None, help="'cuda', 'cuda:1', 'cpu', ... (default: the first CUDA device, else CPU)")
    add("--workers", type=int, default=None,
        help="data-loading processes (default: min(CPUs this process may use, batch size, 8))")
    add("--seed", type=int, default=0, help="seed of the split, the initialisation and the augmentation (default 0)")
    add("--val-rate", type=float, default=0.2,
        help="fraction of each class held out for validation (default 0.2; not with a val/ folder)")
    add("--image-size", type=int, default=None,
        help="train and evaluation crop size (default: the variant's, from model.py); smaller is faster")
    add("--output-dir", default=RUNS_DIR, help=f"where run folders are created (default {RUNS_DIR}/)")
    add("--name", default=None, help="run folder name (default <date>-<time>-<variant>)")
    add("--resume", default=None, metavar="RUN",
        help="continue a run: its folder or its last.pth; the run's own settings are used, except how it "
             "runs (--device, --workers, --progress, --channels-last, --compile, --grad-checkpointing, "
             "--sync-bn) and --data-path (default: none, a new run)")
    add("--channels-last", type=parse_bool, nargs="?", const=True, default=True, metavar="{true,false}",
        help="NHWC memory layout, faster for convolutions on CPUs and GPUs (default true)")
    add("--amp", type=parse_bool, nargs="?", const=True, default=True, metavar="{true,false}",
        help="mixed precision on CUDA: bfloat16 where supported, else float16 with a gradient scaler "
             "(default true; the CPU always trains in float32, which is faster there)")
    add("--compile", action="store_true", help="torch.compile the model (slow start, faster steps; default off)")
    add("--grad-checkpointing", action="store_true",
        help="recompute activations in the backward pass: far less memory (see BENCHMARKS.md), slower steps "
             "(default off)")
    add("--sync-bn", action="store_true",
        help="synchronise BatchNorm statistics across GPUs under torchrun (default off)")
    add("--progress", type=parse_bool, nargs="?", const=True, default=True, metavar="{true,false}",
        help="show progress bars (default true)")
    add("--check-data", nargs="?", const="", default=None, metavar="CSV",
        help="check the data for copies (identical files, resized or recompressed copies, copies in two classes "
             "or on both sides of the split the run would make) and exit without training; with CSV, also write "
             "the groups of copies there (every run checks its data and writes duplicates.csv anyway; default: train)")
    add("--drop-duplicates", action="store_true",
        help="leave copies out of the run: every photo of a group of copies that spans classes, and all but one "
             "(a validation or test one first) of any other group; split.json lists what was left out and why "
             "(default: keep them, and report them)")
    build_parser_recipe(parser)
    return parser


def is_folder_name(name: str) -> bool:
    """A name for one folder: not empty, not . or .., and without a path separator (nor a NUL)."""
    return name not in ("", ".", "..") and not any(sep and sep in name for sep in ("/", os.sep, os.altsep, "\0"))


def check_args(args: argparse.Namespace) -> None:
    """Reject impossible settings before anything is downloaded or written."""
    problems = [
        (args.epochs < 1, f"--epochs {args.epochs}: train for at least 1 epoch"),
        (args.batch_size < 1, f"--batch-size {args.batch_size}: use 1 or more"),
        (not (args.lr > 0 and math.isfinite(args.lr)), f"--lr {args.lr}: the learning rate must be a positive, "
                                                       f"finite number"),
        (not 0 <= args.lrf <= 1, f"--lrf {args.lrf}: the final learning-rate fraction must be within 0 ... 1"),
        (not 0 < args.val_rate < 1, f"--val-rate {args.val_rate}: hold out a fraction between 0 and 1"),
        (args.workers is not None and args.workers < 0, f"--workers {args.workers}: use 0 or more"),
        (args.image_size is not None and not 32 <= args.image_size <= MAX_IMAGE_SIZE,
         f"--image-size {args.image_size}: use 32 to {MAX_IMAGE_SIZE} pixels"),
        # at 32 px the last feature maps are 1 x 1, and BatchNorm cannot train on a single value per channel
        (args.batch_size == 1 and args.image_size == 32,
         "--batch-size 1 at --image-size 32: BatchNorm needs two images per step at this size; use --batch-size "
         "2 or more, or --image-size 33 or more"),
        (not 0 <= args.seed < 2**32, f"--seed {args.seed}: use a whole number from 0 to {2**32 - 1}"),
        (args.name is not None and not is_folder_name(args.name),
         f"--name {args.name}: give the run folder's own name, without '/' (it is created in --output-dir "
         f"{args.output_dir})"),
    ]
    for failed, message in problems:
        if failed:
            raise UsageError(message)
    check_recipe(args)


def given_flags(argv: list[str] | None) -> set[str]:
    """The destinations of the flags written on the command line (not those left at their defaults)."""
    parser = build_parser()
    for action in parser._actions:  # argparse offers no public way to drop the defaults of a built parser
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


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
    add("--auto-augment", choices=AUTO_AUGMENT_NAMES, default=default["auto_augment"],
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
    if "warmup_epochs" not in given and args.warmup_epochs >= args.epochs >= 1:  # the preset's, too long here
        shortened = args.epochs - 1
        _note(f"--recipe {args.recipe} warms up over {args.warmup_epochs} epochs; with --epochs {args.epochs} the "
              f"warm-up is {shortened} epoch{'s' if shortened != 1 else ''}")
        args.warmup_epochs = shortened
    if args.opt == "adamw" and "lr" not in given and "lr" not in preset:
        args.lr = ADAMW_LR
    return fill_defaults(args)


def _note(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once
        print(f"note: {message}", file=sys.stderr)


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


def _positive_or_zero(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def check_recipe(args: argparse.Namespace) -> None:
    """Reject impossible recipe settings and combinations, one clear line, before any work starts."""
    problems = [
        (args.weight_decay is not None and not _positive_or_zero(args.weight_decay),
         f"--weight-decay {args.weight_decay}: use 0 or more"),
        (not 0 <= args.warmup_epochs < args.epochs,
         f"--warmup-epochs {args.warmup_epochs}: use 0 or more, fewer than --epochs {args.epochs}"),
        (not 0 <= args.label_smoothing < 1, f"--label-smoothing {args.label_smoothing}: use a value in [0, 1)"),
        (args.ema is not None and not 0 < args.ema < 1, f"--ema {args.ema}: the decay must be between 0 and 1"),
        (not 0 <= args.random_erase <= 1, f"--random-erase {args.random_erase}: a probability, within 0 ... 1"),
        (not _positive_or_zero(args.mixup_alpha), f"--mixup-alpha {args.mixup_alpha}: use 0 (off) or a positive alpha"),
        (not _positive_or_zero(args.cutmix_alpha),
         f"--cutmix-alpha {args.cutmix_alpha}: use 0 (off) or a positive alpha"),
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
