"""output_paths.py: the one rule behind every output flag, on files and folders made here (no model needed)."""
import os
from pathlib import Path

import pytest

from effnet.command_line import UsageError
from effnet.output_paths import (
    OutputKind,
    RunInputs,
    check_distinct,
    check_file_target,
    check_folder_target,
    header_matches,
    marked_at_end,
    marked_at_start,
)

TABLE = OutputKind("a table of ours", header_matches(r"image(,class_\d+)+,error"))


@pytest.fixture
def inputs(tmp_path: Path) -> RunInputs:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "rose.jpg").write_bytes(b"\xff\xd8 a photo")
    (tmp_path / "best.pth").write_bytes(b"PK weights")
    found = RunInputs()
    found.add_file(tmp_path / "best.pth", "the checkpoint")
    found.add_folder(tmp_path / "photos", "the photo folder", lambda relative: relative.endswith(".jpg"))
    return found


def refused(path: Path, inputs: RunInputs, overwrite: bool = False, kind: OutputKind = TABLE) -> str:
    with pytest.raises(UsageError) as raised:
        check_file_target("--csv", str(path), inputs, kind, overwrite)
    return str(raised.value)


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_input_is_never_a_target_under_any_name(inputs, tmp_path, overwrite):
    os.link(tmp_path / "best.pth", tmp_path / "hard.csv")
    os.symlink(tmp_path / "best.pth", tmp_path / "soft.csv")
    for name in ("best.pth", "hard.csv", "soft.csv", "./best.pth"):
        message = refused(tmp_path / name, inputs, overwrite)
        assert f"would overwrite the checkpoint {tmp_path / 'best.pth'}" in message and "never replaced" in message
    # in a folder the run scans: what the scan reads there, whether it exists yet or not
    assert "lies in the photo folder" in refused(tmp_path / "photos" / "rose.jpg", inputs, overwrite)
    assert "lies in the photo folder" in refused(tmp_path / "photos" / "new" / "later.jpg", inputs, overwrite)
    check_file_target("--csv", str(tmp_path / "photos" / "table.csv"), inputs, TABLE, overwrite)  # not read there


def test_existing_files_are_replaced_only_when_ours_or_with_overwrite(inputs, tmp_path):
    (tmp_path / "ours.csv").write_text("image,class_1,class_2,error\r\nrose.jpg,a,b,\r\n")
    (tmp_path / "theirs.csv").write_text("name,value\n")
    check_file_target("--csv", str(tmp_path / "ours.csv"), inputs, TABLE, False)
    check_file_target("--csv", str(tmp_path / "new.csv"), inputs, TABLE, False)
    assert refused(tmp_path / "theirs.csv", inputs) == (
        f"{tmp_path / 'theirs.csv'} exists and is not a table of ours; pass --overwrite to replace it, or choose "
        f"another --csv")
    check_file_target("--csv", str(tmp_path / "theirs.csv"), inputs, TABLE, True)
    unmarked = OutputKind("a figure of ours", None, "(only PNG figures say so)")
    assert "may not be a figure of ours (only PNG figures say so)" in refused(tmp_path / "theirs.csv", inputs,
                                                                                 kind=unmarked)


def test_marks_at_the_start_and_at_the_end(tmp_path):
    (tmp_path / "page.html").write_text('<html><meta name="generator" content="us">' + "x" * 10_000)
    (tmp_path / "model.onnx").write_bytes(b"\0" * 100_000 + b"format us/1")
    assert marked_at_start('content="us"')(str(tmp_path / "page.html"))
    assert not marked_at_start("format us/1")(str(tmp_path / "model.onnx"))
    assert marked_at_end("format us/1")(str(tmp_path / "model.onnx"))
    assert not marked_at_end("format us/1")(str(tmp_path / "missing.onnx"))


def test_folders_and_files_in_their_places(inputs, tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    assert refused(tmp_path / "a_folder", inputs) == f"--csv {tmp_path / 'a_folder'} is a folder; give a file name"
    assert "is a file, not a folder" in refused(tmp_path / "a_file" / "table.csv", inputs)
    with pytest.raises(UsageError, match="is a file; give a folder"):
        check_folder_target("--output-dir", str(tmp_path / "a_file"), inputs, {}, False)
    scanned = RunInputs()
    scanned.add_folder(tmp_path / "photos", "the data folder")  # every path in it is read
    with pytest.raises(UsageError, match="is the data folder"):
        check_folder_target("--output-dir", str(tmp_path / "photos"), scanned, {}, False)
    with pytest.raises(UsageError, match="lies in the data folder"):
        check_folder_target("--output-dir", str(tmp_path / "photos" / "runs"), scanned, {}, False)
    with pytest.raises(UsageError, match="exists and is not a table of ours"):
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "table.csv").write_text("someone's\n")
        check_folder_target("--output-dir", str(tmp_path / "out"), inputs, {"table.csv": TABLE}, False)
    with pytest.raises(UsageError, match="--report .*out.html is the file --json names too"):
        check_distinct([("--json", str(tmp_path / "out.html")), ("--report", str(tmp_path / "." / "out.html"))])


