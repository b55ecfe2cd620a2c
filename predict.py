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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from PIL import Image
from torch import nn

from model import CHECKPOINT_FORMAT, VARIANTS, EfficientNet, WeightsError, create_model, fuse_batchnorm, \
    load_weights, model_from_checkpoint, read_weights_file, variant_name
import utils
from my_dataset import EvalTransform, is_image_name, open_image, to_normalized_tensor

DEFAULT_RUNS_DIR = "runs"
PRECISIONS = ("float32", "bfloat16")


class PredictError(Exception):
    """Bad weights or arguments: printed on one line, exit status 2."""


def newest_checkpoint(runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR) -> Path:
    """best.pth of the most recently written run under `runs_dir`."""
    candidates = sorted(Path(runs_dir).glob("*/best.pth"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise PredictError(f"no trained checkpoint found under {runs_dir}/*/best.pth; train one with "
                           f"'python train.py' or pass --weights PATH")
    return candidates[-1]


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a class_indices.json ({"0": "daisy", ...}), in index order."""
    try:
        mapping = json.loads(Path(path).read_text())
        names = [str(mapping[str(i)]) for i in range(len(mapping))]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise PredictError(f"{path} is not a readable class_indices.json mapping '0', '1', ... to names "
                           f"({type(error).__name__}: {error})") from None
    return names


def imagenet_class_names() -> list[str]:
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.DEFAULT.meta["categories"])


def _find_class_indices(weights: Path | None, explicit: str | None, num_classes: int | None) -> tuple[list[str], str]:
    """Class names for a bare state_dict: --class-indices, else the first class_indices.json (beside the
    weights, then here) whose count fits the weights, else ImageNet's for a 1000-class model."""
    if explicit:
        return read_class_names(explicit), explicit
    passed_over = []
    for candidate in ([weights.parent / "class_indices.json"] if weights else []) + [Path("class_indices.json")]:
        if candidate.is_file():
            names = read_class_names(candidate)
            if num_classes is None or len(names) == num_classes:
                return names, str(candidate)
            passed_over.append(f"{candidate} has {len(names)}")
    if num_classes == 1000:
        return imagenet_class_names(), "torchvision's ImageNet categories"
    found = f" ({'; '.join(passed_over)})" if passed_over else ""
    raise PredictError(f"no class_indices.json with the weights' {num_classes or 'unknown number of'} classes "
                       f"beside them or in this folder{found}; pass --class-indices FILE")


def _classifier_rows(state: Any) -> int | None:
    """How many classes a (possibly wrapped) state_dict's classifier has, if it can be seen."""
    if isinstance(state, dict):
        state = next((state[k] for k in ("model", "state_dict") if isinstance(state.get(k), dict)), state)
        for key, value in state.items():
            if key.endswith("classifier.1.weight") and hasattr(value, "shape"):
                return int(value.shape[0])
    return None


@dataclass
class Prediction:
    """Top-k (class name, probability) pairs for one image, or the reason it could not be read."""

    source: str
    ranked: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


class Classifier:
    """A model, its class names and its evaluation preprocessing, ready for batched inference.

    Inference runs on a copy with BatchNorm folded into the convolutions, in channels_last layout, under
    inference_mode; `precision="bfloat16"` adds bfloat16 autocast. Grad-CAM uses the unfolded float32 model.
    """

    def __init__(self, model: EfficientNet, class_names: Sequence[str], image: dict[str, Any] | None = None,
                 device: str | torch.device | None = None, precision: str = "float32") -> None:
        if len(class_names) != model.num_classes:
            raise PredictError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
        if precision not in PRECISIONS:
            raise PredictError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        spec = VARIANTS[model.variant or "b0"]
        image = image or {"eval_resize": spec.eval_resize, "eval_crop": spec.eval_crop,
                          "interpolation": spec.interpolation}
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.eval().to(self.device)
        self.fast_model = fuse_batchnorm(self.model).to(memory_format=torch.channels_last)
        self.class_names = list(class_names)
        self.transform = EvalTransform(image["eval_resize"], image["eval_crop"], image["interpolation"])
        self.precision = precision

    @classmethod
    def from_weights(cls, weights: str | os.PathLike | None = None, model_name: str = "b0",
                     class_indices: str | None = None, device: str | torch.device | None = None,
                     precision: str = "float32") -> "Classifier":
        """From this project's checkpoint (everything inside it), or a bare state_dict plus class names.

        `weights` None means the newest runs/*/best.pth; "imagenet" means torchvision's ImageNet weights.
        """
        if weights is not None and str(weights).lower() == "imagenet":
            model = create_model(model_name, pretrained=True)
            return cls(model, imagenet_class_names(), device=device, precision=precision)
        path = Path(weights) if weights is not None else newest_checkpoint()
        loaded = read_weights_file(path)
        if isinstance(loaded, dict) and loaded.get("format") == CHECKPOINT_FORMAT:
            model = model_from_checkpoint(loaded)
            names = loaded.get("class_names") or [str(i) for i in range(model.num_classes)]
            return cls(model, names, loaded.get("image"), device, precision)
        names, names_origin = _find_class_indices(path, class_indices, _classifier_rows(loaded))
        model = create_model(model_name, num_classes=len(names))
        try:
            load_weights(model, loaded, allow_new_classifier=False, verbose=False)
        except WeightsError as error:
            raise PredictError(f"{path}: {error} (class names: {len(names)} from {names_origin})") from None
        return cls(model, names, device=device, precision=precision)

    def preprocess(self, image: str | os.PathLike | Image.Image) -> torch.Tensor:
        """(3, crop, crop) normalised tensor, exactly as validation during training prepares it."""
        if isinstance(image, Image.Image):
            return self.transform(image.copy())
        with open_image(os.fspath(image)) as opened:
            return self.transform(opened)

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) preprocessed images -> (N, classes) float32 probabilities."""
        batch = batch.to(self.device, memory_format=torch.channels_last)
        if self.precision == "bfloat16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                logits = self.fast_model(batch)
        else:
            logits = self.fast_model(batch)
        return logits.float().softmax(dim=1).cpu()

    def rank(self, probabilities: torch.Tensor, top_k: int | None = None) -> list[tuple[str, float]]:
        k = min(top_k or 5, len(self.class_names))
        values, indices = probabilities.topk(k)
        return [(self.class_names[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())]

    def predict(self, images: Iterable[str | os.PathLike | Image.Image], top_k: int | None = None,
                batch_size: int = 32) -> list[Prediction]:
        """Classify many images in batches; an unreadable one gets an error and the rest go on."""
        results: list[Prediction] = []
        pending: list[tuple[Prediction, torch.Tensor]] = []

        def flush() -> None:
            if pending:
                probabilities = self.probabilities(torch.stack([tensor for _, tensor in pending]))
                for (prediction, _), row in zip(pending, probabilities):
                    prediction.ranked = self.rank(row, top_k)
                pending.clear()

        for image in images:
            source = "<PIL image>" if isinstance(image, Image.Image) else os.fspath(image)
            prediction = Prediction(source)
            results.append(prediction)
            try:
                pending.append((prediction, self.preprocess(image)))
            except Exception as error:  # one bad file must not stop the others
                prediction.error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            if len(pending) >= batch_size:
                flush()
        flush()
        return results

    def grad_cam(self, image: str | os.PathLike | Image.Image) -> tuple[Image.Image, torch.Tensor, int]:
        """Grad-CAM of the top class: (the network's view of the photo, heat map in [0, 1] at that size, class)."""
        if isinstance(image, Image.Image):
            view = self.transform.view(image.copy())
        else:
            with open_image(os.fspath(image)) as opened:
                view = self.transform.view(opened)
        x = to_normalized_tensor(view).unsqueeze(0).to(self.device)
        with torch.enable_grad():
            features = self.model.forward_features(x)  # (1, C, h, w)
            logits = self.model.forward_head(features)
            target = int(logits.argmax(1))
            gradients, = torch.autograd.grad(logits[0, target], features)
        weights = gradients.mean(dim=(2, 3), keepdim=True)  # how much each channel raises the class score
        cam = torch.relu((weights * features).sum(1, keepdim=True)).detach()
        cam = nn.functional.interpolate(cam, size=view.size[::-1], mode="bilinear", align_corners=False)[0, 0]
        cam = cam / cam.max() if cam.max() > 0 else cam
        return view, cam.cpu(), target


def classify(images: Sequence[str | os.PathLike | Image.Image] | str | os.PathLike | Image.Image,
             model: "Classifier | EfficientNet | str | os.PathLike | None" = None, top_k: int | None = None,
             class_names: Sequence[str] | None = None) -> list[list[tuple[str, float]]]:
    """Ranked (class, probability) lists for photos (paths or PIL images) from a model or checkpoint.

    `model` is a Classifier, an EfficientNet (with `class_names`, else classes are named "0", "1", ...), a
    checkpoint path, or None for the newest runs/*/best.pth. Raises ValueError for an unreadable image.
    """
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    if isinstance(model, Classifier):
        classifier = model
    elif isinstance(model, EfficientNet):
        classifier = Classifier(model, class_names or [str(i) for i in range(model.num_classes)],
                                device=next(model.parameters()).device)
    else:
        classifier = Classifier.from_weights(model)
    results = classifier.predict(images, top_k)
    failed = [r for r in results if r.error]
    if failed:
        raise ValueError(f"cannot read {failed[0].source}: {failed[0].error}")
    return [r.ranked for r in results]


# ---------------------------------------------------------------------------------------------------------------
# Command line


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


def save_figure(view: Image.Image, prediction: Prediction, path: str, show: bool,
                cam: torch.Tensor | None = None) -> None:
    """The photo beside a bar chart of its top-k classes (and the Grad-CAM overlay when given)."""
    import matplotlib.pyplot as plt

    panels = 3 if cam is not None else 2
    figure, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 4))
    axes[0].imshow(view)
    axes[0].set_title(Path(prediction.source).name)
    if cam is not None:
        axes[1].imshow(view)
        axes[1].imshow(cam.numpy(), cmap="jet", alpha=0.45)
        axes[1].set_title(f"Grad-CAM: {prediction.ranked[0][0]}")
    for axis in axes[: panels - 1]:
        axis.axis("off")
    names = [name for name, _ in prediction.ranked][::-1]
    axes[-1].barh(names, [p for _, p in prediction.ranked][::-1])
    axes[-1].set_xlim(0, 1)
    axes[-1].set_xlabel("probability")
    figure.tight_layout()
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    if show:
        plt.show()
    plt.close(figure)


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
    from matplotlib.backend_bases import FigureCanvasBase

    if not template or is_folder(template):
        return
    extension = Path(template).suffix.lower().lstrip(".")
    supported = FigureCanvasBase.get_supported_filetypes()
    if extension and extension not in supported:
        raise PredictError(f"--save {template}: cannot write .{extension} figures; use one of "
                           f"{', '.join('.' + e for e in sorted(supported))}")


