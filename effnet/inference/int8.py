"""INT8 exports: a float32 export quantized with ONNX Runtime's static quantizer, and kept only when it agrees.

`export.py --int8` calls `export_int8`: the activation ranges are measured on photos of the run's own
training split (split.json beside the checkpoint), weights are quantized per output channel, and the result
is a QDQ-format .onnx (QuantizeLinear / DequantizeLinear pairs around each quantized operator, which ONNX
Runtime fuses into integer kernels and OpenVINO reads as well). Before the file is kept, it and the float32
model classify the run's validation photos: the share of photos whose top-1 class is the same in both, and
both accuracies, decide. Below the threshold nothing is written. The file carries the float32 export's
metadata (class names, preprocessing, the checkpoint it came from) plus its calibration and agreement.

Nothing here imports PyTorch; ONNX Runtime's quantizer (and with it onnx) is imported only to quantize.
"""
import contextlib
import io
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from effnet.command_line import UsageError, one_line
from effnet.data.images import Preprocessing
from effnet.inference import exported_backends, runtimes
from effnet.reports.chance import agreement_caveat, one_answer
from effnet.run_files import int8_path

DEFAULT_MIN_AGREEMENT = 99.0  # percent of validation photos whose top-1 class must stay float32's
CALIBRATION_PHOTOS = 200  # training photos whose activation ranges are measured, at most
BATCH = 16  # photos per scoring batch
# Photos per calibration batch. ONNX Runtime's histogram calibrators hold every intermediate tensor of what
# they are given at once (B0 at 224 px: about 80 MiB per photo), so they are given one batch at a time.
CALIBRATION_BATCH = 8
# Each activation's range: from the 0.005th to the 99.995th percentile of its values over the calibration
# photos, so that a handful of outliers do not stretch the 256 steps over values that hardly occur. Measured
# against the full range (MinMax) on B0 runs trained on real flower photos (docs/benchmarks.md): the share of
# validation photos keeping float32's top-1 class rose from 92% to 98% (224 px) and from 84% to 87% (96 px).
# ONNX Runtime's CalibPercentile is the share of values kept, not the upper percentile: with asymmetric ranges
# (CalibTensorRangeSymmetric False) its calibrator cuts (100 - 99.99) / 2 = 0.005% from each end of every
# histogram (its own printout, "Percentile : (0.01, 99.99)", reads otherwise, and is silenced).
CALIBRATION_PERCENTILE = 99.99
RANGE_PERCENTILES = (round((100 - CALIBRATION_PERCENTILE) / 2, 9), round(100 - (100 - CALIBRATION_PERCENTILE) / 2, 9))
UNREADABLE_NAMED = 5  # unreadable calibration or check photos named one by one; the rest are counted
# Quantized: the convolutions, the classifier, and the element-wise operators between them, so that the
# integer convolutions feed each other without a trip through float32; the softmax stays float32 (quantized
# probabilities would move in steps of 1/256 and could tie at the top).
QUANTIZED_OPERATORS = ("Conv", "Gemm", "MatMul", "Add", "Mul", "Sigmoid", "GlobalAveragePool", "Flatten")


class AgreementError(UsageError):
    """The INT8 model disagrees with float32 on too many validation photos; nothing was written."""


@dataclass(frozen=True)
class RunPhotos:
    """The photos of a run's split.json: training photos to calibrate on, labelled validation photos to score."""

    training: list[str]
    validation: list[str]
    labels: list[int]  # of the validation photos, as indices into the model's class names


def run_photos(checkpoint: str | os.PathLike, class_names: Sequence[str] | None = None) -> RunPhotos:
    """The photos of the run folder that holds `checkpoint`; UsageError naming the file when they cannot be had."""
    path = Path(checkpoint).parent / "split.json"
    hint = "--int8 calibrates on the run's training photos and checks on its validation photos"
    try:
        saved = json.loads(path.read_bytes())
        root, classes = saved["root"], [str(name) for name in saved["classes"]]
        pairs = {part: [(os.path.join(root, relative), int(label)) for relative, label in saved[part]]
                 for part in ("train", "val")}
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist: {hint}, which train.py lists there; export a checkpoint "
                         f"of a run folder") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"{path} is damaged ({type(error).__name__}: {error}); {hint}") from None
    if class_names is not None and list(class_names) != classes:
        raise UsageError(f"{path} lists the classes {classes}, not the model's {list(class_names)}; {hint} of "
                         f"the run the checkpoint comes from")
    _check_parts(path, root, len(classes), pairs, hint)
    training = [photo for photo, _ in pairs["train"]]
    validation = [(photo, label) for photo, label in pairs["val"]]
    return RunPhotos(spread(training, CALIBRATION_PHOTOS), [p for p, _ in validation], [lb for _, lb in validation])


