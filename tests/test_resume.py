"""Continuing a run that stopped (train.py --resume): killed, interrupted, moved, or with damaged files, each a
clear line naming what is intact and the command that continues."""
import dataclasses
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import fails_with, load, train_args, training_only_args
from imagegen import make_class_folders
from test_train import read_metrics

import model as M
import predict
import train
import utils
from effnet import checkpoints
from effnet import weights as W

REPO = Path(__file__).resolve().parents[1]


def _fails_with(argv: list[str], capsys, *fragments: str) -> None:
    fails_with(train.main, argv, capsys, *fragments)


def _start_run(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_first_epoch(run: Path, process: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while not (run / "metrics.csv").exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "the first epoch did not finish in time"
        time.sleep(0.05)


# every recipe option that keeps state or draws random numbers: EMA, early stopping, mixing, augmentation, sampling
ALL_RECIPE_OPTIONS = ["--opt", "adamw", "--warmup-epochs", "1", "--label-smoothing", "0.1", "--ema", "0.9",
                      "--auto-augment", "trivialaugment", "--random-erase", "0.5", "--mixup-alpha", "0.4",
                      "--cutmix-alpha", "1.0", "--drop-path", "0.3", "--balanced-sampling", "--early-stopping", "3",
                      "--best-metric", "macro_f1", "--lr-schedule", "onecycle", "--progressive-resizing", "0.5",
                      "--train-crop", "0.67", "--zero-init-residual"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe_flags", [[], ALL_RECIPE_OPTIONS], ids=["tutorial", "every-option"])
def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path, recipe_flags):
    data = make_class_folders(tmp_path / "data", per_class=8)
    args = training_only_args(data, tmp_path / "runs", "--epochs", "4", *recipe_flags)
    assert train.main([*args, "--name", "whole"]) == 0

    process = _start_run([*args, "--name", "killed", "--workers", "2"])
    killed = tmp_path / "runs" / "killed"
    _wait_for_first_epoch(killed, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = load(killed / "last.pth")["epoch"]
    assert 1 <= interrupted_at  # a complete, loadable checkpoint survived the kill

    assert train.main(["--resume", str(killed), "--workers", "1", "--progress", "false"]) == 0
    whole, resumed = load(tmp_path / "runs" / "whole" / "last.pth"), load(killed / "last.pth")
    assert resumed["epoch"] == whole["epoch"] == len(whole["history"]) >= 2  # early stopping may end it sooner
    for weights in ("model", "trained_model") if recipe_flags else ("model",):  # with EMA, both weights
        for key, tensor in whole[weights].items():
            assert torch.equal(tensor, resumed[weights][key]), (weights, key)
    assert resumed.get("ema_updates") == whole.get("ema_updates")
    assert (resumed["best_epoch"], resumed["best_score"]) == (whole["best_epoch"], whole["best_score"])
    assert len(whole["history"]) == len(resumed["history"])
    for a, b in zip(whole["history"], resumed["history"]):
        assert (a["train_loss"], a["val_acc"], a["lr"]) == (b["train_loss"], b["val_acc"], b["lr"])
    assert [int(r["epoch"]) for r in read_metrics(killed)] == list(range(1, whole["epoch"] + 1))
    sizes = [int(r["train_size"]) for r in read_metrics(killed)]  # 24 px growing to 32 (2/3 of 48): never under 32
    assert sizes == ([32] * 4 if recipe_flags else [48] * 4)[:len(sizes)]


def test_ctrl_c_keeps_the_last_epoch_and_says_how_to_resume(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=8)
    args = train_args(data, tmp_path / "runs", "--epochs", "30", "--name", "stopped")
    process = _start_run(args)
    run = tmp_path / "runs" / "stopped"
    _wait_for_first_epoch(run, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in err and f"--resume {run}" in out
    assert load(run / "last.pth")["epoch"] >= 1
    assert not list(run.glob(".*.tmp"))  # no half-written files left behind


@pytest.mark.slow
def test_resume_finds_the_data_from_elsewhere_or_where_it_moved(tmp_path, monkeypatch, capsys):
    real_evaluate = utils.evaluate_epoch
    evaluations = []

    def evaluate_then_stop_in_epoch_2(*args, **kwargs):
        evaluations.append(1)
        if len(evaluations) >= 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(utils, "evaluate_epoch", evaluate_then_stop_in_epoch_2)
    monkeypatch.chdir(tmp_path)
    make_class_folders(tmp_path / "data", per_class=4)
    assert train.main(training_only_args(Path("data"), Path("runs"), "--epochs", "2", "--name", "r")) == 130
    run = tmp_path / "runs" / "r"
    assert load(run / "last.pth")["epoch"] == 1

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the run's relative --data-path no longer points at the images
    assert train.main(["--resume", str(run), "--progress", "false"]) == 130  # found them: got to epoch 2
    (tmp_path / "data").rename(tmp_path / "moved")
    _fails_with(["--resume", str(run)], capsys, "no longer in", "--data-path")

    monkeypatch.setattr(utils, "evaluate_epoch", real_evaluate)
    monkeypatch.chdir(tmp_path)
    assert train.main(["--resume", str(run), "--data-path", "moved", "--progress", "false", "--lr", "0.5",
                       "--freeze-layers", "true", "--grad-checkpointing"]) == 0
    # a resumed run keeps its own settings, and names the flags it ignores, defaults included
    assert "ignoring --freeze-layers, --lr" in capsys.readouterr().err
    last = load(run / "last.pth")
    assert last["epoch"] == 2 and last["args"]["data_path"] == str(tmp_path / "moved")
    assert last["args"]["lr"] == 0.01 and last["args"]["freeze_layers"] is False
    assert last["args"]["grad_checkpointing"] is True  # how it runs may change
    monkeypatch.chdir(elsewhere)
    assert train.main(["--resume", str(run), "--progress", "false"]) == 0  # the new place was saved absolute


def test_resume_needs_a_training_checkpoint_with_its_split(tmp_path, capsys, trained_run):
    bare = tmp_path / "model-29.pth"
    torch.save(M.efficientnet_b0(num_classes=3).state_dict(), bare)
    _fails_with(["--resume", str(bare)], capsys, "not a training checkpoint", f"--weights {bare}")
    copy = tmp_path / "copied_run"
    copy.mkdir()
    (copy / "last.pth").write_bytes((trained_run / "last.pth").read_bytes())
    _fails_with(["--resume", str(copy)], capsys, "split.json is missing")


def test_resume_of_a_missing_run(tmp_path, capsys):
    _fails_with(["--resume", str(tmp_path / "nope")], capsys, "--resume", "last.pth")


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A copy of the shared trained run (5 epochs), free to be damaged."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.mark.parametrize("content, problem", [
    ('{"classes": ["blue", "green", "red"], "train": [["x.jpg", 0]', "not valid JSON"),
    (b"\xff\xfe not text", "not valid JSON"),
    ('["a", "list"]', "no list of 'classes'"),
    ('{"classes": ["blue", "green", "red"], "train": [["x.jpg", 7]], "val": []}', "'train' must list"),
])
def test_a_damaged_split_json_is_one_clear_line(content, problem, run_copy, capsys):
    split = run_copy / "split.json"
    split.write_bytes(content if isinstance(content, bytes) else content.encode())
    fails_with(train.main, ["--resume", str(run_copy)], capsys, f"{split} is damaged ({problem}",
               f"--weights {run_copy / 'last.pth'}")


@pytest.mark.slow
def test_a_missing_last_checkpoint_points_to_an_intact_best_one_that_resumes(tmp_path, monkeypatch, capsys):
    real_evaluate = utils.evaluate_epoch
    calls = []

    def evaluate_worse_in_epoch_2(*args, **kwargs):  # so that best.pth stays at epoch 1
        calls.append(1)
        result = real_evaluate(*args, **kwargs)
        return dataclasses.replace(result, accuracy=-0.5) if len(calls) == 2 else result

    monkeypatch.setattr(utils, "evaluate_epoch", evaluate_worse_in_epoch_2)
    data = make_class_folders(tmp_path / "data", per_class=4)
    assert train.main(training_only_args(data, tmp_path / "runs", "--epochs", "2", "--name", "r")) == 0
    monkeypatch.setattr(utils, "evaluate_epoch", real_evaluate)
    run = tmp_path / "runs" / "r"
    assert load(run / "best.pth")["epoch"] == 1
    (run / "last.pth").unlink()
    capsys.readouterr()
    fails_with(train.main, ["--resume", str(run)], capsys, f"no {run / 'last.pth'}",
               f"{run / 'best.pth'} (epoch 1) is intact", f"python train.py --resume {run / 'best.pth'}")
    assert train.main(["--resume", str(run / "best.pth"), "--progress", "false"]) == 0  # the advice works
    assert load(run / "last.pth")["epoch"] == 2


def test_a_corrupt_last_checkpoint_points_to_an_intact_best_one(run_copy, capsys):
    best_epoch = load(run_copy / "best.pth")["epoch"]
    whole = (run_copy / "last.pth").read_bytes()
    (run_copy / "last.pth").write_bytes(whole[: len(whole) // 2])
    line = fails_with(train.main, ["--resume", str(run_copy)], capsys, "last.pth is not a readable",
                      f"{run_copy / 'best.pth'} (epoch {best_epoch}) is intact")
    assert "re-download" not in line
    (run_copy / "best.pth").unlink()
    fails_with(train.main, ["--resume", str(run_copy)], capsys, "no epoch of this run was saved: start it again")


HAND_EDITS = {
    "no variant": (lambda c: c.pop("variant"), "field 'variant' is None"),
    "partial image": (lambda c: c.update(image={"eval_resize": 73}), "field 'image' is {'eval_resize': 73}"),
    "num_classes five": (lambda c: c.update(num_classes="five"), "field 'num_classes' is 'five'"),
}


@pytest.mark.parametrize("edit", sorted(HAND_EDITS))
def test_hand_edited_checkpoints_are_one_clear_line_everywhere(edit, run_copy, tmp_path, capsys):
    change, named = HAND_EDITS[edit]
    for name in ("best.pth", "last.pth"):
        checkpoint = load(run_copy / name)
        change(checkpoint)
        torch.save(checkpoint, run_copy / name)
    best = run_copy / "best.pth"
    data = make_class_folders(tmp_path / "data", per_class=3)
    fails_with(predict.main, [str(data / "red" / "000.jpg"), "--weights", str(best)], capsys, str(best), named)
    args = training_only_args(data, tmp_path / "runs")
    args[args.index("--weights") + 1] = str(best)
    fails_with(train.main, args, capsys, str(best), named)
    fails_with(train.main, ["--resume", str(run_copy)], capsys, str(run_copy / "last.pth"), named)
    with pytest.raises(W.WeightsError, match=named):
        M.model_from_checkpoint(best)


def test_hand_edited_training_fields_are_one_clear_line(run_copy, capsys):
    checkpoint = load(run_copy / "last.pth")
    checkpoint["epoch"] = "3"
    del checkpoint["args"]["epochs"]
    torch.save(checkpoint, run_copy / "last.pth")
    fails_with(train.main, ["--resume", str(run_copy)], capsys, "field 'epoch' is '3', expected a whole number",
               "best.pth (epoch")
    checkpoint["epoch"] = 3
    torch.save(checkpoint, run_copy / "last.pth")
    fails_with(train.main, ["--resume", str(run_copy)], capsys, "field 'args.epochs' is None")


def test_a_random_bytes_checkpoint_is_one_line_everywhere_without_pytorchs_warning(tmp_path, capsys):
    import warnings

    import app
    import export

    stray = tmp_path / "downloads" / "last.pth"
    stray.parent.mkdir()
    stray.write_bytes(b"\x80\x05" + bytes(range(256)) * 20)  # starts like a pickle of protocol 5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(W.WeightsError, match="not a readable PyTorch weights file"):
            checkpoints.read_weights_file(stray)
    assert [str(warning.message) for warning in caught] == []  # PyTorch's two lines before our one
    line = fails_with(train.main, ["--resume", str(stray.parent)], capsys, "not a readable PyTorch weights file",
                      f"{stray.parent} is not a run folder of train.py", "--resume takes a run folder")
    assert "start it again" not in line  # no run of which an epoch could have been saved
    for main, argv in ((predict.main, ["x.jpg", "--weights", str(stray)]), (export.main, [str(stray)]),
                       (app.main, ["--weights", str(stray), "--port", "0"])):
        fails_with(main, argv, capsys, f"{stray} is not a readable PyTorch weights file")


def test_a_resumed_runs_report_shows_its_resume_flag(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert "<tr><td>--resume</td><td>no</td></tr>" in (run / "report.html").read_text()  # as it was trained
    assert train.main(["--resume", str(run)]) == 0  # a finished run: its review is written again
    page = (run / "report.html").read_text()
    assert f"<tr><td>--resume</td><td>{run}</td></tr>" in page and "<td>--resume</td><td>no</td>" not in page


def test_a_resumed_run_removes_what_a_killed_write_left_behind(trained_run, tmp_path):
    """A run killed while it wrote best.onnx (or a checkpoint) leaves atomic_files' hidden temporary file."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    leftovers = [run / ".best.onnx.k2j4h5g6.tmp", run / ".last.pth.a1_b2c3d.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"\0" * 1000)
    (run / ".notes.tmp").write_text("not one of ours")  # no temporary name of atomic_files: stays
    assert train.main(["--resume", str(run)]) == 0
    assert sorted(run.glob(".*.tmp")) == [run / ".notes.tmp"]
