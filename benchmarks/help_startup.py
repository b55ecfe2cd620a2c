"""How fast each program answers `--help`, against the time `python -c "import torch"` takes on the same machine.

    python -m benchmarks.help_startup               # from the repository root; about a minute on a quiet machine
    python -m benchmarks.help_startup --rounds 2    # a quick look

Every program reads its flags before PyTorch is imported, so `--help` (and a mistyped flag) should come back in a
fraction of PyTorch's import time: the goal is under half of it. Each round runs every command once, in turn, as a
fresh process; the median of the rounds is reported, so a busy moment hits every command alike.
"""
import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = ("train", "predict", "evaluate", "export", "app")
GOAL = 0.5  # the largest fraction of PyTorch's import time that --help may take


def wall_time(command: list[str]) -> float:
    """Seconds from starting `command` to its exit (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(rounds: int) -> dict[str, float]:
    """Median seconds of each command over `rounds` rounds."""
    commands = {"import torch": [sys.executable, "-c", "import torch"],
                **{f"{name}.py --help": [sys.executable, f"{name}.py", "--help"] for name in PROGRAMS}}
    times: dict[str, list[float]] = {label: [] for label in commands}
    wall_time(commands["import torch"])  # a first import fills the file cache: not what a user waits for twice
    for _ in range(rounds):
        for label, command in commands.items():
            times[label].append(wall_time(command))
    return {label: statistics.median(values) for label, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="times each command runs (default 7)")
    args = parser.parse_args(argv)
    medians = measure(max(1, args.rounds))
    torch_time = medians.pop("import torch")
    print(f"| command | median of {args.rounds} | share of `import torch` ({torch_time:.2f} s) | under {GOAL:.0%} |")
    print("|---|---|---|---|")
    for label, seconds in medians.items():
        share = seconds / torch_time
        print(f"| `python {label}` | {seconds:.2f} s | {share:.0%} | {'yes' if share < GOAL else 'NO'} |")
    return 0 if all(seconds < GOAL * torch_time for seconds in medians.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
