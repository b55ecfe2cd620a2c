"""Speed and memory of this project against torchvision's EfficientNet, side by side in one run.

    python -m benchmarks.speed                       # CPU, B0, every section (a few minutes on 2 cores)
    python -m benchmarks.speed --device cuda         # the same on a GPU (adds timm when it is installed)
    python -m benchmarks.speed --sections inference training --rounds 3
    python -m benchmarks.speed --sections api        # app.py's HTTP API, 1 and 8 clients (http_api.py)

Both models get the same weights, input, thread count and batch; measurements alternate between them
round by round and the median is reported, so drift on a shared machine hits both alike. The reference
is torchvision's model run the plain way (eager, float32, NCHW); "ours" is what train.py and predict.py
actually run by default, including the process-wide allocator setting they make at start-up
(runtime.keep_freed_memory_for_reuse): it is switched on for our rounds and off for the reference's, and an
extra row shows torchvision with that setting alone, so its share of each speed-up is visible. Peak memory
of a training step is the growth of resident memory during one step in a fresh process, median of the
rounds, on the CPU, and the CUDA allocator's peak on a GPU.
"""
import argparse
import functools
import glob
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch import nn

import model as M
from effnet.data.flower_photos import FLOWER_SAMPLE
from effnet.hardware import keep_freed_memory_for_reuse
from effnet.inference.classifier import Classifier, weights_or_newest
from effnet.training import recipe
from effnet.training.steps import StepSettings, train_mode
from my_dataset import MyDataSet, crop_decode_size, eval_transform, train_transform
from tests.harness import make_large_jpeg
from utils import train_step

SECTIONS = ("inference", "training", "memory", "data", "agreement", "deployment", "api")


@dataclass
class Row:
    """One comparison: throughput (higher is better) or memory (lower is better) of both sides."""

    what: str
    reference: float
    ours: float
    unit: str
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        """ours / reference: a speed-up for throughput, a fraction of the reference for memory."""
        return self.ours / self.reference


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def repeated(function: Callable[[], object], times: int) -> Callable[[], None]:
    """One timing of `times` calls of `function` (batch 1 is timed over several calls for a steadier figure)."""
    def run() -> None:
        for _ in range(times):
            function()
    return run


def alternate(functions: dict[str, tuple[Callable[[], None], bool]], rounds: int,
              device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, measured in alternating rounds after one warm-up call.

    Each entry is (function, allocator tuned?): this project's programs keep freed memory for reuse
    (runtime.keep_freed_memory_for_reuse), a plain torchvision user's process does not, so the setting is
    switched to match each side before it runs.
    """
    for function, tuned in functions.values():
        keep_freed_memory_for_reuse(tuned)
        function()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, (function, tuned) in functions.items():
            keep_freed_memory_for_reuse(tuned)
            synchronize(device)
            start = time.perf_counter()
            function()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def same_weights(variant: str, num_classes: int) -> tuple[nn.Module, M.EfficientNet]:
    """torchvision's model and ours holding the same (initial) weights."""
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"efficientnet_{variant}")(num_classes=num_classes)
    ours = M.create_model(variant, num_classes)
    M.load_weights(ours, reference.state_dict(), verbose=False)
    return reference, ours


