"""Fine-tune EfficientNet on a class-per-folder image tree (by default the flower photos).

    python train.py --num_classes 5                       # B0 from ImageNet weights on the flower photos
    python train.py --data-path my_photos --model b3      # your own photos, another variant
    python train.py --resume runs/20261128-101500-b0      # continue an interrupted run
    torchrun --nproc_per_node=4 train.py ...              # one process per GPU (DistributedDataParallel)

Each run writes one folder (runs/<time>-<variant>/) with last.pth, best.pth, metrics.csv, curves.png,
confusion_matrix.png, class_distribution.png, class_indices.json, split.json and TensorBoard events.
"""
import argparse
import datetime
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

import utils
from download import DownloadError
from model import MEAN, STD, VARIANTS, WeightsError, checkpoint_fields, create_model, load_weights, \
    read_weights_file
from my_dataset import EvalTransform, MyDataSet, TrainTransform

DEFAULT_DATA_PATH = os.path.join("flower_data", "flower_photos")
# settings that may differ when a run is resumed: where and how fast it runs, not what it computes
MACHINE_SETTINGS = ("resume", "device", "workers", "progress", "channels_last", "compile", "grad_checkpointing",
                    "sync_bn")


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--num_classes", "--num-classes", type=int, default=None,
        help="number of classes; must equal the class folders found (default: however many there are)")
    add("--epochs", type=int, default=30, help="training epochs (default 30)")
    add("--batch-size", type=int, default=16, help="images per step, per process under torchrun (default 16)")
    add("--lr", type=float, default=0.01, help="initial SGD learning rate, not scaled by the number of "
                                                "processes (default 0.01)")
    add("--lrf", type=float, default=0.01, help="final learning rate as a fraction of --lr, reached along a "
                                                 "cosine (default 0.01)")
    add("--data-path", default=None,
        help=f"folder with one sub-folder of images per class (default {DEFAULT_DATA_PATH}, downloaded "
             f"when missing; with --resume: where the run's images are now, if they moved)")
    add("--model", default="b0", choices=list(VARIANTS), help="EfficientNet variant (default b0)")
    add("--weights", default="imagenet",
        help="initial weights: 'imagenet' (torchvision's, downloaded once), a .pth path (this project's "
             "checkpoint, a tutorial or torchvision state_dict), or 'none' to train from scratch")
    add("--freeze-layers", type=parse_bool, nargs="?", const=True, default=True, metavar="{true,false}",
        help="train only the last conv and the classifier, keeping the frozen BatchNorm statistics fixed "
             "(default true, as in the tutorial; '--freeze-layers false' trains everything)")
    add("--device", default=None, help="'cuda', 'cuda:1', 'cpu', ... (default: the first CUDA device, else CPU)")
    add("--workers", type=int, default=None,
        help="data-loading processes (default: min(CPU cores, batch size, 8))")
    add("--seed", type=int, default=0, help="seed of the split, the initialisation and the augmentation")
    add("--val-rate", type=float, default=0.2, help="fraction of each class held out for validation")
    add("--image-size", type=int, default=None,
        help="train and evaluation crop size (default: the variant's, from model.py); smaller is faster")
    add("--output-dir", default="runs", help="where run folders are created (default runs/)")
    add("--name", default=None, help="run folder name (default <date>-<time>-<variant>)")
    add("--resume", default=None, metavar="RUN",
        help="continue a run: its folder or its last.pth; the run's own settings are used, except how it "
             "runs (--device, --workers, --progress, --channels-last, --compile, --grad-checkpointing, "
             "--sync-bn) and --data-path")
    add("--channels-last", type=parse_bool, nargs="?", const=True, default=True, metavar="{true,false}",
        help="NHWC memory layout, faster for convolutions on CPUs and GPUs (default true)")
    add("--amp", type=parse_bool, nargs="?", const=True, default=True, metavar="{true,false}",
        help="mixed precision on CUDA: bfloat16 where supported, else float16 with a gradient scaler "
             "(default true; the CPU always trains in float32, which is faster there)")
    add("--compile", action="store_true", help="torch.compile the model (slow start, faster steps)")
    add("--grad-checkpointing", action="store_true",
        help="recompute activations in the backward pass: far less memory (see BENCHMARKS.md), slower steps")
    add("--sync-bn", action="store_true", help="synchronise BatchNorm statistics across GPUs under torchrun")
    add("--progress", type=parse_bool, nargs="?", const=True, default=True, metavar="{true,false}",
        help="show progress bars (default true)")
    return parser


