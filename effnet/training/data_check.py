"""The photos of a run before training: the flower photos downloaded when they are the default and missing, the
split checked against the flags (--num_classes, something to validate on), and the copies among the photos
(effnet/data/duplicates.py finds them), summed up in one line; --drop-duplicates takes them out of a new run's
split, and --check-data lists them (and writes them to its CSV) as the whole job."""
import os
import sys
from pathlib import Path

from effnet.command_line import UsageError
from effnet.data.duplicates import (
    DATA_CHECK,
    DUPLICATE_COLUMNS,
    DataCheck,
    check_images,
    describe_groups,
    read_saved_fingerprints,
    write_duplicates_csv,
)
from effnet.data.flower_photos import ensure_flower_photos
from effnet.data.split import DataSplit
from effnet.output_paths import OutputKind, RunInputs, check_file_target, header_matches
from effnet.training.distributed import Distributed, broadcast_object, main_first
from effnet.training.settings import DEFAULT_DATA_PATH, TrainSettings

DUPLICATES_OUTPUT = OutputKind("a duplicates table of train.py", header_matches(",".join(DUPLICATE_COLUMNS)))


def check_csv_target(settings: TrainSettings) -> None:
    """Before the check: --check-data CSV may be written (output_paths.py's rules; train.py has no --overwrite
    for someone else's file)."""
    if not settings.check_data:
        return
    inputs = RunInputs()
    inputs.add_folder(settings.data_path, "the data folder")
    check_file_target("--check-data", settings.check_data, inputs, DUPLICATES_OUTPUT, overwrite=True)
    folder = os.path.dirname(os.path.abspath(settings.check_data))
    if not os.path.isdir(folder):  # found now, not when the table is written after the whole check
        raise UsageError(f"--check-data {settings.check_data}: the folder {folder} does not exist; create it or "
                         f"choose another file")
    if os.path.lexists(settings.check_data) and not DUPLICATES_OUTPUT.recognise(settings.check_data):
        raise UsageError(f"{settings.check_data} exists and is not {DUPLICATES_OUTPUT.description}; choose "
                         f"another --check-data file")


def download_if_missing(settings: TrainSettings, ddp: Distributed) -> None:
    """The flower photos, --data-path's default, downloaded on a new run's first use: by the main process, while
    the others wait."""
    if not settings.resume and settings.data_path == DEFAULT_DATA_PATH:
        main_first(ddp, ensure_flower_photos, settings.data_path)


def check_split(split: DataSplit, settings: TrainSettings) -> None:
    """The split fits the run: --num_classes (when given) is the number of class folders, and something is left to
    validate on."""
    classes = split.classes
    if settings.num_classes is not None and settings.num_classes != len(classes):
        raise UsageError(f"--num_classes {settings.num_classes}, but {settings.data_path} has {len(classes)} class "
                         f"folders ({', '.join(classes[:8])}{' ...' if len(classes) > 8 else ''}); pass --num_classes "
                         f"{len(classes)} or fix the folders")
    if not split.val_paths:
        raise UsageError(f"{settings.data_path}: no class has two images, so nothing is left for validation")


def check_data(settings: TrainSettings, split: DataSplit, run_dir: Path | None, is_main: bool) -> DataCheck:
    """The copies among the split's images, summed up in one line; a resumed run (`run_dir`) reuses its
    data_check.json. --drop-duplicates takes the copies out of a new run's split (split.json keeps what and why);
    --check-data lists them, and writes its CSV, as the whole job."""
    known = read_saved_fingerprints(run_dir / DATA_CHECK) if run_dir is not None else {}
    check = broadcast_object(check_images(split.images(), split.root, known) if is_main else None)
    leave_out = check.left_out(split.root)
    if settings.drop_duplicates and run_dir is None and leave_out:
        split.leave_out(leave_out)
        if not split.val_paths:
            raise UsageError(f"{settings.data_path}: with --drop-duplicates no image is left for validation")
    check.dropped = {path: why for path, _, _, why in split.left_out}
    check.skipped = len(split.skipped)  # warned about by the scan: counted with the check's own unreadable ones
    if not is_main:
        return check
    if split.left_out:
        note = f"; {len(split.left_out)} images left out (--drop-duplicates; split.json says why)"
    else:
        note = f"; --drop-duplicates would leave out {len(leave_out)} images" if leave_out else ""
    if settings.check_data is not None:  # the check is the job: its findings in full (training reports bad images)
        for image in check.unreadable:
            print(f"warning: skipping unreadable image {image.path} ({image.error})", file=sys.stderr)
        print("\n".join(describe_groups(check, where=settings.check_data)))
        if settings.check_data:
            write_duplicates_csv(check, settings.check_data)
            note += f"; the groups are in {settings.check_data}"
    print(check.summary() + note, flush=True)
    return check
