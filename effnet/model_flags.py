"""The flags predict.py, evaluate.py and app.py share to choose a model and what runs it (--weights, --backend,
--model, --class-indices, --device, --tta, --precision), and the Classifier they ask for."""
import argparse
from collections.abc import Sequence
from typing import Any

from effnet.inference.classifier import Classifier
from effnet.inference.runtimes import BACKENDS
from effnet.run_files import RUNS_DIR
from effnet.variants import variant_name

Flags = argparse.ArgumentParser | argparse._ArgumentGroup  # a parser, or one of its --help groups


def add_model_flags(parser: Flags, what: str = "use", tta_group: Flags | None = None) -> None:
    """--weights, --backend, --model, --class-indices, --device and --tta: how predict.py, evaluate.py and
    app.py choose a model and what runs it (`what` completes "checkpoint ... to <what>"), in `parser`'s group of
    --help; --tta in `tta_group` when given (it is about the answers, not the model)."""
    add = parser.add_argument
    add("--weights", default=None,
        help=f"checkpoint, state_dict, or exported .onnx / OpenVINO .xml to {what} (default: the newest "
             f"{RUNS_DIR}/*/best.pth); 'imagenet' for torchvision's ImageNet weights")
    add("--backend", choices=BACKENDS, default="auto",
        help="what runs the model: 'auto' (default) takes ONNX Runtime for an .onnx, or for a checkpoint with "
             "an up-to-date export beside it (best.onnx beside best.pth), unless Grad-CAM, bfloat16 or a GPU "
             "--device needs PyTorch; else torch")
    add("--model", default=None, help="variant of a bare state_dict or plain .onnx (default: for a state_dict the one "
                                      "its shapes show, for a plain .onnx b0); checkpoints and exports of this "
                                      "project record their own")
    add("--class-indices", default=None,
        help="class names for a bare state_dict or plain .onnx (default: class_indices.json beside the weights, "
             "else here)")
    add("--device", default=None, help="cuda, cpu, ... for the torch backend (default: CUDA when available)")
    (tta_group or parser).add_argument(
        "--tta", action="store_true",
        help="test-time augmentation: average the answers for each image and its mirror image (2x the work; default "
             "off)")


def add_precision_flag(parser: Flags, choices: Sequence[str] = ("float32", "int8")) -> None:
    """--precision: float32 (the default), int8 (the INT8 export that export.py --int8 writes, in ONNX Runtime),
    and where the program offers it bfloat16 (the torch backend)."""
    meanings = {"int8": "int8 runs the INT8 export (best.int8.onnx beside best.pth, from 'export.py --int8') with "
                        "ONNX Runtime",
                "bfloat16": "bfloat16 (torch backend) is faster on CPUs with bfloat16 support"}
    parser.add_argument("--precision", choices=choices, default="float32",
                        help="; ".join(meanings[c] for c in choices if c in meanings) +
                             "; default float32")


def classifier_from_flags(args: argparse.Namespace, **options: Any) -> "Classifier":
    """The Classifier that add_model_flags' flags ask for; `options` adds or overrides from_weights' arguments."""
    chosen = {"backend": args.backend, "tta": args.tta, **options}
    model_name = variant_name(args.model) if args.model else None
    return Classifier.from_weights(args.weights, model_name, args.class_indices, args.device, **chosen)
