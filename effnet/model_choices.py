"""The names a user picks a trained model and its runtime by: where runs are and what their checkpoints are
called, the newest run, the name of torchvision's ImageNet weights, the backends and the precisions (the export
beside a checkpoint: exported_backends.default_output). Training writes by these
names and every program finds by them; nothing here imports PyTorch."""
import os
from pathlib import Path

from effnet.command_line import UsageError

RUNS_DIR = "runs"  # train.py's default --output-dir, where the programs look for the newest run
BEST_CHECKPOINT, LAST_CHECKPOINT = "best.pth", "last.pth"
IMAGENET = "imagenet"  # --weights imagenet: torchvision's ImageNet weights for the variant
BACKENDS = ("auto", "torch", "onnxruntime", "openvino")  # what runs the model (--backend)
TORCH_PRECISIONS = ("float32", "bfloat16")  # the PyTorch backend's number formats
PRECISIONS = (*TORCH_PRECISIONS, "int8")  # --precision; int8: an INT8 export (export.py --int8) in ONNX Runtime


def is_imagenet(weights: object) -> bool:
    return isinstance(weights, (str, os.PathLike)) and str(weights).lower() == IMAGENET


def newest_checkpoint(runs_dir: str | os.PathLike = RUNS_DIR, name_one: str = "pass --weights PATH") -> Path:
    """best.pth of the most recently written run under `runs_dir`; `name_one` says how to give one instead."""
    candidates = sorted(Path(runs_dir).glob(f"*/{BEST_CHECKPOINT}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UsageError(f"no trained checkpoint found under {runs_dir}/*/{BEST_CHECKPOINT}; train one with "
                         f"'python train.py' or {name_one}")
    return candidates[-1]
