"""A training run of train.py, step by step: the data split and loaders, the model, the epochs, and what is
written when the run ends. train.py reads the command line (effnet/training/flags.py) and hands it here; this is the
part that needs PyTorch.
"""
import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from effnet.model_choices import BEST_CHECKPOINT, LAST_CHECKPOINT
from effnet.reports import metrics
from effnet.training import recipe
from effnet.training import loop
from effnet.command_line import UsageError, report
from effnet.training.distributed import Distributed, barrier, broadcast_buffers, init_distributed, shutdown
from effnet.download import DownloadError
from effnet.reports.scoring import DEFAULT_TOP_K, Evaluation, describe
from effnet.inference.classifier import NonFiniteOutputError
from effnet.data.flower_photos import QUICK_TRY, ensure_flower_photos
from model import create_model
from effnet.data.dataset import EpochSampler, EvalTransform, LastBatchMerged, MyDataSet
from effnet.inference.onnx_conversion import export_after_training
from effnet.output_paths import RunInputs, check_folder_target
from effnet.training.run_folder import RunFolder, find_resume_checkpoint, new_run_dir, read_resume_checkpoint, read_saved_split, \
    resumed_args, resumed_data_root
from effnet.hardware import default_workers, keep_freed_memory_for_reuse
from effnet.training import flags
from effnet.training.loop import DataSplit
from effnet.variants import image_settings
from effnet.pretrained import WeightsError, load_weights
from effnet.data.duplicates import DataCheck
from effnet.training.run_folder import DUPLICATES_OUTPUT, check_data
from effnet.output_paths import check_file_target
from effnet.reports.chance import learned_nothing


def make_loaders(split: DataSplit, images: dict[str, Any], args: argparse.Namespace, device: torch.device,
                 ddp: Distributed) -> tuple[DataLoader, DataLoader, EpochSampler]:
    train_set = MyDataSet(split.train_paths, split.train_labels, recipe.train_transform(images["train_size"], args))
    val_set = MyDataSet(split.val_paths, split.val_labels,
                        EvalTransform(images["eval_resize"], images["eval_crop"], images["interpolation"]))
    train_sampler = EpochSampler(len(train_set), shuffle=True, seed=args.seed, rank=ddp.rank,
                                 num_replicas=ddp.world_size, pad=True,
                                 weights=recipe.sample_weights(split.train_labels, len(split.classes), args))
    val_sampler = EpochSampler(len(val_set), shuffle=False, seed=args.seed, rank=ddp.rank,
                               num_replicas=ddp.world_size, pad=False)
    workers = loader_workers(args)
    common = dict(num_workers=workers, collate_fn=MyDataSet.collate_fn, pin_memory=device.type == "cuda",
                  persistent_workers=workers > 0)
    # Each loader gets its own generator: starting an epoch must not draw from the global random state,
    # which dropout and stochastic depth use (the samplers carry all the data's randomness themselves).
    return (DataLoader(train_set, batch_sampler=LastBatchMerged(train_sampler, args.batch_size),
                       generator=torch.Generator(), **common),
            DataLoader(val_set, sampler=val_sampler, batch_size=args.batch_size, generator=torch.Generator(),
                       **common), train_sampler)


def loader_workers(args: argparse.Namespace) -> int:
    return default_workers(args.batch_size) if args.workers is None else args.workers


# ---------------------------------------------------------------------------------------------------------------
# The run, step by step


@dataclass
class Resumed:
    """A stopped run being continued: its last checkpoint and the split it was trained on."""

    checkpoint: dict[str, Any]
    folder: RunFolder
    saved_split: dict[str, Any]


