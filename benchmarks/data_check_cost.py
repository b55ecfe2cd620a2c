"""What the data check costs against one training epoch at the default settings, and its memory
(docs/benchmarks.md, "Data checks"). Run it on a quiet machine: it times train.py.

    python -m benchmarks.data_check_cost                                  # data/flower_sample, then x10
    python -m benchmarks.data_check_cost --photos ~/flower_photos_mini   # any class-per-folder tree

Two data sets: the photos as they are, and the photos each with COPIES transformed copies (resized,
recompressed, cropped: benchmarks/duplicate_detection.py's transforms) in the same class folders, a set ten
times as large with as many copies as it can hold. For each, `python train.py --data-path SET --weights none
--epochs 1` runs with every other flag at its default (B0, 224 px, batch 16, every layer trains; --weights none
only because ImageNet weights cannot be downloaded everywhere, and it computes the same); the check's time is
the one train.py prints, the epoch's the time from the line that starts it to the line that ends it
(training and validation); the process is stopped after that line. The files are read once beforehand, so
that neither the check nor the epoch pays for a cold disk cache. Then, in this process, the peak memory
Python allocates during the check (tracemalloc: numpy arrays included, Pillow's decoding buffers not) and the
time and peak memory of comparing 50,000 random picture hashes, where a matrix of all pairs would need 40 GB.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from benchmarks.duplicate_detection import TRANSFORMS
from effnet.data.class_folders import scan_class_folders
from effnet.data.duplicates import check_images, close_pairs
from effnet.data.flower_photos import FLOWER_SAMPLE
from effnet.data.images import open_image, to_rgb

COPIES = 9
SYNTHETIC_HASHES = 50_000
REPO = Path(__file__).resolve().parents[1]


def replicated(photos: Path, target: Path, copies: int) -> Path:
    """target/<class>/: every photo of `photos` and `copies` transformed copies of it."""
    transforms = list(TRANSFORMS.values())
    for class_name, paths in scan_class_folders(photos).images.items():
        (target / class_name).mkdir(parents=True)
        for path in paths:
            (target / class_name / os.path.basename(path)).write_bytes(Path(path).read_bytes())
            with open_image(path) as opened:
                picture = to_rgb(opened)
            for number in range(copies):
                data = transforms[number % len(transforms)](picture)
                (target / class_name / f"copy{number}_{Path(path).stem}.jpg").write_bytes(data)
    return target


def warm(folder: Path) -> int:
    """Read every file once, so that the disk cache holds them all; the number of files."""
    files = [path for path in folder.rglob("*") if path.is_file()]
    for path in files:
        path.read_bytes()
    return len(files)


def one_epoch(data: Path, runs: Path) -> tuple[float, float]:
    """(seconds of train.py's data check, seconds of its first epoch) at the default settings."""
    command = [sys.executable, str(REPO / "train.py"), "--data-path", str(data), "--weights", "none", "--epochs",
               "1", "--progress", "false", "--output-dir", str(runs)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    check = started = None
    try:
        for line in process.stdout:
            print(f"  | {line.rstrip()}")
            found = re.match(r"data check of \d+ images \(([\d.]+) s", line)
            if found:
                check = float(found.group(1))
            if "; run folder " in line:
                started = time.perf_counter()
            if line.startswith("epoch 1/1") and started is not None:
                return check, time.perf_counter() - started
    finally:
        process.kill()  # the epoch is measured: the end of the run (export, report) is not
        process.wait()
    raise RuntimeError(f"train.py ended before its first epoch did (exit status {process.returncode})")


def check_memory(data: Path) -> tuple[int, float]:
    """(images, peak MiB Python allocated during a fresh check of `data`)."""
    entries = [(path, name, "train") for name, paths in scan_class_folders(data).images.items() for path in paths]
    check_images(entries[:2], str(data))  # what the first call sets up once is not the check's to pay
    tracemalloc.start()
    check_images(entries, str(data))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return len(entries), peak / 2**20


def synthetic_comparison(count: int) -> tuple[float, float]:
    """(seconds, peak MiB) of comparing `count` random 128-bit hashes with each other."""
    words = np.random.default_rng(0).integers(0, 2**63, (count, 2), dtype=np.int64)
    hashes = [int(a) << 64 | int(b) for a, b in words]
    tracemalloc.start()
    started = time.perf_counter()
    sum(1 for _ in close_pairs(hashes))
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(FLOWER_SAMPLE), help="a class-per-folder tree of photos "
                                                                   "(default data/flower_sample)")
    parser.add_argument("--copies", type=int, default=COPIES, help=f"copies of each photo in the larger set "
                                                                    f"(default {COPIES})")
    parser.add_argument("--hashes", type=int, default=SYNTHETIC_HASHES, help="random hashes compared at the end")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        sets = {"the photos": Path(args.photos),
                f"with {args.copies} copies each": replicated(Path(args.photos), Path(scratch) / "set", args.copies)}
        for name, data in sets.items():
            warm(data)
            check, epoch = one_epoch(data, Path(scratch) / "runs")
            images, peak = check_memory(data)
            rows.append(f"| {name} | {images} | {check:.1f} s | {epoch:.1f} s | {check / epoch:.3f} | {peak:.1f} MiB |")
    seconds, peak = synthetic_comparison(args.hashes)
    print("\n| set | images | data check | one epoch (default settings) | check / epoch | check's peak memory |\n"
          "|---|---|---|---|---|---|\n" + "\n".join(rows))
    print(f"\ncomparing {args.hashes:,} random picture hashes: {seconds:.1f} s, peak {peak:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
