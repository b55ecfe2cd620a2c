"""Reproduce the training-recipe experiments recorded in docs/benchmarks.md ("Training recipe").

    python -m benchmarks.training_recipes ablation  --seeds 0 1      # which options help: one run per combination
    python -m benchmarks.training_recipes recipes   --seeds 1 2      # --recipe tutorial against --recipe modern
    python -m benchmarks.training_recipes imbalance --seeds 0 1      # one class cut to a fifth, with and without
                                                                     # class weights

Every run is its own `python train.py ...` process, as a user would start it, one after another and
single-threaded (--threads); all train
EfficientNet-B0 from scratch (no ImageNet weights are reachable here) on the photos of --data at --image-size
for --epochs. Results are printed as Markdown tables and kept, with each run's folder, under --output-dir.

The imbalanced data set is built in a temporary folder of symbolic links: from each class of --data a fixed
--test-per-class photos are held out as a balanced test set, and of the rest the --minority class keeps a
fifth. Its runs are scored on that test set with their last checkpoint (no choice of epoch on the test set).
"""
import argparse
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from effnet.data.flower_photos import FLOWER_SAMPLE
from effnet.data.images import is_image_name
from effnet.inference.classifier import Classifier
from effnet.reports import metrics
from effnet.reports.scoring import evaluate_images

REPO = Path(__file__).resolve().parents[1]

