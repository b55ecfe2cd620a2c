"""The data check (effnet/data/duplicates.py): copies found on real photos, train.py's --check-data and
--drop-duplicates, what a run writes (duplicates.csv, data_check.json, report.html), --resume, evaluate.py's
warning, and the comparison in bounded memory."""
import csv
import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import FLOWER_SAMPLE, fails_with, train_args
from PIL import Image

import evaluate
import train
from effnet.data import duplicates
from effnet.data.duplicates import check_images, close_pairs, saved_fingerprints
from effnet.data.split import DataSplit

PER_CLASS = 8  # photos of each class in the small copy of the flower sample


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def injected_flowers(root: Path) -> tuple[Path, dict[str, set[str]]]:
    """The first PER_CLASS photos of each class of the flower sample, with five copies injected: one photo copied
    into another class, one exact copy in its own class under another name, and three near-duplicates (resized
    to 75% and re-saved at JPEG quality 60). Returns (folder, {kind of copy: its two file names})."""
    data = root / "flowers"
    for class_dir in sorted(p for p in FLOWER_SAMPLE.iterdir() if p.is_dir()):
        (data / class_dir.name).mkdir(parents=True)
        for photo in sorted(class_dir.iterdir())[:PER_CLASS]:
            shutil.copy(photo, data / class_dir.name / photo.name)
    first = {name: sorted((data / name).iterdir())[0] for name in ("daisy", "dandelion", "roses", "sunflowers",
                                                                    "tulips")}
    injected = {"across classes": (first["roses"], data / "tulips" / "from_roses.jpg"),
                "exact": (first["daisy"], data / "daisy" / "same_again.jpg")}
    shutil.copy(*injected["across classes"])
    shutil.copy(*injected["exact"])
    for name in ("dandelion", "sunflowers", "tulips"):
        with Image.open(first[name]) as photo:
            small = photo.resize((photo.width * 3 // 4, photo.height * 3 // 4), Image.LANCZOS)
        injected[f"near {name}"] = (first[name], data / name / "smaller.jpg")
        small.save(injected[f"near {name}"][1], quality=60)
    return data, {kind: {str(path) for path in pair} for kind, pair in injected.items()}


def groups_of(rows: list[dict[str, str]]) -> list[set[str]]:
    return [set(row["paths"].split(duplicates.SEPARATOR)) for row in rows]


def test_check_data_lists_every_injected_copy_and_nothing_else_trains(tmp_path, capsys):
    data, injected = injected_flowers(tmp_path)
    broken = data / "roses" / "truncated.jpg"  # a header that reads, a body that does not
    broken.write_bytes(sorted((data / "roses").iterdir())[1].read_bytes()[:2000])
    table = tmp_path / "copies.csv"
    assert train.main(["--data-path", str(data), "--check-data", str(table), "--output-dir",
                       str(tmp_path / "runs")]) == 0
    out, err = capsys.readouterr()
    rows = read_csv(table)
    found = groups_of(rows)
    for kind, pair in injected.items():
        assert pair in found, (kind, found)
    assert len(rows) <= len(injected) + 1, rows  # the sample's own near-duplicate pairs are mostly not in this copy
    by_pair = {frozenset(group): row for group, row in zip(found, rows)}
    assert by_pair[frozenset(injected["across classes"])]["label_conflict"] == "yes"
    assert by_pair[frozenset(injected["across classes"])]["kind"] == "exact"
    assert by_pair[frozenset(injected["exact"])]["kind"] == "exact"
    assert all(by_pair[frozenset(injected[f"near {name}"])]["kind"] == "near"
               for name in ("dandelion", "sunflowers", "tulips"))
    assert f"data check of {5 * PER_CLASS + 5 + 1} images" in out and "1 across classes" in out
    assert err.count(str(broken)) == 1 and "Traceback" not in err  # the bad photo reported once
    assert not (tmp_path / "runs").exists()  # nothing trained, no run folder


@pytest.fixture(scope="module")
def dropped_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[str]]]:
    """One epoch from scratch on the injected copy of the flower sample, with --drop-duplicates."""
    root = tmp_path_factory.mktemp("dropped")
    data, injected = injected_flowers(root)
    assert train.main(train_args(data, root / "runs", "--epochs", "1", "--image-size", "32", "--drop-duplicates",
                                 "--name", "run")) == 0
    return root / "runs" / "run", injected


