"""Time to accuracy: --recipe fast against --recipe modern and --recipe tutorial, side by side, from scratch.

    python -m benchmarks.time_to_accuracy --data ../shared/data/flower_photos_mini --seeds 0 1
    python -m benchmarks.time_to_accuracy --data data/flower_sample --seeds 0 1 --image-size 160

Each run is `python train.py --recipe R --epochs E --seed S --weights none ...` in its own process, one after the
other, the recipes' order turned by one from seed to seed, so that a drift of the machine hits each alike. An
epoch's time is read as its line appears on train.py's output: wall seconds from the process's start to the end of
that epoch's validation (start-up, the data check and every evaluation included). A seed's target is the best
validation accuracy --recipe modern (the first contender given that is modern without more flags) reaches in its
--epochs; a run's time to accuracy is the wall time until its validation accuracy first reaches that target.
Keep the machine otherwise idle: on 2 cores any other busy process slows a training step several-fold.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from effnet.data.flower_photos import FLOWER_SAMPLE

REPO = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+: .*\| val loss \S+ acc ([\d.]+) \|")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--data", type=Path, default=FLOWER_SAMPLE, help="class folders (default data/flower_sample)")
    add("--seeds", type=int, nargs="+", default=[0, 1], help="--seed of each repetition (default 0 1)")
    add("--recipes", nargs="+", default=["modern", "fast:12", "tutorial"], metavar="RECIPE[:EPOCHS][ FLAGS]",
        help="the --recipe of each contender, with its --epochs after a colon and more train.py flags after a "
             "space: 'fast:12 --lr 0.003' (default modern fast:12 tutorial)")
    add("--epochs", type=int, default=8, help="epochs of a contender that names none (default 8)")
    add("--image-size", type=int, default=None, help="--image-size of every run (default: the variant's, 224)")
    add("--batch-size", type=int, default=16, help="default 16")
    add("--extra", default="", help="more train.py flags for every run, in one string (default none)")
    add("--output-dir", type=Path, default=Path("experiment_runs/time_to_accuracy"),
        help="run folders and results.jsonl (default experiment_runs/time_to_accuracy/)")
    return parser


def recipe_and_epochs(contender: str) -> tuple[str, str]:
    """'fast:12 --lr 0.003' -> ('fast', '12'); 'modern' -> ('modern', '')."""
    recipe, _, epochs = contender.split()[0].partition(":")
    return recipe, epochs


def train_run(args: argparse.Namespace, contender: str, seed: int) -> dict:
    """One train.py run: (epoch, wall seconds since start, validation accuracy) of each epoch, as they appear."""
    recipe, epochs = recipe_and_epochs(contender)
    name = f"{recipe}{epochs}-seed{seed}-{time.strftime('%H%M%S')}"
    command = [sys.executable, str(REPO / "train.py"), "--data-path", str(args.data), "--weights", "none",
               "--recipe", recipe, "--epochs", epochs or str(args.epochs), "--seed", str(seed), "--batch-size",
               str(args.batch_size), "--output-dir", str(args.output_dir), "--name", name, "--progress", "false",
               "--report", "false", "--onnx", "false", *(["--image-size", str(args.image_size)] if args.image_size
                                                         else []), *contender.split()[1:], *args.extra.split()]
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(command[1:])}", flush=True)
    epochs, start = [], time.perf_counter()
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as process:
        for line in process.stdout:
            found = EPOCH_LINE.match(line)
            if found:
                epochs.append((int(found.group(1)), round(time.perf_counter() - start, 1), float(found.group(2))))
        error = process.stderr.read()
    if process.returncode != 0:
        raise SystemExit(f"error: {contender} (seed {seed}) failed with status {process.returncode}:\n{error[-2000:]}")
    return {"recipe": contender, "seed": seed, "epochs": epochs, "seconds": round(time.perf_counter() - start, 1),
            "best": max(acc for _, _, acc in epochs), "command": " ".join(command[1:])}


def time_to(run: dict, target: float) -> float | None:
    """Wall seconds until the run's validation accuracy first reached `target`, or None."""
    return next((seconds for _, seconds, acc in run["epochs"] if acc >= target - 1e-9), None)


def report(runs: list[dict], recipes: list[str]) -> str:
    lines = ["| seed | recipe | best val acc (epoch) | wall s | s to modern's best | share of modern's wall time |",
             "|---|---|---|---|---|---|"]
    shares: dict[str, list[float]] = {recipe: [] for recipe in recipes}
    # the target: the first contender given that is --recipe modern (with no flags, where there is one), whatever
    # order the seed ran them in
    moderns = [recipe for recipe in recipes if recipe_and_epochs(recipe)[0] == "modern"]
    target_recipe = next((recipe for recipe in moderns if len(recipe.split()) == 1), moderns[0] if moderns else None)
    for seed in sorted({run["seed"] for run in runs}):
        mine = {run["recipe"]: run for run in runs if run["seed"] == seed}
        modern = mine.get(target_recipe)
        target = modern["best"] if modern else max(run["best"] for run in mine.values())
        for recipe in recipes:
            run = mine[recipe]
            reached = time_to(run, target)
            best_epoch = next(epoch for epoch, _, acc in run["epochs"] if acc == run["best"])
            share = reached / modern["seconds"] if reached is not None and modern else None
            if share is not None:
                shares[recipe].append(share)
            lines.append(f"| {seed} | {recipe} | {run['best']:.3f} ({best_epoch}) | {run['seconds']:.0f} | "
                         f"{'not reached' if reached is None else f'{reached:.0f}'} | "
                         f"{'-' if share is None else f'{share:.2f}'} |")
    if target_recipe is None:
        return "\n".join(lines)  # no modern run: no shares of its time to sum up
    seeds = len({run["seed"] for run in runs})
    return "\n".join(lines) + "\n\nshare of modern's wall time to reach modern's best: " + "; ".join(
        f"{recipe} {summary(values, seeds)}" for recipe, values in shares.items())


def summary(shares: list[float], seeds: int) -> str:
    """A contender's shares over the seeds: their median when it reached the target on every seed; otherwise on
    how many seeds it did, with those shares (a median of the successes alone would hide the misses)."""
    if len(shares) == seeds:
        return f"median {np.median(shares):.2f}"
    return f"reached on {len(shares)} of {seeds} seeds" + (f" ({', '.join(f'{s:.2f}' for s in shares)})" if shares
                                                            else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.data.is_dir():
        print(f"error: --data {args.data} is not a folder of class folders", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for turn, seed in enumerate(args.seeds):
        order = args.recipes[turn % len(args.recipes):] + args.recipes[:turn % len(args.recipes)]
        for recipe in order:
            runs.append(train_run(args, recipe, seed))
            with open(args.output_dir / "results.jsonl", "a") as log:
                log.write(json.dumps(runs[-1]) + "\n")
    print(f"\n{args.data}, batch {args.batch_size}, from scratch, {os.cpu_count()} CPUs; "
          f"{', '.join(args.recipes)} (epochs after the colon, else {args.epochs})\n{report(runs, args.recipes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
