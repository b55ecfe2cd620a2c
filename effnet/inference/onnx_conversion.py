"""A trained EfficientNet to ONNX (and OpenVINO's IR), checked against PyTorch before the file is kept.

The exported graph is the inference model of the torch backend (BatchNorm folded into the convolutions)
followed by a softmax, with a dynamic batch dimension; its metadata holds the class names, the variant, the
evaluation preprocessing and the identity of the checkpoint it came from (export_format.metadata_entries), so
the file alone is enough to classify and a stale one is recognised. export.py is the command line around
`export_checkpoint`; train.py calls `export_after_training` when a run ends.
"""
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from effnet.atomic_files import atomic_path
from effnet.command_line import UsageError
from effnet.data.images import Preprocessing
from effnet.inference import exported_backends, torch_backend
from effnet.inference.export_format import FORMATS, OPSET, checkpoint_identity, metadata_entries
from effnet.inference.runtimes import is_installed
from effnet.reports.chance import agreement_caveat, one_answer
from effnet.run_files import default_output

TOLERANCE = 1e-4  # the largest |difference| of any probability allowed between the export and PyTorch
SYNTHETIC_IMAGES = 4  # checked when no real photos are given


class ExportMismatchError(UsageError):
    """The exported model does not compute what the PyTorch model computes; nothing was written."""


@dataclass(frozen=True)
class ExportCheck:
    """How the export compared with PyTorch on the same preprocessed images."""

    images: int
    real: bool  # photos (True) or synthetic images
    max_difference: float  # largest |probability difference| over all images and classes
    top1_agreement: int  # images whose top class is the same in both
    one_class: str | None = None  # the class PyTorch gave every image, when it gave them all the same

    def summary(self) -> str:
        kind = "photos" if self.real else "synthetic images"
        return (f"checked against PyTorch on {self.images} {kind}: max |probability difference| "
                f"{self.max_difference:.1e}, same top-1 class for {self.top1_agreement} of {self.images}"
                f"{agreement_caveat(self.images, self.one_class, 'PyTorch')}")


