"""After a training run's last epoch: the best epoch's curves, confusion matrix and per-class table, best.onnx beside
best.pth (predict.py's fast path), and the review of best.pth on every photo of the run: the test set's results,
label_issues.csv (the labels it doubts most) and report.html. Training itself imports nothing of this (nor of the
inference package): train.py calls finish_run when its epochs are done."""
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from effnet.checkpoints import read_weights_file
from effnet.command_line import report
from effnet.data.class_folders import presplit_folders
from effnet.data.duplicates import DataCheck
from effnet.data.split import DataSplit
from effnet.inference.classifier import Classifier, NonFiniteOutputError
from effnet.inference.onnx_conversion import export_after_training
from effnet.reports import metrics, report_page
from effnet.reports.chance import learned_nothing
from effnet.reports.label_issues import rank_label_issues, write_label_issues
from effnet.reports.scoring import DEFAULT_TOP_K, Evaluation, describe, evaluate_images, write_files
from effnet.run_files import BEST_CHECKPOINT
from effnet.training.progress import Progress
from effnet.training.run_folder import RunFolder
from effnet.training.settings import TrainSettings, describe_sizes
from effnet.training.steps import StepSettings


def finish_run(folder: RunFolder, split: DataSplit, progress: Progress, settings: TrainSettings,
               data_check: DataCheck | None, step_settings: StepSettings, workers: int) -> int:
    """What a run writes after its last epoch (--onnx and --report may leave out best.onnx and the review), and
    its last lines; the exit status: 130 if Ctrl-C stops this (every epoch is saved by then)."""
    if not progress.history:
        return 0
    if progress.best_confusion is None:
        return report(f"no epoch gave finite outputs in evaluation, so {folder.path} has no best.pth; train for more "
                      f"epochs (the first ones from scratch often overflow) or lower --lr", status=1)
    best, classes = folder.path / BEST_CHECKPOINT, split.classes
    try:
        folder.write_end(progress.best_confusion, classes, progress.best_epoch, progress.history)
        if settings.onnx:
            export_after_training(best, split.val_paths[:8])
        print(f"best validation accuracy {progress.best_acc:.4f} at epoch {progress.best_epoch}; per class:\n"
              f"{metrics.class_table(classes, progress.best_confusion)}")
        if settings.report:
            used = settings_used(step_settings, settings.device, workers)
            if settings.resume:  # best.pth's saved flags may be from before this resume, when --resume was none
                used["resume"] = settings.resume
            sizes = [row.get("train_size") for row in progress.history]  # None in rows of an older version's run
            crops = describe_sizes(sizes, settings.image_settings()["eval_crop"]) if all(sizes) else None
            report_path, test = review(folder.path, split, step_settings.device, data_check, used, crops)
            if test is not None:
                print_test_results(test, best)
            print(f"report: {report_path}")
    except KeyboardInterrupt:
        print(f"\ninterrupted after the last epoch, while writing the run's report; every epoch is saved ({best}). "
              f"Score it again with: python evaluate.py DIR --weights {best}", flush=True)
        return 130
    except NonFiniteOutputError as error:  # photos of the test set or the report that the validation set spared
        return report(f"{error}; the run's files up to the report are written", status=1)
    print(f"saved {best}; classify a photo with: python predict.py IMAGE --weights {best}")
    warning = learned_nothing(progress.best_confusion, classes, settings.weights)
    if warning:  # the run's last line: a model at chance must not pass for a result
        sys.stdout.flush()
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def review(run_dir: Path, split: DataSplit, device: Any = None, data_check: DataCheck | None = None,
           used: Mapping[str, str] | None = None, crops: str | None = None) -> tuple[Path, Evaluation | None]:
    """best.pth on every photo of the run: its results on the test images (in test/, when there are any),
    label_issues.csv (every image whose label best.pth doubts) and report.html, which shows its mistakes on the
    validation images, those doubts and the data check's copies; `used`: what the flags left to the machine came
    to; `crops`: the training crop of each epoch, as settings.describe_sizes says it. Returns (report path, test
    results)."""
    best = read_weights_file(run_dir / BEST_CHECKPOINT)
    classifier = Classifier.from_weights(run_dir / BEST_CHECKPOINT, device=device)
    test = None
    if split.test_paths:
        test = evaluate_images(classifier, split.test_paths, split.test_labels)
        if test.results:
            write_files(test, run_dir / "test", "test set, best.pth")
    validation = evaluate_images(classifier, split.val_paths, split.val_labels)
    scored = {"train": evaluate_images(classifier, split.train_paths, split.train_labels), "val": validation,
              **({"test": test} if test is not None else {})}
    issues = rank_label_issues(scored)
    write_label_issues(issues, run_dir / "label_issues.csv")
    folders = presplit_folders(split.root) or {}
    how = (f"as given by the {', '.join(name + '/' for name in folders)} folders" if "val" in folders else
           f"at random (--val-rate, --seed){'; test/ as given' if split.test_paths else ''}")
    data = {"data": os.path.abspath(split.root), "split": how,
            "images": f"{split.describe()} in {len(split.classes)} classes"}
    if crops:
        data["training crops"] = crops
    if split.left_out:
        data["left out"] = f"{len(split.left_out)} copies (--drop-duplicates; split.json says why)"
    return report_page.write_run_report(run_dir, best, data, validation, test, classifier, data_check,
                                        (issues, sum(len(e.results) for e in scored.values())), used), test


def settings_used(step_settings: StepSettings, device_flag: str | None, workers: int) -> dict[str, str]:
    """What the flags that leave a choice to the machine came to in this run, for report.html."""
    device, dtype = step_settings.device, step_settings.autocast_dtype
    if dtype is not None:
        amp = str(dtype).removeprefix("torch.")  # bfloat16, or float16 with a gradient scaler
    else:  # --amp false, or a CPU, which always trains in float32
        amp = "off" if device.type == "cuda" else f"off ({device.type.upper()})"
    return {"device": str(device) if device_flag else f"auto: {device}", "workers": str(workers), "amp": amp}


def print_test_results(test: Evaluation, best: Path) -> None:
    for path, error in test.unreadable:
        print(f"warning: unreadable test image {path}: {error}", file=sys.stderr)
    if test.results:
        print(f"test images with {best}: {describe(test, DEFAULT_TOP_K)}\n(per image in {best.parent / 'test'})")
