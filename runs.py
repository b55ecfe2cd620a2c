"""A run folder, runs/<date>-<time>-<variant>/: what train.py writes there, and reads back to resume.

| file | written |
|---|---|
| class_indices.json, split.json, recipe.json, class_distribution.png | when the run starts |
| last.pth (every epoch), best.pth (when validation improves), metrics.csv, curves.png, TensorBoard events | after each epoch |
| confusion_matrix.png | when the run ends |

Every file is written atomically (files.py), so a run killed at any moment resumes from its last epoch.
"""
import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import figures
from cli import UsageError
from distributed import Distributed, broadcast_object
from files import save_checkpoint, write_csv, write_json
from utils import DataSplit
from weights import read_weights_file

# settings that may differ when a run is resumed: where and how fast it runs, not what it computes
MACHINE_SETTINGS = ("resume", "device", "workers", "progress", "channels_last", "compile", "grad_checkpointing",
                    "sync_bn")


# ---------------------------------------------------------------------------------------------------------------
# Resuming


def find_resume_checkpoint(resume: str) -> Path:
    path = Path(resume)
    if path.is_dir():
        path = path / "last.pth"
    if not path.is_file():
        raise UsageError(f"--resume {resume}: no {path}; give a run folder or its last.pth (a run stopped "
                         f"during its first epoch has none: start it again)")
    return path


def read_resume_checkpoint(path: Path) -> dict[str, Any]:
    checkpoint = read_weights_file(path)
    needed = ("args", "optimizer", "scheduler", "epoch", "history")
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in needed):
        raise UsageError(f"--resume {path}: not a training checkpoint of this project (no optimizer or "
                         f"schedule state); to start from its weights use --weights {path}")
    if not (path.parent / "split.json").is_file():
        raise UsageError(f"--resume {path}: {path.parent / 'split.json'} is missing, so the run's "
                         f"train/validation split is unknown; start a new run with --weights {path}")
    return checkpoint


def read_saved_split(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "split.json").read_text())


def resumed_args(args: argparse.Namespace, saved: Mapping[str, Any], given: set[str]) -> argparse.Namespace:
    """The run's saved settings, with this invocation's machine settings; warns about flags left unused."""
    merged = dict(saved)
    for key in MACHINE_SETTINGS:
        merged[key] = getattr(args, key)
    ignored = [f"--{key.replace('_', '-')}" for key in sorted(given)
               if key not in MACHINE_SETTINGS and key != "data_path" and getattr(args, key) != saved.get(key)]
    if ignored and int(os.environ.get("RANK", "0")) == 0:
        print(f"note: a resumed run keeps its own settings; ignoring {', '.join(ignored)}", file=sys.stderr)
    return argparse.Namespace(**merged)


def resumed_data_root(requested: str | None, saved_split: Mapping[str, Any], saved_path: str) -> str:
    """Where the resumed run's images are: --data-path if given, else where they were (absolute, so a
    resume from another working directory still finds them)."""
    candidates = [requested] if requested is not None else [saved_split.get("root", saved_path), saved_path]
    for candidate in candidates:
        if os.path.isdir(candidate):
            return os.path.abspath(candidate)
    raise UsageError(f"--resume: the run's images are no longer in {candidates[0]}; pass --data-path "
                     f"with their new location")


# ---------------------------------------------------------------------------------------------------------------
# Writing


def new_run_dir(output_dir: str, name: str | None, variant: str) -> Path:
    base = name or f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{variant}"
    run_dir = Path(output_dir) / base
    suffix = 1
    while run_dir.exists():
        if name:
            raise UsageError(f"run folder {run_dir} already exists; choose another --name or --resume it")
        suffix += 1
        run_dir = Path(output_dir) / f"{base}-{suffix}"
    return run_dir


class RunFolder:
    """One run's folder. Only the main process writes (`writes`); every process knows the path."""

    def __init__(self, path: Path, writes: bool = True) -> None:
        self.path = path
        self.writes = writes
        self._tensorboard: Any = None

    @classmethod
    def create(cls, output_dir: str, name: str | None, variant: str, ddp: Distributed) -> "RunFolder":
        """A new, empty run folder; rank 0 picks its name (the clocks of the processes differ)."""
        path = broadcast_object(new_run_dir(output_dir, name, variant) if ddp.is_main else None)
        if ddp.is_main:
            try:
                path.mkdir(parents=True)
            except OSError as error:
                raise UsageError(f"cannot create the run folder {path} ({error.strerror}); choose "
                                 f"another --output-dir") from None
        return cls(path, ddp.is_main)

    def write_start(self, split: DataSplit, recipe: Mapping[str, Any]) -> None:
        if not self.writes:
            return
        write_json(self.path / "class_indices.json", {str(i): name for i, name in enumerate(split.classes)})
        write_json(self.path / "split.json", split.to_json())
        write_json(self.path / "recipe.json", recipe)
        figures.plot_class_distribution(split.classes, split.counts(split.train_labels),
                                        split.counts(split.val_labels), self.path / "class_distribution.png")

    def write_epoch(self, checkpoint: Mapping[str, Any], improved: bool, history: Sequence[Mapping[str, float]]) -> None:
        """best.pth (when improved), last.pth, metrics.csv, curves.png and TensorBoard scalars."""
        if not self.writes:
            return
        if improved:
            save_checkpoint(checkpoint, self.path / "best.pth")
        save_checkpoint(checkpoint, self.path / "last.pth")
        write_csv(self.path / "metrics.csv", history)
        figures.plot_curves(history, self.path / "curves.png")
        self._log_scalars(history[-1])

    def write_end(self, confusion: Any, classes: Sequence[str], best_epoch: int) -> None:
        if self.writes:
            figures.plot_confusion_matrix(confusion, classes, self.path / "confusion_matrix.png",
                                          title=f"validation, best epoch {best_epoch}")

    def saved_so_far(self) -> str:
        if (self.path / "last.pth").is_file():
            return f"{self.path / 'last.pth'} holds the last completed epoch"
        return "no epoch was completed, so no checkpoint was saved"

    def best_confusion(self) -> Any:
        """The confusion matrix saved with best.pth, or None."""
        best = self.path / "best.pth"
        return read_weights_file(best).get("confusion") if best.is_file() else None

    def _log_scalars(self, row: Mapping[str, float]) -> None:
        if self._tensorboard is None:
            self._tensorboard = _tensorboard_writer(self.path)
        if self._tensorboard:
            for key, value in row.items():
                if key != "epoch":
                    self._tensorboard.add_scalar(key, value, row["epoch"])
            self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard:
            self._tensorboard.close()


def _tensorboard_writer(run_dir: Path) -> Any:
    """A TensorBoard writer into the run folder, or False when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return False
    return SummaryWriter(log_dir=str(run_dir))
