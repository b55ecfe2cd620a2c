"""One place that turns images into ranked classes, whatever runs the model.

A backend holds a trained model and answers `probabilities(batch)` for (N, 3, H, W) float32 arrays; it also
carries the model's class names, its evaluation preprocessing and where it came from. `Classifier` puts
the preprocessing (images.py: Pillow and numpy) in front of a backend and ranks the answers; predict.py,
evaluate.py and app.py all go through it. Importing this module does not import PyTorch: the torch
backend is imported only when a checkpoint is opened with it.

Backends: "torch" (torch_backend.py: any checkpoint or state_dict, Grad-CAM, bfloat16, CUDA), and
"onnxruntime" / "openvino" (exported_backends.py: an exported .onnx, or OpenVINO's .xml; no PyTorch, a faster
start and faster CPU inference). "auto" takes ONNX Runtime for an exported model, and for a checkpoint
whose up-to-date export lies beside it (best.onnx beside best.pth); otherwise, or when the request needs
PyTorch, the torch backend.
"""
import itertools
import numbers
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from effnet.command_line import UsageError, check_device_name
from effnet.data.images import Preprocessing
from effnet.inference import exported_backends, runtimes
from effnet.inference.class_names import ClassNamesError
from effnet.inference.export_format import EXPORTED_SUFFIXES, check_precision
from effnet.inference.runtimes import BACKENDS
from effnet.run_files import default_output, float_stem, int8_path, is_int8_name, newest_checkpoint, related_files
from effnet.variants import is_imagenet


class NonFiniteOutputError(RuntimeError):
    """The model answered NaN or infinity: its weights are broken, and no answer of it can be trusted."""


