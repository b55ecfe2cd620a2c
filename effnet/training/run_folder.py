"""A run folder, runs/<date>-<time>-<variant>/: where it may be made, what train.py writes there as the run goes,
and which of its checkpoints are intact. (Reading it back to resume: resume.py; the review after the last epoch,
report.html and label_issues.csv: effnet/reports/run_review.py.)

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
import datetime
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from effnet.atomic_files import NoSpaceError, save_checkpoint, serialized_size, write_csv, write_json
from effnet.checkpoints import WeightsError, read_weights_file
from effnet.command_line import UsageError
from effnet.data.duplicates import DATA_CHECK, DataCheck, write_duplicates_csv
from effnet.data.split import DataSplit
from effnet.output_paths import RunInputs, check_folder_target
from effnet.reports import figures, metrics
from effnet.reports.chance import chance_level
from effnet.run_files import BEST_CHECKPOINT, LAST_CHECKPOINT
from effnet.training.data_check import check_csv_target
from effnet.training.distributed import Distributed, broadcast_object
from effnet.training.settings import TrainSettings

# Drawing curves.png takes 0.2-0.6 s on a CPU: after every epoch of a real run (minutes each), but on a small sample,
# where an epoch takes a second or two, redrawing it every time would slow the whole run by a third
CURVES_TIME_SHARE = 0.05


def check_place(settings: TrainSettings) -> None:
    """Before any work of a new run: the run folder must not lie in the data (the next run would take it for a
    class, its figures for photos), --output-dir must be a folder, and a --name must be free. With --check-data
    no run folder is made: only its table of copies is checked (data_check.check_csv_target); a resumed run's
    folder is there already."""
    if settings.resume:
        return
    if settings.check_data is not None:
        check_csv_target(settings)
        return
    inputs = RunInputs()
    inputs.add_folder(settings.data_path, "the data folder")
    check_folder_target("--output-dir", settings.output_dir, inputs, {}, overwrite=False)
    if settings.name:
        new_run_dir(settings.output_dir, settings.name, settings.model)  # refuses a name that is taken


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


def is_whole_number(value: Any) -> bool:
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
    return epoch if is_whole_number(epoch) else None


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
    def create(cls, settings: TrainSettings, ddp: Distributed) -> "RunFolder":
        """A new, empty run folder in --output-dir; rank 0 picks its name (the clocks of the processes differ)."""
        path = broadcast_object(new_run_dir(settings.output_dir, settings.name, settings.model) if ddp.is_main
                                else None)
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

    def write_epoch(self, checkpoint: Mapping[str, Any], improved: bool,
                    history: Sequence[Mapping[str, float]]) -> None:
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

    def has_checkpoint(self) -> bool:
        return (self.path / LAST_CHECKPOINT).is_file()

    def saved_so_far(self) -> str:
        if self.has_checkpoint():
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
