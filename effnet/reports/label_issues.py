"""Possible label errors: the images whose given class the trained model finds least likely.

An image is listed when the model is confident that it belongs to another class, confident meaning here: the
probability of that other class is at least the average probability the model gives that class on the images
labelled with it (the per-class threshold of "confident learning", Northcutt et al. 2021). The list is ranked
by the probability of the given class, lowest first. Its worth is the model's: a model trained briefly from
scratch lists many photos it simply gets wrong, so the list is photos to look at, not errors found (docs/training.md).
No PyTorch here: the probabilities come from scoring.evaluate_images.
"""
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from effnet.atomic_files import write_csv
from effnet.reports.scoring import Evaluation

LABEL_ISSUE_COLUMNS = ("path", "split", "given", "predicted", "given_probability", "predicted_probability",
                       "predicted_class_threshold")


@dataclass
class LabelIssue:
    """An image the model would put in another class than the one it was given."""

    path: str
    part: str  # "train", "val" or "test"
    given: str
    predicted: str
    given_probability: float
    predicted_probability: float
    threshold: float  # the average probability of the predicted class on the images given that class

    def row(self) -> dict[str, Any]:
        return dict(zip(LABEL_ISSUE_COLUMNS, (self.path, self.part, self.given, self.predicted,
                                              round(self.given_probability, 6), round(self.predicted_probability, 6),
                                              round(self.threshold, 6))))


def class_thresholds(evaluations: Mapping[str, Evaluation]) -> dict[int, float]:
    """class index -> the average probability the model gives the class on the images labelled with it."""
    given: dict[int, list[float]] = {}
    for evaluation in evaluations.values():
        for result in evaluation.results:
            given.setdefault(result.true, []).append(result.true_probability)
    return {label: sum(values) / len(values) for label, values in given.items()}


def rank_label_issues(evaluations: Mapping[str, Evaluation]) -> list[LabelIssue]:
    """The images (of each part: "train", "val", "test" -> its Evaluation) whose predicted class is not their
    given one, with a probability at least that class's threshold; the least likely given class first."""
    thresholds = class_thresholds(evaluations)
    issues = []
    for part, evaluation in evaluations.items():
        names = evaluation.class_names
        for result in evaluation.results:
            threshold = thresholds.get(result.predicted, math.inf)  # a class no image was given: never confident
            if not result.correct and result.confidence >= threshold:
                issues.append(LabelIssue(result.path, part, names[result.true], names[result.predicted],
                                         result.true_probability, result.confidence, threshold))
    return sorted(issues, key=lambda issue: (issue.given_probability, issue.path))


def write_label_issues(issues: list[LabelIssue], path: str | os.PathLike) -> None:
    """label_issues.csv: one row per issue, in rank order (the header alone when there are none)."""
    write_csv(path, [issue.row() for issue in issues], LABEL_ISSUE_COLUMNS)
