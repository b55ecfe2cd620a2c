"""The deployment section of benchmarks/speed.py: prediction as a deployer runs it, against what they would write
by hand. Every contender runs in its own process (ONNX Runtime's and OpenVINO's thread pools spin and would
starve a neighbour in the same process), rounds alternate between them, and medians are reported.

    python -m benchmarks.speed --sections deployment                      # a few minutes on 2 cores
    python -m benchmarks.speed --sections deployment --deploy-weights runs/<run>/best.pth --rounds 5

Without --deploy-weights the checkpoint is a 5-class B0 whose BatchNorm statistics are measured on the photos
(speed does not depend on what the weights learned, but tiny untrained activations would).

1. One photo, the whole process (start, imports, model, decode, answer), warm disk cache: `python predict.py
   photo.jpg` with a run's checkpoint and its best.onnx, against a 12-line ONNX Runtime + Pillow + numpy
   script and a torchvision-only script. Wall time and peak resident memory.
2. Model throughput at batch 1 and 32 on preprocessed input: this project's backends against a plain ONNX
   Runtime session (its defaults) and plain OpenVINO (float32, latency hint), all on the same .onnx.
3. A folder of 256 flower photos end to end: predict.py against the torchvision-only script and the plain
   ONNX Runtime script (both decode one photo after another and run batches of 32, as such scripts do).

Nothing here imports PyTorch at the top: the worker processes of the ONNX contenders import this module.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FOLDER_PHOTOS = 256

# What a user writes to run the exported model with ONNX Runtime, Pillow and numpy alone.
PLAIN_ONNXRUNTIME_SCRIPT = """\
import glob, os, sys
import numpy as np, onnxruntime as ort
from PIL import Image
model, target, resize, crop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
def load(path):
    image = Image.open(path).convert("RGB")
    scale = resize / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - crop) // 2, (image.height - crop) // 2
    pixels = np.asarray(image.crop((left, top, left + crop, top + crop)), np.float32) / 255
    return ((pixels - mean) / std).transpose(2, 0, 1)
paths = sorted(glob.glob(os.path.join(target, "**", "*.jpg"), recursive=True)) if os.path.isdir(target) else [target]
for start in range(0, len(paths), 32):
    probabilities = session.run(None, {"images": np.stack([load(p) for p in paths[start:start + 32]])})[0]
    for path, row in zip(paths[start:start + 32], probabilities):
        print(path, int(row.argmax()), float(row.max()))
"""

# What a user writes with torchvision alone, the model holding the same weights.
TORCHVISION_SCRIPT = """\
import glob, os, sys
import torch, torchvision
import torchvision.transforms as T
from PIL import Image
weights, target, resize, crop, classes, variant = sys.argv[1:3] + [int(a) for a in sys.argv[3:6]] + sys.argv[6:7]
model = getattr(torchvision.models, "efficientnet_" + variant)(num_classes=classes)
model.load_state_dict(torch.load(weights, weights_only=True))
model.eval()
transform = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(crop), T.ToTensor(),
                       T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
paths = sorted(glob.glob(os.path.join(target, "**", "*.jpg"), recursive=True)) if os.path.isdir(target) else [target]
with torch.no_grad():
    for start in range(0, len(paths), 32):
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start:start + 32]])
        for path, row in zip(paths[start:start + 32], model(batch).softmax(1)):
            print(path, int(row.argmax()), float(row.max()))
"""


@dataclass
class Comparison:
    """One line of the section's table: this project against a named reference."""

    what: str
    reference_name: str
    reference: float
    ours: float
    unit: str
    higher_is_better: bool = True

    def cells(self) -> str:
        if self.higher_is_better:
            ratio = f"{self.ours / self.reference:.2f}x"
        elif self.unit == "s":
            ratio = f"{self.reference / self.ours:.2f}x faster"
        else:
            ratio = f"{self.ours / self.reference:.2f} of the reference"
        return (f"| {self.what} | {self.reference_name}: {self.reference:.{self._digits}f} {self.unit} | "
                f"{self.ours:.{self._digits}f} {self.unit} | {ratio} |")

    @property
    def _digits(self) -> int:
        return 2 if self.unit == "s" else 1


# ---------------------------------------------------------------------------------------------------------------
# Model throughput: one worker process per contender, driven round by round over a pipe