def resolve_device(name: str | None, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """The requested device, checked to exist; by default this process's CUDA device, else the CPU."""
    if name is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if local_rank >= torch.cuda.device_count():
            raise utils.UsageError(f"LOCAL_RANK {local_rank}, but only {torch.cuda.device_count()} CUDA device(s) "
                                   f"exist; start at most that many processes per machine")
        return torch.device("cuda", local_rank)
    try:
        device = torch.device(name)
    except RuntimeError:
        raise utils.UsageError(f"--device {name!r} is not a device name; use e.g. cpu, cuda or cuda:1") from None
    if distributed and device.index is not None:
        raise utils.UsageError(f"--device {name}: under torchrun each process takes the GPU of its LOCAL_RANK; "
                               f"pass --device {device.type} (choose GPUs with CUDA_VISIBLE_DEVICES)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise utils.UsageError(f"--device {name}: CUDA is not available here; use --device cpu")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise utils.UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise utils.UsageError(f"--device {name}: MPS is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise utils.UsageError(f"--device {name}: only cpu, cuda and mps are supported")
    return device


@dataclass
class Distributed:
    """This process's place under torchrun (rank 0 of 1 without it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False  # a process group exists (under torchrun, even with one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str | None) -> tuple[Distributed, torch.device]:
    if "LOCAL_RANK" not in os.environ:  # plain `python train.py`
        return Distributed(), resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank, distributed=True)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30),
                            device_id=device if device.type == "cuda" else None)
    return Distributed(dist.get_rank(), world_size, local_rank, active=True), device


def image_settings(variant: str, image_size: int | None) -> dict[str, Any]:
    """Train/eval sizes and normalisation: the variant's from model.py, or scaled to --image-size."""
    spec = VARIANTS[variant]
    settings = {"train_size": spec.train_size, "eval_resize": spec.eval_resize, "eval_crop": spec.eval_crop,
                "interpolation": spec.interpolation, "mean": list(MEAN), "std": list(STD)}
    if image_size is not None:
        settings.update(train_size=image_size, eval_crop=image_size,
                        eval_resize=round(image_size * spec.eval_resize / spec.eval_crop))
    return settings


def default_workers(batch_size: int) -> int:
    return min(os.cpu_count() or 1, batch_size if batch_size > 1 else 0, 8)


def new_run_dir(output_dir: str, name: str | None, variant: str) -> Path:
    base = name or f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{variant}"
    run_dir = Path(output_dir) / base
    suffix = 1
    while run_dir.exists():
        if name:
            raise utils.UsageError(f"run folder {run_dir} already exists; choose another --name or --resume it")
        suffix += 1
        run_dir = Path(output_dir) / f"{base}-{suffix}"
    return run_dir


def check_args(args: argparse.Namespace) -> None:
    """Reject impossible settings before anything is downloaded or written."""
    problems = [
        (args.epochs < 1, f"--epochs {args.epochs}: train for at least 1 epoch"),
        (args.batch_size < 1, f"--batch-size {args.batch_size}: use 1 or more"),
        (not args.lr > 0, f"--lr {args.lr}: the learning rate must be positive"),
        (not 0 <= args.lrf <= 1, f"--lrf {args.lrf}: the final learning-rate fraction must be within 0 ... 1"),
        (not 0 < args.val_rate < 1, f"--val-rate {args.val_rate}: hold out a fraction between 0 and 1"),
        (args.workers is not None and args.workers < 0, f"--workers {args.workers}: use 0 or more"),
        (args.image_size is not None and args.image_size < 32, f"--image-size {args.image_size}: use 32 or more"),
    ]
    for failed, message in problems:
        if failed:
            raise utils.UsageError(message)


def find_resume_checkpoint(resume: str) -> Path:
    path = Path(resume)
    if path.is_dir():
        path = path / "last.pth"
    if not path.is_file():
        raise utils.UsageError(f"--resume {resume}: no {path}; give a run folder or its last.pth (a run stopped "
                               f"during its first epoch has none: start it again)")
    return path


def read_resume_checkpoint(path: Path) -> dict[str, Any]:
    checkpoint = read_weights_file(path)
    needed = ("args", "optimizer", "scheduler", "epoch", "history")
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in needed):
        raise utils.UsageError(f"--resume {path}: not a training checkpoint of this project (no optimizer or "
                               f"schedule state); to start from its weights use --weights {path}")
    if not (path.parent / "split.json").is_file():
        raise utils.UsageError(f"--resume {path}: {path.parent / 'split.json'} is missing, so the run's "
                               f"train/validation split is unknown; start a new run with --weights {path}")
    return checkpoint


def given_flags(argv: list[str] | None) -> set[str]:
    """The destinations of the flags written on the command line (not those left at their defaults)."""
    parser = build_parser()
    for action in parser._actions:  # argparse offers no public way to drop the defaults of a built parser
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def resumed_args(args: argparse.Namespace, saved: dict[str, Any], given: set[str]) -> argparse.Namespace:
    """The run's saved settings, with this invocation's machine settings; warns about flags left unused."""
    merged = dict(saved)
    for key in MACHINE_SETTINGS:
        merged[key] = getattr(args, key)
    ignored = [f"--{key.replace('_', '-')}" for key in sorted(given)
               if key not in MACHINE_SETTINGS and key != "data_path" and getattr(args, key) != saved.get(key)]
    if ignored and int(os.environ.get("RANK", "0")) == 0:
        print(f"note: a resumed run keeps its own settings; ignoring {', '.join(ignored)}", file=sys.stderr)
    return argparse.Namespace(**merged)


def resumed_data_root(requested: str | None, saved_split: dict[str, Any], saved_path: str) -> str:
    """Where the resumed run's images are: --data-path if given, else where they were (absolute, so a
    resume from another working directory still finds them)."""
    candidates = [requested] if requested is not None else [saved_split.get("root", saved_path), saved_path]
    for candidate in candidates:
        if os.path.isdir(candidate):
            return os.path.abspath(candidate)
    raise utils.UsageError(f"--resume: the run's images are no longer in {candidates[0]}; pass --data-path "
                           f"with their new location")


def initial_weights(model: nn.Module, weights: str, is_main: bool) -> None:
    if weights.lower() == "none":
        return
    try:
        load_weights(model, weights, verbose=is_main)
    except WeightsError as error:
        raise utils.UsageError(f"{error} (or pass --weights none to train from scratch)") from None


def make_loaders(split: utils.DataSplit, images: dict[str, Any], args: argparse.Namespace, device: torch.device,
                 ddp: Distributed) -> tuple[DataLoader, DataLoader, utils.EpochSampler]:
    train_set = MyDataSet(split.train_paths, split.train_labels, TrainTransform(images["train_size"]))
    val_set = MyDataSet(split.val_paths, split.val_labels,
                        EvalTransform(images["eval_resize"], images["eval_crop"], images["interpolation"]))
    train_sampler = utils.EpochSampler(len(train_set), shuffle=True, seed=args.seed, rank=ddp.rank,
                                       num_replicas=ddp.world_size, pad=True)
    val_sampler = utils.EpochSampler(len(val_set), shuffle=False, seed=args.seed, rank=ddp.rank,
                                     num_replicas=ddp.world_size, pad=False)
    workers = default_workers(args.batch_size) if args.workers is None else args.workers
    common = dict(batch_size=args.batch_size, num_workers=workers, collate_fn=MyDataSet.collate_fn,
                  pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    # Each loader gets its own generator: starting an epoch must not draw from the global random state,
    # which dropout and stochastic depth use (the samplers carry all the data's randomness themselves).
    return (DataLoader(train_set, sampler=train_sampler, generator=torch.Generator(), **common),
            DataLoader(val_set, sampler=val_sampler, generator=torch.Generator(), **common), train_sampler)


def step_settings(args: argparse.Namespace, device: torch.device) -> utils.StepSettings:
    settings = utils.StepSettings(device=device, channels_last=args.channels_last,
                                  non_blocking=device.type == "cuda")
    if device.type == "cuda" and args.amp:
        torch.backends.cudnn.benchmark = True
        if torch.cuda.is_bf16_supported():
            settings.autocast_dtype = torch.bfloat16
        else:
            settings.autocast_dtype = torch.float16
            settings.scaler = torch.amp.GradScaler("cuda")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return settings


def log(ddp: Distributed, message: str) -> None:
    if ddp.is_main:
        print(message, flush=True)


def train(args: argparse.Namespace, given: set[str] = frozenset()) -> int:
    """Run (or, with args.resume, continue) a training run; `given` names the flags the user wrote."""
    resumed: dict[str, Any] | None = None
    if args.resume:
        resume_path = find_resume_checkpoint(args.resume)
        resumed = read_resume_checkpoint(resume_path)
        run_dir = resume_path.parent
        saved_split = json.loads((run_dir / "split.json").read_text())
        data_root = resumed_data_root(args.data_path, saved_split, resumed["args"]["data_path"])
        args = resumed_args(args, resumed["args"], given)
        args.data_path = data_root  # saved with the run, for the next resume
    elif args.data_path is None:
        args.data_path = DEFAULT_DATA_PATH
    check_args(args)
    ddp, device = init_distributed(args.device)
    if args.sync_bn and (device.type != "cuda" or not ddp.active):
        raise utils.UsageError("--sync-bn needs CUDA processes under torchrun; leave it out here")

    # data
    if resumed is not None:
        split = utils.DataSplit.from_json(saved_split, args.data_path)
    else:
        if args.data_path == DEFAULT_DATA_PATH and not os.path.isdir(args.data_path):
            if ddp.is_main:
                utils.ensure_flower_photos(args.data_path)
            if ddp.active:
                dist.barrier()
        split = utils.read_split_data(args.data_path, args.val_rate, args.seed, report=ddp.is_main)
    classes = split.classes
    if args.num_classes is not None and args.num_classes != len(classes):
        raise utils.UsageError(f"--num_classes {args.num_classes}, but {args.data_path} has {len(classes)} "
                               f"class folders ({', '.join(classes[:8])}{' ...' if len(classes) > 8 else ''}); "
                               f"pass --num_classes {len(classes)} or fix the folders")
    if not split.val_paths:
        raise utils.UsageError(f"{args.data_path}: no class has two images, so nothing is left for validation")
    images = image_settings(args.model, args.image_size)

    # model
    torch.manual_seed(args.seed)
    model = create_model(args.model, num_classes=len(classes))
    if resumed is not None:
        load_weights(model, resumed, verbose=False)
    else:
        initial_weights(model, args.weights, ddp.is_main)
    if args.freeze_layers:
        utils.freeze_all_but_head(model)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=torch.channels_last if args.channels_last else torch.contiguous_format)
    raw_model = model  # what checkpoints hold: no DDP 'module.' prefix, no compile wrapper
    if ddp.active:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                    else None)
    if args.compile:
        model = torch.compile(model)
    # evaluation runs outside DDP: the processes may hold different numbers of validation batches
    eval_model = raw_model if ddp.active else model

    parameters = [p for p in raw_model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=utils.CosineFactor(args.epochs, args.lrf))
    settings = step_settings(args, device)
    history: list[dict[str, float]] = []
    best_acc, best_epoch, start_epoch = -1.0, -1, 0
    best_confusion = None
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        if settings.scaler is not None and resumed.get("scaler"):
            settings.scaler.load_state_dict(resumed["scaler"])
        history = list(resumed["history"])
        best_acc, best_epoch = resumed["best_acc"], resumed["best_epoch"]
        start_epoch = resumed["epoch"]  # epochs completed, so the index of the next one
        log(ddp, f"resuming {run_dir} after epoch {start_epoch} of {args.epochs}")
        best_path = run_dir / "best.pth"
        if best_path.is_file():
            best_confusion = read_weights_file(best_path).get("confusion")
    else:
        run_dir = new_run_dir(args.output_dir, args.name, args.model) if ddp.is_main else None
        if ddp.active:  # every process needs rank 0's choice (the clock differs between them)
            shared = [run_dir]
            dist.broadcast_object_list(shared, src=0)
            run_dir = shared[0]
        if ddp.is_main:
            try:
                run_dir.mkdir(parents=True)
            except OSError as error:
                raise utils.UsageError(f"cannot create the run folder {run_dir} ({error.strerror}); choose "
                                       f"another --output-dir") from None
            utils.write_json(run_dir / "class_indices.json", {str(i): name for i, name in enumerate(classes)})
            utils.write_json(run_dir / "split.json", split.to_json())
            utils.plot_class_distribution(classes, split.counts(split.train_labels), split.counts(split.val_labels),
                                          run_dir / "class_distribution.png")

    log(ddp, f"{len(split.train_paths)} training and {len(split.val_paths)} validation images in "
             f"{len(classes)} classes; efficientnet_{args.model} at {images['train_size']} px on {device}"
             f"{f' x {ddp.world_size} processes' if ddp.world_size > 1 else ''}; run folder {run_dir}")
    train_loader, val_loader, train_sampler = make_loaders(split, images, args, device, ddp)
    writer = tensorboard_writer(run_dir) if ddp.is_main else None
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, args.epochs):
            train_sampler.set_epoch(epoch)
            torch.manual_seed(args.seed * 1_000_003 + epoch)  # dropout and stochastic depth, resumable
            lr = optimizer.param_groups[0]["lr"]
            trained = utils.train_one_epoch(model, optimizer, train_loader, settings, epoch + 1,
                                            progress=args.progress and ddp.is_main)
            utils.broadcast_buffers(raw_model)  # every process evaluates what rank 0 saves
            validated = utils.evaluate(eval_model, val_loader, settings, len(classes), progress=args.progress
                                       and ddp.is_main)
            scheduler.step()
            history.append({"epoch": epoch + 1, "train_loss": trained.loss, "train_acc": trained.accuracy,
                            "val_loss": validated.loss, "val_acc": validated.accuracy, "lr": lr,
                            "train_images_per_s": trained.images_per_second})
            improved = validated.accuracy > best_acc
            if improved:
                best_acc, best_epoch, best_confusion = validated.accuracy, epoch + 1, validated.confusion
            if ddp.is_main:
                checkpoint = {
                    **checkpoint_fields(raw_model), "class_names": classes, "image": images, "epoch": epoch + 1,
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": settings.scaler.state_dict() if settings.scaler else None,
                    "best_acc": best_acc, "best_epoch": best_epoch, "history": history,
                    "args": vars(args).copy(), "confusion": validated.confusion}
                if improved:
                    utils.save_checkpoint(checkpoint, run_dir / "best.pth")
                utils.save_checkpoint(checkpoint, run_dir / "last.pth")
                utils.write_metrics_csv(run_dir / "metrics.csv", history)
                utils.plot_curves(history, run_dir / "curves.png")
                if writer is not None:
                    for key, value in history[-1].items():
                        if key != "epoch":
                            writer.add_scalar(key, value, epoch + 1)
                    writer.flush()
            skipped = len(split.train_paths) - trained.images
            log(ddp, f"epoch {epoch + 1}/{args.epochs}: train loss {trained.loss:.4f} acc {trained.accuracy:.3f} | "
                     f"val loss {validated.loss:.4f} acc {validated.accuracy:.3f} | lr {lr:.5f} | "
                     f"{trained.images_per_second:.1f} img/s"
                     f"{' | new best' if improved else ''}"
                     f"{f' | {skipped} unreadable images left out' if skipped > 0 and ddp.world_size == 1 else ''}")
    except KeyboardInterrupt:
        resumable = (run_dir / "last.pth").is_file()
        log(ddp, f"\ninterrupted in epoch {epoch + 1}; {saved_so_far(run_dir)}"
                 f"{f'. Continue with: python train.py --resume {run_dir}' if resumable else ''}")
        return 130
    except utils.NonFiniteLossError as error:
        log(ddp, f"error: {error}; stopped. {saved_so_far(run_dir)}. Lower --lr or check the data")
        return 1
    finally:
        if writer is not None:
            writer.close()

    if ddp.is_main and best_confusion is not None:
        utils.plot_confusion_matrix(best_confusion, classes, run_dir / "confusion_matrix.png",
                                    title=f"validation, best epoch {best_epoch}")
        print(f"best validation accuracy {best_acc:.4f} at epoch {best_epoch}; per class:\n"
              f"{utils.class_table(classes, best_confusion)}\n"
              f"saved {run_dir / 'best.pth'}; classify a photo with: python predict.py IMAGE --weights "
              f"{run_dir / 'best.pth'}")
    return 0


def saved_so_far(run_dir: Path) -> str:
    if (run_dir / "last.pth").is_file():
        return f"{run_dir / 'last.pth'} holds the last completed epoch"
    return "no epoch was completed, so no checkpoint was saved"


def tensorboard_writer(run_dir: Path) -> Any:
    """A TensorBoard writer into the run folder, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = given_flags(argv)
    utils.keep_freed_memory_for_reuse()  # faster steps on Linux; see its docstring
    try:
        return train(args, given)
    except (utils.UsageError, WeightsError, DownloadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk or a folder we may not write: nothing saved so far is lost
        print(f"error: {error.filename or 'a file'}: {error.strerror or error}", file=sys.stderr)
        return 1
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
