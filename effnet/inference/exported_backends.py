"""Exported models without PyTorch: the ONNX Runtime and OpenVINO backends, and what an exported file says
about itself.

An .onnx written by this project (onnx_conversion.py) carries in its metadata everything a Classifier needs:
the class names, the variant, the evaluation preprocessing, and the size and sha256 of the checkpoint it
was exported from, so a best.onnx left behind by a newer best.pth is caught instead of used. A plain .onnx
from elsewhere works too, given class names (--class-indices, as for a bare state_dict) and the variant's
preprocessing (--model). OpenVINO reads the same .onnx, or an IR (.xml + .bin) that export.py wrote.

Nothing here imports PyTorch: this is the path that makes `python predict.py photo.jpg` start fast.
"""
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from effnet.inference.class_names import find_class_names, replace_own_names
from effnet.command_line import UsageError
from effnet.download import sha256_of
from effnet.data.images import Preprocessing
from effnet.variants import image_settings, variant_name
from effnet.inference import session_cache

EXPORT_FORMAT = "efficientnet-tutorial-onnx/1"  # the "format" metadata entry of this project's exports
EXPORTED_SUFFIXES = (".onnx", ".xml")  # ONNX, and OpenVINO's IR
FORMATS = ("onnx", "openvino")  # what export.py writes
OPSET = 17  # read by every ONNX Runtime and OpenVINO release of the last years; newer opsets measured no faster
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}  # backend -> what to pip install


class StaleModelError(UsageError):
    """An exported model whose checkpoint has changed since it was exported."""


def default_output(checkpoint: str | os.PathLike, fmt: str = "onnx") -> Path:
    """Where export.py writes: best.pth -> best.onnx (or best.xml) beside it."""
    return Path(checkpoint).with_suffix(".xml" if fmt == "openvino" else ".onnx")


def is_installed(backend: str) -> bool:
    """Whether the runtime of `backend` can be imported, without importing it."""
    return importlib.util.find_spec(PACKAGES[backend]) is not None


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

    @property
    def export_command(self) -> str:
        """The export.py flags that write this kind of file again."""
        return " --int8" if self.precision == "int8" else ""


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
                         f"{found.origin}, preprocessing of {model_name} at {preprocessing.crop} px)", found.note)
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


def check_current(path: Path, card: ModelCard) -> None:
    """Refuse an export whose checkpoint, still beside it, has changed since (a stale best.onnx)."""
    if not card.checkpoint:
        return
    source = path.parent / str(card.checkpoint.get("file"))
    if source.is_file() and not is_exported_from(card.checkpoint, source):
        raise StaleModelError(f"{path} was exported from an earlier {source.name} (the file beside it has "
                              f"changed since); export it again with 'python export.py {source}"
                              f"{card.export_command}', or use --weights {source} --backend torch")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class ExportedBackend:
    """What both runtimes share: the card, the input check, batches for fixed-batch models, and outputs turned
    into probabilities. Subclasses define `_run`: a batch the model takes -> its raw outputs."""

    name = "exported"

    def __init__(self, path: Path, metadata: Mapping[str, str], outputs: int | None, input_shape: list[int | None],
                 model_name: str, class_indices: str | None) -> None:
        self.path = path
        square = len(input_shape) == 4 and input_shape[2] is not None and input_shape[2] == input_shape[3]
        self.card = read_card(path, metadata, outputs, variant_name(model_name), class_indices,
                              input_shape[2] if square else None)
        self.class_names = self.card.class_names
        self.preprocessing = self.card.preprocessing
        self.variant = self.card.variant
        self.origin = self.card.origin
        self.class_names_note = self.card.class_names_note
        crop = self.preprocessing.crop
        if len(input_shape) != 4 or any(size not in (None, expected) for size, expected in
                                        zip(input_shape[1:], (3, crop, crop))):
            shape = " x ".join("?" if size is None else str(size) for size in input_shape)
            raise UsageError(f"{path} takes {shape} input, not the (N, 3, {crop}, {crop}) images that "
                             f"{self.origin} prepares; pass the --model of its size")
        self.fixed_batch = input_shape[0]  # a plain export may take only a fixed number of images per call

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 preprocessed images -> (N, classes) float32 probabilities."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.fixed_batch:  # in chunks of that size, the last one padded
            padded = np.concatenate([batch, np.zeros((-len(batch) % self.fixed_batch, *batch.shape[1:]), batch.dtype)])
            outputs = np.concatenate([self._run(padded[i:i + self.fixed_batch])
                                      for i in range(0, len(padded), self.fixed_batch)])[:len(batch)]
        else:
            outputs = self._run(batch)
        outputs = outputs.reshape(len(batch), -1).astype(np.float32, copy=False)
        probabilities = self.card.outputs_probabilities
        if probabilities is None:  # a plain export: it may end in a softmax or not
            probabilities = _look_like_probabilities(outputs)
        return outputs if probabilities else softmax(outputs)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _look_like_probabilities(outputs: np.ndarray) -> bool:
    """Rows in [0, 1] that sum to 1 are probabilities already; anything else is taken for logits."""
    return bool(np.all(outputs >= 0) and np.all(outputs <= 1) and np.allclose(outputs.sum(axis=1), 1, atol=1e-3))


