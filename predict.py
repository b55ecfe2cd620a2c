"""Classify photos with a trained EfficientNet.

    python predict.py rose.jpg                          # newest runs/*/best.pth
    python predict.py photos/ "more/*.png" --top-k 3    # folders and globs, classified in batches
    python predict.py rose.jpg --weights model-29.pth --model b0 --class-indices class_indices.json
    python predict.py rose.jpg --save rose_pred.png --cam

From a notebook:

    from predict import classify
    classify(["rose.jpg", pil_image], "runs/20261128-101500-b0/best.pth")
    # -> [[("roses", 0.93), ("tulips", 0.04), ...], ...]
"""
import argparse
import glob
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from cli import UsageError, report
from images import is_image_name
# Re-exported for notebooks and scripts written against earlier versions of this file.
from inference import DEFAULT_RUNS_DIR, Classifier, Prediction, classify, newest_checkpoint  # noqa: F401
from variants import variant_name

PRECISIONS = ("float32", "bfloat16")


def expand_inputs(arguments: Sequence[str]) -> list[Prediction]:
    """Files, folders (searched recursively for images) and globs, in order; an argument that matches
    nothing comes back with its error already set."""
    items: list[Prediction] = []
    for argument in arguments:
        if os.path.isdir(argument):
            found = sorted(str(p) for p in Path(argument).rglob("*") if p.is_file() and is_image_name(p.name))
            items += [Prediction(path) for path in found] or [Prediction(argument, error="folder holds no images")]
        elif os.path.exists(argument):
            items.append(Prediction(argument))
        elif glob.has_magic(argument):
            found = sorted(p for p in glob.glob(argument, recursive=True) if os.path.isfile(p))
            items += [Prediction(path) for path in found] or [
                Prediction(argument, error="no file matches this pattern")]
        else:
            items.append(Prediction(argument, error="no such file"))
    return items


def figure_path(template: str | None, source: str, index: int | None, suffix: str = "") -> str:
    """--save out.png for one image; out_<position>_<image name>.png for each of several. A folder
    (existing, or written with a trailing slash) gets [<position>_]<image name>_pred.png inside it, a name
    that cannot be the photo itself even when the folder is the photos' own."""
    if not template:
        return ""
    position = f"{index:03d}_" if index is not None else ""
    if is_folder(template):
        return str(Path(template) / f"{position}{Path(source).stem}{suffix or '_pred'}.png")
    target = Path(template)
    stem = target.stem + (f"_{position}{Path(source).stem}" if index is not None else "") + suffix
    return str(target.with_name(stem + (target.suffix or ".png")))


def is_folder(template: str) -> bool:
    return template.endswith(("/", os.sep)) or os.path.isdir(template)


def check_figure_name(template: str | None) -> None:
    """Refuse a --save name matplotlib cannot write, before any work is done."""
    if not template or is_folder(template):
        return
    from matplotlib.backend_bases import FigureCanvasBase

    extension = Path(template).suffix.lower().lstrip(".")
    supported = FigureCanvasBase.get_supported_filetypes()
    if extension and extension not in supported:
        raise UsageError(f"--save {template}: cannot write .{extension} figures; use one of "
                           f"{', '.join('.' + e for e in sorted(supported))}")


def write_figures(classifier: Classifier, result: Prediction, args: argparse.Namespace, position: int | None,
                  inputs: set[Path]) -> None:
    """The --cam and --save/--show figures of one classified image; never over one of the input photos."""
    def target(path: str) -> str:
        if path and Path(path).resolve() in inputs:
            raise UsageError(f"its figure would overwrite the photo {path}; choose another --save")
        return path

    import figures

    view = None
    title = Path(result.source).name
    if args.cam:
        view, cam, _ = classifier.grad_cam(result.source)
        cam_path = figure_path(args.save or os.path.join(args.cam_dir, ""), result.source, position, "_cam")
        figures.prediction_figure(view, title, result.ranked, target(cam_path), cam=cam)
    if args.save or args.show:
        if view is None:
            view = classifier.preprocessing.load_view(result.source)
        figures.prediction_figure(view, title, result.ranked, target(figure_path(args.save, result.source, position)),
                                  show=args.show)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("images", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    add("--weights", default=None,
        help=f"checkpoint or state_dict to use (default: the newest {DEFAULT_RUNS_DIR}/*/best.pth); 'imagenet' "
             f"for torchvision's ImageNet weights")
    add("--model", default="b0", help="variant of a bare state_dict (default b0); checkpoints of this project "
                                      "record their own")
    add("--class-indices", default=None,
        help="class names for a bare state_dict (default: class_indices.json beside the weights, else here)")
    add("--top-k", type=int, default=None, help="classes to show per image (default min(5, classes))")
    add("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    add("--device", default=None, help="cuda, cpu, ... (default: CUDA when available)")
    add("--precision", choices=PRECISIONS, default="float32",
        help="bfloat16 is faster on CPUs with bfloat16 support (see BENCHMARKS.md); default float32")
    add("--json", action="store_true", help="print results as JSON")
    add("--save", default=None, metavar="OUT.png",
        help="write the photo with its top-k bar chart (OUT_<n>_<image>.png for several images; a FOLDER/ "
             "gets one <image>_pred.png per image)")
    add("--show", action="store_true", help="open the figure in a window, as the tutorial did")
    add("--cam", action="store_true", help="also save a Grad-CAM heat map of where the network looked")
    add("--cam-dir", default="gradcam", help="folder for Grad-CAM images without --save (default gradcam/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top_k is not None and args.top_k < 1 or args.batch_size < 1:
        return report("--top-k and --batch-size must be at least 1")
    try:
        check_figure_name(args.save)
        classifier = Classifier.from_weights(args.weights, variant_name(args.model), args.class_indices,
                                             args.device, args.precision)
    except (UsageError, ValueError, RuntimeError) as error:  # WeightsError is a ValueError
        return report(str(error))
    if classifier.backend.name == "torch":
        from runtime import keep_freed_memory_for_reuse

        keep_freed_memory_for_reuse()  # faster steps on Linux; see its docstring

    results = expand_inputs(args.images)
    readable = [r for r in results if r.error is None]
    for item, prediction in zip(readable, classifier.predict([r.source for r in readable], args.top_k,
                                                             args.batch_size)):
        item.ranked, item.error = prediction.ranked, prediction.error
    if args.save or args.cam or args.show:
        several = len(results) > 1
        inputs = {Path(r.source).resolve() for r in results}
        for index, result in enumerate(results):
            if result.error is None:
                try:
                    write_figures(classifier, result, args, index if several else None, inputs)
                except UsageError as error:
                    result.error = str(error)
                except OSError as error:  # an unwritable --save / --cam-dir: report it, keep the results
                    result.error = f"no figure: {error}"

    if args.json:
        print(json.dumps([{"image": r.source, "error": r.error,
                           "predictions": [{"class": c, "probability": round(p, 6)} for c, p in r.ranked]}
                          for r in results], indent=2))
    else:
        for result in results:
            if not result.ranked:
                continue
            print(result.source)
            for name, probability in result.ranked:
                print(f"  {name:<24} {probability:.4f}")
    for result in results:
        if result.error:
            print(f"error: {result.source}: {result.error}", file=sys.stderr)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
