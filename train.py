"""Fine-tune EfficientNet on a class-per-folder image tree (by default the flower photos).

    python train.py --num_classes 5                       # B0 from ImageNet weights on the flower photos
    python train.py --data-path my_photos --model b3      # your own photos, another variant
    python train.py --resume runs/20261128-101500-b0      # continue an interrupted run
    torchrun --nproc_per_node=4 train.py ...              # one process per GPU (DistributedDataParallel)

Each run writes one folder (runs/<time>-<variant>/) with last.pth, best.pth, metrics.csv, curves.png,
confusion_matrix.png, class_distribution.png, per_class.csv, report.html, class_indices.json, split.json,
TensorBoard events, and test/ (the results on a pre-split dataset's test/ images); duplicates.csv and
data_check.json (the copies among the images, checked before training) and label_issues.csv.
"""
import sys
from typing import Any

from effnet.command_line import report
# The flags are read before PyTorch is imported (effnet/training/flags.py has none of it); the run
# itself is effnet/training/trainer.py.
from effnet.training.flags import DEFAULT_DATA_PATH, build_parser, check_args, given_flags  # noqa: F401 (re-exported)
from effnet.command_line import UsageError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = given_flags(argv)
    if not args.resume:  # a resumed run keeps its own settings, checked once they are read
        try:
            check_args(args)  # impossible values: one line at once, not after PyTorch's seconds of importing
        except UsageError as error:
            return report(str(error))
    try:
        from effnet.training import trainer  # PyTorch and torchvision: seconds to import, and a Ctrl-C meanwhile is one line too
    except KeyboardInterrupt:
        return report("interrupted while starting; nothing was trained, so there is nothing to resume", status=130)
    return trainer.run(args, given)


def __getattr__(name: str) -> Any:
    """The run's parts (train.make_loaders, train.build_model, ...), for scripts written when they lived here."""
    if name.startswith("__"):  # what tools probe modules for: no reason to import PyTorch
        raise AttributeError(name)
    from effnet.training import trainer

    return getattr(trainer, name)


if __name__ == "__main__":
    sys.exit(main())