# Short names: "adamw" is AdamW at --lr 0.002 with 2 warm-up epochs, "ls" label smoothing 0.1, "ema" --ema 0.999,
# "ta" TrivialAugment, "mix" mixup 0.2 / CutMix 1.0, "-droppath" without stochastic depth. Seeds 0 and 1 picked
# the preset (--recipe modern = "adamw"); `recipes` confirms it on other seeds.
ADAMW = ["--opt", "adamw", "--lr", "0.002", "--warmup-epochs", "2"]
LS, EMA, TA = ["--label-smoothing", "0.1"], ["--ema", "0.999"], ["--auto-augment", "trivialaugment"]
MIX = ["--mixup-alpha", "0.2", "--cutmix-alpha", "1.0"]
ABLATION: dict[str, list[str]] = {
    "tutorial": [], "adamw": ADAMW, "adamw+ls": [*ADAMW, *LS], "adamw+ls+ema": [*ADAMW, *LS, *EMA],
    "adamw+ls+ema+ta": [*ADAMW, *LS, *EMA, *TA], "adamw+ls+ema+mix": [*ADAMW, *LS, *EMA, *MIX],
    "adamw+ema": [*ADAMW, *EMA], "adamw+mix": [*ADAMW, *MIX], "adamw-droppath": [*ADAMW, "--drop-path", "0"],
}
RECIPES = {"--recipe tutorial": ["--recipe", "tutorial"], "--recipe modern": ["--recipe", "modern"]}
IMBALANCE_ARMS = {"plain loss": [], "--class-weights auto": ["--class-weights", "auto"],
                  "--balanced-sampling": ["--balanced-sampling"]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=("ablation", "recipes", "imbalance"))
    parser.add_argument("--data", type=Path, default=FLOWER_SAMPLE,
                        help="class folders (default data/flower_sample, the photos that ship with the project)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="--seed of each repetition (default 0)")
    parser.add_argument("--arms", nargs="+", default=None, metavar="ARM",
                        help=f"ablation: only these arms ({', '.join(ABLATION)}; default all)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of every run (default 20)")
    parser.add_argument("--image-size", type=int, default=96, help="train and evaluation size (default 96)")
    parser.add_argument("--batch-size", type=int, default=16, help="default 16")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes per run (default 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="PyTorch threads per run (OMP_NUM_THREADS; default 1: the figures then do not depend "
                             "on the machine's core count, and a shared machine wastes no time on spinning threads)")
    parser.add_argument("--output-dir", type=Path, default=Path("experiment_runs"),
                        help="run folders and results.jsonl go here (default experiment_runs/)")
    parser.add_argument("--minority", default="roses", help="imbalance: the class cut to a fifth (default roses)")
    parser.add_argument("--test-per-class", type=int, default=12,
                        help="imbalance: photos per class held out as the balanced test set (default 12)")
    return parser


def train_run(args: argparse.Namespace, data: Path, name: str, seed: int, flags: Sequence[str]) -> dict:
    """One `python train.py` run; its figures from metrics.csv (best and last epoch) and the wall time."""
    folder_name = re.sub(r"[^A-Za-z0-9]+", "-", f"{args.experiment} {name} seed{seed}").strip("-")
    command = [sys.executable, str(REPO / "train.py"), "--data-path", str(data), "--output-dir",
               str(args.output_dir), "--name", folder_name, "--seed", str(seed), "--weights", "none",
               "--epochs", str(args.epochs), "--image-size", str(args.image_size), "--batch-size",
               str(args.batch_size), "--workers", str(args.workers), "--progress", "false", *flags]
    run = args.output_dir / folder_name
    print(f"[{time.strftime('%H:%M:%S')}] {name}, seed {seed}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"error: {name} (seed {seed}) failed with status {result.returncode}:\n{result.stderr}")
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    table = [dict(zip(rows[0], map(float, row))) for row in rows[1:]]
    return {"experiment": args.experiment, "name": name, "seed": seed, "flags": list(flags), "run": str(run),
            "seconds": round(seconds, 1), "epochs_run": len(table),
            "best_val_acc": max(r["val_acc"] for r in table), "last_val_acc": table[-1]["val_acc"],
            "best_val_macro_f1": max(r["val_macro_f1"] for r in table), "last_val_macro_f1": table[-1]["val_macro_f1"]}


def imbalanced_copy(data: Path, target: Path, minority: str, test_per_class: int) -> tuple[Path, Path]:
    """(training folder with `minority` cut to a fifth, balanced test folder), as symbolic links."""
    classes = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    if minority not in classes:
        raise SystemExit(f"error: --minority {minority}: no such class folder in {data} ({', '.join(classes)})")
    rng = random.Random(0)  # the same held-out photos for every seed and every arm
    for name in classes:
        photos = sorted(p for p in (data / name).iterdir() if is_image_name(p.name))
        rng.shuffle(photos)
        test, train = photos[:test_per_class], photos[test_per_class:]
        if name == minority:
            train = train[:max(2, len(train) // 5)]
        for folder, chosen in ((target / "train" / name, train), (target / "test" / name, test)):
            folder.mkdir(parents=True)
            for photo in chosen:
                (folder / photo.name).symlink_to(photo.resolve())
    return target / "train", target / "test"


def test_scores(checkpoint: Path, test_root: Path, minority: str) -> dict:
    """Accuracy, macro F1 and the minority class's recall of `checkpoint` on the balanced test folder."""
    classifier = Classifier.from_weights(checkpoint)
    names = classifier.class_names
    photos = [(str(photo), label) for label, name in enumerate(names) for photo in sorted((test_root / name).iterdir())]
    confusion = evaluate_images(classifier, [path for path, _ in photos], [label for _, label in photos]).confusion()
    summary = metrics.summary(confusion)
    recall = metrics.per_class(confusion)["recall"][names.index(minority)]
    return {"test_acc": summary["accuracy"], "test_macro_f1": summary["macro_f1"],
            "test_minority_recall": float(recall)}


def run_experiment(args: argparse.Namespace) -> list[dict]:
    results = []
    imbalance = args.experiment == "imbalance"
    with tempfile.TemporaryDirectory(prefix="imbalanced-") if imbalance else contextlib.nullcontext() as scratch:
        if imbalance:
            data, test_root = imbalanced_copy(args.data, Path(scratch), args.minority, args.test_per_class)
        else:
            data, test_root = args.data, None
        arms = {"ablation": ABLATION, "recipes": RECIPES, "imbalance": IMBALANCE_ARMS}[args.experiment]
        arms = {name: flags for name, flags in arms.items() if args.arms is None or name in args.arms}
        for seed in args.seeds:
            for name, flags in arms.items():
                result = train_run(args, data, name, seed, flags)
                if test_root is not None:
                    result.update(test_scores(Path(result["run"]) / "last.pth", test_root, args.minority))
                results.append(result)
                with open(args.output_dir / "results.jsonl", "a") as log:
                    log.write(json.dumps(result) + "\n")
    return results


def markdown_table(results: list[dict], columns: Sequence[str]) -> str:
    """One row per arm: each column's mean over the seeds, and the per-seed values in brackets."""
    names = list(dict.fromkeys(r["name"] for r in results))
    lines = [f"| arm | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
    for name in names:
        mine = [r for r in results if r["name"] == name]
        cells = []
        for column in columns:
            values, form = [r[column] for r in mine], "{:.0f}" if column == "seconds" else "{:.3f}"
            shown = " / ".join(form.format(v) for v in values)
            cells.append(f"{form.format(np.mean(values))} ({shown})" if len(values) > 1 else shown)
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = set(args.arms or ()) - set(ABLATION)
    if unknown:
        print(f"error: --arms {' '.join(sorted(unknown))}: no such arm; choose from {', '.join(ABLATION)}",
              file=sys.stderr)
        return 2
    if not args.data.is_dir():
        print(f"error: --data {args.data} is not a folder of class folders", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    results = run_experiment(args)
    columns = ["best_val_acc", "last_val_acc", "best_val_macro_f1", "seconds"]
    if args.experiment == "imbalance":
        columns = ["test_acc", "test_macro_f1", "test_minority_recall", "last_val_macro_f1", "seconds"]
    print(f"\nseeds {args.seeds}, {args.epochs} epochs at {args.image_size} px, batch {args.batch_size}, "
          f"from scratch; mean (per seed)\n{markdown_table(results, columns)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