class _Probabilities(nn.Module):
    """The network followed by a softmax: any ONNX runtime then gives probabilities directly."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, classes)
        return self.network(images).softmax(dim=1)


def _write_onnx(model: torch_backend.TorchBackend, path: str, metadata: dict[str, str], opset: int) -> None:
    import onnx

    network = _Probabilities(torch_backend.fuse_batchnorm(model.model).float().cpu()).eval()
    crop = model.preprocessing.crop
    with warnings.catch_warnings():
        # the TorchScript-based exporter is deprecated in favour of the dynamo one, which needs onnxscript
        # and exports this network no differently; it stays available in the torch releases we support
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        torch.onnx.export(network, (torch.zeros(1, 3, crop, crop),), path, dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["probabilities"], do_constant_folding=True,
                          dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}})
    exported = onnx.load(path)
    onnx.helper.set_model_props(exported, metadata)
    exported.doc_string = f"EfficientNet-{(model.variant or '?').upper()} classifier: {model.origin}"
    onnx.save(exported, path)


def check_images(preprocessing: Preprocessing, photos: Sequence[str | os.PathLike]) -> tuple[np.ndarray, bool]:
    """The preprocessed photos (unreadable ones left out), or when there are none a few synthetic images
    (noise over colour gradients)."""
    arrays = []
    for photo in photos:
        try:
            arrays.append(preprocessing.load(photo))
        except Exception:  # the check needs some readable photos, not every one (train.py passes its own)
            continue
    if arrays:
        return np.stack(arrays), True
    rng = np.random.default_rng(0)
    size = preprocessing.resize + 16
    ramp = np.linspace(0, 255, size)
    arrays = []
    for _ in range(SYNTHETIC_IMAGES):
        base = np.stack([np.add.outer(ramp * rng.random(), ramp * rng.random()) / 2 for _ in range(3)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        arrays.append(preprocessing.array(Image.fromarray(pixels, "RGB")))
    return np.stack(arrays), False


def compare(exported: object, reference: torch_backend.TorchBackend, images: np.ndarray, real: bool) -> ExportCheck:
    """Run both models on the same images and measure how far apart their probabilities are."""
    ours, theirs = exported.probabilities(images), reference.probabilities(images)
    single = one_answer(np.bincount(theirs.argmax(1), minlength=theirs.shape[1]).tolist())
    return ExportCheck(len(images), real, float(np.abs(ours - theirs).max()),
                       int((ours.argmax(1) == theirs.argmax(1)).sum()),
                       None if single is None else reference.class_names[single])


def _checked(check: ExportCheck, path: Path) -> ExportCheck:
    if not check.max_difference <= TOLERANCE:  # also catches NaN
        raise ExportMismatchError(f"{path}: the export does not match PyTorch ({check.summary()}; tolerance "
                                  f"{TOLERANCE:.0e}); nothing was written")
    return check


def export_model(model: torch_backend.TorchBackend, output: str | os.PathLike, checkpoint: str | os.PathLike | None,
                 photos: Sequence[str | os.PathLike] = (), fmt: str = "onnx", opset: int = OPSET) -> ExportCheck:
    """Write `model` to `output` (.onnx, or .xml + .bin for OpenVINO) once it matches PyTorch; else nothing."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if fmt == "openvino" and not is_installed("openvino"):
        raise UsageError("--format openvino: openvino is not installed (pip install openvino)")
    output = Path(output)
    identity = checkpoint_identity(checkpoint) if checkpoint and os.path.isfile(checkpoint) else None
    metadata = metadata_entries(model.class_names, model.variant or "b0", model.preprocessing, identity)
    images, real = check_images(model.preprocessing, photos)
    if fmt == "onnx":
        with atomic_path(output) as temporary:
            _write_onnx(model, temporary, metadata, opset)
            return _checked(compare(exported_backends.OnnxRuntimeBackend(temporary), model, images, real), output)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.stem}.") as folder:
        onnx_path, xml_path = Path(folder) / "model.onnx", Path(folder) / output.name
        _write_onnx(model, str(onnx_path), metadata, opset)
        _write_openvino(onnx_path, xml_path)
        check = _checked(compare(exported_backends.OpenVinoBackend(xml_path), model, images, real), output)
        shutil.move(xml_path.with_suffix(".bin"), output.with_suffix(".bin"))  # the weights first, the
        shutil.move(xml_path, output)  # graph that names them last
    return check


def _write_openvino(onnx_path: Path, xml_path: Path) -> None:
    import openvino

    model = openvino.Core().read_model(str(onnx_path))  # keeps the ONNX metadata (as rt_info "framework")
    openvino.save_model(model, str(xml_path), compress_to_fp16=False)  # float32 weights: same answers


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike | None = None,
                      model_name: str | None = None,
                      class_indices: str | None = None, photos: Sequence[str | os.PathLike] = (), fmt: str = "onnx",
                      opset: int = OPSET) -> tuple[Path, ExportCheck]:
    """Export this project's checkpoint, or a bare state_dict with its variant and class names."""
    model = torch_backend.load(checkpoint, model_name, class_indices, device="cpu")
    output = Path(output) if output else default_output(checkpoint, fmt)
    return output, export_model(model, output, checkpoint, photos, fmt, opset)


def export_after_training(checkpoint: Path, photos: Sequence[str]) -> None:
    """best.onnx beside best.pth when a run ends, checked on a few validation photos. A failure is reported and
    does not fail the run: predict.py then uses best.pth (an older best.onnx is recognised as stale)."""
    try:
        output, check = export_checkpoint(checkpoint, photos=photos)
        print(f"wrote {output}, {check.summary()}")
    except ImportError as error:
        print(f"note: {default_output(checkpoint)} not written ({error}; pip install onnx onnxruntime); "
              f"predict.py uses {checkpoint.name}")
    except (UsageError, ValueError, RuntimeError, OSError) as error:
        print(f"note: {default_output(checkpoint)} not written ({error}); predict.py uses {checkpoint.name}")
