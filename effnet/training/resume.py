"""Continuing a run that stopped: finding and checking its last checkpoint and split.json (a damaged or hand-edited
file is one clear line naming what to do), its settings, where its photos are now, and the optimizer, schedule and
history as it left them. A resumed run then trains exactly as the uninterrupted one would have."""
import argparse
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from effnet.atomic_files import remove_leftovers
from effnet.checkpoints import WeightsError, checkpoint_header, read_weights_file
from effnet.command_line import UsageError
from effnet.data.split import DataSplit
from effnet.run_files import LAST_CHECKPOINT
from effnet.training.progress import Progress
from effnet.training.recipe import TrainingSteps
from effnet.training.run_folder import RunFolder, continue_hint, is_whole_number
from effnet.training.settings import TrainSettings, resumed_settings
from effnet.training.steps import StepSettings
from effnet.variants import VARIANTS


@dataclass
class Resumed:
    """A stopped run being continued: its settings, last checkpoint, folder and split."""

    settings: TrainSettings
    checkpoint: dict[str, Any]
    folder: RunFolder
    split: DataSplit


def resume_run(flags: argparse.Namespace, given: set[str]) -> Resumed:
    """The run that --resume names, checked: its last checkpoint, its own settings (with this command line's
    machine settings) and its split, with the photos where they are now."""
    if flags.check_data is not None:  # a resumed run would take its saved settings, which check nothing
        raise UsageError("--check-data checks a data folder without training; leave out --resume (a run's own "
                         "check is in its duplicates.csv)")
    path = find_resume_checkpoint(flags.resume)
    checkpoint = read_resume_checkpoint(path)
    saved_split = read_saved_split(path.parent)
    data_root = resumed_data_root(flags.data_path, saved_split, checkpoint["args"]["data_path"])
    settings = resumed_settings(checkpoint["args"], flags, given, data_root)  # data_path saved for the next resume
    folder = RunFolder(path.parent, writes=int(os.environ.get("RANK", "0")) == 0)
    if folder.writes:  # a write the stopped run was killed in (its final best.onnx, a checkpoint) left its temporary
        remove_leftovers(path.parent)
    return Resumed(settings, checkpoint, folder, DataSplit.from_json(saved_split, data_root))


def restore_progress(resumed: Resumed, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, steps: TrainingSteps,
                     step_settings: StepSettings) -> Progress:
    """The optimizer, schedule, weight-average and gradient-scaler state, and the history, as the stopped run
    left them."""
    checkpoint = resumed.checkpoint
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    steps.restore(checkpoint)
    if step_settings.scaler is not None and checkpoint.get("scaler"):
        step_settings.scaler.load_state_dict(checkpoint["scaler"])
    progress = Progress(list(checkpoint["history"]), checkpoint["best_acc"], checkpoint["best_epoch"],
                        resumed.folder.best_confusion(), checkpoint["epoch"],
                        checkpoint.get("best_score", checkpoint["best_acc"]))
    if resumed.folder.writes:  # the main process
        print(f"resuming {resumed.folder.path} after epoch {progress.next_epoch} of {resumed.settings.epochs}")
    return progress


def find_resume_checkpoint(resume: str) -> Path:
    path = Path(resume)
    if path.is_dir():
        path = path / LAST_CHECKPOINT
    if not path.is_file():
        is_run_folder = (path.parent / "split.json").is_file()
        hint = continue_hint(path.parent) if is_run_folder else "give a run folder or its last.pth"
        raise UsageError(f"--resume {resume}: no {path}; {hint}")
    return path


# What a resumed run reads from its checkpoint besides the model's own fields (checkpoints.checkpoint_header).
TRAINING_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epoch": (is_whole_number, "a whole number"),
    "best_epoch": (is_whole_number, "a whole number"),
    "best_acc": (lambda value: isinstance(value, (int, float)) and not isinstance(value, bool), "a number"),
    "history": (lambda value: isinstance(value, list), "a list"),
    "args": (lambda value: isinstance(value, dict), "the run's settings"),
    "args.epochs": (is_whole_number, "a whole number"),
    "args.data_path": (lambda value: isinstance(value, str), "a folder"),
    "args.model": (lambda value: value in VARIANTS, "one of " + ", ".join(VARIANTS)),
}


def training_field_problem(checkpoint: Mapping[str, Any]) -> str | None:
    """What is wrong with the training fields of a (possibly hand-edited) checkpoint, or None."""
    for name, (valid, expected) in TRAINING_FIELDS.items():
        parent, _, key = name.rpartition(".")
        value = (checkpoint[parent] if parent else checkpoint).get(key)
        if not valid(value):
            return f"checkpoint field '{name}' is {value!r:.60}, expected {expected}"
    return None


def read_resume_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint to continue from, with every field the resumed run reads checked (one clear error)."""
    try:
        checkpoint = read_weights_file(path, remedy="")
    except WeightsError as error:
        raise UsageError(f"--resume: {error}; {continue_hint(path.parent, broken=path)}") from None
    needed = ("args", "optimizer", "scheduler", "epoch", "history")
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in needed):
        raise UsageError(f"--resume {path}: not a training checkpoint of this project (no optimizer or "
                         f"schedule state); to start from its weights use --weights {path}")
    checkpoint_header(checkpoint, str(path))  # the fields that describe the model
    problem = training_field_problem(checkpoint)
    if problem:
        raise UsageError(f"--resume {path}: {problem}; {continue_hint(path.parent, broken=path)}")
    if not (path.parent / "split.json").is_file():
        raise UsageError(f"--resume {path}: {path.parent / 'split.json'} is missing, so the run's "
                         f"train/validation split is unknown; start a new run with --weights {path}")
    return checkpoint


def read_saved_split(run_dir: Path) -> dict[str, Any]:
    """The run's split.json, checked: a damaged file is one clear error, not a traceback."""
    path = run_dir / "split.json"
    try:
        saved = json.loads(path.read_bytes())
    except ValueError as error:  # invalid JSON or text that is not UTF-8
        problem = f"not valid JSON: {error}"
    else:
        problem = DataSplit.json_problem(saved)
    if problem:
        raise UsageError(f"--resume: {path} is damaged ({problem}), so the run's train/validation split is "
                         f"unknown; restore the file, or start a new run from its weights with --weights "
                         f"{run_dir / 'last.pth'}")
    return saved


def resumed_data_root(requested: str | None, saved_split: Mapping[str, Any], saved_path: str) -> str:
    """Where the resumed run's images are: --data-path if given, else where they were (absolute, so a
    resume from another working directory still finds them)."""
    candidates = [requested] if requested is not None else [saved_split.get("root", saved_path), saved_path]
    for candidate in candidates:
        if os.path.isdir(candidate):
            return os.path.abspath(candidate)
    raise UsageError(f"--resume: the run's images are no longer in {candidates[0]}; pass --data-path "
                     f"with their new location")