def _static(dimension: Any) -> int | None:
    return dimension if isinstance(dimension, int) and dimension > 0 else None


class OnnxRuntimeBackend(ExportedBackend):
    """An .onnx in an ONNX Runtime CPU session.

    ONNX Runtime's defaults: every graph optimisation (Sigmoid x Mul fused, convolutions in the blocked
    NCHWc layout), one thread per core, worker threads that spin while they wait. Each was measured against
    the alternatives on an idle 2-core machine; BENCHMARKS.md lists what was tried. (Sleeping threads won
    only beside another busy process, and lost 1.2-1.3x at batch 1 and 32 on an idle machine.)
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, model_name: str = "b0", class_indices: str | None = None) -> None:
        import onnxruntime

        path = _existing(path)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are about graph details, not the user's input
        try:
            self.session = session_cache.create_session(path, options)  # its optimised graph cached
        except Exception as error:  # ONNX Runtime raises its own exception types for every kind of bad file
            raise UsageError(f"{path} is not a readable ONNX model (corrupt, truncated or another format: "
                             f"{_first_line(error)}); export it again") from None
        model_input, output = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name = model_input.name
        super().__init__(path, self.session.get_modelmeta().custom_metadata_map, _static(output.shape[-1]),
                         [_static(size) for size in model_input.shape], model_name, class_indices)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


class OpenVinoBackend(ExportedBackend):
    """An .onnx or an OpenVINO IR (.xml) compiled for the CPU in float32 (OpenVINO's default on CPUs with
    bfloat16 instructions is bfloat16, which would change answers), tuned for latency."""

    name = "openvino"

    def __init__(self, path: str | os.PathLike, model_name: str = "b0", class_indices: str | None = None) -> None:
        import openvino

        path = _existing(path)
        core = openvino.Core()
        try:
            model = core.read_model(str(path))
            compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                         "PERFORMANCE_HINT": "LATENCY"})
        except Exception as error:  # OpenVINO raises RuntimeError subclasses for every kind of bad file
            raise UsageError(f"{path} is not a model OpenVINO can read (corrupt, truncated or another format: "
                             f"{_first_line(error)}); export it again") from None
        self.request = compiled.create_infer_request()
        metadata = {}
        if model.has_rt_info("framework"):  # where OpenVINO keeps an ONNX file's metadata, also in its IR
            metadata = {key: value.astype(str) for key, value in model.get_rt_info("framework").astype(dict).items()}
        input_shape = [size.get_length() if size.is_static else None for size in model.inputs[0].get_partial_shape()]
        outputs = model.outputs[0].get_partial_shape()[-1]
        super().__init__(path, metadata, outputs.get_length() if outputs.is_static else None, input_shape,
                         model_name, class_indices)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.request.infer({0: batch})[0]


BACKEND_CLASSES = {"onnxruntime": OnnxRuntimeBackend, "openvino": OpenVinoBackend}


def load(path: str | os.PathLike, backend: str = "onnxruntime", model_name: str = "b0",
         class_indices: str | None = None, checkpoint: str | os.PathLike | None = None) -> ExportedBackend:
    """An exported model in `backend`; with `checkpoint`, only if it was exported from that file as it is now
    (else StaleModelError), and without, only if the checkpoint it came from has not changed beside it."""
    if not is_installed(backend):
        raise UsageError(f"--backend {backend}: {PACKAGES[backend]} is not installed (pip install "
                         f"{PACKAGES[backend]})")
    opened = BACKEND_CLASSES[backend](path, model_name, class_indices)
    if checkpoint is None:
        check_current(Path(path), opened.card)
    elif not is_exported_from(opened.card.checkpoint, checkpoint):
        raise StaleModelError(f"{path} was not exported from {checkpoint} as it is now (a newer checkpoint, or "
                              f"another one); export it again with 'python export.py {checkpoint}"
                              f"{opened.card.export_command}'")
    return opened


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"model file {path} does not exist; check the path" if not path.exists() else
                         f"model path {path} is a folder; give the .onnx file inside it")
    return path


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]
