"""Figures, written as image files: learning curves, confusion matrix, class distribution, and a photo with
its top classes (and Grad-CAM overlay).

Figures that only go to a file are matplotlib Figure objects without pyplot: no global backend is chosen
(so a later --show can still open a window) and nothing is left open when a write fails. A figure saved as
PNG or JPEG carries a mark in its header (a text chunk, a JPEG comment): PREDICTION_MARK for a prediction
figure, so that predict.py can replace its own earlier figures without asking, refuse to replace anything
else, and pass over its figures when it walks a folder of photos; FIGURE_MARK for every other one, so that
evaluate.py knows its confusion matrix from someone else's picture.
"""
import io
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def _pyplot() -> Any:
    import matplotlib.pyplot as plt  # picks a backend for the whole process, a window one where it can

    return plt


def new_figure(figsize: tuple[float, float], show: bool = False) -> Any:
    """A matplotlib figure (matplotlib is imported on first use: it costs half a second). Only one that is to
    be shown goes through pyplot."""
    if show:
        return _pyplot().figure(figsize=figsize)
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


NON_INTERACTIVE_BACKENDS = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


def why_no_window() -> str | None:
    """Why a figure window cannot open here, or None when one can. Without DISPLAY or WAYLAND_DISPLAY (on
    Linux and other X11/Wayland systems), or with one that does not answer, matplotlib falls back to a
    backend that draws nowhere and says little; this asks it which backend it settled on."""
    if sys.platform not in ("darwin", "win32") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display here (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    backend = _pyplot().get_backend()
    if backend.lower() in NON_INTERACTIVE_BACKENDS:
        return f"matplotlib found no window system it can use (it chose the {backend} backend)"
    return None


PREDICTION_MARK = "predict.py figure (efficientnet-tutorial)"
FIGURE_MARK = "efficientnet-tutorial figure"  # every other figure: a confusion matrix, curves, ...
MARKED_FORMATS = {"png": b"\x89PNG", "jpg": b"\xff\xd8", "jpeg": b"\xff\xd8"}  # suffix: the file's first bytes


def is_prediction_figure(path: str | os.PathLike) -> bool:
    """Whether `path` is a PNG or JPEG that predict.py wrote: PREDICTION_MARK within its first 4 KiB, where
    the PNG text chunk and the JPEG comment go (cheap enough to ask of every photo in a folder)."""
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
    except (OSError, ValueError):
        return False
    return head.startswith(tuple(MARKED_FORMATS.values())) and PREDICTION_MARK.encode() in head


def _write_figure(figure: Any, path: str | os.PathLike, mark: str = FIGURE_MARK, **options: Any) -> None:
    """Render to memory first, so that a full disk is reported with the space the file needs, then write it
    atomically: an interrupted run leaves no half figure, and a name that is a link to another file is
    replaced, never written through. The format follows the suffix (PNG without one); a PNG or JPEG carries
    `mark` in its header, so that the programs know their own files (output_paths.py)."""
    file_format = Path(path).suffix.lower().lstrip(".") or "png"
    if file_format == "png":
        options["metadata"] = {"Comment": mark}
    elif file_format in MARKED_FORMATS:
        options["pil_kwargs"] = {"comment": mark.encode()}
    from effnet.atomic_files import (
        write_bytes,  # imported here: predict.py without figures starts without it (and shutil)
    )

    buffer = io.BytesIO()
    figure.savefig(buffer, format=file_format, dpi=100, **options)
    write_bytes(path, buffer.getvalue())


def _save_figure(figure: Any, path: str | os.PathLike) -> None:
    _write_figure(figure, path, bbox_inches="tight")


def plot_curves(history: Sequence[Mapping[str, float]], path: str | os.PathLike, chance: float | None = None) -> None:
    """Loss, accuracy (and validation macro F1) and learning rate per epoch; `chance`: the accuracy of guessing,
    drawn as a line on the accuracy plot."""
    _save_figure(curves_figure(history, chance), path)


def curves_figure(history: Sequence[Mapping[str, float]], chance: float | None = None) -> Any:
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    figure = new_figure((15, 4))
    axes = figure.subplots(1, 3)
    for axis, (title, keys) in zip(axes, (("loss", ("train_loss", "val_loss")),
                                          ("accuracy and macro F1", ("train_acc", "val_acc", "val_macro_f1")),
                                          ("learning rate", ("lr",)))):
        plotted = []
        for key in keys:
            if all(key in row for row in history):  # runs started by older versions have no macro F1
                plotted += [row[key] for row in history]
                axis.plot(epochs, [row[key] for row in history], marker="o", label=key)
        if title == "loss" and _spans_decades(plotted):  # one early spike would flatten every other epoch
            axis.set_yscale("log")
        if title.startswith("accuracy") and chance is not None:
            axis.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.3g})")
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs: no tick at 1.5
        axis.legend()
        axis.grid(alpha=0.3)
    return figure


def _spans_decades(values: Sequence[float], decades: float = 2.0) -> bool:
    """Whether the finite, positive `values` range over more than `decades` powers of ten."""
    positive = [v for v in values if np.isfinite(v) and v > 0]
    return bool(positive) and max(positive) / min(positive) > 10 ** decades