def test_a_run_writes_its_check_and_drop_duplicates_leaves_the_copies_out(dropped_run):
    run, injected = dropped_run
    found = groups_of(read_csv(run / "duplicates.csv"))
    assert all(pair in found for pair in injected.values()) and len(found) <= len(injected) + 1
    split = json.loads((run / "split.json").read_text())
    root = Path(split["root"])
    left_out = {str(root / path): (part, why) for path, _, part, why in split["left_out"]}
    assert injected["across classes"] <= set(left_out)  # both sides of a label conflict
    assert all("the label is in doubt" in left_out[path][1] for path in injected["across classes"])
    for kind in ("exact", "near dandelion", "near sunflowers", "near tulips"):
        assert len(injected[kind] & set(left_out)) == 1, kind  # one copy stays
    trained = {str(root / path) for part in ("train", "val") for path, _ in split[part]}
    assert not trained & set(left_out)
    for pair in found:  # no copy left on both sides of the split, nor under two labels
        assert len(pair - set(left_out)) <= 1
    fingerprints = saved_fingerprints(json.loads((run / "data_check.json").read_text()))
    assert len(fingerprints) == 5 * PER_CLASS + 5


def test_resume_keeps_what_was_left_out_and_reuses_the_check(dropped_run, tmp_path, capsys):
    run, _ = dropped_run
    resumed = tmp_path / "run"
    shutil.copytree(run, resumed)
    capsys.readouterr()
    assert train.main(["--resume", str(resumed), "--progress", "false", "--workers", "0"]) == 0  # the report again
    out = capsys.readouterr().out
    images = 5 * PER_CLASS + 5
    assert f"data check of {images} images" in out and f"fingerprints of {images} kept from data_check.json" in out
    assert "images left out (--drop-duplicates" in out
    assert json.loads((resumed / "split.json").read_text()) == json.loads((run / "split.json").read_text())


def test_the_report_shows_the_copies_side_by_side_and_the_doubtful_labels(dropped_run, page, tmp_path):
    run, injected = dropped_run
    page.goto((run / "report.html").as_uri())
    groups = page.locator("#data-checks figure")
    assert groups.count() == len(read_csv(run / "duplicates.csv")) >= len(injected)
    assert page.locator("#data-checks figure img").count() == 2 * groups.count()
    widths = page.eval_on_selector_all("#data-checks img", "nodes => nodes.map(n => n.naturalWidth)")
    assert all(width > 0 for width in widths)
    text = page.locator("#data-checks").inner_text()
    assert "label conflict" in text and "from_roses.jpg" in text and "smaller.jpg" in text
    issues = read_csv(run / "label_issues.csv")
    assert page.locator("#label-issues figure").count() == min(len(issues), 24)
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)


