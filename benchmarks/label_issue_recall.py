"""How many planted label errors a run's label_issues.csv finds (docs/benchmarks.md, "Data checks").

    python -m benchmarks.label_issue_recall                               # the quick try on data/flower_sample
    python -m benchmarks.label_issue_recall --epochs 60 --image-size 128   # a longer run

Copies the photos, moves --flips of them (as evenly over the classes as it goes) into another class chosen
at random, then trains from scratch as README's quick try does (--weights none --recipe modern, --image-size
and --epochs as given) and reads the run's label_issues.csv: how many photos it lists, how many of the moved
ones it lists and at which ranks, and how many of its first --flips rows are moved photos.
"""
import argparse
import csv
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from effnet.data.class_folders import scan_class_folders
from effnet.data.flower_photos import FLOWER_SAMPLE

REPO = Path(__file__).resolve().parents[1]


def plant_errors(photos: Path, target: Path, flips: int, seed: int) -> set[str]:
    """Copy the class folders of `photos` to `target` and move `flips` photos into another class; their paths."""
    rng = random.Random(seed)
    found = scan_class_folders(photos)
    for name, paths in found.images.items():
        (target / name).mkdir(parents=True)
        for path in paths:
            shutil.copy(path, target / name / Path(path).name)
    moved = set()
    for number in range(flips):
        source = found.classes[number % len(found.classes)]
        photo = rng.choice(sorted(p for p in (target / source).iterdir() if not p.name.startswith("moved_")))
        destination = target / rng.choice([name for name in found.classes if name != source]) / f"moved_{photo.name}"
        photo.rename(destination)
        moved.add(str(destination))
    return moved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(FLOWER_SAMPLE), help="a class-per-folder tree (default "
                                                                   "data/flower_sample)")
    parser.add_argument("--flips", type=int, default=10, help="photos moved into a wrong class (default 10)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0, help="which photos move, and the run's seed")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "photos"
        moved = plant_errors(Path(args.photos), data, args.flips, args.seed)
        subprocess.run([sys.executable, str(REPO / "train.py"), "--data-path", str(data), "--weights", "none",
                        "--recipe", "modern", "--image-size", str(args.image_size), "--epochs", str(args.epochs),
                        "--seed", str(args.seed), "--progress", "false", "--output-dir", str(Path(scratch) / "runs"),
                        "--name", "run"], cwd=REPO, check=True)
        with open(Path(scratch) / "runs" / "run" / "label_issues.csv", newline="") as file:
            listed = [row["path"] for row in csv.DictReader(file)]
    ranks = sorted(rank for rank, path in enumerate(listed, 1) if path in moved)
    print(f"\nlabel_issues.csv lists {len(listed)} photos; {len(ranks)} of the {len(moved)} moved ones, at ranks "
          f"{ranks}; {sum(rank <= len(moved) for rank in ranks)} of its first {len(moved)} rows are moved photos")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
