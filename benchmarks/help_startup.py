"""How fast each program answers `--help`, against the time `python -c "import torch"` takes on the same machine.

    python -m benchmarks.help_startup               # from the repository root; about a minute on a quiet machine
    python -m benchmarks.help_startup --rounds 2    # a quick look

Every program reads its flags before PyTorch is imported, so `--help` (and a mistyped flag) should come back in a
fraction of PyTorch's import time: the goal is under half of it. Each round runs every command once, in turn, as a
fresh process; the median of the rounds is reported, so a busy moment hits every command alike.
"""
import argparse
import sys

from benchmarks.deployment import alternate_processes

PROGRAMS = ("train", "predict", "evaluate", "export", "app")
GOAL = 0.5  # the largest fraction of PyTorch's import time that --help may take


def measure(rounds: int) -> dict[str, float]:
    """Median seconds of each command over `rounds` alternating rounds, after a warm-up run of each (a first
    import fills the file cache: not what a user waits for twice)."""
    commands = {"import torch": [sys.executable, "-c", "import torch"],
                **{f"{name}.py --help": [sys.executable, f"{name}.py", "--help"] for name in PROGRAMS}}
    return {label: seconds for label, (seconds, _) in alternate_processes(commands, rounds).items()}


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
