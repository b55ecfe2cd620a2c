"""Scores from a confusion matrix (rows: true class, columns: predicted class).

Precision of a class is the share of its predictions that were right, recall the share of its images that
were found, F1 their harmonic mean; each is 0 where it is undefined (a class never predicted, or absent).
Macro averages weigh every class alike, weighted averages by the class's number of images (support).
"""
from collections.abc import Sequence
from typing import Any

import numpy as np


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def per_class(confusion: "np.ndarray | Sequence") -> dict[str, np.ndarray]:
    """precision, recall, f1 and support of every class, as arrays in class order."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diag(confusion)
    precision = _ratio(true_positives, confusion.sum(0))
    recall = _ratio(true_positives, confusion.sum(1))
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": confusion.sum(1)}


def precision_recall(confusion: "np.ndarray | Sequence") -> tuple[list[float], list[float]]:
    """Per-class precision and recall."""
    scores = per_class(confusion)
    return scores["precision"].tolist(), scores["recall"].tolist()


def macro_f1(confusion: "np.ndarray | Sequence") -> float:
    """Mean F1 over the classes that have images or predictions."""
    confusion = np.asarray(confusion)
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    return float(per_class(confusion)["f1"][present].mean()) if present.any() else 0.0


def summary(confusion: "np.ndarray | Sequence") -> dict[str, float]:
    """Accuracy, and macro and weighted precision, recall and F1."""
    confusion = np.asarray(confusion, dtype=np.float64)
    scores, total = per_class(confusion), confusion.sum()
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    result = {"accuracy": float(np.trace(confusion) / total) if total else 0.0, "images": int(total)}
    for name in ("precision", "recall", "f1"):
        values = scores[name]
        result[f"macro_{name}"] = float(values[present].mean()) if present.any() else 0.0
        result[f"weighted_{name}"] = float((values * scores["support"]).sum() / total) if total else 0.0
    return result


TABLE_COLUMNS = ("class", "precision", "recall", "f1", "support")  # per_class.csv's header


def class_rows(classes: Sequence[str], confusion: "np.ndarray | Sequence") -> list[dict[str, Any]]:
    """One dict per class (TABLE_COLUMNS), as per_class.csv and JSON reports hold."""
    scores = per_class(confusion)
    return [dict(zip(TABLE_COLUMNS, (name, *(round(float(scores[key][i]), 6) for key in TABLE_COLUMNS[1:4]),
                                     int(scores["support"][i])))) for i, name in enumerate(classes)]


def table_rows(classes: Sequence[str], confusion: "np.ndarray | Sequence") -> list[dict[str, Any]]:
    """class_rows, then a "macro average" and a "weighted average" row (support: all images), as per_class.csv
    holds them."""
    totals = summary(confusion)
    averages = [{"class": f"{kind} average", **{name: round(totals[f"{kind}_{name}"], 6)
                                                for name in ("precision", "recall", "f1")},
                 "support": totals["images"]} for kind in ("macro", "weighted")]
    return class_rows(classes, confusion) + averages


def class_table(classes: Sequence[str], confusion: "np.ndarray | Sequence") -> str:
    """Per-class precision, recall and F1 as a text table, with macro and weighted averages."""
    width = max(16, *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  precision  recall      f1  images"]
    for row in table_rows(classes, confusion):
        lines.append(f"{row['class']:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:6.3f}"
                     f"  {row['support']:6d}")
    return "\n".join(lines)