def _check_parts(path: Path, root: str, classes: int, pairs: dict[str, list[tuple[str, int]]], hint: str) -> None:
    """Each part of split.json lists photos, some of them still there, with labels among the classes: scores
    against labels no model can answer (a damaged or hand-edited file) would pass for real ones."""
    for part, found in pairs.items():
        if not found:
            raise UsageError(f"{path} lists no {part} photos; {hint}, so it needs both (train.py lists them)")
        wrong = next(((photo, label) for photo, label in found if not 0 <= label < classes), None)
        if wrong is not None:
            raise UsageError(f"{path} is damaged: label {wrong[1]} of the {part} photo {wrong[0]} is not one of the "
                             f"{classes} classes (0 to {classes - 1}); {hint}")
        if not any(os.path.isfile(photo) for photo, _ in found):
            raise UsageError(f"{path}: none of the {len(found)} {part} photos is at {root} any more; {hint}")


def spread(photos: Sequence[str], count: int) -> list[str]:
    """At most `count` photos evenly spaced through the list (train.py lists them class by class, so every
    class keeps its share)."""
    if len(photos) <= count:
        return list(photos)
    return [photos[int(i)] for i in np.linspace(0, len(photos) - 1, count).round()]


def preprocessed(photos: Sequence[str], preprocessing: Preprocessing,
                 unreadable: list[tuple[str, str]] | None = None) -> Iterator[tuple[np.ndarray, list[int]]]:
    """Batches of the readable photos, each with the positions in `photos` it holds; the others, with why, are
    added to `unreadable`."""
    arrays: list[np.ndarray] = []
    positions: list[int] = []
    for position, photo in enumerate(photos):
        try:
            arrays.append(preprocessing.load(photo))
            positions.append(position)
        except Exception as error:  # an unreadable photo leaves the calibration or the check one photo smaller
            if unreadable is not None:
                unreadable.append((photo, f"{type(error).__name__}: {error}"))
            continue
        if len(arrays) == BATCH:
            yield np.stack(arrays), positions
            arrays, positions = [], []
    if arrays:
        yield np.stack(arrays), positions


def warn_unreadable(unreadable: Sequence[tuple[str, str]], total: int, what: str) -> None:
    """On stderr: the first UNREADABLE_NAMED unreadable photos by name, then how many of `total` there were, so
    that a calibration on half its photos is not taken for a whole one."""
    for photo, error in unreadable[:UNREADABLE_NAMED]:
        print(f"warning: unreadable {what} photo left out: {one_line(photo)}: {one_line(error)}", file=sys.stderr)
    if unreadable:
        print(f"warning: {len(unreadable)} of the {total} {what} photos could not be read and were left out"
              f"{f' ({len(unreadable) - UNREADABLE_NAMED} not named)' if len(unreadable) > UNREADABLE_NAMED else ''}",
              file=sys.stderr)


@dataclass(frozen=True)
class Agreement:
    """How the INT8 model compared with float32 on the run's validation photos."""

    photos: int
    same_top1: int
    float32_correct: int
    int8_correct: int
    min_agreement: float  # the threshold it was held to, percent
    one_class: str | None = None  # the class float32 gave every photo, when it gave them all the same

    @property
    def percent(self) -> float:
        return 100 * self.same_top1 / self.photos if self.photos else 0.0

    def summary(self) -> str:
        def accuracy(correct: int) -> str:
            return f"{correct / self.photos:.3f}" if self.photos else "-"

        return (f"same top-1 class as float32 for {self.same_top1} of {self.photos} validation photos "
                f"({self.percent:.1f}%, at least {self.min_agreement:g}% needed)"
                f"{agreement_caveat(self.photos, self.one_class, 'float32')}; accuracy float32 "
                f"{accuracy(self.float32_correct)}, int8 {accuracy(self.int8_correct)}")


def score(float32: Any, int8: Any, photos: RunPhotos, min_agreement: float) -> Agreement:
    """Both models on the validation photos (unreadable ones left out)."""
    same = float32_correct = int8_correct = total = 0
    answers = np.zeros(len(float32.class_names), dtype=int)  # how many photos float32 gave each class
    unreadable: list[tuple[str, str]] = []
    for batch, positions in preprocessed(photos.validation, float32.preprocessing, unreadable):
        expected, answered = float32.probabilities(batch).argmax(1), int8.probabilities(batch).argmax(1)
        labels = np.array([photos.labels[i] for i in positions])
        total += len(batch)
        same += int((expected == answered).sum())
        float32_correct += int((expected == labels).sum())
        int8_correct += int((answered == labels).sum())
        answers += np.bincount(expected, minlength=len(answers))
    warn_unreadable(unreadable, len(photos.validation), "validation")
    single = one_answer(answers.tolist())
    return Agreement(total, same, float32_correct, int8_correct, min_agreement,
                     None if single is None else float32.class_names[single])