# --- hostile round 3: a run folder's files, models and pictures are never replaced by another output ----------


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """A run folder of train.py as far as the rule is concerned: a folder holding split.json."""
    run = tmp_path / "runs" / "colours"
    run.mkdir(parents=True)
    for name in ("split.json", "data_check.json", "recipe.json", "metrics.csv", "duplicates.csv", "report.html",
                 "best.pth", "best.onnx", "notes.txt"):
        (run / name).write_bytes(b"the run's own " + name.encode())
    return run


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_run_folders_files_are_never_replaced_not_even_with_overwrite(run_folder, overwrite):
    ours = OutputKind("a table of ours", lambda path: True)  # even a file that passes for ours
    for name in ("split.json", "data_check.json", "recipe.json", "metrics.csv", "duplicates.csv", "report.html",
                 "best.pth", "best.onnx"):
        message = refused(run_folder / name, RunInputs(), overwrite, ours)
        assert f"{name} is a file of the run folder {run_folder}" in message and "not even with --overwrite" in message
    # a name the run's files go by, not there yet: the programs would take it for the run's own
    assert "is a file of the run folder" in refused(run_folder / "last.pth", RunInputs(), overwrite, ours)
    assert "is a file of the run folder" in refused(run_folder / "best.int8.onnx", RunInputs(), overwrite, ours)
    # any other file there belongs to the run as well, and so would a new one
    assert "belongs to the run in" in refused(run_folder / "notes.txt", RunInputs(), overwrite, ours)
    assert f"lies in the run folder {run_folder}" in refused(run_folder / "mine.csv", RunInputs(), overwrite, ours)
    check_file_target("--csv", str(run_folder.parent / "mine.csv"), RunInputs(), ours, overwrite)  # runs/ is free
    with pytest.raises(UsageError, match="is a run folder of train.py"):
        check_folder_target("--output-dir", str(run_folder), RunInputs(), {}, overwrite)
    assert all((run_folder / name).read_bytes().startswith(b"the run's own") for name in ("split.json", "notes.txt"))


def test_the_program_that_writes_a_runs_export_may_replace_it(run_folder, tmp_path):
    export_kind = OutputKind("an export of ours", lambda path: False, model=True)
    owner = RunInputs()
    owner.add_own_output(run_folder / "best.onnx")  # export.py: the export of the checkpoint beside it
    check_file_target("--output", str(run_folder / "best.onnx"), owner, export_kind, True)
    assert "not an export of ours" in refused(run_folder / "best.onnx", owner, False, export_kind)
    assert "is a file of the run folder" in refused(run_folder / "best.int8.onnx", owner, True, export_kind)


@pytest.mark.parametrize("overwrite", [False, True])
def test_models_and_pictures_elsewhere_are_never_replaced_by_other_outputs(tmp_path, overwrite):
    (tmp_path / "model.pth").write_bytes(b"PK a checkpoint")
    (tmp_path / "model.onnx").write_bytes(b"an export")
    (tmp_path / "o8.jpg").write_bytes(b"\xff\xd8\xff\xe0 a photo")
    (tmp_path / "photo.dat").write_bytes(b"\x89PNG\r\n\x1a\n a photo under another name")
    (tmp_path / "bmp.txt").write_bytes(b"BMx\0\0\0\0\0\0\0\0\0\0\0\x28\0\0\0 a bitmap")
    (tmp_path / "notes.txt").write_bytes(b"BMW, Audi: no picture")
    for name in ("model.pth", "model.onnx"):
        assert "is a model file" in refused(tmp_path / name, RunInputs(), overwrite)
    for name in ("o8.jpg", "photo.dat", "bmp.txt"):
        message = refused(tmp_path / name, RunInputs(), overwrite)
        assert "exists and is not a table of ours: it is a picture" in message
        assert "not even with --overwrite" in message
    exporter = OutputKind("an export of ours", lambda path: False, model=True)
    figure = OutputKind("a figure of ours", None, picture=True)
    if overwrite:  # an export may replace an export, a figure a picture, anything else a text file: when told
        check_file_target("--output", str(tmp_path / "model.onnx"), RunInputs(), exporter, overwrite)
        check_file_target("--save", str(tmp_path / "o8.jpg"), RunInputs(), figure, overwrite)
        check_file_target("--csv", str(tmp_path / "notes.txt"), RunInputs(), TABLE, overwrite)
    (tmp_path / "ours.jpg").write_text("image,class_1,class_2,error\r\n")  # an earlier table of ours by that name
    check_file_target("--csv", str(tmp_path / "ours.jpg"), RunInputs(), TABLE, overwrite)