@dataclass
class Progress:
    """Where a run stands after each epoch; saved in every checkpoint so a resumed run carries on."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_acc: float = -1.0  # validation accuracy of the best epoch
    best_epoch: int = -1
    best_confusion: Any = None
    next_epoch: int = 0  # epochs completed, so the index of the next one
    best_score: float = -1.0  # --best-metric of the best epoch


@dataclass
class Run:
    """Everything a training run works with, built by `train` before the first epoch."""

    args: argparse.Namespace
    ddp: Distributed
    split: DataSplit
    images: dict[str, Any]
    model: nn.Module  # what trains: possibly wrapped in DistributedDataParallel and torch.compile
    raw_model: nn.Module  # what checkpoints hold: no DDP 'module.' prefix, no compile wrapper
    eval_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps: recipe.TrainingSteps  # loss, batch mixing, weight average
    settings: loop.StepSettings
    folder: RunFolder
    progress: Progress
    data_check: DataCheck | None = None  # the copies among the images, found before the first epoch


def train(args: argparse.Namespace, given: set[str] = frozenset()) -> int:
    """Run (or, with args.resume, continue) a training run; `given` names the flags the user wrote."""
    args, resumed = settle_arguments(args, given)
    flags.check_args(args)
    if resumed is None:
        check_run_place(args)
    ddp, device = init_distributed(args.device)
    if args.sync_bn and (device.type != "cuda" or not ddp.active):
        raise UsageError("--sync-bn needs CUDA processes under torchrun; leave it out here")
    chosen_val_rate = "val_rate" in given or args.val_rate != loop.DEFAULT_VAL_RATE  # an error if pre-split
    split = load_split(args, resumed, ddp, args.val_rate if chosen_val_rate else None)
    data_check = check_data(args, split, resumed.folder.path if resumed else None, ddp.is_main)
    if args.check_data is not None:
        return 0
    raw_model = build_model(args, len(split.classes), resumed, ddp)
    model, eval_model = place_model(raw_model, args, device, ddp)
    optimizer, scheduler = recipe.build_optimizer(raw_model, args)
    steps = recipe.TrainingSteps.build(args, split.train_labels, len(split.classes), raw_model, device)
    settings = loop.StepSettings.for_device(device, args.channels_last, args.amp)
    if resumed is not None:
        folder, progress = resumed.folder, restore_progress(resumed, optimizer, scheduler, steps, settings, ddp)
    else:
        folder, progress = RunFolder.create(args.output_dir, args.name, args.model, ddp), Progress()
        folder.write_start(split, flags.describe(args, split.classes, steps.class_weights))
    folder.write_data_check(data_check, split.root)
    run = Run(args, ddp, split, image_settings(args.model, args.image_size), model, raw_model,
              steps.evaluated(eval_model), optimizer, scheduler, steps, settings, folder, progress, data_check)
    log(ddp, f"{split.describe()} in {len(split.classes)} classes; efficientnet_{args.model} at "
             f"{run.images['train_size']} px on {device}"
             f"{f' x {ddp.world_size} processes' if ddp.world_size > 1 else ''}; run folder {folder.path}")
    try:
        status = run_epochs(run)
    finally:
        folder.close()
    return finish(run) if status == 0 else status


def settle_arguments(args: argparse.Namespace, given: set[str]) -> tuple[argparse.Namespace, Resumed | None]:
    """The settings to train with: for --resume the run's own (and where its images are now)."""
    if not args.resume:
        if args.data_path is None:
            args.data_path = flags.DEFAULT_DATA_PATH
        return flags.resolve(args, given), None
    if args.check_data is not None:  # a resumed run would take its saved settings, which check nothing
        raise UsageError("--check-data checks a data folder without training; leave out --resume (a run's own "
                         "check is in its duplicates.csv)")
    resume_path = find_resume_checkpoint(args.resume)
    checkpoint = read_resume_checkpoint(resume_path)
    saved_split = read_saved_split(resume_path.parent)
    data_root = resumed_data_root(args.data_path, saved_split, checkpoint["args"]["data_path"])
    args = flags.fill_defaults(resumed_args(args, checkpoint["args"], given))
    args.data_path = data_root  # saved with the run, for the next resume
    folder = RunFolder(resume_path.parent, writes=int(os.environ.get("RANK", "0")) == 0)
    return args, Resumed(checkpoint, folder, saved_split)


def check_run_place(args: argparse.Namespace) -> None:
    """Before any work: the run folder must not lie in the data (the next run would take it for a class, its
    figures for photos), --output-dir must be a folder, and a --name must be free."""
    inputs = RunInputs()
    inputs.add_folder(args.data_path, "the data folder")
    if args.check_data is not None:  # nothing trains: no run folder, perhaps a table of the copies
        if args.check_data:  # every rule of output_paths.py; train.py has no --overwrite for someone else's file
            check_file_target("--check-data", args.check_data, inputs, DUPLICATES_OUTPUT, overwrite=True)
            if os.path.lexists(args.check_data) and not DUPLICATES_OUTPUT.recognise(args.check_data):
                raise UsageError(f"{args.check_data} exists and is not {DUPLICATES_OUTPUT.description}; choose "
                                 f"another --check-data file")
        return
    check_folder_target("--output-dir", args.output_dir, inputs, {}, overwrite=False)
    if args.name:
        new_run_dir(args.output_dir, args.name, args.model)  # refuses a name that is taken


