"""One photo, the whole process: `python predict.py photo.jpg` against a plain ONNX Runtime script.

    python -m benchmarks.one_photo --rounds 9                        # a 5-class B0 at 224 px, made up here
    python -m benchmarks.one_photo --run runs/<run> --photo rose.jpg   # a run of yours (best.pth + best.onnx)

Both run as a user runs them, a fresh Python process each time: predict.py on a run folder (best.pth with its
best.onnx beside it, as training leaves it), and the 15-line script below, written into a temporary folder,
on that best.onnx (open the photo, resize, crop and normalise with Pillow and numpy, an InferenceSession,
softmax, print the top class). Warm disk cache, rounds alternating (the plain script first), medians; wall
time and peak memory are measured by a small parent process (deployment.run_process).

predict.py's cache of optimised models (effnet/inference/session_cache.py) lives in a temporary
XDG_CACHE_HOME, empty at the start: predict.py's first run fills it (the cold start) and is reported on its
own, beside the plain script's first run; the rounds after it find the cache filled. Last, where the time
goes: one process per round times each phase of both programs (imports, opening the model, the photo, the
model's run), medians of the rounds.
"""
import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.deployment import REPO, alternate_processes, run_process
from effnet.data.flower_photos import FLOWER_SAMPLE

# The plain script, step by step: each step's name (for the timing of phases) and its lines.
PLAIN_STEPS = {
    "import numpy, onnxruntime, Pillow": """\
import json, sys
import numpy as np, onnxruntime as ort
from PIL import Image
model, photo, resize, crop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])""",
    "open the model": """\
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
names = json.loads(session.get_modelmeta().custom_metadata_map["class_names"])""",
    "the photo": """\
image = Image.open(photo).convert("RGB")
scale = resize / min(image.size)
image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
left, top = (image.width - crop) // 2, (image.height - crop) // 2
pixels = np.asarray(image.crop((left, top, left + crop, top + crop)), np.float32) / 255
pixels = (pixels - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]""",
    "the model": """\
scores = session.run(None, {"images": pixels.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
probabilities = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
print(names[int(probabilities.argmax())], float(probabilities.max()))"""}
PLAIN_SCRIPT = "\n".join(PLAIN_STEPS.values()) + "\n"

# What predict.py does for one photo, in the same steps (with the same arguments: its run folder for the model).
PREDICT_STEPS = {
    "import numpy, onnxruntime, Pillow": """\
import sys
import numpy, onnxruntime
from PIL import Image
model, photo = sys.argv[1], sys.argv[2]""",
    "import predict.py's modules": "import predict",
    "open the model": "classifier = predict.Classifier.from_weights(model.replace('.onnx', '.pth'))",
    "the photo": "pixels = classifier.preprocess(photo)",
    "the model": "print(classifier.rank(classifier.probabilities(pixels[None])[0], 1))"}


def timed(steps: dict[str, str]) -> str:
    """A script running `steps` that prints, last, the seconds of each as JSON."""
    lines = ["import json as _json, time as _time", "_phases = {}"]
    for name, code in steps.items():
        lines += ["_start = _time.perf_counter()", code, f"_phases[{name!r}] = _time.perf_counter() - _start"]
    return "\n".join([*lines, "print(_json.dumps(_phases))"]) + "\n"


def prepare(workdir: Path, run: str | None, photo: str) -> tuple[Path, int, int]:
    """A run folder in `workdir` (a copy of `run`'s best.pth and best.onnx, or a made-up B0 at 224 px); its
    evaluation resize and crop."""
    if run:
        folder = workdir / "run"
        folder.mkdir()
        for name in ("best.pth", "best.onnx"):
            shutil.copy2(Path(run) / name, folder / name)  # file times kept: the export stays up to date
    else:
        from tests.harness import write_random_run

        folder = workdir / "run"
        folder.mkdir()
        write_random_run(folder, photos=sample_photos() or [photo])  # the photos set its BatchNorm statistics
    from effnet.inference import exported_backends

    preprocessing = exported_backends.OnnxRuntimeBackend(folder / "best.onnx").preprocessing
    return folder, preprocessing.resize, preprocessing.crop


