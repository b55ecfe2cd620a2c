"""train.py's command line: every flag, in the groups --help shows, and which flags a command line wrote. No
PyTorch here, so that --help and a wrong flag answer at once; settings.py turns the flags into a run's settings."""
import argparse
from collections.abc import Mapping
from typing import Any

from effnet.command_line import ArgumentParser, parse_bool, parse_variant
from effnet.data.split import DEFAULT_VAL_RATE
from effnet.run_files import RUNS_DIR
from effnet.training.settings import (
    ADAMW_LR,
    AUTO_AUGMENT_NAMES,
    BEST_METRICS,
    DEFAULT_DATA_PATH,
    EMA_DECAY,
    PRESETS,
    TUTORIAL,
    WEIGHT_DECAY,
)
from effnet.variants import IMAGENET

DESCRIPTION = f"""Train EfficientNet on a folder of photos with one sub-folder per class (by default the flower
photos).

    python train.py --num_classes 5                       # B0, ImageNet weights, the flower photos
    python train.py --data-path my_photos                 # your own photos, one folder per class
    python train.py --data-path my_photos --model b3 --epochs 10
    python train.py --data-path my_photos --weights none  # from scratch: no download needed
    python train.py --data-path my_photos --recipe fast   # a short run on a CPU (docs/training.md)
    python train.py --resume runs/20261128-101500-b0      # continue a run that stopped
    python train.py --data-path my_photos --check-data    # only look for copies among the photos
    torchrun --nproc_per_node=4 train.py --data-path my_photos   # one process per GPU

Each run writes a folder {RUNS_DIR}/<date>-<time>-<variant>/ with best.pth, last.pth, metrics.csv, curves.png
and report.html; docs/training.md lists every file.
"""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=DESCRIPTION)
    data = parser.add_argument_group("data").add_argument
    data("--data-path", default=None,
         help=f"folder with one sub-folder of photos per class, or with train/ and val/ (and test/) folders of those, "
              f"a split used as given (default {DEFAULT_DATA_PATH}, downloaded when missing; with --resume: where "
              f"the run's photos are now, if they moved)")
    data("--num_classes", "--num-classes", type=int, default=None,
         help="number of classes; must equal the class folders found (default: however many there are)")
    data("--val-rate", type=float, default=DEFAULT_VAL_RATE,
         help="fraction of each class held out for validation (default 0.2; not with a val/ folder)")
    data("--seed", type=int, default=0, help="seed of the split, the initialisation and the augmentation (default 0)")
    data("--check-data", nargs="?", const="", default=None, metavar="CSV",
         help="only check the photos for copies (identical files, resized or recompressed copies, copies in two "
              "classes or on both sides of the split) and stop; with CSV, also write the groups of copies there "
              "(default: train; every run checks its photos anyway and writes duplicates.csv)")
    data("--drop-duplicates", action="store_true",
         help="leave copies out of the run: every photo of a group that spans classes, and all but one of any other "
              "group (split.json lists what was left out and why; default: keep them, and report them)")
    model = parser.add_argument_group("model").add_argument
    model("--model", default="b0", type=parse_variant, metavar="{b0,...,b7}",
          help="EfficientNet variant, in any letter case (default b0)")
    model("--weights", default=IMAGENET,
          help="starting weights: 'imagenet' (torchvision's, downloaded once), a .pth file (a checkpoint of this "
               "project, a tutorial or torchvision state_dict), or 'none' to train from scratch (default imagenet)")
    model("--freeze-layers", type=parse_bool, nargs="?", const=True, default=False, metavar="{true,false}",
          help="train only the last conv and the classifier, their BatchNorm statistics included (default false, "
               "as in the tutorial: every layer trains)")
    model("--image-size", type=int, default=None,
          help="evaluation crop in pixels, and training's unless --train-crop or --progressive-resizing make it "
               "smaller (default: the variant's, 224 for b0); smaller is faster")
    _add_training_flags(parser)
    _add_recipe_flags(parser)
    _add_output_flags(parser)
    _add_machine_flags(parser)
    return parser


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument_group("training").add_argument
    add("--epochs", type=int, default=30, help="training epochs (default 30)")
    add("--batch-size", type=int, default=16, help="photos per step, per process under torchrun (default 16)")
    add("--lr", type=float, default=0.01,
        help=f"learning rate at the top of the schedule (default 0.01; {ADAMW_LR:g} with --opt adamw)")
    add("--lrf", type=float, default=0.01,
        help="final learning rate as a fraction of --lr, reached along a cosine (default 0.01)")
    add("--resume", default=None, metavar="RUN",
        help="continue a run that stopped: its folder or its last.pth; it keeps its own settings, except "
             f"{', '.join(_flag(name) for name in ('device', 'workers', 'progress', 'report', 'onnx'))}, how it "
             "runs on the hardware, and --data-path (default: a new run)")