def load_split(args: argparse.Namespace, resumed: Resumed | None, ddp: Distributed,
               chosen_val_rate: float | None = None) -> DataSplit:
    """The resumed run's split, or a new one of --data-path: its own train/ val/ test/ folders if it has them,
    else at random (the flower photos are downloaded if missing)."""
    if resumed is not None:
        split = DataSplit.from_json(resumed.saved_split, args.data_path)
    else:
        if args.data_path == flags.DEFAULT_DATA_PATH and not os.path.isdir(args.data_path):
            if ddp.is_main:
                ensure_flower_photos(args.data_path)
            barrier()
        split = loop.read_data(args.data_path, chosen_val_rate, args.seed, report=ddp.is_main)
    classes = split.classes
    if args.num_classes is not None and args.num_classes != len(classes):
        raise UsageError(f"--num_classes {args.num_classes}, but {args.data_path} has {len(classes)} "
                         f"class folders ({', '.join(classes[:8])}{' ...' if len(classes) > 8 else ''}); "
                         f"pass --num_classes {len(classes)} or fix the folders")
    if not split.val_paths:
        raise UsageError(f"{args.data_path}: no class has two images, so nothing is left for validation")
    return split


def build_model(args: argparse.Namespace, num_classes: int, resumed: Resumed | None, ddp: Distributed) -> nn.Module:
    """The network with its starting weights and the layers that train."""
    torch.manual_seed(args.seed)
    model = create_model(args.model, num_classes=num_classes, drop_connect_rate=args.drop_path)
    if resumed is not None:
        load_weights(model, recipe.trained_weights(resumed.checkpoint), verbose=False)
    elif args.weights.lower() != "none":
        try:
            load_weights(model, args.weights, verbose=ddp.is_main)
        except WeightsError as error:
            raise UsageError(f"{error} (or pass --weights none to train from scratch; without any download: "
                             f"{QUICK_TRY})") from None
    if args.freeze_layers and resumed is None and args.weights.lower() == "none" and ddp.is_main:
        print("warning: --freeze-layers true with --weights none trains only the head, on a backbone that keeps its "
              "random initial weights; start from pretrained --weights (imagenet, the default) or train every "
              "layer (--freeze-layers false)", file=sys.stderr)
    if args.freeze_layers:
        recipe.freeze_all_but_head(model)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def place_model(model: nn.Module, args: argparse.Namespace, device: torch.device,
                ddp: Distributed) -> tuple[nn.Module, nn.Module]:
    """(the model to train: on the device, wrapped for DDP and compiled as asked; the model to evaluate)."""
    model.to(device, memory_format=torch.channels_last if args.channels_last else torch.contiguous_format)
    raw_model = model
    if ddp.active:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                    else None)
    if args.compile:
        model = torch.compile(model)
    # evaluation runs outside DDP: the processes may hold different numbers of validation batches
    return model, raw_model if ddp.active else model


def restore_progress(resumed: Resumed, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, steps: recipe.TrainingSteps,
                     settings: loop.StepSettings, ddp: Distributed) -> Progress:
    """Optimizer, schedule, weight-average and gradient-scaler state, and the history, as the stopped run
    left them."""
    checkpoint = resumed.checkpoint
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    steps.restore(checkpoint)
    if settings.scaler is not None and checkpoint.get("scaler"):
        settings.scaler.load_state_dict(checkpoint["scaler"])
    progress = Progress(list(checkpoint["history"]), checkpoint["best_acc"], checkpoint["best_epoch"],
                        resumed.folder.best_confusion(), checkpoint["epoch"],
                        checkpoint.get("best_score", checkpoint["best_acc"]))
    log(ddp, f"resuming {resumed.folder.path} after epoch {progress.next_epoch} of {checkpoint['args']['epochs']}")
    return progress


class ImagesLostError(RuntimeError):
    """Most images of an epoch could not be read: the data folder moved, a disk was unmounted, ..."""


def check_images_read(run: Run, epoch: int, part: str, seen: int, expected: int) -> None:
    """Stop when fewer than half the images of an epoch could be read: an epoch on a few images, or on none,
    would be saved (and could become best.pth) as if it had trained."""
    if 2 * seen >= expected:
        return
    why = f"{run.split.root} is gone" if not os.path.isdir(run.split.root) else "see the warnings above"
    raise ImagesLostError(f"epoch {epoch}: only {seen} of {expected} {part} images could be read ({why})")