class Backend(Protocol):
    """What a Classifier needs from whatever runs the model."""

    name: str  # "torch", ...
    class_names: list[str]
    preprocessing: Preprocessing
    origin: str  # where the model came from, in words
    class_names_note: str | None  # where the class names came from, when the user should be told

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 preprocessed images -> (N, classes) float32 probabilities."""


@dataclass
class Scored:
    """The probabilities of every class for one image, or the reason it could not be read."""

    source: str
    probabilities: np.ndarray | None = None
    error: str | None = None


@dataclass
class Prediction:
    """Top-k (class name, probability) pairs for one image, or the reason it could not be read."""

    source: str
    ranked: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


def weights_or_newest(weights: str | os.PathLike | None) -> str | None:
    """`weights`, else the newest runs/*/best.pth, else None (Classifier.from_weights then says there is none):
    what a run will read, known before the output flags are checked."""
    if weights is not None:
        return str(weights)
    try:
        return str(newest_checkpoint())
    except UsageError:
        return None


WEIGHTS_FILES = {".pth": "the checkpoint", ".onnx": "the exported model", ".xml": "the exported model",
                 ".bin": "the exported model's weights"}


def model_files(weights: str | os.PathLike | None, class_indices: str | None) -> list[tuple[str, str]]:
    """(path, what it is) of every file a run may read for its model: the weights, the checkpoint or export
    beside them (best.onnx beside best.pth, and the other way round), and the class names file, given or
    found (beside the weights, or here). The output flags must never name one of them."""
    found = []
    if weights is not None and not is_imagenet(weights):
        path = Path(weights)
        found.append((str(path), WEIGHTS_FILES.get(path.suffix.lower(), "the weights")))
        found += [(str(path.with_suffix(suffix)), what) for suffix, what in WEIGHTS_FILES.items()
                  if suffix != path.suffix.lower()]
        found += related_files(path)  # best.int8.onnx beside best.pth, and the other way round
    class_files = [class_indices] if class_indices else [
        *([str(Path(weights).parent / "class_indices.json")] if weights else []), "class_indices.json"]
    return found + [(path, "the class names file") for path in class_files]


def _describe_error(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def torch_only(weights: str | os.PathLike, device: Any, precision: str, gradients: bool) -> str | None:
    """What in a request only the torch backend can do, in words; None if an exported model can serve it."""
    if gradients:
        return "Grad-CAM (--cam)"
    if precision not in ("float32", "int8"):  # int8: an INT8 export, which ONNX Runtime runs
        return f"--precision {precision}"
    if device is not None and not str(device).startswith("cpu"):
        return f"--device {device}"
    if is_imagenet(weights):
        return "--weights imagenet"
    return None


def open_backend(weights: str | os.PathLike, model_name: str | None = None, class_indices: str | None = None,
                 device: Any = None, precision: str = "float32", backend: str = "auto",
                 gradients: bool = False) -> Backend:
    """The backend that runs `weights`: `backend` as asked, or for "auto" the fastest one that can serve the
    request (see the module's docstring). `gradients`: Grad-CAM will be asked for. `model_name` None: a bare
    state_dict's variant is read from its shapes, a plain .onnx is taken for b0."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if device is not None:  # a wrong name is that, not a reason to need another backend
        device = device.strip() if isinstance(device, str) else device
        check_device_name(str(device))
    needs_torch = torch_only(weights, device, precision, gradients)
    if precision == "int8":
        return _int8_export(weights, backend, model_name or "b0", class_indices, needs_torch)
    suffix = Path(str(weights)).suffix.lower()
    if suffix in EXPORTED_SUFFIXES:
        if backend == "torch" or needs_torch:
            raise UsageError(f"{weights} is an exported model, which ONNX Runtime or OpenVINO run; "
                             f"{needs_torch or '--backend torch'} needs the .pth checkpoint it came from")
        chosen = "openvino" if backend == "openvino" or (backend == "auto" and suffix == ".xml") else "onnxruntime"
        if chosen == "onnxruntime" and suffix == ".xml":
            raise UsageError(f"{weights} is OpenVINO's format; use --backend openvino, or the .onnx with "
                             f"ONNX Runtime")
        opened = exported_backends.load(weights, chosen, model_name or "b0", class_indices)
        int8_named = is_int8_name(weights)  # a file named as INT8 must be one; any other, float32 as asked
        check_precision(Path(str(weights)), opened.card, "int8" if int8_named else "float32",
                        "its name says" if int8_named else f"--precision {precision} asks for")
        return opened
    if backend != "torch" and needs_torch is None:
        exported = _export_of(weights, "onnxruntime" if backend == "auto" else backend, model_name or "b0",
                              class_indices, required=backend != "auto")
        if exported is not None:
            return exported
    elif backend in ("onnxruntime", "openvino"):
        raise UsageError(f"--backend {backend}: {needs_torch} needs the torch backend")
    from effnet.inference import torch_backend

    return torch_backend.load(weights, model_name, class_indices, device, precision)


def _int8_export(weights: str | os.PathLike, backend: str, model_name: str, class_indices: str | None,
                 needs_torch: str | None) -> Backend:
    """--precision int8: the INT8 export given as the weights, or the one beside them (best.int8.onnx beside
    best.pth or best.onnx), in ONNX Runtime (or OpenVINO when asked); never PyTorch."""
    if needs_torch or backend == "torch":
        raise UsageError(f"--precision int8 runs an INT8 export with ONNX Runtime on the CPU; "
                         f"{needs_torch or '--backend torch'} needs PyTorch in float32: drop one of the two")
    path = Path(str(weights))
    exported = path if is_int8_name(path) else int8_path(path)
    if not exported.is_file():
        raise UsageError(f"--precision int8: there is no {exported}; write it with 'python export.py "
                         f"{float_stem(path)}.pth --int8'")
    checkpoint = path if path.suffix.lower() == ".pth" and path.is_file() else None
    opened = exported_backends.load(exported, "openvino" if backend == "openvino" else "onnxruntime", model_name,
                                    class_indices, checkpoint=checkpoint)
    check_precision(exported, opened.card, "int8", "--precision int8 asks for")
    return opened


def _export_of(checkpoint: str | os.PathLike, backend: str, model_name: str, class_indices: str | None,
               required: bool) -> Backend | None:
    """The up-to-date export beside a checkpoint (X.pth -> X.onnx) in `backend`. None where there is none:
    quietly if there is no file, with a note if there is one that cannot be used, unless `required`."""
    exported = default_output(checkpoint)
    if not runtimes.is_installed(backend):
        if required:
            _note(f"--backend {backend}: {backend} is not installed (pip install {backend}); using PyTorch")
        return None
    if not (exported.is_file() and Path(checkpoint).is_file()):
        if required and Path(checkpoint).is_file():
            raise UsageError(f"--backend {backend}: no {exported} beside {checkpoint}; write it with "
                             f"'python export.py {checkpoint}', or pass an .onnx as --weights")
        return None  # the torch backend reports a missing checkpoint
    try:
        opened = exported_backends.load(exported, backend, model_name, class_indices, checkpoint=checkpoint)
        check_precision(exported, opened.card, "float32", f"expected beside {checkpoint}")
        return opened
    except ClassNamesError:  # about the names given, not the export: PyTorch would refuse them alike
        raise
    except UsageError as error:
        if required:
            raise
        _note(f"{error}; using PyTorch for now")
        return None


class _DecodedWhenAsked:
    """For one image, in place of a thread pool's Future: decodes it in the thread that asks for the result."""

    def __init__(self, decode: Any, image: Any) -> None:
        self.decode, self.image = decode, image

    def result(self) -> np.ndarray:
        return self.decode(self.image)


class Classifier:
    """Preprocessing, a backend, and ranking: images in, (class, probability) lists out.

    `Classifier(backend)` wraps a backend; `Classifier(model, class_names, image)` wraps an EfficientNet in
    the torch backend (class names default to "0", "1", ...; `image` holds the evaluation sizes a
    checkpoint stores). `Classifier.from_weights(...)` opens a checkpoint or an exported model. With
    `tta=True` every image is also classified mirrored left-to-right and the two answers are averaged.
    """

    def __init__(self, backend: Any, class_names: Sequence[str] | None = None, image: Mapping[str, Any] | None = None,
                 device: Any = None, precision: str = "float32", tta: bool = False) -> None:
        if hasattr(backend, "forward_features"):  # an EfficientNet: run it with the torch backend
            from effnet.inference import torch_backend

            names = class_names or [str(i) for i in range(backend.num_classes)]
            backend = torch_backend.TorchBackend(backend, names, image, device, precision)
        self.backend = backend
        self.class_names: list[str] = list(backend.class_names)
        self.preprocessing: Preprocessing = backend.preprocessing
        self.tta = tta
        self._opened_with: dict[str, Any] | None = None  # from_weights' arguments: Grad-CAM may reopen them
        self._gradient_backend: Any = backend if hasattr(backend, "grad_cam") else None

    @classmethod
    def from_weights(cls, weights: str | os.PathLike | None = None, model_name: str | None = None,
                     class_indices: str | None = None, device: Any = None, precision: str = "float32",
                     backend: str = "auto", tta: bool = False, gradients: bool = False) -> "Classifier":
        """From this project's checkpoint (everything inside it), a bare state_dict plus class names, or an
        exported .onnx / .xml, run by `backend` (see open_backend).

        `weights` None means the newest runs/*/best.pth; "imagenet" means torchvision's ImageNet weights.
        """
        weights = newest_checkpoint() if weights is None else weights
        opened_with = dict(weights=weights, model_name=model_name, class_indices=class_indices, device=device,
                           precision=precision)
        opened = open_backend(**opened_with, backend=backend, gradients=gradients)
        if getattr(opened, "class_names_note", None):  # names found on their own, or replaced by --class-indices
            _note(opened.class_names_note)
        classifier = cls(opened, tta=tta)
        classifier._opened_with = opened_with
        return classifier

    def preprocess(self, image: str | os.PathLike | Image.Image) -> np.ndarray:
        """(3, crop, crop) normalised float32 array, exactly as validation during training prepares it."""
        return self.preprocessing.load(image)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) preprocessed images -> (N, classes) float32 probabilities; NonFiniteOutputError if the
        model answers NaN or infinity."""
        if self.tta:  # the images and their mirror images in one batch, the two answers averaged
            both = self.backend.probabilities(np.concatenate([batch, batch[..., ::-1]]))
            result = (both[:len(batch)] + both[len(batch):]) / 2
        else:
            result = self.backend.probabilities(batch)
        if not np.isfinite(result).all():
            raise NonFiniteOutputError(f"the model's outputs are not finite (NaN or infinity), so its weights are "
                                       f"broken ({self.backend.origin}); use another checkpoint or retrain")
        return result
    def rank(self, probabilities: np.ndarray, top_k: int | None = None) -> list[tuple[str, float]]:
        """The top-k (class, probability) pairs of one row of probabilities, most likely first."""
        k = min(top_k or 5, len(self.class_names))
        order = np.argsort(-probabilities, kind="stable")[:k]
        return [(self.class_names[i], float(probabilities[i])) for i in order]

    def scores(self, images: Iterable[str | os.PathLike | Image.Image | Scored], batch_size: int = 32,
               workers: int | None = None) -> Iterator[Scored]:
        """Probabilities of every image, in the order given, yielded batch by batch as soon as each is done.

        Decoding runs in a pool of threads ahead of the model (Pillow and numpy release the GIL), at most
        two batches ahead, so a folder of a million photos starts yielding at once in constant memory. An
        unreadable image comes back with its error and the others go on; an item that is a Scored already
        (an input that failed before, with its error set) passes through in its place. A single image is
        decoded in this thread: a one-photo run does without the pool (and without importing it).
        """
        images = iter(images)
        first = list(itertools.islice(images, 2))
        if len(first) < 2:
            yield from self._score_batch([self._work(image, _DecodedWhenAsked) for image in first])
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1), thread_name_prefix="decode") as pool:
            pending: deque[tuple[str, Any]] = deque()
            for image in itertools.chain(first, images):
                pending.append(self._work(image, pool.submit))
                if len(pending) >= 2 * batch_size:
                    yield from self._score_batch([pending.popleft() for _ in range(batch_size)])
            while pending:
                yield from self._score_batch([pending.popleft() for _ in range(min(batch_size, len(pending)))])

    def _work(self, image: "ImageLike | Scored", start: Any) -> tuple[str, Any]:
        """(source, what _score_batch takes): a Scored passes through; an image's decoding is started with
        `start(function, image)`, which returns something whose .result() gives its pixels (a Future)."""
        if isinstance(image, Scored):
            return image.source, image
        source = "<numpy array>" if isinstance(image, np.ndarray) else "<PIL image>" \
            if isinstance(image, Image.Image) else None
        image = as_image(image)
        return source or os.fspath(image), start(self.preprocess, image)

    def _score_batch(self, batch: list[tuple[str, Any]]) -> list[Scored]:
        results, decoded, arrays = [], [], []
        for source, work in batch:
            if isinstance(work, Scored):
                results.append(work)
                continue
            try:
                arrays.append(work.result())
                decoded.append(Scored(source))
                results.append(decoded[-1])
            except Exception as error:  # one bad file must not stop the others
                results.append(Scored(source, error=_describe_error(error)))
        if arrays:
            for result, row in zip(decoded, self.probabilities(np.stack(arrays))):
                result.probabilities = row
        return results

    def predict(self, images: Iterable[str | os.PathLike | Image.Image], top_k: int | None = None,
                batch_size: int = 32) -> list[Prediction]:
        """Classify many images in batches; an unreadable one gets an error and the rest go on."""
        return [Prediction(s.source, self.rank(s.probabilities, top_k) if s.error is None else [], s.error)
                for s in self.scores(images, batch_size)]

    def grad_cam(self, image: str | os.PathLike | Image.Image) -> tuple[Image.Image, np.ndarray, int]:
        """Grad-CAM of the top class: (the network's view of the photo, heat map in [0, 1] at that size, class).

        Only the torch backend has gradients: a classifier running an export of a checkpoint opens that
        checkpoint with it the first time a map is asked for.
        """
        if self._gradient_backend is None:
            if not self.can_explain:
                raise UsageError(f"Grad-CAM needs the torch backend and the checkpoint; {self.backend.name} runs "
                                 f"{self.backend.origin}, which has no gradients")
            reopened = {**self._opened_with, "backend": "torch"}
            if reopened["precision"] == "int8":  # an INT8 export has no gradients: its checkpoint's maps, in float32
                reopened["precision"] = "float32"
            self._gradient_backend = open_backend(**reopened)
        return self._gradient_backend.grad_cam(image)

    @property
    def can_explain(self) -> bool:
        """Whether grad_cam can answer: the backend has gradients, or runs an export of a checkpoint that the
        torch backend can open."""
        if self._gradient_backend is not None:
            return True
        weights = self._opened_with and self._opened_with["weights"]
        return bool(weights) and Path(str(weights)).suffix.lower() not in EXPORTED_SUFFIXES


