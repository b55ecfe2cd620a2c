"""A run folder, runs/<date>-<time>-<variant>/: what train.py writes there, and reads back to resume.

| file | written |
|---|---|
| class_indices.json, split.json, recipe.json, class_distribution.png | when the run starts |
| last.pth (every epoch), best.pth (when validation improves), metrics.csv, TensorBoard events | after each epoch |
| curves.png | after an epoch when drawing it takes at most 5% of the time since it was last drawn; at the end |
| data_check.json, duplicates.csv (the copies among the images) | when the run starts, and again when it resumes |
| confusion_matrix.png, per_class.csv, report.html, test/ (a test set's results, by best.pth) | when the run ends |
| label_issues.csv (the images whose label best.pth finds least likely) | when the run ends |

Every file is written atomically (atomic_files.py), so a run killed at any moment resumes from its last epoch, and
a full disk stops the run with one line saying which checkpoint is intact and how to continue from it.
"""
import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from effnet.model_choices import BEST_CHECKPOINT, LAST_CHECKPOINT
from effnet.reports import figures
from effnet.reports import report_page
from effnet.reports import metrics
from effnet.command_line import UsageError
from effnet.training.distributed import Distributed, broadcast_object
from effnet.reports.scoring import Evaluation, evaluate_images, write_files
from effnet.atomic_files import NoSpaceError, save_checkpoint, serialized_size, write_csv, write_json
from effnet.data.class_folders import presplit_folders
from effnet.inference.classifier import Classifier
from effnet.training.loop import DataSplit
from effnet.variants import VARIANTS
from effnet.pretrained import WeightsError, checkpoint_header, read_weights_file
from effnet.data.duplicates import DATA_CHECK, DUPLICATE_COLUMNS, DataCheck, check_images, describe_groups, \
    read_saved_fingerprints, write_duplicates_csv
from effnet.reports.label_issues import rank_label_issues, write_label_issues
from effnet.output_paths import OutputKind, header_matches
from effnet.reports.chance import chance_level

# settings that may differ when a run is resumed: where and how fast it runs, not what it computes
MACHINE_SETTINGS = ("resume", "device", "workers", "progress", "channels_last", "compile", "grad_checkpointing",
                    "sync_bn")
# Drawing curves.png takes 0.2-0.6 s on a CPU: after every epoch of a real run (minutes each), but on a small sample,
# where an epoch takes a second or two, redrawing it every time would slow the whole run by a third
CURVES_TIME_SHARE = 0.05
DUPLICATES_OUTPUT = OutputKind("a duplicates table of train.py", header_matches(",".join(DUPLICATE_COLUMNS)))


# ---------------------------------------------------------------------------------------------------------------
# Resuming


def find_resume_checkpoint(resume: str) -> Path:
    path = Path(resume)
    if path.is_dir():
        path = path / LAST_CHECKPOINT
    if not path.is_file():
        is_run_folder = (path.parent / "split.json").is_file()
        hint = continue_hint(path.parent) if is_run_folder else "give a run folder or its last.pth"
        raise UsageError(f"--resume {resume}: no {path}; {hint}")
    return path


def continue_hint(run_dir: Path, broken: Path | None = None) -> str:
    """Which checkpoint of the run is intact (other than `broken`), and the command that continues from it."""
    if not (run_dir / "split.json").is_file():  # a stray file, not a run's: no epoch of a run to speak of
        return (f"{run_dir} is not a run folder of train.py (it has no split.json); --resume takes a run folder "
                f"or its last.pth")
    for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
        path = run_dir / name
        epoch = None if path == broken else saved_epoch(path)
        if epoch is None:
            continue
        if name == LAST_CHECKPOINT:
            return f"{path} (epoch {epoch}) is intact: continue with python train.py --resume {run_dir}"
        return (f"{path} (epoch {epoch}) is intact: continue from it with python train.py --resume {path} "
                f"(the epochs after {epoch} are trained again)")
    return "no epoch of this run was saved: start it again"


