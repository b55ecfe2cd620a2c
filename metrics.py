"""Scores from a confusion matrix (rows: true class, columns: predicted class)."""
from typing import Sequence

import numpy as np


def precision_recall(confusion: "np.ndarray | Sequence") -> tuple[list[float], list[float]]:
    """Per-class precision and recall (0 where a class was never predicted, or never present)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diag(confusion)
    precision = true_positives / np.maximum(confusion.sum(0), 1)
    recall = true_positives / np.maximum(confusion.sum(1), 1)
    return precision.tolist(), recall.tolist()


def class_table(classes: Sequence[str], confusion: "np.ndarray | Sequence") -> str:
    """Per-class precision and recall as a text table."""
    precision, recall = precision_recall(confusion)
    counts = np.asarray(confusion).sum(1).tolist()
    width = max(10, *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  precision  recall  images"]
    for name, p, r, count in zip(classes, precision, recall, counts):
        lines.append(f"{name:<{width}}  {p:9.3f}  {r:6.3f}  {int(count):6d}")
    return "\n".join(lines)
