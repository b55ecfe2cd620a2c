"""One place that turns images into ranked classes, whatever runs the model.

A backend holds a trained model and answers `probabilities(batch)` for (N, 3, H, W) float32 arrays; it also
carries the model's class names, its evaluation preprocessing and where it came from. `Classifier` puts
the preprocessing (images.py: Pillow and numpy) in front of a backend and ranks the answers; predict.py,
evaluate.py and app.py all go through it. Importing this module does not import PyTorch: the torch
backend is imported only when a checkpoint is opened with it.
"""
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
from PIL import Image

from cli import UsageError
from images import Preprocessing

DEFAULT_RUNS_DIR = "runs"


class Backend(Protocol):
    """What a Classifier needs from whatever runs the model."""

    name: str  # "torch", ...
    class_names: list[str]
    preprocessing: Preprocessing
    origin: str  # where the model came from, in words

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


def newest_checkpoint(runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR) -> Path:
    """best.pth of the most recently written run under `runs_dir`."""
    candidates = sorted(Path(runs_dir).glob("*/best.pth"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UsageError(f"no trained checkpoint found under {runs_dir}/*/best.pth; train one with "
                         f"'python train.py' or pass --weights PATH")
    return candidates[-1]


def _describe_error(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class Classifier:
    """Preprocessing, a backend, and ranking: images in, (class, probability) lists out.

    `Classifier(backend)` wraps a backend; `Classifier(model, class_names, image)` wraps an EfficientNet in
    the torch backend (class names default to "0", "1", ...; `image` holds the evaluation sizes a
    checkpoint stores). `Classifier.from_weights(...)` opens a checkpoint.
    """

    def __init__(self, backend: Any, class_names: Sequence[str] | None = None, image: Mapping[str, Any] | None = None,
                 device: Any = None, precision: str = "float32") -> None:
        if hasattr(backend, "forward_features"):  # an EfficientNet: run it with the torch backend
            import torch_backend

            names = class_names or [str(i) for i in range(backend.num_classes)]
            backend = torch_backend.TorchBackend(backend, names, image, device, precision)
        self.backend = backend
        self.class_names: list[str] = list(backend.class_names)
        self.preprocessing: Preprocessing = backend.preprocessing

    @classmethod
    def from_weights(cls, weights: str | os.PathLike | None = None, model_name: str = "b0",
                     class_indices: str | None = None, device: Any = None, precision: str = "float32") -> "Classifier":
        """From this project's checkpoint (everything inside it), or a bare state_dict plus class names.

        `weights` None means the newest runs/*/best.pth; "imagenet" means torchvision's ImageNet weights.
        """
        import torch_backend

        weights = newest_checkpoint() if weights is None else weights
        return cls(torch_backend.load(weights, model_name, class_indices, device, precision))

    def preprocess(self, image: str | os.PathLike | Image.Image) -> np.ndarray:
        """(3, crop, crop) normalised float32 array, exactly as validation during training prepares it."""
        return self.preprocessing.load(image)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) preprocessed images -> (N, classes) float32 probabilities."""
        return self.backend.probabilities(batch)

    def rank(self, probabilities: np.ndarray, top_k: int | None = None) -> list[tuple[str, float]]:
        """The top-k (class, probability) pairs of one row of probabilities, most likely first."""
        k = min(top_k or 5, len(self.class_names))
        order = np.argsort(-probabilities, kind="stable")[:k]
        return [(self.class_names[i], float(probabilities[i])) for i in order]

    def scores(self, images: Iterable[str | os.PathLike | Image.Image], batch_size: int = 32,
               workers: int | None = None) -> Iterator["Scored"]:
        """Probabilities of every image, in the order given, yielded batch by batch as soon as each is done.

        Decoding runs in a pool of threads ahead of the model (Pillow and numpy release the GIL), at most
        two batches ahead, so a folder of a million photos starts yielding at once in constant memory. An
        unreadable image comes back with its error and the others go on.
        """
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
            pending: deque[tuple[str, Future]] = deque()
            batch: list[tuple[str, Future]] = []
            for image in images:
                source = "<PIL image>" if isinstance(image, Image.Image) else os.fspath(image)
                pending.append((source, pool.submit(self.preprocess, image)))
                if len(pending) >= 2 * batch_size:
                    batch = [pending.popleft() for _ in range(batch_size)]
                    yield from self._score_batch(batch)
            while pending:
                batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                yield from self._score_batch(batch)

    def _score_batch(self, batch: list[tuple[str, Future]]) -> list["Scored"]:
        results, arrays = [], []
        for source, future in batch:
            try:
                arrays.append(future.result())
                results.append(Scored(source))
            except Exception as error:  # one bad file must not stop the others
                results.append(Scored(source, error=_describe_error(error)))
        if arrays:
            readable = [result for result in results if result.error is None]
            for result, row in zip(readable, self.probabilities(np.stack(arrays))):
                result.probabilities = row
        return results

    def predict(self, images: Iterable[str | os.PathLike | Image.Image], top_k: int | None = None,
                batch_size: int = 32) -> list[Prediction]:
        """Classify many images in batches; an unreadable one gets an error and the rest go on."""
        return [Prediction(s.source, self.rank(s.probabilities, top_k) if s.error is None else [], s.error)
                for s in self.scores(images, batch_size)]

    def grad_cam(self, image: str | os.PathLike | Image.Image) -> tuple[Image.Image, np.ndarray, int]:
        """Grad-CAM of the top class: (the network's view of the photo, heat map in [0, 1] at that size, class)."""
        if not hasattr(self.backend, "grad_cam"):
            raise UsageError(f"Grad-CAM needs the torch backend; {self.backend.name} has no gradients")
        return self.backend.grad_cam(image)


def classify(images: Sequence[str | os.PathLike | Image.Image] | str | os.PathLike | Image.Image,
             model: Any = None, top_k: int | None = None,
             class_names: Sequence[str] | None = None) -> list[list[tuple[str, float]]]:
    """Ranked (class, probability) lists for photos (paths or PIL images) from a model or checkpoint.

    `model` is a Classifier, an EfficientNet (with `class_names`, else classes are named "0", "1", ...), a
    checkpoint path, or None for the newest runs/*/best.pth. Raises ValueError for an unreadable image.
    """
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    if isinstance(model, Classifier):
        classifier = model
    elif hasattr(model, "forward_features"):
        classifier = Classifier(model, class_names, device=next(model.parameters()).device)
    else:
        classifier = Classifier.from_weights(model)
    results = classifier.predict(images, top_k)
    failed = [r for r in results if r.error]
    if failed:
        raise ValueError(f"cannot read {failed[0].source}: {failed[0].error}")
    return [r.ranked for r in results]