def _whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def saved_epoch(path: Path) -> int | None:
    """The epoch a checkpoint of a run holds, or None when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        checkpoint = read_weights_file(path)
    except WeightsError:
        return None
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
    return epoch if _whole_number(epoch) else None


# What a resumed run reads from its checkpoint besides the model's own fields (weights.checkpoint_header).
TRAINING_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epoch": (_whole_number, "a whole number"),
    "best_epoch": (_whole_number, "a whole number"),
    "best_acc": (lambda value: isinstance(value, (int, float)) and not isinstance(value, bool), "a number"),
    "history": (lambda value: isinstance(value, list), "a list"),
    "args": (lambda value: isinstance(value, dict), "the run's settings"),
    "args.epochs": (_whole_number, "a whole number"),
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


def resumed_args(args: argparse.Namespace, saved: Mapping[str, Any], given: set[str]) -> argparse.Namespace:
    """The run's saved settings, with this invocation's machine settings; warns about flags left unused."""
    merged = {**vars(args), **saved}  # a setting the run never saved (a newer flag) takes this invocation's
    for key in MACHINE_SETTINGS:
        merged[key] = getattr(args, key)
    ignored = [f"--{key.replace('_', '-')}" for key in sorted(given) if key in saved
               and key not in MACHINE_SETTINGS and key != "data_path" and getattr(args, key) != saved[key]]
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
# The data check before training


def check_data(args: argparse.Namespace, split: DataSplit, run_dir: Path | None, is_main: bool) -> DataCheck:
    """The copies among the split's images (effnet/data/duplicates.py), summed up in one line; a resumed run
    (`run_dir`) reuses its data_check.json. --drop-duplicates takes the copies out of a new run's split
    (split.json keeps what and why); --check-data lists them, and writes its CSV, as the whole job."""
    known = read_saved_fingerprints(run_dir / DATA_CHECK) if run_dir is not None else {}
    check = broadcast_object(check_images(split.images(), split.root, known) if is_main else None)
    leave_out = check.left_out(split.root)
    if args.drop_duplicates and run_dir is None and leave_out:
        split.leave_out(leave_out)
        if not split.val_paths:
            raise UsageError(f"{args.data_path}: with --drop-duplicates no image is left for validation")
    check.dropped = {path: why for path, _, _, why in split.left_out}
    if not is_main:
        return check
    if split.left_out:
        note = f"; {len(split.left_out)} images left out (--drop-duplicates; split.json says why)"
    else:
        note = f"; --drop-duplicates would leave out {len(leave_out)} images" if leave_out else ""
    if args.check_data is not None:  # the check is the job: its findings in full (training reports bad images)
        for image in check.unreadable:
            print(f"warning: skipping unreadable image {image.path} ({image.error})", file=sys.stderr)
        print("\n".join(describe_groups(check)))
        if args.check_data:
            write_duplicates_csv(check, args.check_data)
            note += f"; the groups are in {args.check_data}"
    print(check.summary() + note, flush=True)
    return check


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
        self._curves_drawn: tuple[int, float, float] | None = None  # (epochs drawn, when it started, seconds it took)

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
                                        split.counts(split.val_labels), self.path / "class_distribution.png",
                                        split.counts(split.test_labels) if split.test_labels else None)

    def write_data_check(self, check: DataCheck, root: str) -> None:
        """data_check.json (every image's fingerprints, for --resume and evaluate.py) and duplicates.csv."""
        if self.writes:
            write_json(self.path / DATA_CHECK, check.to_json(root))
            write_duplicates_csv(check, self.path / "duplicates.csv")

    def write_epoch(self, checkpoint: Mapping[str, Any], improved: bool, history: Sequence[Mapping[str, float]]) -> None:
        """best.pth (when improved), last.pth, metrics.csv, curves.png and TensorBoard scalars."""
        if not self.writes:
            return
        try:  # best.pth first: last.pth, the one --resume reads, is never ahead of it
            if improved:
                save_checkpoint(checkpoint, self.path / BEST_CHECKPOINT)
            save_checkpoint(checkpoint, self.path / LAST_CHECKPOINT)
            write_csv(self.path / "metrics.csv", history)
            if self._curves_due():
                self._write_curves(history, len(checkpoint["class_names"]))
        except NoSpaceError as error:  # say how much the run needs, what survived, and how to go on
            peak = 3 * serialized_size(dict(checkpoint))  # best.pth, last.pth and the new one before it replaces either
            raise NoSpaceError(error.errno, f"{error.strerror} (the run's checkpoints need {peak / 1e6:.1f} MB in "
                                            f"all); {continue_hint(self.path)}", error.filename) from None
        self._log_scalars(history[-1])

    def _curves_due(self) -> bool:
        if self._curves_drawn is None:
            return True
        _, started, took = self._curves_drawn
        return took <= CURVES_TIME_SHARE * (time.monotonic() - started)

    def _write_curves(self, history: Sequence[Mapping[str, float]], class_count: int) -> None:
        started = time.monotonic()
        figures.plot_curves(history, self.path / "curves.png", chance_level(class_count))
        self._curves_drawn = (len(history), started, time.monotonic() - started)

    def write_end(self, confusion: Any, classes: Sequence[str], best_epoch: int,
                  history: Sequence[Mapping[str, float]]) -> None:
        """curves.png of every epoch, the best epoch's validation confusion matrix, and its per-class table
        (per_class.csv)."""
        if self.writes:
            if self._curves_drawn is None or self._curves_drawn[0] != len(history):
                self._write_curves(history, len(classes))
            figures.plot_confusion_matrix(confusion, classes, self.path / "confusion_matrix.png",
                                          title=f"validation, best epoch {best_epoch}")
            write_csv(self.path / "per_class.csv", metrics.table_rows(classes, confusion))

    def write_review(self, split: DataSplit, device: Any = None,
                     data_check: DataCheck | None = None,
                     used: Mapping[str, str] | None = None) -> tuple[Path, Evaluation | None]:
        """After the last epoch: best.pth's results on the test images (in test/, when there are any),
        label_issues.csv (every image whose label best.pth doubts) and report.html, which shows its mistakes on
        the validation images, those doubts and the data check's copies; `used`: what the flags left to the
        machine came to (trainer.settings_used). Returns (report path, test results)."""
        best = read_weights_file(self.path / BEST_CHECKPOINT)
        classifier = Classifier.from_weights(self.path / BEST_CHECKPOINT, device=device)
        test = None
        if split.test_paths:
            test = evaluate_images(classifier, split.test_paths, split.test_labels)
            if test.results:
                write_files(test, self.path / "test", "test set, best.pth")
        validation = evaluate_images(classifier, split.val_paths, split.val_labels)
        scored = {"train": evaluate_images(classifier, split.train_paths, split.train_labels), "val": validation,
                  **({"test": test} if test is not None else {})}
        issues = rank_label_issues(scored)
        write_label_issues(issues, self.path / "label_issues.csv")
        folders = presplit_folders(split.root) or {}
        how = (f"as given by the {', '.join(name + '/' for name in folders)} folders" if "val" in folders else
               f"at random (--val-rate, --seed){'; test/ as given' if split.test_paths else ''}")
        data = {"data": os.path.abspath(split.root), "split": how,
                "images": f"{split.describe()} in {len(split.classes)} classes"}
        if split.left_out:
            data["left out"] = f"{len(split.left_out)} copies (--drop-duplicates; split.json says why)"
        return report_page.write_run_report(self.path, best, data, validation, test, classifier, data_check,
                                            (issues, sum(len(e.results) for e in scored.values())), used), test

    def saved_so_far(self) -> str:
        if (self.path / LAST_CHECKPOINT).is_file():
            return f"{self.path / 'last.pth'} holds the last completed epoch"
        return "no epoch was completed, so no checkpoint was saved"

    def best_confusion(self) -> Any:
        """The confusion matrix saved with best.pth, or None."""
        try:
            best = read_weights_file(self.path / BEST_CHECKPOINT)
            return best.get("confusion") if isinstance(best, dict) else None
        except WeightsError:  # missing or damaged: the run goes on, without the final confusion matrix
            return None

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
