"""metrics.py against scores counted by hand."""
import pytest

from effnet.reports import metrics

# rows: true class, columns: predicted class. a: 3 right, 1 taken for b; b: 2 right; c: never seen, once predicted
CONFUSION = [[3, 1, 0], [0, 2, 1], [0, 0, 0]]


def test_per_class_scores_equal_a_hand_count():
    rows = {row["class"]: row for row in metrics.class_rows(["a", "b", "c"], CONFUSION)}
    assert rows["a"] == {"class": "a", "precision": 1.0, "recall": 0.75, "f1": pytest.approx(6 / 7, abs=1e-6),
                         "support": 4}
    two_thirds = pytest.approx(2 / 3, abs=1e-6)
    assert (rows["b"]["precision"], rows["b"]["recall"]) == (two_thirds, two_thirds)
    assert rows["c"] == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_averages():
    totals = metrics.summary(CONFUSION)
    assert totals["accuracy"] == pytest.approx(5 / 7) and totals["images"] == 7
    assert totals["macro_f1"] == pytest.approx((6 / 7 + 2 / 3 + 0) / 3)  # c was predicted, so it counts
    assert totals["weighted_recall"] == pytest.approx((0.75 * 4 + 2 / 3 * 3) / 7)
    assert metrics.macro_f1(CONFUSION) == pytest.approx(totals["macro_f1"])
    # a class with no images nor predictions is left out
    assert metrics.macro_f1([[2, 0, 0], [0, 3, 0], [0, 0, 0]]) == 1.0


def test_text_table_has_every_class_and_both_averages():
    table = metrics.class_table(["a", "b", "c"], CONFUSION).splitlines()
    assert "precision  recall" in table[0] and len(table) == 1 + 3 + 2
    assert table[-2].startswith("macro average") and table[-1].startswith("weighted average")
