"""INT8 against float32 on the CPU: speed at batch 1 and 32, agreement and accuracy on real photos, file size.

    python train.py --data-path data/flower_sample --weights none --image-size 224 --epochs 30 \\
        --recipe modern --name flowers-b0-224 --output-dir /tmp/bench_runs
    python -m benchmarks.int8_speed --run /tmp/bench_runs/flowers-b0-224 --rounds 5

The run's best.pth is exported as `export.py --int8` does it (best.onnx checked against PyTorch, then
best.int8.onnx calibrated on the run's training photos), into a temporary copy of the run folder and with no
agreement threshold, so that the figures are reported whatever they are. Then:

1. Agreement: both models on the run's validation photos (what export.py checks) and on every photo of
   --photos whose class folder is one of the model's classes (training photos included: they say how often
   the answers differ, not how good the model is): same top-1 class, and each model's accuracy.
2. Speed: a plain ONNX Runtime session (its defaults) on each file, and OpenVINO (float32 hint, latency) on
   each when it is installed, at batch 1 and 32 on preprocessed input; every contender in its own process,
   rounds alternating, medians (deployment.throughput).
3. File sizes, the CPU and its vector and dot-product instructions, the library versions.

Prints a markdown table for docs/benchmarks.md, and whether INT8 was faster at both batch sizes: only then
should predict.py's default change.
"""
import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks import deployment
from benchmarks.deployment import Comparison
from effnet.data.class_folders import scan_class_folders
from effnet.data.flower_photos import FLOWER_SAMPLE
from effnet.inference import exported_backends, int8
from effnet.inference.runtimes import is_installed
from effnet.inference.session_cache import cpu_identity

INSTRUCTIONS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16",
                "asimddp", "i8mm")  # what decides the speed of INT8 and float32 kernels
RUN_FILES = ("best.pth", "split.json", "class_indices.json", "recipe.json")


def export_both(run: Path, workdir: Path) -> tuple[Path, Path, int8.Agreement]:
    """The float32 and INT8 exports of the run's best.pth, in a copy of the run folder under `workdir`."""
    from effnet.inference.onnx_conversion import export_checkpoint

    copy = workdir / "run"
    copy.mkdir()
    for name in RUN_FILES:
        if (run / name).is_file():
            shutil.copy2(run / name, copy / name)
    photos = int8.run_photos(copy / "best.pth")
    exported, check = export_checkpoint(copy / "best.pth", photos=photos.validation[:8])
    print(f"float32: {exported.stat().st_size / 2**20:.1f} MiB, {check.summary()}", file=sys.stderr)
    quantized, agreement = int8.export_int8(exported, copy / "best.pth", min_agreement=0)
    return exported, quantized, agreement


def photo_agreement(exported: Path, quantized: Path, folder: str) -> int8.Agreement:
    """Both models on every photo of the class folders under `folder` that name one of the model's classes."""
    float32, integer = exported_backends.OnnxRuntimeBackend(exported), exported_backends.OnnxRuntimeBackend(quantized)
    found = scan_class_folders(folder)
    paths, labels = [], []
    for name, images in found.images.items():
        if name in float32.class_names:
            paths += images
            labels += [float32.class_names.index(name)] * len(images)
    return int8.score(float32, integer, int8.RunPhotos([], paths, labels), 0)


def agreement_rows(label: str, agreement: int8.Agreement) -> list[str]:
    photos = agreement.photos
    return [f"| top-1 agreement, {label} | {photos} photos | {agreement.same_top1} of {photos} | "
            f"{agreement.percent:.1f}% |",
            f"| accuracy, {label} | float32: {agreement.float32_correct / photos:.3f} | "
            f"{agreement.int8_correct / photos:.3f} | "
            f"{(agreement.int8_correct - agreement.float32_correct) / photos:+.3f} |"]


def speed_rows(exported: Path, quantized: Path, crop: int, rounds: int) -> tuple[list[Comparison], bool]:
    """Images/s of each runtime on each file at batch 1 and 32; whether INT8 ONNX Runtime won at both."""
    runtimes = {"onnxruntime": "ONNX Runtime"}
    if is_installed("openvino"):
        runtimes["openvino"] = "OpenVINO"
    models = {f"plain {kind}@{precision}": path for kind in runtimes
              for precision, path in (("float32", exported), ("int8", quantized))}
    rows, faster = [], True
    for batch in (1, 32):
        speed = deployment.throughput(list(models), models, batch, crop, rounds)
        reference = speed["plain onnxruntime@float32"]
        faster = faster and speed["plain onnxruntime@int8"] > reference
        for kind, name in runtimes.items():
            for precision in ("float32", "int8") if kind != "onnxruntime" else ("int8",):
                rows.append(Comparison(f"batch {batch}: {name} {precision}", "ONNX Runtime float32", reference,
                                       speed[f"plain {kind}@{precision}"], "images/s"))
        if "openvino" in runtimes:
            rows.append(Comparison(f"batch {batch}: OpenVINO int8", "OpenVINO float32",
                                   speed["plain openvino@float32"], speed["plain openvino@int8"], "images/s"))
    return rows, faster


def machine() -> str:
    """The CPU, its instructions that matter here, and the library versions."""
    import onnxruntime

    lines = {key.strip(): value for key, value in (line.split(":", 1) for line in cpu_identity().splitlines()
                                                    if ":" in line)}
    flags = (lines.get("flags") or lines.get("Features") or "").split()
    versions = f"onnxruntime {onnxruntime.__version__}"
    if is_installed("openvino"):
        import openvino

        versions += f", openvino {openvino.__version__.split('-')[0]}"
    return (f"{lines.get('model name', 'CPU').strip()}, {os.cpu_count()} cores; instructions: "
            f"{' '.join(flag for flag in INSTRUCTIONS if flag in flags) or 'none of ' + ', '.join(INSTRUCTIONS)}; "
            f"{versions}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run folder of train.py (best.pth and split.json)")
    parser.add_argument("--photos", default=str(FLOWER_SAMPLE),
                        help="class folders of real photos to compare on (default data/flower_sample)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per batch size (default 5)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="int8_speed.") as folder:
        exported, quantized, validation = export_both(Path(args.run), Path(folder))
        crop = exported_backends.OnnxRuntimeBackend(exported).preprocessing.crop
        photos = photo_agreement(exported, quantized, args.photos)
        rows, faster = speed_rows(exported, quantized, crop, args.rounds)
        sizes = exported.stat().st_size / 2**20, quantized.stat().st_size / 2**20
    print(f"Machine: {machine()}. Model: {args.run} at {crop} px; median of {args.rounds} alternating rounds.\n")
    print("| measurement | float32 | int8 | int8 against float32 |\n|---|---|---|---|")
    print("\n".join(row.cells() for row in rows))
    print("\n".join(agreement_rows("the run's validation photos", validation)
                    + agreement_rows(f"every photo of {args.photos}", photos)))
    print(f"| file size | {sizes[0]:.1f} MiB | {sizes[1]:.1f} MiB | {sizes[1] / sizes[0]:.2f} of float32 |")
    print(f"\nINT8 in ONNX Runtime faster than float32 at batch 1 and 32: {'yes' if faster else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
