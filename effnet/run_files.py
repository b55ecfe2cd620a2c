"""Where a run's files are and what they are called: runs/, best.pth and last.pth, the newest run, and the
exports beside a checkpoint (best.onnx, best.int8.onnx). Training writes by these names and every program
finds by them; nothing here imports PyTorch."""
import os
from pathlib import Path

from effnet.command_line import UsageError

RUNS_DIR = "runs"  # train.py's default --output-dir, where the programs look for the newest run
BEST_CHECKPOINT, LAST_CHECKPOINT = "best.pth", "last.pth"
INT8_SUFFIX = ".int8.onnx"  # best.onnx -> best.int8.onnx
SPLIT_FILE = "split.json"  # a folder holding one is a run folder of train.py
# A run folder's files that its run or the programs read back (train.py --resume, evaluate.py's copies warning,
# export.py --int8, predict.py's class names and exports, the report's figures): no output may replace them.
READ_BACK_NAMES = (SPLIT_FILE, "data_check.json", "class_indices.json", "recipe.json", "metrics.csv",
                   "duplicates.csv", "report.html")
MODEL_SUFFIXES = (".pth", ".onnx", ".xml", ".bin")  # checkpoints and exports (OpenVINO's .xml and .bin)


def is_run_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a run folder of train.py: it holds split.json."""
    return os.path.isfile(os.path.join(folder, SPLIT_FILE))


def is_read_back(name: str) -> bool:
    """Whether a file of a run folder called `name` is one its run or the programs read (see READ_BACK_NAMES)."""
    return name in READ_BACK_NAMES or name.lower().endswith(MODEL_SUFFIXES)


def newest_checkpoint(runs_dir: str | os.PathLike = RUNS_DIR, name_one: str = "pass --weights PATH") -> Path:
    """best.pth of the most recently written run under `runs_dir`; `name_one` says how to give one instead."""
    candidates = sorted(Path(runs_dir).glob(f"*/{BEST_CHECKPOINT}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UsageError(f"no trained checkpoint found under {runs_dir}/*/{BEST_CHECKPOINT}; train one with "
                         f"'python train.py' or {name_one}")
    return candidates[-1]


def default_output(checkpoint: str | os.PathLike, fmt: str = "onnx") -> Path:
    """Where export.py writes: best.pth -> best.onnx (or best.xml for OpenVINO) beside it."""
    return Path(checkpoint).with_suffix(".xml" if fmt == "openvino" else ".onnx")


def int8_path(float_export: str | os.PathLike) -> Path:
    """Where the INT8 export of `float_export` goes: best.onnx -> best.int8.onnx, beside it."""
    path = Path(float_export)
    return path.with_name(path.name[:-len(path.suffix)] + INT8_SUFFIX if path.suffix else path.name + INT8_SUFFIX)


def is_int8_name(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(INT8_SUFFIX)


def float_stem(path: str | os.PathLike) -> Path:
    """best.int8.onnx -> best (and best.pth or best.onnx -> best): what the checkpoint and exports share."""
    path = Path(path)
    name = path.name[:-len(INT8_SUFFIX)] if is_int8_name(path) else path.stem
    return path.with_name(name)


def related_files(weights: str | os.PathLike) -> list[tuple[str, str]]:
    """(path, what it is) of the INT8 export beside a checkpoint or float32 export, and for an INT8 export the
    checkpoint and float32 export it came from: files a run may read, which no output may replace."""
    stem = float_stem(weights)
    if is_int8_name(weights):
        return [(f"{stem}.pth", "the checkpoint"), (f"{stem}.onnx", "the exported model")]
    return [(f"{stem}{INT8_SUFFIX}", "the INT8 export")]
