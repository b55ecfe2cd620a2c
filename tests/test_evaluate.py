"""evaluate.py, pre-split train/ val/ test/ folders, per_class.csv, and report.html rendered in Chromium."""
import csv
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import FLOWER_SAMPLE, assert_usage_error, train_args
from imagegen import make_class_folders

import evaluate
import train
from effnet.data.split import DataSplit, read_data
from effnet.reports import metrics

FLOWER_CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
RUN_SECTIONS = ("settings", "curves", "distribution", "confusion", "per-class", "misclassified", "test")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def link_presplit(source: Path, target: Path, counts: dict[str, int]) -> Path:
    """target/{train,val,test}/<class>/ holding symbolic links to the first photos of each source class."""
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        photos = iter(sorted(class_dir.iterdir()))
        for part, count in counts.items():
            (target / part / class_dir.name).mkdir(parents=True, exist_ok=True)
            for _, photo in zip(range(count), photos):
                (target / part / class_dir.name / photo.name).symlink_to(photo)
    return target


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch run from scratch on the flower sample split into train/ val/ test/ folders (8/4/4 per class), its
    first epoch on smaller crops (--progressive-resizing)."""
    root = tmp_path_factory.mktemp("flower_run")
    data = link_presplit(FLOWER_SAMPLE, root / "flowers", {"train": 8, "val": 4, "test": 4})
    assert train.main(train_args(data, root / "runs", "--epochs", "2", "--batch-size", "8", "--progressive-resizing",
                                 "0.5", "--name", "split")) == 0
    return root / "runs" / "split"


def test_a_presplit_dataset_is_used_as_given_and_its_test_set_scored(flower_run):
    split = json.loads((flower_run / "split.json").read_text())
    assert split["classes"] == FLOWER_CLASSES
    for part, per_class in (("train", 8), ("val", 4), ("test", 4)):
        assert Counter(path.split(os.sep)[0] for path, _ in split[part]) == {part: 5 * per_class}
        assert all(path.split(os.sep)[1] == FLOWER_CLASSES[label] for path, label in split[part])
    for name in ("report.html", "per_class.csv", "test/predictions.csv", "test/per_class.csv",
                 "test/confusion_matrix.png"):
        assert (flower_run / name).is_file(), name

    best = torch.load(flower_run / "best.pth", weights_only=True)
    assert read_csv(flower_run / "per_class.csv") == [{k: str(v) for k, v in row.items()}
                                                      for row in metrics.table_rows(FLOWER_CLASSES, best["confusion"])]
    predictions = read_csv(flower_run / "test" / "predictions.csv")
    assert sorted(os.path.relpath(row["path"], split["root"]) for row in predictions) == \
        sorted(path for path, _ in split["test"])


def test_evaluate_numbers_equal_a_hand_count_from_its_own_csv(flower_run, tmp_path, capsys):
    test_dir = Path(json.loads((flower_run / "split.json").read_text())["root"]) / "test"
    out = tmp_path / "eval"
    assert evaluate.main([str(test_dir), "--weights", str(flower_run / "best.pth"), "--output-dir", str(out),
                          "--json", str(tmp_path / "scores.json"), "--top-k", "2"]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == scores["images"] == 20

    correct = [row["true"] == row["predicted"] for row in rows]
    assert [int(row["correct"]) for row in rows] == correct
    assert scores["accuracy"] == pytest.approx(sum(correct) / len(rows))
    assert scores["top_k"] == 2 and scores["top_k_accuracy"] == pytest.approx(
        sum(int(row["true_rank"]) <= 2 for row in rows) / len(rows))
    pairs = Counter((row["true"], row["predicted"]) for row in rows)
    assert scores["confusion_matrix"] == [[pairs[(t, p)] for p in scores["classes"]] for t in scores["classes"]]
    by_class = {row["class"]: row for row in scores["per_class"]}
    f1s = []
    for name in scores["classes"]:
        hits = pairs[(name, name)]
        predicted = sum(n for (_, p), n in pairs.items() if p == name)
        support = sum(n for (t, _), n in pairs.items() if t == name)
        precision, recall = hits / predicted if predicted else 0.0, hits / support if support else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if hits else 0.0)
        row = by_class[name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) \
            == (pytest.approx(precision, abs=1e-6), pytest.approx(recall, abs=1e-6), pytest.approx(f1s[-1], abs=1e-6),
                support)
    assert scores["macro_f1"] == pytest.approx(sum(f1s) / len(f1s))
    assert by_class["macro average"]["f1"] == pytest.approx(scores["macro_f1"], abs=1e-6)
    # the same checkpoint on the same photos: the run's own test results agree image by image
    run_rows = read_csv(flower_run / "test" / "predictions.csv")
    assert sorted((r["path"], r["predicted"]) for r in rows) == sorted((r["path"], r["predicted"]) for r in run_rows)
    assert f"accuracy {scores['accuracy']:.4f}" in capsys.readouterr().out


def _check_rendered_report(page, report: Path, sections: tuple[str, ...]) -> dict:
    """Load the report from disk; every section is there and filled, every picture decoded, nothing fetched."""
    fetched = []
    page.on("request", lambda request: fetched.append(request.url))
    page.goto(report.as_uri())
    assert [url for url in fetched if not url.startswith(("file:", "data:"))] == []
    assert page.locator("script, link[rel=stylesheet], iframe").count() == 0
    found = page.eval_on_selector_all("section", "nodes => nodes.map(n => n.id)")
    assert list(sections) == [s for s in found if s in sections], found
    for section in sections:
        text = page.locator(f"#{section}").inner_text()
        assert len(text.strip().splitlines()) >= 2 or page.locator(f"#{section} img").count(), section
    pictures = page.eval_on_selector_all("img", "nodes => nodes.map(n => [n.src.slice(0, 11), n.naturalWidth])")
    assert pictures and all(src.startswith("data:image/") and width > 0 for src, width in pictures), pictures
    assert page.locator("#per-class tr").count() == 1 + 5 + 2  # heading, the classes, macro and weighted
    return {"cards": page.locator("#misclassified figure").count(),
            "cams": page.locator("#misclassified figure.with-cam img[alt=Grad-CAM]").count(),
            "note": page.locator("#misclassified p.note").first.inner_text()}


def test_run_report_renders_every_section_in_chromium(flower_run, page, tmp_path):
    gallery = _check_rendered_report(page, flower_run / "report.html", RUN_SECTIONS)
    for section in ("curves", "distribution", "confusion", "test"):
        assert page.locator(f"#{section} img.figure").count() >= 1, section
    best = torch.load(flower_run / "best.pth", weights_only=True)
    wrong = int(best["confusion"].sum() - best["confusion"].trace())
    assert wrong > 0  # two epochs from scratch at 64 px: far from perfect, so the gallery has work to do
    assert gallery["note"].startswith(f"{wrong} of 20 validation images were misclassified")
    assert (gallery["cards"], gallery["cams"]) == (wrong, min(wrong, 6))
    assert page.locator("#settings td", has_text="--epochs").count() == 1
    assert "as given by the train/, val/, test/ folders" in page.locator("#settings").inner_text()
    crops = page.locator("#settings tr", has_text="training crops").locator("td").last.inner_text()
    assert crops == "32 px (epoch 1), 48 px (2), validated at 48 px"  # half of 48 px first, but never below 32
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)


def test_evaluation_report_renders_in_chromium(flower_run, page, tmp_path, capsys):
    test_dir = Path(json.loads((flower_run / "split.json").read_text())["root"]) / "test"
    report = tmp_path / "report.html"
    assert evaluate.main([str(test_dir), "--weights", str(flower_run / "best.pth"), "--output-dir",
                          str(tmp_path / "eval"), "--report", str(report), "--json",
                          str(tmp_path / "scores.json")]) == 0
    # --top-k 5 (the default) of a 5-class model would always be 1: no top-k figure anywhere
    out = capsys.readouterr().out
    assert "accuracy" in out and "top-5" not in out and "top-5" not in report.read_text()
    assert "top_k" not in json.loads((tmp_path / "scores.json").read_text())
    gallery = _check_rendered_report(page, report, ("settings", "confusion", "per-class", "misclassified"))
    wrong = sum(row["correct"] == "0" for row in read_csv(tmp_path / "eval" / "predictions.csv"))
    assert (gallery["cards"], gallery["cams"]) == (wrong, min(wrong, 6))


# --- generated images: subsets, unreadable photos, bad input ---------------------------------------------------


def _fails_with(argv: list[str], capsys, *fragments: str) -> None:
    assert_usage_error(evaluate.main, argv, capsys, *fragments)


def test_a_subset_of_the_classes_and_unreadable_photos(trained_run, tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=4, seed=5)
    for name in ("green", "blue"):
        for photo in (data / name).iterdir():
            photo.rename(tmp_path / f"{name}_{photo.name}")
        (data / name).rmdir()
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    assert evaluate.main([str(data), "--weights", str(trained_run / "best.pth"), "--output-dir", str(tmp_path / "out"),
                          "--json", str(tmp_path / "scores.json")]) == 0
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "left out 1 unreadable photo" in captured.out
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["images"] == 4 and [u["path"] for u in scores["unreadable"]] == [str(data / "red" / "broken.jpg")]
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert {row["true"] for row in rows} == {"red"} and len(rows) == 4
    assert "red" in scores["classes"] and set(scores["classes"]) == {"red"} | {row["predicted"] for row in rows}


def test_missing_empty_or_unsorted_folders(trained_run, tmp_path, capsys):
    weights = ["--weights", str(trained_run / "best.pth")]
    _fails_with([str(tmp_path / "nowhere"), *weights], capsys, "nowhere does not exist")
    (tmp_path / "empty").mkdir()
    _fails_with([str(tmp_path / "empty"), *weights], capsys, "empty holds no class folders with photos")
    make_class_folders(tmp_path / "sorted", per_class=2)
    (tmp_path / "sorted" / "red").rename(tmp_path / "loose")  # photos, but no class folders around them
    _fails_with([str(tmp_path / "loose"), *weights], capsys, "not sorted into class folders", "loose/<class name>/")
    for part in ("train", "test"):
        make_class_folders(tmp_path / "presplit" / part, per_class=1)
    _fails_with([str(tmp_path / "presplit"), *weights], capsys, "split into", str(tmp_path / "presplit" / "test"))


def test_class_folders_the_checkpoint_does_not_know(trained_run, tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=2)
    (data / "red").rename(data / "purple")
    _fails_with([str(data), "--weights", str(trained_run / "best.pth")], capsys,
                str(data / "purple"), "'purple' is not a class of", "blue, green, red", "rename or remove")


def test_a_checkpoint_without_class_names(trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no class_indices.json in the current folder
    data = make_class_folders(tmp_path / "data", per_class=2)
    checkpoint = torch.load(trained_run / "best.pth", weights_only=True)
    del checkpoint["class_names"]
    torch.save(checkpoint, tmp_path / "nameless.pth")
    _fails_with([str(data), "--weights", str(tmp_path / "nameless.pth")], capsys,
                "nameless.pth carries no class names", "--class-indices")
    (tmp_path / "names.json").write_text(json.dumps({"0": "blue", "1": "green", "2": "red"}))
    assert evaluate.main([str(data), "--weights", str(tmp_path / "nameless.pth"), "--class-indices", "names.json",
                          "--output-dir", str(tmp_path / "out")]) == 0


def test_a_bare_state_dict_without_class_indices(trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_class_folders(tmp_path / "data", per_class=2)
    torch.save(torch.load(trained_run / "best.pth", weights_only=True)["model"], tmp_path / "model-29.pth")
    _fails_with([str(data), "--weights", str(tmp_path / "model-29.pth")], capsys, "--class-indices")


def test_every_run_writes_per_class_csv_and_a_report(trained_run):
    best = torch.load(trained_run / "best.pth", weights_only=True)
    rows = read_csv(trained_run / "per_class.csv")
    assert [row["class"] for row in rows] == ["blue", "green", "red", "macro average", "weighted average"]
    assert [float(row["f1"]) for row in rows] == [row["f1"] for row in metrics.table_rows(best["class_names"],
                                                                                           best["confusion"])]
    page = (trained_run / "report.html").read_text()
    assert all(f'<section id="{section}">' in page for section in RUN_SECTIONS[:-1])
    assert '<section id="test">' not in page and not (trained_run / "test").exists()  # no test/ folder, no test set


# --- pre-split folders in train.py ------------------------------------------------------------------------------


def _train_fails_with(argv: list[str], capsys, *fragments: str) -> None:
    assert_usage_error(train.main, argv, capsys, *fragments)


def test_val_rate_with_a_val_folder_is_refused(tmp_path, capsys):
    for part in ("train", "val"):
        make_class_folders(tmp_path / "data" / part, per_class=2)
    _train_fails_with(train_args(tmp_path / "data", tmp_path / "runs", "--val-rate", "0.3"), capsys,
                      "--val-rate 0.3", "train/ and val/", "leave --val-rate out")


def test_a_val_or_test_class_unknown_to_train_is_refused(tmp_path, capsys):
    make_class_folders(tmp_path / "data" / "train", per_class=2)
    make_class_folders(tmp_path / "data" / "test", per_class=1)
    (tmp_path / "data" / "test" / "red").rename(tmp_path / "data" / "test" / "purple")
    _train_fails_with(train_args(tmp_path / "data", tmp_path / "runs"), capsys,
                      str(tmp_path / "data" / "test" / "purple"), "no folder in", "train")


def test_split_json_keeps_the_test_images_for_resume(tmp_path):
    make_class_folders(tmp_path / "data" / "train", per_class=5)
    make_class_folders(tmp_path / "data" / "test", per_class=2)
    split = read_data(tmp_path / "data", None, seed=0, report=False)
    assert (len(split.train_paths), len(split.val_paths), len(split.test_paths)) == (12, 3, 6)  # 1 of 5 held out
    again = DataSplit.from_json(json.loads(json.dumps(split.to_json())), str(tmp_path / "data"))
    assert (again.test_paths, again.test_labels) == (split.test_paths, split.test_labels)
    assert again.val_paths == split.val_paths
    assert read_data(tmp_path / "data", 0.4, seed=0, report=False).val_paths != split.val_paths


def test_evaluation_modules_load_no_torch():
    """evaluate.py starts without PyTorch until a backend needs it (an ONNX backend never does)."""
    code = ("import sys, evaluate, effnet.reports.scoring, effnet.reports.report_page, effnet.data.class_folders; "
            "print(sorted(m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_output_names_of_the_wrong_kind_are_refused_before_any_photo_is_scored(trained_run, tmp_path, capsys,
                                                                                monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(evaluate, "classifier_from_flags", no_model)
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("x")
    data = str(trained_run.parent.parent / "data")
    for flags, message in ((["--json", str(tmp_path / "a_folder")], f"--json {tmp_path / 'a_folder'} is a folder"),
                           (["--report", str(tmp_path / "a_folder")], "is a folder; give a file name"),
                           (["--output-dir", str(tmp_path / "a_file")], "is a file; give a folder")):
        assert_usage_error(evaluate.main, [data, *flags], capsys, message)


# --- issue 21: outputs never replace an input, nor land where the next run reads; links that lead nowhere -------


def test_outputs_in_the_photo_folders_or_over_the_weights_are_refused_before_scoring(trained_run, tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=2)
    photo = data / "red" / "000.jpg"
    before = photo.read_bytes()
    weights = ["--weights", str(trained_run / "best.pth")]
    for flags, message in ((["--json", str(photo), "--overwrite"], f"--json {photo} lies in the folder of class "
                                                                   f"folders {data}"),
                           (["--output-dir", str(data / "red" / "results")], "lies in the folder of class folders"),
                           (["--report", str(trained_run / "best.pth"), "--overwrite"],
                            f"would overwrite the checkpoint {trained_run / 'best.pth'}"),
                           (["--json", str(tmp_path / "x.json"), "--report", str(tmp_path / "x.json")],
                            "is the file --json names too")):
        assert_usage_error(evaluate.main, [str(data), *weights, *flags], capsys, message)
    assert photo.read_bytes() == before and not (data / "red" / "results").exists()


def test_outputs_replace_their_own_files_and_others_only_with_overwrite(trained_run, tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=2)
    argv = [str(data), "--weights", str(trained_run / "best.pth"), "--output-dir", str(tmp_path / "out"),
            "--json", str(tmp_path / "scores.json"), "--report", str(tmp_path / "report.html")]
    for _ in range(2):  # the second run replaces what the first one wrote
        assert evaluate.main(argv) == 0
    (tmp_path / "notes.json").write_text('{"mine": true}\n')
    (tmp_path / "out" / "per_class.csv").write_text("my,table\n")
    assert_usage_error(evaluate.main, argv, capsys, "per_class.csv exists and is not a per_class.csv of this project")
    argv[argv.index("--json") + 1] = str(tmp_path / "notes.json")
    assert_usage_error(evaluate.main, [*argv, "--output-dir", str(tmp_path / "out2")], capsys,
                       "notes.json exists and is not a JSON file of evaluate.py; pass --overwrite")
    assert (tmp_path / "notes.json").read_text() == '{"mine": true}\n'
    assert evaluate.main([*argv, "--overwrite"]) == 0
    assert json.loads((tmp_path / "notes.json").read_text())["generator"] == "efficientnet-tutorial evaluate.py"


def test_test_folders_of_the_same_name_keep_their_own_default_results(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for parent, per_class in (("A", 2), ("B", 3)):
        make_class_folders(tmp_path / parent / "test", per_class=per_class)
    weights = ["--weights", str(trained_run / "best.pth")]
    for parent in ("A", "B", "A"):
        assert evaluate.main([f"{parent}/test", *weights]) == 0
    assert len(read_csv(tmp_path / "evaluations" / "test" / "predictions.csv")) == 6
    assert len(read_csv(tmp_path / "evaluations" / "test-2" / "predictions.csv")) == 9
    assert "evaluations/" in (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()


def test_links_that_lead_nowhere_are_reported_and_the_rest_scored(trained_run, tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=2)
    (data / "red" / "self.jpg").symlink_to("self.jpg")  # a loop: stat fails with ELOOP
    (data / "blue" / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    assert evaluate.main([str(data), "--weights", str(trained_run / "best.pth"), "--output-dir",
                          str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "left out 2 unreadable photos" in captured.out
    assert f"unreadable photo left out: {data / 'red' / 'self.jpg'}" in captured.err
    assert f"unreadable photo left out: {data / 'blue' / 'gone.jpg'}" in captured.err
    assert len(read_csv(tmp_path / "out" / "predictions.csv")) == 6


# --- hostile round 3: a file a run reads is never replaced, whoever wrote it -------------------------------------


def test_a_runs_own_files_are_never_replaced_not_even_with_overwrite(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    data = make_class_folders(tmp_path / "data", per_class=2)
    before = {name: (run / name).read_bytes() for name in ("split.json", "data_check.json", "report.html")}
    for flag, name in (("--json", "split.json"), ("--json", "data_check.json"), ("--report", "report.html")):
        assert_usage_error(evaluate.main, [str(data), "--weights", str(run / "best.pth"), flag, str(run / name),
                                           "--overwrite", "--output-dir", str(tmp_path / "out")], capsys,
                           f"{name} is a file of the run folder {run}", "not even with --overwrite")
    assert_usage_error(evaluate.main, [str(data), "--weights", str(run / "best.pth"), "--output-dir", str(run)],
                       capsys, f"--output-dir {run} is a run folder of train.py")
    assert {name: (run / name).read_bytes() for name in before} == before


def test_report_never_replaces_a_training_runs_report(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    data = make_class_folders(tmp_path / "data", per_class=2)
    kept = tmp_path / "kept_report.html"  # a training run's report kept elsewhere: not an evaluation report
    shutil.copy(run / "report.html", kept)
    before = {path: path.read_bytes() for path in (kept, run / "report.html")}
    argv = [str(data), "--weights", str(run / "best.pth"), "--output-dir", str(tmp_path / "out")]
    assert_usage_error(evaluate.main, [*argv, "--report", str(run / "report.html")], capsys,
                       f"report.html is a file of the run folder {run}")
    assert_usage_error(evaluate.main, [*argv, "--report", str(kept)], capsys,
                       f"{kept} exists and is not a report of evaluate.py; pass --overwrite")
    assert {path: path.read_bytes() for path in before} == before
    assert evaluate.main([*argv, "--report", str(tmp_path / "evaluation.html")]) == 0
    assert evaluate.main([*argv, "--report", str(tmp_path / "evaluation.html")]) == 0  # its own: replaced