def inference_rows(variant: str, device: torch.device, rounds: int) -> list[Row]:
    spec = M.VARIANTS[variant]
    reference, ours = same_weights(variant, 1000)
    reference.eval().to(device)
    float32 = Classifier(ours, [str(i) for i in range(1000)], device=device, precision="float32")
    bfloat16 = Classifier(ours, float32.class_names, device=device, precision="bfloat16")
    rows = []
    for batch in (1, 32):
        x = torch.randn(batch, 3, spec.eval_crop, spec.eval_crop, generator=torch.Generator().manual_seed(1))
        reference_x = x.to(device)
        x = x.to(device, memory_format=torch.channels_last)  # on the device already, as reference_x is

        def run_reference(inputs: torch.Tensor = reference_x) -> None:
            with torch.no_grad():
                reference(inputs)

        calls = max(1, 8 // batch)  # several calls per timing at batch 1 for a steadier figure
        seconds = alternate({"reference": (repeated(run_reference, calls), False),
                             "reference, allocator": (repeated(run_reference, calls), True),
                             "float32": (repeated(functools.partial(float32.probabilities, x), calls), True),
                             "bfloat16": (repeated(functools.partial(bfloat16.probabilities, x), calls), True)},
                            rounds, device)
        per_second = {name: batch * calls / value for name, value in seconds.items()}
        reference_speed = per_second["reference"]
        rows.append(Row(f"predict, batch {batch}, float32 (folded BN, channels_last)", reference_speed,
                        per_second["float32"], "images/s"))
        rows.append(Row(f"predict, batch {batch}, --precision bfloat16", reference_speed,
                        per_second["bfloat16"], "images/s"))
        if device.type == "cpu":
            rows.append(Row(f"(torchvision, batch {batch}, with our allocator setting alone)", reference_speed,
                            per_second["reference, allocator"], "images/s"))
    return rows


def training_setup(name: str, variant: str, device: torch.device, checkpointing: bool = False,
                   frozen: bool = False) -> tuple[nn.Module, torch.optim.Optimizer, StepSettings]:
    """(model, optimizer, settings) of one contender: "reference" (torchvision, plain), "ours" (as train.py
    runs by default), or on a GPU torchvision / timm with our speed settings."""
    defaults = StepSettings.for_device(device)  # what train.py runs with by default
    if name == "reference":
        model, settings = same_weights(variant, 5)[0], StepSettings(device=device, channels_last=False)
    elif name == "ours":
        model, settings = same_weights(variant, 5)[1], defaults
        model.set_grad_checkpointing(checkpointing)
    elif name.startswith("timm"):
        import timm

        model, settings = timm.create_model(f"efficientnet_{variant}", num_classes=5), defaults
    else:
        model, settings = same_weights(variant, 5)[0], defaults
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    if frozen:
        recipe.freeze_all_but_head(model)
    train_mode(model)
    parameters = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.SGD(parameters, lr=0.01, momentum=0.9, weight_decay=1e-4), settings


def contenders(device: torch.device) -> list[str]:
    names = ["reference", "ours"]
    if device.type == "cuda":
        names.append("torchvision + AMP + channels_last")
        try:
            import timm  # noqa: F401

            names.append("timm + AMP + channels_last")
        except ImportError:
            pass
    return names


def training_rows(variant: str, device: torch.device, rounds: int, batch: int = 16) -> list[Row]:
    size = M.VARIANTS[variant].train_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))
    labels = torch.randint(0, 5, (batch,), generator=torch.Generator().manual_seed(3))
    loss_function = nn.CrossEntropyLoss()
    rows = []
    for frozen, label in ((False, "all layers (--freeze-layers false, the default)"),
                          (True, "head only (--freeze-layers true)")):
        setups = {name: training_setup(name, variant, device, frozen=frozen) for name in contenders(device)}

        def step(name: str, setups: dict = setups) -> Callable[[], None]:
            model, optimizer, settings = setups[name]
            x, y = settings.to_device(images, labels)
            return lambda: train_step(model, optimizer, loss_function, x, y, settings)

        candidates = {name: (step(name), name != "reference") for name in setups}
        if device.type == "cpu" and not frozen:
            candidates["reference, allocator"] = (step("reference"), True)
        seconds = alternate(candidates, rounds, device)
        reference_speed = batch / seconds["reference"]
        rows.append(Row(f"training step, batch {batch}, {label}", reference_speed, batch / seconds["ours"],
                        "images/s"))
        for name in candidates:
            if name not in ("reference", "ours"):
                extra = "torchvision with our allocator setting alone" if name == "reference, allocator" else name
                rows.append(Row(f"(training step, batch {batch}, {extra})", reference_speed, batch / seconds[name],
                                "images/s"))
    return rows


