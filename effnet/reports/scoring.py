"""Scoring labelled images with a Classifier: each image's result, the confusion matrix, accuracy and top-k
accuracy, and the files that hold them (predictions.csv, per_class.csv, confusion_matrix.png).

evaluate.py scores a class-per-folder tree with it; train.py a pre-split dataset's test/ images and, for the
run report, the validation images. No PyTorch here: the classifier's backend decides what runs the model.
"""
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from effnet.atomic_files import write_csv
from effnet.output_paths import OutputKind, header_matches, marked_at_start
from effnet.reports import metrics
from effnet.reports.figures import FIGURE_MARK

DEFAULT_TOP_K = 5
PREDICTION_COLUMNS = ("path", "true", "predicted", "confidence", "correct", "true_rank")
# The files write_files writes, and how each is known for ours when it is there already (output_paths.py).
RESULT_FILES = {
    "predictions.csv": OutputKind("a predictions.csv of evaluate.py", header_matches(",".join(PREDICTION_COLUMNS))),
    "per_class.csv": OutputKind("a per_class.csv of this project", header_matches(",".join(metrics.TABLE_COLUMNS))),
    "confusion_matrix.png": OutputKind("a figure of this project", marked_at_start(FIGURE_MARK), picture=True),
}


@dataclass
class ImageResult:
    """What the model made of one labelled image."""

    path: str
    true: int  # class indices into the model's class names
    predicted: int
    confidence: float  # the probability of the predicted class
    true_rank: int  # place of the true class in the ranking, 1 when it is the prediction
    true_probability: float = float("nan")  # the probability the model gives the true class

    @property
    def correct(self) -> bool:
        return self.predicted == self.true


@dataclass
class Evaluation:
    """The results of a set of labelled images, and the images that could not be read."""

    class_names: list[str]  # the model's classes
    results: list[ImageResult] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def confusion(self) -> np.ndarray:
        """Rows: true class, columns: predicted class, over all the model's classes."""
        size = len(self.class_names)
        confusion = np.zeros((size, size), dtype=np.int64)
        for result in self.results:
            confusion[result.true, result.predicted] += 1
        return confusion

    def shown_classes(self, confusion: np.ndarray | None = None) -> list[int]:
        """The classes that have images or were predicted: the rows of tables and figures (all the others
        are zero everywhere, and a 1000-class model on a 5-class test set needs 5 or so rows, not 1000)."""
        confusion = self.confusion() if confusion is None else confusion
        return [i for i in range(len(self.class_names)) if confusion[i].sum() or confusion[:, i].sum()]

    def shown_confusion(self) -> tuple[list[str], np.ndarray]:
        """(class names, confusion matrix) restricted to shown_classes; its scores equal the full matrix's."""
        confusion = self.confusion()
        shown = self.shown_classes(confusion)
        return [self.class_names[i] for i in shown], confusion[np.ix_(shown, shown)]

    def top_k_accuracy(self, k: int) -> float:
        return sum(r.true_rank <= k for r in self.results) / len(self.results) if self.results else 0.0

    def misclassified(self) -> list[ImageResult]:
        """The wrongly classified images, the most confidently wrong first."""
        return sorted((r for r in self.results if not r.correct), key=lambda r: -r.confidence)

    def scores(self, top_k: int) -> dict[str, Any]:
        """Everything evaluate.py's --json holds, but for the images' paths (predictions.csv has those). Top-k
        accuracy only when k is below the model's number of classes: with k classes or more it is always 1."""
        names, confusion = self.shown_confusion()
        top = {"top_k": top_k, "top_k_accuracy": self.top_k_accuracy(top_k)} if top_k < len(self.class_names) else {}
        return {**metrics.summary(confusion), **top,
                "per_class": metrics.table_rows(names, confusion), "classes": names,
                "confusion_matrix": confusion.tolist(),
                "unreadable": [{"path": path, "error": error} for path, error in self.unreadable]}

    def prediction_rows(self) -> list[dict[str, Any]]:
        """One row per image for predictions.csv."""
        names = self.class_names
        return [dict(zip(PREDICTION_COLUMNS, (r.path, names[r.true], names[r.predicted], round(r.confidence, 6),
                                              int(r.correct), r.true_rank))) for r in self.results]


def evaluate_images(classifier: Any, paths: Sequence[str], labels: Sequence[int],
                    batch_size: int = 32) -> Evaluation:
    """Classify `paths` (labels: indices into classifier.class_names) in batches; unreadable images are
    collected, not fatal."""
    evaluation = Evaluation(list(classifier.class_names))
    for scored, label in zip(classifier.scores(paths, batch_size), labels):
        if scored.error is not None:
            evaluation.unreadable.append((scored.source, scored.error))
            continue
        order = np.argsort(-scored.probabilities, kind="stable")  # the ranking Classifier.rank shows
        evaluation.results.append(ImageResult(scored.source, int(label), int(order[0]),
                                              float(scored.probabilities[order[0]]),
                                              int(np.flatnonzero(order == label)[0]) + 1,
                                              float(scored.probabilities[label])))
    return evaluation


def write_files(evaluation: Evaluation, folder: str | os.PathLike, title: str) -> list[Path]:
    """predictions.csv, per_class.csv and confusion_matrix.png (titled `title`) in `folder`, created if needed."""
    from effnet.reports import figures  # matplotlib: only when figures are written

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names, confusion = evaluation.shown_confusion()
    written = [folder / name for name in RESULT_FILES]
    write_csv(written[0], evaluation.prediction_rows())
    write_csv(written[1], metrics.table_rows(names, confusion))
    figures.plot_confusion_matrix(confusion, names, written[2], title=title)
    return written


def describe(evaluation: Evaluation, top_k: int) -> str:
    """Accuracy, top-k accuracy (when k is below the number of classes) and the per-class table, as the
    programs print them."""
    scores = evaluation.scores(top_k)
    names, confusion = evaluation.shown_confusion()
    top = f"top-{scores['top_k']} accuracy {scores['top_k_accuracy']:.4f}, " if "top_k" in scores else ""
    return (f"accuracy {scores['accuracy']:.4f}, {top}"
            f"macro F1 {scores['macro_f1']:.4f} on {scores['images']} images; per class:\n"
            f"{metrics.class_table(names, confusion)}")
