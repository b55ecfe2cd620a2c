"""Exported models without PyTorch: the ONNX Runtime and OpenVINO backends.

An .onnx written by this project carries in its metadata everything a Classifier needs (export_format.py):
the class names, the variant, the evaluation preprocessing, and the size and sha256 of the checkpoint it
was exported from, so a best.onnx left behind by a newer best.pth is caught instead of used. A plain .onnx
from elsewhere works too, given class names (--class-indices, as for a bare state_dict) and the variant's
preprocessing (--model). OpenVINO reads the same .onnx, or an IR (.xml + .bin) that export.py wrote.

Nothing here imports PyTorch: this is the path that makes `python predict.py photo.jpg` start fast.
"""
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from effnet.command_line import UsageError
from effnet.inference import runtimes, session_cache
from effnet.inference.export_format import StaleModelError, check_current, is_exported_from, read_card
from effnet.variants import variant_name


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
    the alternatives on an idle 2-core machine; docs/benchmarks.md lists what was tried. (Sleeping threads won
    only beside another busy process, and lost 1.2-1.3x at batch 1 and 32 on an idle machine.)
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, model_name: str = "b0", class_indices: str | None = None) -> None:
        onnxruntime = runtimes.import_onnxruntime()
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
    if not runtimes.is_installed(backend):
        raise UsageError(f"--backend {backend}: {runtimes.PACKAGES[backend]} is not installed (pip install "
                         f"{runtimes.PACKAGES[backend]})")
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