def one_epoch(run: Run, epoch: int, loaders: tuple[DataLoader, DataLoader, EpochSampler]) -> None:
    """Train and validate epoch `epoch` (from 0), then record it (end_of_epoch)."""
    args, ddp = run.args, run.ddp
    train_loader, val_loader, train_sampler = loaders
    train_sampler.set_epoch(epoch)
    torch.manual_seed(args.seed * 1_000_003 + epoch)  # dropout, stochastic depth, mixup: resumable
    lr = run.optimizer.param_groups[0]["lr"]
    show = args.progress and ddp.is_main
    trained = loop.train_one_epoch(run.model, run.optimizer, train_loader, run.settings, epoch + 1, show, run.steps,
                                    smallest_batch=min(2, args.batch_size))
    check_images_read(run, epoch + 1, "training", trained.images, len(train_sampler) * ddp.world_size)
    broadcast_buffers(run.eval_model)  # every process evaluates what rank 0 saves
    validated = loop.evaluate(run.eval_model, val_loader, run.settings, len(run.split.classes), progress=show)
    check_images_read(run, epoch + 1, "validation", validated.images, len(run.split.val_paths))
    run.scheduler.step()
    end_of_epoch(run, epoch + 1, lr, trained, validated)


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def run_epochs(run: Run) -> int:
    """Train and validate epoch by epoch; 0 when all are done, 130 on Ctrl-C, 1 if the loss diverged, the images
    could not be read or memory ran out."""
    args, ddp, folder = run.args, run.ddp, run.folder
    loaders = make_loaders(run.split, run.images, args, run.settings.device, ddp)
    epoch = run.progress.next_epoch

    def resume() -> str | None:  # asked when the run stops: the epoch in progress may have been saved just now
        return f"python train.py --resume {folder.path}" if (folder.path / LAST_CHECKPOINT).is_file() else None

    try:
        for epoch in range(run.progress.next_epoch, args.epochs):
            stop = recipe.early_stop(args, run.progress.best_epoch, epoch)
            if stop:
                log(ddp, stop)
                break
            one_epoch(run, epoch, loaders)
    except KeyboardInterrupt:
        log(ddp, f"\ninterrupted in epoch {epoch + 1}; {folder.saved_so_far()}"
                 f"{f'. Continue with: {resume()}' if resume() else ''}")
        return 130
    except loop.NonFiniteLossError as error:
        log(ddp, f"error: {error}; stopped. {folder.saved_so_far()}. Lower --lr or check the data")
        return 1
    except ImagesLostError as error:
        then = (f"put the images back (or pass --data-path with where they are now) and continue with: {resume()}"
                if resume() else "start the run again once the images are back")
        return log_error(ddp, f"{error}; stopped, so that no epoch is saved as if it had trained. "
                              f"{folder.saved_so_far()}; {then}")
    except (MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        return log_error(ddp, f"out of memory in epoch {epoch + 1} ({str(error).strip().splitlines()[0][:200]}); "
                              f"lower --batch-size or --image-size. {folder.saved_so_far()}")
    return 0


def end_of_epoch(run: Run, epoch: int, lr: float, trained: loop.EpochResult, validated: loop.EpochResult) -> None:
    """Record the epoch, keep the best model, write the run folder's files and print one line."""
    progress = run.progress
    progress.history.append({"epoch": epoch, "train_loss": trained.loss, "train_acc": trained.accuracy,
                             "val_loss": validated.loss, "val_acc": validated.accuracy,
                             "val_macro_f1": metrics.macro_f1(validated.confusion), "lr": lr,
                             "train_images_per_s": trained.images_per_second})
    score = recipe.score(run.args, progress.history[-1])
    # Weights that give NaN or infinite outputs in evaluation mode (activations that overflow while the
    # BatchNorm statistics lag behind, early in a run from scratch) classify nothing: never the best.
    finite = math.isfinite(validated.loss)
    improved = finite and validated.images > 0 and score > progress.best_score
    if improved:
        progress.best_acc, progress.best_epoch, progress.best_confusion = validated.accuracy, epoch, validated.confusion
        progress.best_score = score
    progress.next_epoch = epoch
    if run.folder.writes:
        run.folder.write_epoch(checkpoint(run, validated.confusion), improved, progress.history)
    skipped = len(run.split.train_paths) - trained.images
    log(run.ddp, f"epoch {epoch}/{run.args.epochs}: train loss {trained.loss:.4f} acc {trained.accuracy:.3f} | "
                 f"val loss {validated.loss:.4f} acc {validated.accuracy:.3f} | lr {lr:.5f} | "
                 f"{trained.images_per_second:.1f} img/s{' | new best' if improved else ''}"
                 f"{'' if finite else ' | outputs not finite in evaluation, so not kept as best'}"
                 f"{f' | {skipped} unreadable images left out' if skipped > 0 and run.ddp.world_size == 1 else ''}")


def checkpoint(run: Run, confusion: Any) -> dict[str, Any]:
    """Everything needed to rebuild the model and to resume the run exactly."""
    progress = run.progress
    return {**run.steps.checkpoint_fields(run.raw_model), "class_names": run.split.classes, "image": run.images,
            "epoch": progress.next_epoch, "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.settings.scaler.state_dict() if run.settings.scaler else None,
            "best_acc": progress.best_acc, "best_epoch": progress.best_epoch, "best_score": progress.best_score,
            "history": progress.history,
            "args": vars(run.args).copy(), "confusion": confusion}


def finish(run: Run) -> int:
    """The confusion matrix and per-class table of the best epoch, best.onnx, the test set's scores, and
    report.html; 130 if Ctrl-C stops this (the checkpoints are complete by then)."""
    progress, classes = run.progress, run.split.classes
    if not run.ddp.is_main or not progress.history:
        return 0
    if progress.best_confusion is None:
        return report(f"no epoch gave finite outputs in evaluation, so {run.folder.path} has no best.pth; train "
                      f"for more epochs (the first ones from scratch often overflow) or lower --lr", status=1)
    best = run.folder.path / BEST_CHECKPOINT
    try:
        run.folder.write_end(progress.best_confusion, classes, progress.best_epoch, progress.history)
        export_after_training(best, run.split.val_paths[:8])  # best.onnx beside it: predict.py's fast path
        print(f"best validation accuracy {progress.best_acc:.4f} at epoch {progress.best_epoch}; per class:\n"
              f"{metrics.class_table(classes, progress.best_confusion)}")
        report_path, test = run.folder.write_review(run.split, run.settings.device, run.data_check, settings_used(run))
    except KeyboardInterrupt:
        log(run.ddp, f"\ninterrupted after the last epoch, while writing the run's report; every epoch is saved "
                     f"({best}). Score it again with: python evaluate.py DIR --weights {best}")
        return 130
    except NonFiniteOutputError as error:  # photos of the test set or the report that the validation set spared
        return report(f"{error}; the run's files up to the report are written", status=1)
    if test is not None:
        print_test_results(test, best)
    print(f"report: {report_path}\nsaved {best}; classify a photo with: python predict.py IMAGE --weights {best}")
    warning = learned_nothing(progress.best_confusion, classes)
    if warning:  # the run's last line: a model at chance must not pass for a result
        sys.stdout.flush()
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def settings_used(run: Run) -> dict[str, str]:
    """What the flags that leave a choice to the machine came to in this run, for report.html."""
    device, dtype = run.settings.device, run.settings.autocast_dtype
    if dtype is not None:
        amp = str(dtype).removeprefix("torch.")  # bfloat16, or float16 with a gradient scaler
    else:  # --amp false, or a CPU, which always trains in float32
        amp = "off" if device.type == "cuda" else f"off ({device.type.upper()})"
    return {"device": str(device) if run.args.device else f"auto: {device}", "workers": str(loader_workers(run.args)),
            "amp": amp}


def print_test_results(test: Evaluation, best: Path) -> None:
    for path, error in test.unreadable:
        print(f"warning: unreadable test image {path}: {error}", file=sys.stderr)
    if test.results:
        print(f"test images with {best}: {describe(test, DEFAULT_TOP_K)}\n(per image in {best.parent / 'test'})")


def log(ddp: Distributed, message: str) -> None:
    if ddp.is_main:
        print(message, flush=True)


def log_error(ddp: Distributed, message: str, status: int = 1) -> int:
    """`error: message` on stderr, once under torchrun; the exit status."""
    return report(message, status) if ddp.is_main else status


def run(args: argparse.Namespace, given: set[str] = frozenset()) -> int:
    """train.py's work once its flags are read: the exit status, with every failure in one line."""
    keep_freed_memory_for_reuse()  # faster steps on Linux; see its docstring
    try:
        return train(args, given)
    except KeyboardInterrupt:  # during the set-up; the epochs handle their own Ctrl-C
        return report("interrupted before the first epoch; nothing was trained, so there is nothing to resume",
                      status=130)
    except (UsageError, WeightsError, DownloadError) as error:
        return report(str(error))
    except OSError as error:  # a full disk or a folder we may not write: nothing saved so far is lost
        return report(f"{error.filename or 'a file'}: {error.strerror or error}", status=1)
    finally:
        shutdown()