Ranking = list[tuple[str, float]]  # (class, probability) pairs, most likely first
ImageLike = str | os.PathLike | Image.Image | np.ndarray  # what classify() and Classifier.predict take as an image
IMAGE_TYPES = "a path (str or os.PathLike), a PIL image or a numpy array (H, W, 3) of uint8 RGB pixels"


def as_image(item: Any) -> str | os.PathLike | Image.Image:
    """An image as the preprocessing reads it: a path or a PIL image as given, a numpy array of RGB pixels made a
    PIL image. Anything else is a TypeError (a ValueError for an array of another shape) naming what is
    accepted, here rather than deep inside the decoding; bytes too, which could be a path or a file's contents."""
    if isinstance(item, (str, os.PathLike, Image.Image)):
        return item
    if isinstance(item, np.ndarray):
        if item.ndim == 3 and item.shape[2] == 3 and item.dtype == np.uint8:
            return Image.fromarray(item)
        raise ValueError(f"an image array must be an (H, W, 3) array of uint8 (RGB pixels), not one of shape "
                         f"{item.shape} and dtype {item.dtype}")
    hint = "; for a path held in bytes, pass os.fsdecode(path)" if isinstance(item, (bytes, bytearray)) else ""
    raise TypeError(f"an image must be {IMAGE_TYPES}, not {type(item).__name__}{hint}")