class _CalibrationPhotos:
    """ONNX Runtime's CalibrationDataReader interface over the readable calibration photos, decoded once,
    batch by batch, with the range interface its strided calibration uses to take one batch at a time
    (CalibStridedMinMax). The photos' pixels are small beside what the calibrator holds per batch."""

    def __init__(self, photos: Sequence[str], preprocessing: Preprocessing, input_name: str) -> None:
        self.unreadable: list[tuple[str, str]] = []
        pixels = [array for batch, _ in preprocessed(photos, preprocessing, self.unreadable) for array in batch]
        self.batches = [np.stack(pixels[start:start + CALIBRATION_BATCH])
                        for start in range(0, len(pixels), CALIBRATION_BATCH)]
        self.input_name = input_name
        self.pending: Iterator[np.ndarray] = iter(self.batches)
        self.used = len(pixels)

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pending = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.pending, None)
        return None if batch is None else {self.input_name: batch}


def quantize(float_export: Path, output: str, photos: Sequence[str], preprocessing: Preprocessing) -> int:
    """Write the QDQ INT8 model of `float_export` to `output`, calibrated on `photos`; how many were read."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = _CalibrationPhotos(photos, preprocessing, "images")
    if not reader.batches:
        raise UsageError(f"none of the {len(photos)} calibration photos could be read (first: "
                         f"{one_line(reader.unreadable[0][0])}: {one_line(reader.unreadable[0][1])}); nothing was "
                         f"written")
    warn_unreadable(reader.unreadable, len(photos), "calibration")
    # the calibrator prints its progress and settings on stdout (nine lines, one of them misleading, see
    # CALIBRATION_PERCENTILE): export.py's output is its own lines, so they go nowhere
    with tempfile.TemporaryDirectory(prefix="int8.") as folder, contextlib.redirect_stdout(io.StringIO()):
        prepared = os.path.join(folder, "prepared.onnx")
        quant_pre_process(str(float_export), prepared, skip_symbolic_shape=True)  # shapes known to the quantizer
        quantize_static(prepared, output, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile, op_types_to_quantize=list(QUANTIZED_OPERATORS),
                        extra_options={"CalibTensorRangeSymmetric": False, "CalibStridedMinMax": 1,
                                       "CalibPercentile": CALIBRATION_PERCENTILE})
    return reader.used


def _write_metadata(path: str, entries: dict[str, str]) -> None:
    import onnx

    quantized = onnx.load(path)
    onnx.helper.set_model_props(quantized, entries)
    onnx.save(quantized, path)


def export_int8(float_export: str | os.PathLike, checkpoint: str | os.PathLike,
                output: str | os.PathLike | None = None,
                min_agreement: float = DEFAULT_MIN_AGREEMENT) -> tuple[Path, Agreement]:
    """Quantize `float_export` (an export of this project, from `checkpoint` in a run folder) and write it to
    `output` (default: best.int8.onnx beside it) if it agrees with float32 on at least `min_agreement` percent
    of the validation photos; else AgreementError and no file."""
    from effnet.atomic_files import atomic_path

    onnxruntime = runtimes.import_onnxruntime()
    float_export, output = Path(float_export), Path(output) if output else int8_path(float_export)
    float32 = exported_backends.OnnxRuntimeBackend(float_export)
    photos = run_photos(checkpoint, float32.class_names)
    with atomic_path(output) as temporary:
        used = quantize(float_export, temporary, photos.training, float32.preprocessing)
        metadata = dict(float32.session.get_modelmeta().custom_metadata_map)
        calibration = {"photos": used, "from": "the run's training split (split.json)",
                       "method": f"Percentile: from the {RANGE_PERCENTILES[0]:g}th to the {RANGE_PERCENTILES[1]:g}th "
                                 f"percentile of each activation (ONNX Runtime's CalibPercentile "
                                 f"{CALIBRATION_PERCENTILE:g}, asymmetric)",
                       "format": "QDQ", "activations": "uint8", "weights": "int8 per channel",
                       "onnxruntime": onnxruntime.__version__}
        entries = {**metadata, "precision": "int8", "calibration": json.dumps(calibration)}
        _write_metadata(temporary, entries)  # the backend reads the class names and preprocessing from it
        agreement = score(float32, exported_backends.OnnxRuntimeBackend(temporary), photos, min_agreement)
        if not agreement.photos or agreement.percent < min_agreement:
            raise AgreementError(f"{output}: the INT8 model was refused ({agreement.summary()}); nothing was "
                                 f"written; lower --min-agreement to keep it anyway")
        _write_metadata(temporary, {**entries, "agreement": json.dumps(asdict(agreement))})
    return output, agreement