def _contender(kind: str, model: str) -> Callable[[np.ndarray], object]:
    """A function running one batch through `model` the way `kind` does it."""
    if kind == "plain onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        return lambda batch: session.run(None, {"images": batch})
    if kind == "plain openvino":
        import openvino

        compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        return lambda batch: request.infer({0: batch})
    from effnet.inference.classifier import Classifier  # this project's path: preprocessing aside, what predict.py runs

    backend = kind.removeprefix("ours, ")
    weights = model if backend != "torch" else str(Path(model).with_suffix(".pth"))
    return Classifier.from_weights(weights, backend=backend).probabilities


def worker() -> None:
    """Run in a child process: argv kind, model, batch, crop. Answers each line on stdin with images/s."""
    kind, model, batch, crop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    kind = kind.partition("@")[0]  # "plain onnxruntime@int8": a label told apart from the same kind on another file
    run = _contender(kind, model)
    images = np.random.default_rng(1).standard_normal((batch, 3, crop, crop), dtype=np.float32)
    calls = max(1, 16 // batch)  # several calls per round at small batches for a steadier figure
    run(images), run(images)  # warm-up: memory planning, kernel selection
    print("ready", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        for _ in range(calls):
            run(images)
        print(batch * calls / (time.perf_counter() - start), flush=True)


def throughput(kinds: Sequence[str], model: Path | Mapping[str, Path], batch: int, crop: int,
               rounds: int) -> dict[str, float]:
    """Median images/s of each contender, measured in alternating rounds, each in its own process. `model`:
    the file every contender runs, or each one's own (contenders of one kind labelled 'kind@label')."""
    command = [sys.executable, "-c", "from benchmarks import deployment; deployment.worker()"]
    models = model if isinstance(model, Mapping) else dict.fromkeys(kinds, model)
    workers = {kind: subprocess.Popen([*command, kind, str(models[kind]), str(batch), str(crop)], cwd=REPO, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE) for kind in kinds}
    try:
        for kind, process in workers.items():
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the {kind} worker did not start (exit status {process.wait()})")
        speeds: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(rounds):
            for kind, process in workers.items():
                time.sleep(0.1)  # let the previous contender's threads stop spinning
                process.stdin.write("go\n")
                process.stdin.flush()
                speeds[kind].append(float(process.stdout.readline()))
    finally:
        for process in workers.values():
            process.stdin.close()
            process.wait()
    return {kind: statistics.median(values) for kind, values in speeds.items()}


def throughput_rows(model: Path, crop: int, rounds: int) -> list[Comparison]:
    from effnet.inference.runtimes import is_installed

    openvino = is_installed("openvino")
    kinds = ["plain onnxruntime", "ours, onnxruntime", "ours, torch"]
    kinds += ["plain openvino", "ours, openvino"] if openvino else []
    rows = []
    for batch in (1, 32):
        speed = throughput(kinds, model, batch, crop, rounds)
        plain = ("plain ONNX Runtime", speed["plain onnxruntime"])
        rows.append(Comparison(f"model, batch {batch}: ONNX Runtime backend (the default)", *plain,
                               speed["ours, onnxruntime"], "images/s"))
        rows.append(Comparison(f"model, batch {batch}: torch backend", *plain, speed["ours, torch"], "images/s"))
        if openvino:
            rows.append(Comparison(f"model, batch {batch}: ONNX Runtime backend (the default)", "plain OpenVINO",
                                   speed["plain openvino"], speed["ours, onnxruntime"], "images/s"))
            rows.append(Comparison(f"model, batch {batch}: OpenVINO backend", "plain OpenVINO",
                                   speed["plain openvino"], speed["ours, openvino"], "images/s"))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Whole processes: one photo, and a folder


# Runs a command and reports its wall time and peak memory. The measuring is done by this small process, not
# by the benchmark: a child's peak resident size (ru_maxrss) starts at its parent's size when it is forked,
# and the benchmark holds PyTorch and a model.
MEASURE_SCRIPT = """\
import os, subprocess, sys, time
start = time.perf_counter()
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(process.pid, 0)
print(time.perf_counter() - start, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status))  # KiB -> MiB
"""


def run_process(command: Sequence[str]) -> tuple[float, float]:
    """(wall seconds, peak resident MiB) of a command run to its end, its output discarded."""
    result = subprocess.run([sys.executable, "-c", MEASURE_SCRIPT, *command], cwd=REPO, capture_output=True,
                            text=True)
    try:
        seconds, mib, status = result.stdout.split()
    except ValueError:
        status = "?"
    if result.returncode != 0 or status != "0":
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr[-500:]}")
    return float(seconds), float(mib)


def alternate_processes(commands: dict[str, list[str]], rounds: int) -> dict[str, tuple[float, float]]:
    """Median (wall seconds, peak MiB) of each command, after one warm-up run each, rounds alternating."""
    for command in commands.values():
        run_process(command)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, command in commands.items():
            results[name].append(run_process(command))
    return {name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
            for name, runs in results.items()}


@dataclass
class Setup:
    """The files every measurement uses: a run folder (best.pth and its best.onnx), the same weights in
    torchvision's layout, the reference scripts, and a folder of photos."""

    checkpoint: Path
    exported: Path
    torchvision_weights: Path
    classes: int
    variant: str
    resize: int
    crop: int
    scripts: dict[str, Path]
    photo: str
    folder: Path


def prepare(workdir: Path, weights: str | None, photos: Sequence[str]) -> Setup:
    """Copy (or make) a checkpoint into a run folder in `workdir`, export it, and write the references."""
    import torch

    import model as M
    from effnet.checkpoints import read_weights_file
    from effnet.inference.onnx_conversion import export_checkpoint
    from effnet.run_files import default_output
    from effnet.weights import torchvision_key_map
    from tests.harness import write_random_run

    run = workdir / "run"
    run.mkdir()
    if weights:
        checkpoint = Path(shutil.copy(weights, run / "best.pth"))
        exported, _ = export_checkpoint(checkpoint, photos=photos[:8])
    else:
        checkpoint = write_random_run(run, photos=photos)
        exported = default_output(checkpoint)
    network = M.model_from_checkpoint(checkpoint)
    torch.save({new: value for old, new in torchvision_key_map(network).items()
                for value in [network.state_dict()[old]]}, workdir / "torchvision.pth")
    image = read_weights_file(checkpoint)["image"]
    scripts = {"onnxruntime": workdir / "plain_onnxruntime.py", "torchvision": workdir / "torchvision_only.py"}
    scripts["onnxruntime"].write_text(PLAIN_ONNXRUNTIME_SCRIPT)
    scripts["torchvision"].write_text(TORCHVISION_SCRIPT)
    folder = workdir / "photos"
    folder.mkdir()
    for index, photo in enumerate(photos[:FOLDER_PHOTOS]):
        os.symlink(os.path.abspath(photo), folder / f"{index:04d}.jpg")
    return Setup(checkpoint, exported, workdir / "torchvision.pth", network.num_classes, network.variant,
                 image["eval_resize"], image["eval_crop"], scripts, photos[0], folder)


def process_rows(setup: Setup, rounds: int) -> list[Comparison]:
    sizes = [str(setup.resize), str(setup.crop)]
    rows = []
    for label, target in (("one photo", setup.photo), (f"{FOLDER_PHOTOS} photos, end to end", str(setup.folder))):
        commands = {
            "predict": [sys.executable, "predict.py", target, "--weights", str(setup.checkpoint)],
            "onnxruntime": [sys.executable, str(setup.scripts["onnxruntime"]), str(setup.exported), target, *sizes],
            "torchvision": [sys.executable, str(setup.scripts["torchvision"]), str(setup.torchvision_weights), target,
                            *sizes, str(setup.classes), setup.variant]}
        measured = alternate_processes(commands, rounds)
        (ours, ours_mib) = measured["predict"]
        for name, reference in (("torchvision-only script", "torchvision"),
                                ("plain ONNX Runtime script", "onnxruntime")):
            seconds, mib = measured[reference]
            rows.append(Comparison(f"python predict.py, {label}: wall time", name, seconds, ours, "s", False))
            if label == "one photo":
                rows.append(Comparison(f"python predict.py, {label}: peak memory", name, mib, ours_mib, "MiB",
                                       False))
    return rows


def section(rounds: int, photos: Sequence[str], weights: str | None = None) -> str:
    """The section's table, in markdown, with the setup it ran on."""
    if not photos:
        return "(deployment section skipped: it needs photos, see --photos)"
    with tempfile.TemporaryDirectory(prefix="deployment_benchmark.") as folder:
        setup = prepare(Path(folder), weights, photos)
        rows = process_rows(setup, rounds) + throughput_rows(setup.exported, setup.crop, rounds)
    lines = [f"Deployment: {'the checkpoint ' + weights if weights else 'a 5-class B0 checkpoint'} at "
             f"{setup.crop} px; one photo is {os.path.basename(photos[0])}; median of {rounds} alternating rounds, "
             f"every contender in its own process.", "",
             "| measurement | reference | this project | ratio |", "|---|---|---|---|"]
    return "\n".join(lines + [row.cells() for row in rows])