def _memory_child(variant: str, which: str, checkpointing: bool, allocator: bool, batch: int,
                  queue: multiprocessing.Queue) -> None:
    """In a fresh process: how far resident memory rises above its level before one training step (MiB)."""
    torch.set_num_threads(int(os.environ.get("BENCHMARK_THREADS", torch.get_num_threads())))
    if allocator:
        keep_freed_memory_for_reuse()  # as train.py runs
    model, optimizer, settings = training_setup(which, variant, torch.device("cpu"), checkpointing)
    size = M.VARIANTS[variant].train_size
    x, y = settings.to_device(torch.randn(batch, 3, size, size), torch.randint(0, 5, (batch,)))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current resident size
    before = _status_mib("VmHWM")
    train_step(model, optimizer, nn.CrossEntropyLoss(), x, y, settings)
    queue.put(_status_mib("VmHWM") - before)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _peak_cpu(variant: str, which: str, checkpointing: bool, allocator: bool, batch: int) -> float:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_memory_child, args=(variant, which, checkpointing, allocator, batch,
                                                                        queue))
    process.start()
    value = queue.get()
    process.join()
    return value


def _peak_cuda(variant: str, which: str, checkpointing: bool, batch: int, device: torch.device) -> float:
    model, optimizer, settings = training_setup(which, variant, device, checkpointing)
    size = M.VARIANTS[variant].train_size
    x, y = settings.to_device(torch.randn(batch, 3, size, size), torch.randint(0, 5, (batch,)))
    train_step(model, optimizer, nn.CrossEntropyLoss(), x, y, settings)  # optimizer state exists now
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    train_step(model, optimizer, nn.CrossEntropyLoss(), x, y, settings)
    torch.cuda.synchronize(device)
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    del model, optimizer
    torch.cuda.empty_cache()
    return peak


def memory_rows(variant: str, device: torch.device, rounds: int, batch: int = 16) -> list[Row]:
    """Peak memory of one training step: on a GPU the allocator's exact peak; on the CPU the median over
    `rounds` fresh processes per contender, alternating, since the resident peak of a single process
    varies by up to 20% with how the allocator happens to place its blocks. On the CPU an extra row shows
    ours without the allocator setting, which trades memory for speed."""
    runs = {"reference": ("reference", False, False), "ours": ("ours", False, True),
            "checkpointing": ("ours", True, True)}
    if device.type == "cuda":
        peaks = {name: _peak_cuda(variant, which, checkpointing, batch, device)
                 for name, (which, checkpointing, _) in runs.items()}
    else:
        runs["ours, plain allocator"] = ("ours", False, False)
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, (which, checkpointing, allocator) in runs.items():
                samples[name].append(_peak_cpu(variant, which, checkpointing, allocator, batch))
        peaks = {name: statistics.median(values) for name, values in samples.items()}
    rows = [Row(f"training step peak memory, batch {batch}", peaks["reference"], peaks["ours"], "MiB", False),
            Row("same, --grad-checkpointing", peaks["reference"], peaks["checkpointing"], "MiB", False)]
    if "ours, plain allocator" in peaks:
        rows.append(Row("(same as the first, without our allocator setting)", peaks["reference"],
                        peaks["ours, plain allocator"], "MiB", False))
    return rows