def test_evaluate_warns_about_photos_the_model_trained_on(trained_run, tmp_path, capsys):
    split = json.loads((trained_run / "split.json").read_text())
    (copied, label), (resized, _) = split["train"][0], split["train"][1]
    folder = tmp_path / "new_photos" / split["classes"][label]
    folder.mkdir(parents=True)
    shutil.copy(Path(split["root"]) / copied, folder / "copied.png")
    with Image.open(Path(split["root"]) / resized) as photo:
        photo.convert("RGB").resize((photo.width * 3 // 4, photo.height * 3 // 4)).save(folder / "small.jpg",
                                                                                       quality=60)
    Image.new("RGB", (90, 70), (250, 250, 250)).save(folder / "unseen.jpg")
    argv = [str(tmp_path / "new_photos"), "--weights", str(trained_run / "best.pth"), "--output-dir",
            str(tmp_path / "eval")]
    assert evaluate.main(argv) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert any("copied.png is the same picture as the training photo" in line for line in warnings), warnings
    assert any("small.jpg is a near-duplicate" in line for line in warnings), warnings
    assert warnings[-1].startswith("warning: 2 of the 3 photos are copies of photos") and "unseen" not in str(warnings)


def test_check_data_flags_are_checked_before_any_work(tmp_path, capsys, flower_sample):
    def fails(argv: list[str], fragment: str) -> None:
        fails_with(train.main, argv, capsys, fragment)

    fails(["--check-data", "--resume", str(tmp_path)], "--check-data checks a data folder without training")
    not_ours = tmp_path / "notes.csv"
    not_ours.write_text("name,phone\n")
    fails(["--data-path", str(flower_sample), "--check-data", str(not_ours)], "is not a duplicates table")
    fails(["--data-path", str(flower_sample), "--check-data", str(flower_sample / "daisy" / "copies.csv")],
          "lies in the data folder")


def test_check_data_never_writes_into_another_run_and_needs_its_folder_up_front(tmp_path, capsys, flower_sample,
                                                                              monkeypatch):
    from effnet.training import data_check

    def no_check(*args, **kwargs):
        raise AssertionError("the photos were checked")

    monkeypatch.setattr(data_check, "check_images", no_check)
    run = tmp_path / "runs" / "other"  # another run: its split.json makes it one
    run.mkdir(parents=True)
    (run / "split.json").write_text("{}")
    record = ",".join(duplicates.DUPLICATE_COLUMNS) + "\r\nexact,0,2,a | b,x | x,train | val,no,yes\r\n"
    (run / "duplicates.csv").write_bytes(record.encode())
    fails_with(train.main, ["--data-path", str(flower_sample), "--check-data", str(run / "duplicates.csv")], capsys,
               f"duplicates.csv is a file of the run folder {run}", "not even with --overwrite")
    assert (run / "duplicates.csv").read_bytes() == record.encode()
    missing = tmp_path / "no_such_folder" / "copies.csv"
    fails_with(train.main, ["--data-path", str(flower_sample), "--check-data", str(missing)], capsys,
               f"--check-data {missing}: the folder {missing.parent} does not exist")


def test_the_printout_counts_files_and_groups_and_caps_what_it_names_per_group():
    members = [duplicates.CheckedImage(f"/photos/daisy/copy_{index:04d}.jpg", "daisy", "train", content="same",
                                       phash=0) for index in range(2000)]
    single = [duplicates.CheckedImage(f"/photos/roses/{name}.jpg", "roses", part, content=name, phash=0)
              for name, part in (("a", "train"), ("b", "val"))]
    check = duplicates.DataCheck(members + single, [duplicates.CopyGroup(members, 0), duplicates.CopyGroup(single, 0)],
                                 skipped=3)
    summary = check.summary()
    assert "data check of 2005 images" in summary and "1 group of exact copies (2000 images)" in summary
    assert "1 group of near-duplicates (2 images)" in summary and "of these, 0 across classes, 1 across" in summary
    assert summary.endswith("; 3 could not be read")
    lines = duplicates.describe_groups(check, where="copies.csv")
    assert len(lines) == 2 and max(map(len, lines)) < 1000, max(map(len, lines))
    assert "2000 images:" in lines[1] and f"and {2000 - duplicates.MEMBERS_SHOWN} more (all in copies.csv)" in lines[1]
    assert "more" not in lines[0]  # a group of two is named in full
    assert "--check-data FILE.csv lists them all" in duplicates.describe_groups(check)[1]


def test_unreadable_photos_are_counted_as_often_as_they_are_warned_about(tmp_path, capsys):
    data = tmp_path / "flowers"
    for class_dir in sorted(path for path in FLOWER_SAMPLE.iterdir() if path.is_dir())[:2]:
        (data / class_dir.name).mkdir(parents=True)
        for photo in sorted(class_dir.iterdir())[:6]:
            shutil.copy(photo, data / class_dir.name / photo.name)
    first = sorted(data.iterdir())[0]
    for index in range(4):  # headers that do not read: left out of the split, with a warning each
        (first / f"bad_{index}.jpg").write_bytes(b"not a photo")
    (first / "truncated.jpg").write_bytes(sorted(first.iterdir())[0].read_bytes()[:2000])  # its body does not read
    assert train.main(["--data-path", str(data), "--check-data", "--output-dir", str(tmp_path / "runs")]) == 0
    out, err = capsys.readouterr()
    warned = [line for line in err.splitlines() if line.startswith("warning:") and "unreadable" in line]
    assert len(warned) == 5 and "; 5 could not be read" in out, (warned, out)
    assert "data check of 17 images" in out


@pytest.mark.slow
def test_ctrl_c_as_the_check_ends_is_one_line_and_status_130(flower_sample):
    """Ctrl-C once the check has printed its last line, while the interpreter tears down (PyTorch's finalizers run
    in atexit callbacks): pressed there for certain by an atexit callback of the test's, which runs last."""
    import subprocess
    import sys

    code = ("import atexit, os, runpy, signal, sys; atexit.register(os.kill, os.getpid(), signal.SIGINT); "
            f"sys.argv = ['train.py', '--data-path', {str(flower_sample)!r}, '--check-data']; "
            f"runpy.run_path({str(Path(train.__file__))!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "data check of 150 images" in result.stdout
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert result.returncode == 130, (result.returncode, result.stderr)
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "interrupted" in line


def test_close_pairs_finds_what_comparing_every_pair_finds(monkeypatch):
    rng = np.random.default_rng(0)
    base = [int(value) for value in rng.integers(0, 2**63, 40, dtype=np.int64)]
    hashes = [value << 64 | value for value in base]  # plus near copies: a few bits flipped in each half
    hashes += [value ^ (1 << int(rng.integers(0, 128))) ^ (3 << int(rng.integers(0, 62))) for value in hashes[:15]]
    limit = duplicates.NEAR_BITS

    def close(a: int, b: int) -> bool:
        return ((a ^ b) >> 64).bit_count() <= limit and ((a ^ b) & (2**64 - 1)).bit_count() <= limit

    expected = {(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes)) if close(hashes[i], hashes[j])}
    monkeypatch.setattr(duplicates, "PAIR_BLOCK", 7)  # many blocks, and block edges inside the set
    assert {(i, j) for i, j, _ in close_pairs(hashes, limit)} == expected and len(expected) >= 15
    assert all(bits == (hashes[i] ^ hashes[j]).bit_count() for i, j, bits in close_pairs(hashes, limit))
    across = {(i, j) for i, j, _ in close_pairs(hashes[:20], limit, hashes[20:])}
    assert across == {(i, j) for i in range(20) for j in range(len(hashes) - 20) if close(hashes[i], hashes[20 + j])}
    words = np.array(base, dtype=np.uint64)
    monkeypatch.delattr(np, "bitwise_count", raising=False)  # numpy before 2.0: the byte table
    assert duplicates._popcount(words).tolist() == [value.bit_count() for value in base]


def test_comparing_many_hashes_holds_no_matrix_of_all_pairs():
    words = np.random.default_rng(1).integers(0, 2**63, (6000, 2), dtype=np.int64)
    hashes = [int(first) << 64 | int(second) for first, second in words]
    tracemalloc.start()
    found = sum(1 for _ in close_pairs(hashes))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    all_pairs = len(hashes) ** 2 * 16  # bytes of the two 64-bit words of every pair
    assert found == 0 and peak < 80 * 2**20 < all_pairs / 4, peak


def test_split_json_keeps_what_was_left_out_and_refuses_a_damaged_list(tmp_path):
    split = DataSplit(str(tmp_path), ["a", "b"], [str(tmp_path / "a" / "1.jpg"), str(tmp_path / "b" / "2.jpg")],
                            [0, 1], [str(tmp_path / "a" / "3.jpg")], [0])
    split.leave_out({str(tmp_path / "b" / "2.jpg"): "near copy of a/1.jpg (train), kept"})
    assert split.train_paths == [str(tmp_path / "a" / "1.jpg")] and split.train_labels == [0]
    saved = split.to_json()
    assert saved["left_out"] == [[str(Path("b") / "2.jpg"), 1, "train", "near copy of a/1.jpg (train), kept"]]
    for path in split.train_paths + split.val_paths:
        Path(path).parent.mkdir(exist_ok=True)
        Path(path).write_bytes(b"")
    assert DataSplit.json_problem(saved) is None
    assert DataSplit.from_json(saved, str(tmp_path)).left_out == split.left_out
    assert "'left_out'" in DataSplit.json_problem({**saved, "left_out": [["b/2.jpg", 7, "train", "x"]]})


def test_fingerprints_of_another_method_or_a_damaged_file_are_computed_again(tmp_path, flower_sample):
    photos = [(str(path), "daisy", "train") for path in sorted((flower_sample / "daisy").iterdir())[:3]]
    saved = check_images(photos, str(flower_sample)).to_json(str(flower_sample))
    assert len(saved_fingerprints(saved)) == 3
    assert saved_fingerprints({**saved, "method": "an older one"}) == {}
    assert saved_fingerprints({**saved, "images": [["a.jpg", "big"]]}) == {}
    assert check_images(photos, str(flower_sample), saved_fingerprints(saved)).reused == 3