def _spelled_out(preset: Mapping[str, Any]) -> str:
    """A preset as the flags that stand for it: '--opt adamw --lr 0.002 ... --zero-init-residual true'."""
    return " ".join(f"{_flag(key)} {str(value).lower() if isinstance(value, bool) else value}"
                    for key, value in preset.items())


def _add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument_group("recipe (default: the tutorial's)").add_argument
    default = TUTORIAL
    modern, fast = (_spelled_out(PRESETS[name]) for name in ("modern", "fast"))
    add("--recipe", choices=list(PRESETS), default=default["recipe"],
        help=f"a preset of the flags below: 'modern' is {modern}; 'fast', for a short run on a CPU, trains on "
             f"crops growing from 0.4 to 0.8 of the validation size, residual blocks starting as the identity: "
             f"{fast} (docs/training.md has its figures); "
             f"flags given explicitly win (default tutorial)")
    add("--opt", choices=list(WEIGHT_DECAY), default=default["opt"],
        help="optimizer: SGD with momentum 0.9 (the tutorial's) or AdamW (default sgd)")
    add("--weight-decay", type=float, default=default["weight_decay"], metavar="WD",
        help=f"weight decay (default {WEIGHT_DECAY['sgd']:g} with SGD, {WEIGHT_DECAY['adamw']:g} with AdamW)")
    add("--warmup-epochs", type=int, default=default["warmup_epochs"], metavar="N",
        help="raise the learning rate linearly over the first N epochs, then follow the cosine (default 0)")
    add("--label-smoothing", type=float, default=default["label_smoothing"], metavar="EPS",
        help="train towards 1-EPS on the true class and EPS spread over all classes (default 0)")
    add("--ema", type=float, nargs="?", const=EMA_DECAY, default=default["ema"], metavar="DECAY",
        help=f"keep a moving average of the weights (DECAY per step, {EMA_DECAY} when omitted); validation scores "
             f"it and best.pth holds it (default off)")
    add("--auto-augment", choices=AUTO_AUGMENT_NAMES, default=default["auto_augment"],
        help="more augmentation after the crop and flip: TrivialAugmentWide or RandAugment (default none)")
    add("--random-erase", type=float, default=default["random_erase"], metavar="P",
        help="erase a random rectangle of each training photo with probability P (default 0)")
    add("--mixup-alpha", type=float, default=default["mixup_alpha"], metavar="ALPHA",
        help="blend each batch with a shuffled copy of itself, pixels and labels, by a Beta(ALPHA, ALPHA) weight "
             "(default 0: off)")
    add("--cutmix-alpha", type=float, default=default["cutmix_alpha"], metavar="ALPHA",
        help="paste a box of another photo of the batch, labels mixed by area; with --mixup-alpha too, each batch "
             "gets one of the two (default 0: off)")
    add("--drop-path", type=float, default=default["drop_path"], metavar="RATE",
        help="stochastic depth: the last block's residual branch is dropped with probability RATE, block i of N "
             "with RATE x i/N (default: the variant's, 0.2)")
    add("--class-weights", choices=("none", "auto"), default=default["class_weights"],
        help="'auto': weight the loss of each class by its inverse frequency in training (default none)")
    add("--balanced-sampling", type=parse_bool, nargs="?", const=True, default=default["balanced_sampling"],
        metavar="{true,false}", help="draw training photos so that every class is drawn equally often (default false)")
    add("--early-stopping", type=int, default=default["early_stopping"], metavar="PATIENCE",
        help="stop when the best metric has not improved for PATIENCE epochs (default off)")
    add("--best-metric", choices=list(BEST_METRICS), default=default["best_metric"],
        help="what best.pth and early stopping go by: validation accuracy or macro F1 (default acc)")
    add("--lr-schedule", choices=("cosine", "onecycle"), default=default["lr_schedule"],
        help="'cosine': the tutorial's, stepped once per epoch; 'onecycle': the same warm-up and cosine, stepped "
             "after every batch, the warm-up rising from --lr/25 (default cosine)")
    add("--progressive-resizing", type=float, default=default["progressive_resizing"], metavar="START",
        help="train the first epochs on smaller crops, START x --image-size (0.5: 112 px for b0), growing in up to "
             "4 stages to --train-crop x --image-size (the full size by default) for the last quarter of the "
             "epochs; validation stays at the full size (default off)")
    add("--train-crop", type=float, default=default["train_crop"], metavar="SHARE",
        help="train on crops of SHARE x --image-size (or the variant's training size), rounded to a multiple of "
             "16 px (0.8: 176 px for b0), and "
             "validate at the full size: a random crop shows objects larger than validation's centre crop does, so "
             "a smaller training crop shows them at about the size validation sees, and each training step costs "
             "about SHARE squared of a full-size one; 0.1 to 1, at least --progressive-resizing's START (default 1)")
    add("--zero-init-residual", type=parse_bool, nargs="?", const=True, default=default["zero_init_residual"],
        metavar="{true,false}",
        help="from scratch (--weights none), start the last BatchNorm scale of every residual block at 0, so that "
             "each block starts as the identity and the network starts as a shallower one; starting weights "
             "replace it (default false)")


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument_group("output").add_argument
    add("--output-dir", default=RUNS_DIR, help=f"where run folders are created (default {RUNS_DIR}/)")
    add("--name", default=None, help="run folder name (default <date>-<time>-<variant>)")
    add("--progress", type=parse_bool, nargs="?", const=True, default=None, metavar="{true,false}",
        help="progress bars (default: on a terminal; written to a file, a run prints one line per epoch)")
    add("--report", type=parse_bool, nargs="?", const=True, default=TUTORIAL["report"], metavar="{true,false}",
        help="after the last epoch, score best.pth on every photo: report.html, label_issues.csv and a test/ "
             "set's results (default true)")
    add("--onnx", type=parse_bool, nargs="?", const=True, default=TUTORIAL["onnx"], metavar="{true,false}",
        help="after the last epoch, export best.onnx beside best.pth for predict.py's fast path (default true)")