def plot_confusion_matrix(confusion: "np.ndarray | Sequence", classes: Sequence[str], path: str | os.PathLike,
                          title: str = "validation confusion matrix") -> None:
    size = max(5.0, 0.6 * len(classes) + 2)
    figure = new_figure((size, size))
    axis = figure.subplots()
    confusion = np.asarray(confusion)
    image = axis.imshow(confusion, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    threshold = confusion.max().item() / 2
    if len(classes) <= 30:
        for row in range(len(classes)):
            for column in range(len(classes)):
                value = int(confusion[row, column])
                axis.text(column, row, value, ha="center", va="center",
                          color="white" if value > threshold else "black")
    _save_figure(figure, path)


def plot_class_distribution(classes: Sequence[str], train_counts: Sequence[int], val_counts: Sequence[int],
                            path: str | os.PathLike, test_counts: Sequence[int] | None = None) -> None:
    """class_distribution_figure, written to `path`."""
    _save_figure(class_distribution_figure(classes, train_counts, val_counts, test_counts), path)


def class_distribution_figure(classes: Sequence[str], train_counts: Sequence[int], val_counts: Sequence[int],
                              test_counts: Sequence[int] | None = None, show: bool = False) -> Any:
    """Images per class, stacked: training, validation (and test, when there is a test set)."""
    figure = new_figure((max(6.0, 0.5 * len(classes) + 2), 4), show)
    axis = figure.subplots()
    positions = range(len(classes))
    bottom = np.zeros(len(classes))
    for label, counts in (("train", train_counts), ("validation", val_counts), ("test", test_counts)):
        if counts:
            axis.bar(positions, counts, bottom=bottom, label=label)
            bottom += np.asarray(counts)
    for x, total in enumerate(bottom):
        axis.text(x, total, str(int(total)), ha="center", va="bottom")
    axis.margins(y=0.08)  # room above the tallest bar for its total
    axis.set_xticks(list(positions), classes, rotation=45, ha="right")
    axis.set_ylabel("images")
    axis.set_title("images per class")
    axis.legend()
    return figure


def batch_figure(images: Sequence[np.ndarray], titles: Sequence[str], show: bool = False) -> Any:
    """Photos side by side, each (H, W, 3) uint8 with its title under it: a look at what a loader gives."""
    figure = new_figure((2.5 * len(images), 2.9), show)
    for position, (pixels, title) in enumerate(zip(images, titles), start=1):
        axis = figure.add_subplot(1, len(images), position)
        axis.imshow(pixels)
        axis.set_xlabel(title)
        axis.set_xticks([])
        axis.set_yticks([])
    return figure


def show() -> None:
    """Show the figures made with show=True: in a window, or under the cell of a notebook."""
    _pyplot().show()


def save_figure(figure: Any, path: str | os.PathLike) -> None:
    """Write a figure of this module to `path` (PNG, JPEG, SVG, PDF by the suffix), marked as ours."""
    _save_figure(figure, path)


def prediction_figure(view: Image.Image, title: str, ranked: Sequence[tuple[str, float]], path: str,
                      show: bool = False, cam: "np.ndarray | None" = None) -> None:
    """The photo beside a bar chart of its top-k classes (and the Grad-CAM overlay when given); written to
    `path` when it is not empty (marked as predict.py's in a PNG or JPEG), shown in a window when `show`."""
    panels = 3 if cam is not None else 2
    figure = new_figure((4.5 * panels, 4), show)
    axes = figure.subplots(1, panels)
    axes[0].imshow(view)
    axes[0].set_title(title)
    if cam is not None:
        axes[1].imshow(cam_overlay(view, cam))
        axes[1].set_title(f"Grad-CAM: {ranked[0][0]}")
    for axis in axes[: panels - 1]:
        axis.axis("off")
    axes[-1].barh([name for name, _ in ranked][::-1], [p for _, p in ranked][::-1])
    axes[-1].set_xlim(0, 1)
    axes[-1].set_xlabel("probability")
    figure.tight_layout()
    plt = _pyplot() if show else None
    try:
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            _write_figure(figure, path, PREDICTION_MARK)
        if plt is not None:
            plt.show()
    finally:
        if plt is not None:  # pyplot keeps a shown figure until it is closed; the others go like any object
            plt.close(figure)


def cam_overlay(view: Image.Image, cam: "np.ndarray", opacity: float = 0.45) -> Image.Image:
    """The photo with its Grad-CAM heat map (values in [0, 1], the photo's size) blended over it in jet colours:
    red where the network looked most."""
    from matplotlib import colormaps  # the colour maps alone, without pyplot

    heat = colormaps["jet"](np.clip(np.asarray(cam, dtype=np.float32), 0, 1))[..., :3]
    photo = np.asarray(view.convert("RGB"), dtype=np.float32) / 255
    blended = (1 - opacity) * photo + opacity * heat
    return Image.fromarray(np.round(blended * 255).astype(np.uint8), "RGB")
