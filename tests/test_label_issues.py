"""Possible label errors (effnet/reports/label_issues.py): the ranking, and label_issues.csv of a run."""
import csv
import json
import os

from effnet.inference.classifier import Classifier
from effnet.reports.label_issues import LABEL_ISSUE_COLUMNS, class_thresholds, rank_label_issues, write_label_issues
from effnet.reports.scoring import Evaluation, ImageResult, evaluate_images


def result(path: str, true: int, probabilities: list[float]) -> ImageResult:
    predicted = max(range(len(probabilities)), key=probabilities.__getitem__)
    rank = sorted(probabilities, reverse=True).index(probabilities[true]) + 1
    return ImageResult(path, true, predicted, probabilities[predicted], rank, probabilities[true])


def test_an_image_is_listed_when_the_model_is_as_sure_of_another_class_as_of_that_class_own_images(tmp_path):
    names = ["cat", "dog"]
    validation = Evaluation(names, [result("cat1", 0, [0.9, 0.1]), result("cat2", 0, [0.7, 0.3]),
                                    result("dog1", 1, [0.2, 0.8]), result("dog2", 1, [0.4, 0.6])])
    training = Evaluation(names, [result("odd_cat", 0, [0.45, 0.55]), result("dog_as_cat", 1, [0.85, 0.15])])
    thresholds = class_thresholds({"val": validation, "train": training})
    assert thresholds == {0: (0.9 + 0.7 + 0.45) / 3, 1: (0.8 + 0.6 + 0.15) / 3}
    issues = rank_label_issues({"val": validation, "train": training})
    # odd_cat's 0.55 for dog is above dog's threshold (0.517); dog_as_cat's 0.85 for cat above cat's (0.683);
    # dog2 is right, cat2's 0.3 for dog is below the threshold
    assert [(i.path, i.part, i.given, i.predicted) for i in issues] == [("dog_as_cat", "train", "dog", "cat"),
                                                                       ("odd_cat", "train", "cat", "dog")]
    assert issues[0].given_probability == 0.15 and issues[0].predicted_probability == 0.85
    write_label_issues(issues, tmp_path / "label_issues.csv")
    with open(tmp_path / "label_issues.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(LABEL_ISSUE_COLUMNS)
    assert rows[1] == ["dog_as_cat", "train", "dog", "cat", "0.15", "0.85", str(round((0.9 + 0.7 + 0.45) / 3, 6))]


def test_every_run_writes_label_issues_least_likely_label_first(trained_run):
    with open(trained_run / "label_issues.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == LABEL_ISSUE_COLUMNS
    given = [float(row["given_probability"]) for row in rows]
    assert given == sorted(given)
    assert all(row["given"] != row["predicted"] and row["split"] in ("train", "val") for row in rows)
    assert all(float(row["predicted_probability"]) >= float(row["predicted_class_threshold"]) for row in rows)
    # what the run wrote is best.pth's verdict on the run's own images (the colour model may doubt none of them)
    split = json.loads((trained_run / "split.json").read_text())
    classifier = Classifier.from_weights(trained_run / "best.pth")
    scored = {part: evaluate_images(classifier, [os.path.join(split["root"], path) for path, _ in split[part]],
                                    [label for _, label in split[part]]) for part in ("train", "val")}
    assert [row["path"] for row in rows] == [issue.path for issue in rank_label_issues(scored)]
