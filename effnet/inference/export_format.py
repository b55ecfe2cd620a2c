"""The exported model's file format: what an .onnx of this project says about itself in its metadata (class
names, variant, evaluation preprocessing, the checkpoint it came from, its precision), how that is written and
read back, and how a stale export is recognised. onnx_conversion.py and int8.py write it; the backends
(exported_backends.py) read it. No PyTorch, no ONNX Runtime here."""
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effnet.command_line import UsageError
from effnet.data.images import Preprocessing
from effnet.download import sha256_of
from effnet.inference.class_names import find_class_names, replace_own_names
from effnet.run_files import INT8_SUFFIX, float_stem
from effnet.variants import image_settings, variant_name

EXPORT_FORMAT = "efficientnet-tutorial-onnx/1"  # the "format" metadata entry of this project's exports
EXPORTED_SUFFIXES = (".onnx", ".xml")  # ONNX, and OpenVINO's IR
FORMATS = ("onnx", "openvino")  # what export.py writes
OPSET = 17  # read by every ONNX Runtime and OpenVINO release of the last years; newer opsets measured no faster


class StaleModelError(UsageError):
    """An exported model whose checkpoint has changed since it was exported."""


def checkpoint_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a checkpoint file: its name, size, modification time and sha256."""
    path = Path(path)
    status = path.stat()
    return {"file": path.name, "bytes": status.st_size, "mtime_ns": status.st_mtime_ns, "sha256": sha256_of(path)}


def is_exported_from(recorded: Mapping[str, Any] | None, checkpoint: str | os.PathLike) -> bool:
    """Whether `recorded` (an export's checkpoint entry) identifies the file `checkpoint` as it is now.

    By content: a copied run folder (new file times) still matches, a rewritten best.pth does not. The
    sha256 of a large checkpoint costs a noticeable part of a one-photo prediction, so a file with the
    recorded size and modification time, untouched since the export, is taken as the same without it.
    """
    if not recorded:
        return False
    status = os.stat(checkpoint)
    if status.st_size != recorded.get("bytes"):
        return False
    return status.st_mtime_ns == recorded.get("mtime_ns") or sha256_of(checkpoint) == recorded.get("sha256")


@dataclass(frozen=True)
class ModelCard:
    """What an exported model says about itself, or what was assumed for a plain one."""

    class_names: list[str]
    preprocessing: Preprocessing
    variant: str | None
    checkpoint: dict[str, Any] | None  # checkpoint_identity() of the file it was exported from
    outputs_probabilities: bool | None  # None for a plain export: decided from its outputs
    origin: str
    class_names_note: str | None = None  # where the names came from, when the user should know
    precision: str = "float32"  # "int8" for an INT8 export (export.py --int8)
    precision_known_by: str = "its metadata"  # or, for a plain export, "its operators"

    @property
    def export_command(self) -> str:
        """The export.py flags that write this kind of file again."""
        return " --int8" if self.precision == "int8" else ""


# Operators that only a quantized model holds: ONNX's QDQ pairs and integer kernels, OpenVINO's FakeQuantize
QUANTIZED_OPERATORS = (b"QuantizeLinear", b"DequantizeLinear", b"QLinearConv", b"QLinearMatMul", b"ConvInteger",
                       b"MatMulInteger", b"FakeQuantize")


def operators_precision(path: str | os.PathLike, chunk: int = 1 << 23) -> str:
    """"int8" when the model file names a quantization operator, else "float32": the precision of a plain export,
    which says nothing about itself. Operator names are plain strings in an .onnx (and an .xml), so the file's
    bytes are searched, in chunks that overlap by the longest name, without parsing the model."""
    overlap = max(map(len, QUANTIZED_OPERATORS))
    with open(path, "rb") as file:
        tail = b""
        while block := file.read(chunk):
            window, tail = tail + block, (tail + block)[-overlap:]
            if any(name in window for name in QUANTIZED_OPERATORS):
                return "int8"
    return "float32"


def metadata_entries(class_names: list[str], variant: str, preprocessing: Preprocessing,
                     checkpoint: Mapping[str, Any] | None) -> dict[str, str]:
    """The metadata written into an export (string to string, as ONNX stores it)."""
    entries = {"format": EXPORT_FORMAT, "variant": variant, "class_names": json.dumps(list(class_names)),
               "image": json.dumps(preprocessing.to_settings()), "output": "probabilities"}
    if checkpoint:
        entries["checkpoint"] = json.dumps(dict(checkpoint))
    return entries


def read_card(path: Path, metadata: Mapping[str, str], outputs: int | None, model_name: str,
              class_indices: str | None, input_size: int | None = None) -> ModelCard:
    """The card of an exported model from its metadata; a plain export's from --class-indices and --model
    (its preprocessing scaled to the input size, when the model fixes one)."""
    if metadata.get("format") != EXPORT_FORMAT:
        found = find_class_names(path, class_indices, outputs)
        preprocessing = Preprocessing.from_settings(image_settings(model_name, input_size))
        card = ModelCard(found.names, preprocessing, None, None, None, f"{path} (plain ONNX; class names from "
                         f"{found.origin}, preprocessing of {model_name} at {preprocessing.crop} px)", found.note,
                         operators_precision(path), "its operators")
    else:
        try:
            own = [str(name) for name in json.loads(metadata["class_names"])]
            preprocessing = Preprocessing.from_settings(json.loads(metadata["image"]))
            variant = variant_name(metadata["variant"])
            checkpoint = json.loads(metadata["checkpoint"]) if "checkpoint" in metadata else None
        except (KeyError, ValueError, TypeError) as error:
            raise UsageError(f"{path}: damaged metadata ({type(error).__name__}: {error}); export it again with "
                             f"'python export.py CHECKPOINT'") from None
        found = replace_own_names(own, class_indices, str(path))
        card = ModelCard(found.names, preprocessing, variant, checkpoint, metadata.get("output") == "probabilities",
                         str(path), found.note, metadata.get("precision", "float32"))
    if outputs is not None and outputs != len(card.class_names):
        raise UsageError(f"{path} outputs {outputs} classes but has {len(card.class_names)} class names "
                         f"(from {card.origin}); give a class_indices.json with {outputs} with --class-indices")
    return card


def check_precision(path: Path, card: ModelCard, expected: str, why: str) -> None:
    """Refuse an export whose own precision (its metadata's, or a plain one's operators') is not `expected`, which
    `why` asked for ("--precision int8 asks for", "its name says"): an INT8 file is what its name says, and a
    float32 model never runs where INT8 was asked for, nor the other way round."""
    if card.precision == expected:
        return
    stem = float_stem(path)
    if expected == "int8":
        raise UsageError(f"{path} is a float32 model (known by {card.precision_known_by}), not the INT8 model "
                         f"{why}; write the INT8 export with 'python export.py {stem}.pth --int8' (it goes beside "
                         f"the float32 export {stem}.onnx as {stem}{INT8_SUFFIX})")
    raise UsageError(f"{path} is an INT8 model (known by {card.precision_known_by}), not the float32 model {why}; "
                     f"run it with --precision int8, or export the float32 model again with 'python export.py "
                     f"{stem}.pth'")


def check_current(path: Path, card: ModelCard) -> None:
    """Refuse an export whose checkpoint, still beside it, has changed since (a stale best.onnx)."""
    if not card.checkpoint:
        return
    source = path.parent / str(card.checkpoint.get("file"))
    if source.is_file() and not is_exported_from(card.checkpoint, source):
        raise StaleModelError(f"{path} was exported from an earlier {source.name} (the file beside it has "
                              f"changed since); export it again with 'python export.py {source}"
                              f"{card.export_command}', or use --weights {source} --backend torch")