def data_rows(photos: list[str], rounds: int) -> list[Row]:
    """Decode + augment, one thread, as a data-loading worker runs it: the tutorial's transforms vs ours."""
    torch.set_num_threads(1)
    tutorial_train = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                                T.Normalize(M.MEAN, M.STD)])
    tutorial_eval = T.Compose([T.Resize(256, T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                               T.Normalize(M.MEAN, M.STD)])
    ours_train = MyDataSet([], [], train_transform(224), decode_size=crop_decode_size(224))
    ours_eval = MyDataSet([], [], eval_transform(256, 224, "bicubic"), decode_size=256)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        large = [str(make_large_jpeg(Path(folder) / f"large{i}.jpg", sources=photos, seed=i)) for i in range(4)]
        megapixels = 4032 * 3024 / 1e6
        for label, paths in ((f"small photos ({len(photos)} flower JPEGs)", photos),
                             (f"large JPEGs ({len(large)} x {megapixels:.1f} MP)", large)):
            for stage, reference, ours in (("train", tutorial_train, ours_train), ("eval", tutorial_eval, ours_eval)):
                def run_reference(transform=reference, paths=paths) -> None:
                    for path in paths:
                        with Image.open(path) as image:  # the tutorial's dataset: RGB photos as opened
                            transform(image if image.mode == "RGB" else image.convert("RGB"))

                # MyDataSet's decoding (reduced for large JPEGs), then the same transform
                def run_ours(dataset=ours, paths=paths) -> None:
                    dataset.images_path, dataset.images_class = paths, [0] * len(paths)
                    for index in range(len(paths)):
                        dataset[(index, index)]

                seconds = alternate({"reference": (run_reference, False), "ours": (run_ours, True)}, rounds,
                                    torch.device("cpu"))
                rows.append(Row(f"data pipeline, {stage} transform, {label}", len(paths) / seconds["reference"],
                                len(paths) / seconds["ours"], "images/s per core"))
    torch.set_num_threads(int(os.environ["BENCHMARK_THREADS"]))
    return rows


def agreement_row(weights: str, photos: list[str], device: torch.device) -> tuple[str, float, int]:
    """Share of photos whose top-1 class is the same in bfloat16 as in float32."""
    float32 = Classifier.from_weights(weights, device=device, precision="float32", backend="torch")
    bfloat16 = Classifier(float32.backend.model, float32.class_names, device=device, precision="bfloat16")
    same = 0
    for start in range(0, len(photos), 32):
        batch = np.stack([float32.preprocess(p) for p in photos[start:start + 32]])
        same += int((float32.probabilities(batch).argmax(1) == bfloat16.probabilities(batch).argmax(1)).sum())
    return weights, same / len(photos), len(photos)


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or "CPU"
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return (f"{name}; {torch.get_num_threads()} threads; torch {torch.__version__}, torchvision "
            f"{torchvision.__version__}, Python {platform.python_version()}")


def format_rows(rows: list[Row]) -> str:
    lines = ["| measurement | torchvision / tutorial | this project | ratio |", "|---|---|---|---|"]
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.higher_is_better else f"{row.ratio:.2f} of the reference"
        lines.append(f"| {row.what} | {row.reference:.1f} {row.unit} | {row.ours:.1f} {row.unit} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--variant", default="b0", choices=list(M.VARIANTS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds per measurement")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--photos", default=str(FLOWER_SAMPLE),
                        help="folder of real photos in class sub-folders (default data/flower_sample, which ships "
                             "with the project)")
    parser.add_argument("--agreement-weights", default=None,
                        help="checkpoint for the bfloat16 agreement check (default: newest runs/*/best.pth)")
    parser.add_argument("--deploy-weights", default=None,
                        help="checkpoint for the deployment section (default: a 5-class B0 shaped like a run's)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ["BENCHMARK_THREADS"] = str(torch.get_num_threads())
    photos = sorted(glob.glob(os.path.join(args.photos, "*", "*.jpg")))

    print(f"# {' '.join(['python -m benchmarks.speed', *(argv if argv is not None else sys.argv[1:])])}")
    print(f"# {describe_machine(device)}; efficientnet_{args.variant}; median of {args.rounds} alternating rounds\n")
    rows: list[Row] = []
    if "inference" in args.sections:
        rows += inference_rows(args.variant, device, args.rounds)
    if "training" in args.sections:
        rows += training_rows(args.variant, device, args.rounds)
    if "memory" in args.sections:
        rows += memory_rows(args.variant, device, args.rounds)
    if "data" in args.sections:
        if photos:
            rows += data_rows(photos, args.rounds)
        else:
            print(f"(data pipeline skipped: no photos under {args.photos})")
    if rows:
        print(format_rows(rows))
    if "agreement" in args.sections:
        weights = weights_or_newest(args.agreement_weights)
        if weights and photos:
            name, share, count = agreement_row(weights, photos, device)
            print(f"\nbfloat16 vs float32 top-1 agreement with {name}: {share:.2%} of {count} photos")
        else:
            print("\n(bfloat16 agreement skipped: needs --agreement-weights and photos)")
    if "deployment" in args.sections:
        from benchmarks import deployment  # its own module: prediction without PyTorch, each contender in a process

        print("\n" + deployment.section(args.rounds, photos, args.deploy_weights))
    if "api" in args.sections:  # app.py's HTTP API: batching on and off, 1 and 8 clients (http_api.py)
        from benchmarks import http_api

        print("\n" + http_api.api_section(args.variant, photos, args.rounds, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
