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
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from effnet.inference import exported_backends
from effnet.command_line import UsageError
from effnet.data.images import Preprocessing
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
CALIBRATION_PERCENTILE = 99.99
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
    for part, found in pairs.items():
        present = [photo for photo, _ in found if os.path.isfile(photo)]
        if not present:
            raise UsageError(f"{path}: none of the {len(found)} {part} photos is at {root} any more; {hint}")
    training = [photo for photo, _ in pairs["train"]]
    validation = [(photo, label) for photo, label in pairs["val"]]
    return RunPhotos(spread(training, CALIBRATION_PHOTOS), [p for p, _ in validation], [lb for _, lb in validation])


def spread(photos: Sequence[str], count: int) -> list[str]:
    """At most `count` photos evenly spaced through the list (train.py lists them class by class, so every
    class keeps its share)."""
    if len(photos) <= count:
        return list(photos)
    return [photos[int(i)] for i in np.linspace(0, len(photos) - 1, count).round()]


def preprocessed(photos: Sequence[str], preprocessing: Preprocessing) -> Iterator[tuple[np.ndarray, list[int]]]:
    """Batches of the readable photos, each with the positions in `photos` it holds."""
    arrays: list[np.ndarray] = []
    positions: list[int] = []
    for position, photo in enumerate(photos):
        try:
            arrays.append(preprocessing.load(photo))
            positions.append(position)
        except Exception:  # an unreadable photo only leaves the calibration or the check one photo smaller
            continue
        if len(arrays) == BATCH:
            yield np.stack(arrays), positions
            arrays, positions = [], []
    if arrays:
        yield np.stack(arrays), positions


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
    for batch, positions in preprocessed(photos.validation, float32.preprocessing):
        expected, answered = float32.probabilities(batch).argmax(1), int8.probabilities(batch).argmax(1)
        labels = np.array([photos.labels[i] for i in positions])
        total += len(batch)
        same += int((expected == answered).sum())
        float32_correct += int((expected == labels).sum())
        int8_correct += int((answered == labels).sum())
        answers += np.bincount(expected, minlength=len(answers))
    single = one_answer(answers.tolist())
    return Agreement(total, same, float32_correct, int8_correct, min_agreement,
                     None if single is None else float32.class_names[single])


class _CalibrationPhotos:
    """ONNX Runtime's CalibrationDataReader interface over the readable calibration photos, decoded once,
    batch by batch, with the range interface its strided calibration uses to take one batch at a time
    (CalibStridedMinMax). The photos' pixels are small beside what the calibrator holds per batch."""

    def __init__(self, photos: Sequence[str], preprocessing: Preprocessing, input_name: str) -> None:
        pixels = [array for batch, _ in preprocessed(photos, preprocessing) for array in batch]
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
        raise UsageError(f"none of the {len(photos)} calibration photos could be read; nothing was written")
    with tempfile.TemporaryDirectory(prefix="int8.") as folder:
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
    import onnxruntime

    from effnet.atomic_files import atomic_path

    float_export, output = Path(float_export), Path(output) if output else int8_path(float_export)
    float32 = exported_backends.OnnxRuntimeBackend(float_export)
    photos = run_photos(checkpoint, float32.class_names)
    with atomic_path(output) as temporary:
        used = quantize(float_export, temporary, photos.training, float32.preprocessing)
        metadata = dict(float32.session.get_modelmeta().custom_metadata_map)
        calibration = {"photos": used, "from": "the run's training split (split.json)",
                       "method": f"Percentile {CALIBRATION_PERCENTILE}",
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