def write_figures(classifier: Classifier, result: Prediction, args: argparse.Namespace, position: int | None,
                  inputs: set[Path]) -> None:
    """The --cam and --save/--show figures of one classified image; never over one of the input photos."""
    def target(path: str) -> str:
        if path and Path(path).resolve() in inputs:
            raise PredictError(f"its figure would overwrite the photo {path}; choose another --save")
        return path

    view = None
    if args.cam:
        view, cam, _ = classifier.grad_cam(result.source)
        cam_path = figure_path(args.save or os.path.join(args.cam_dir, ""), result.source, position, "_cam")
        save_figure(view, result, target(cam_path), show=False, cam=cam)
    if args.save or args.show:
        if view is None:
            with open_image(result.source) as opened:
                view = classifier.transform.view(opened)
        save_figure(view, result, target(figure_path(args.save, result.source, position)), args.show)


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
    utils.keep_freed_memory_for_reuse()  # faster steps on Linux; see its docstring
    if args.top_k is not None and args.top_k < 1 or args.batch_size < 1:
        print("error: --top-k and --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        check_figure_name(args.save)
        classifier = Classifier.from_weights(args.weights, variant_name(args.model), args.class_indices,
                                             args.device, args.precision)
    except (PredictError, WeightsError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    results = expand_inputs(args.images)
    readable = [r for r in results if r.error is None]
    for item, prediction in zip(readable, classifier.predict([r.source for r in readable], args.top_k,
                                                             args.batch_size)):
        item.ranked, item.error = prediction.ranked, prediction.error
    if args.save or args.cam or args.show:
        import matplotlib

        if not args.show:
            matplotlib.use("Agg")  # files only: no window, no display needed
        several = len(results) > 1
        inputs = {Path(r.source).resolve() for r in results}
        for index, result in enumerate(results):
            if result.error is None:
                try:
                    write_figures(classifier, result, args, index if several else None, inputs)
                except PredictError as error:
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