def _image_list(images: Any) -> tuple[list[Any], bool]:
    """(the images as as_image gives them, whether `images` was one image rather than a sequence of them)."""
    one = isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim != 4)
    if one or isinstance(images, (bytes, bytearray, Mapping)) or not isinstance(images, Iterable):
        return [as_image(images)], True
    return [as_image(image) for image in images], False


def check_top_k(top_k: Any) -> None:
    """ValueError unless `top_k` is None (min(5, classes)) or a whole number of at least 1, as predict.py's
    --top-k must be: 0 would otherwise silently stand for the default."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise ValueError(f"top_k must be a whole number of at least 1 (or None for min(5, classes)), not {top_k!r}")


def classify(images: ImageLike | Sequence[ImageLike], model: Any = None, top_k: int | None = None,
             class_names: Sequence[str] | None = None, backend: str = "auto",
             tta: bool = False) -> Ranking | list[Ranking]:
    """The ranked (class, probability) list of one photo (a path, a PIL image or an (H, W, 3) uint8 numpy array
    of RGB pixels), or a list of them for a list of photos (or an (N, H, W, 3) array), from a model or checkpoint.

    `model` is a Classifier, an EfficientNet (with `class_names`, else classes are named "0", "1", ...), a
    checkpoint or exported model's path, or None for the newest runs/*/best.pth; `top_k` None gives min(5,
    classes); `backend` and `tta` as for Classifier.from_weights. Raises TypeError or ValueError, before any model
    loads, for an argument of the wrong kind (see as_image, check_top_k), and ValueError for an unreadable image.
    """
    check_top_k(top_k)
    images, single = _image_list(images)
    if isinstance(model, Classifier):
        classifier = model
    elif hasattr(model, "forward_features"):
        classifier = Classifier(model, class_names, device=next(model.parameters()).device, tta=tta)
    else:
        classifier = Classifier.from_weights(model, backend=backend, tta=tta)
    results = classifier.predict(images, top_k)
    failed = [r for r in results if r.error]
    if failed:
        raise ValueError(f"cannot read {failed[0].source}: {failed[0].error}")
    return results[0].ranked if single else [r.ranked for r in results]