def _add_machine_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument_group("hardware and distributed (torchrun)").add_argument
    add("--device", default=None, help="'cuda', 'cuda:1', 'cpu', ... (default: the first CUDA device, else CPU)")
    add("--workers", type=int, default=None,
        help="data-loading processes (default: min(CPUs this process may use, batch size, 8); 0 on the CPU of a "
             "machine with 2 usable CPUs or fewer, where PyTorch's threads take them all)")
    add("--channels-last", type=parse_bool, nargs="?", const=True, default=True, metavar="{true,false}",
        help="NHWC memory layout, faster for convolutions on CPUs and GPUs (default true)")
    add("--amp", type=parse_bool, nargs="?", const=True, default=True, metavar="{true,false}",
        help="mixed precision on CUDA: bfloat16 where supported, else float16 (default true; the CPU trains in "
             "float32, faster there)")
    add("--compile", action="store_true", help="torch.compile the model (slow start, faster steps; default off)")
    add("--grad-checkpointing", action="store_true",
        help="recompute activations in the backward pass: far less memory, slower steps (default off)")
    add("--sync-bn", action="store_true",
        help="synchronise BatchNorm statistics across GPUs under torchrun (default off)")


def given_flags(argv: list[str] | None) -> set[str]:
    """The destinations of the flags written on the command line (not those left at their defaults)."""
    parser = build_parser()
    for action in parser._actions:  # argparse offers no public way to drop the defaults of a built parser
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))