def sample_photos() -> list[str]:
    """The photos of data/flower_sample, class by class."""
    return sorted(glob.glob(os.path.join(FLOWER_SAMPLE, "*", "*.jpg")))


def phase_medians(commands: dict[str, list[str]], rounds: int) -> dict[str, dict[str, float]]:
    """Median seconds of each phase of each program, one process per program and round, alternating."""
    timings: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, command in commands.items():
            result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True,
                                    env={**os.environ, "PYTHONPATH": str(REPO)})  # predict.py's modules
            timings[name].append(json.loads(result.stdout.splitlines()[-1]))
    return {name: {phase: statistics.median(run[phase] for run in runs) for phase in runs[0]}
            for name, runs in timings.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a run folder with best.pth and its best.onnx (default: a "
                                                    "5-class B0 at 224 px with made-up weights)")
    parser.add_argument("--photo", default=None, help="the photo (default: the first of data/flower_sample)")
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds, at least 5 (default 9)")
    args = parser.parse_args(argv)
    photo = os.path.abspath(args.photo or sample_photos()[0])
    with tempfile.TemporaryDirectory(prefix="one_photo.") as folder:
        workdir = Path(folder)
        os.environ["XDG_CACHE_HOME"] = str(workdir / "cache")  # predict.py's cache starts empty
        run, resize, crop = prepare(workdir, args.run, photo)
        for name, text in (("plain.py", PLAIN_SCRIPT), ("plain_phases.py", timed(PLAIN_STEPS)),
                           ("predict_phases.py", timed(PREDICT_STEPS))):
            (workdir / name).write_text(text)
        commands = {"plain": [sys.executable, str(workdir / "plain.py"), str(run / "best.onnx"), photo, str(resize),
                              str(crop)],
                    "predict": [sys.executable, "predict.py", photo, "--weights", str(run / "best.pth")]}
        first = {name: run_process(command) for name, command in commands.items()}
        measured = alternate_processes(commands, args.rounds)
        phases = phase_medians({name: [sys.executable, str(workdir / f"{name}_phases.py"), *commands["plain"][2:]]
                                for name in commands}, args.rounds)
        python_start = statistics.median(run_process([sys.executable, "-c", "pass"])[0] for _ in range(args.rounds))
    print(f"One photo ({os.path.basename(photo)}), {crop} px, median of {args.rounds} alternating rounds:\n")
    print("| measurement | plain ONNX Runtime script | python predict.py | predict.py / plain |\n|---|---|---|---|")
    for label, (plain, ours) in (("first run (predict.py's cache empty)", (first["plain"], first["predict"])),
                                 ("wall time, median", (measured["plain"], measured["predict"]))):
        print(f"| {label} | {plain[0]:.3f} s | {ours[0]:.3f} s | {ours[0] / plain[0]:.2f} |")
    plain, ours = measured["plain"][1], measured["predict"][1]
    print(f"| peak memory, median | {plain:.1f} MiB | {ours:.1f} MiB | {ours / plain:.2f} |")
    print(f"\nWhere the time goes (ms, medians; Python itself starts in {python_start * 1000:.0f} ms):\n")
    print("| phase | plain script | predict.py |\n|---|---|---|")
    for phase in dict.fromkeys([*phases["plain"], *phases["predict"]]):
        cells = [f"{phases[name][phase] * 1000:.0f}" if phase in phases[name] else "-" for name in commands]
        print(f"| {phase} | {' | '.join(cells)} |")
    rest = [(measured[name][0] - python_start - sum(phases[name].values())) * 1000 for name in commands]
    print(f"| the rest (flags, checks, output, exit) | {rest[0]:.0f} | {rest[1]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
