"""What a careless or hostile user does to train.py: a full disk, one class, damaged split.json and checkpoints,
absurd seeds and devices, Ctrl-C early, non-finite outputs, random bytes given as a checkpoint."""
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import model as M
import predict
from effnet import hardware
import train
from effnet.training import loop
from effnet import pretrained as W
from effnet.command_line import UsageError
from conftest import fails_with, load, one_error_line, train_args
from imagegen import make_class_folders
from effnet.inference.classifier import Classifier

pytestmark = pytest.mark.usefixtures("training_only")  # runs here test training, not its report

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_disk(tmp_path):
    """A real 40 MiB tmpfs (we run as root); skips where mounting is not allowed."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and the mount command")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_stops_the_run_in_one_line_and_it_resumes_once_there_is_space(small_disk, tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=4)
    # frozen layers: checkpoints of ~18 MB, so epoch 1 (best.pth + last.pth) fits in 40 MiB and epoch 2 cannot
    args = train_args(data, small_disk, "--epochs", "2", "--freeze-layers", "true", "--name", "full")
    line = fails_with(train.main, args, capsys, f"{small_disk / 'full'}: no space left for", "MB are free",
                      f"last.pth (epoch 1) is intact: continue with python train.py --resume {small_disk / 'full'}",
                      status=1)
    assert "free at least" in line and "the run's checkpoints need" in line
    run = small_disk / "full"
    assert load(run / "last.pth")["epoch"] == 1  # the previous checkpoint survived
    assert not list(run.glob(".*.tmp"))  # and no half-written file takes the space

    subprocess.run(["mount", "-o", "remount,size=120m", str(small_disk)], check=True)  # space is freed
    assert train.main(["--resume", str(run), "--progress", "false"]) == 0
    assert load(run / "last.pth")["epoch"] == 2 and (run / "confusion_matrix.png").is_file()


def test_a_simulated_full_disk_mid_run_keeps_the_checkpoint_and_resumes(tmp_path, monkeypatch, capsys,
                                                                         disk_full_at_fsync):
    real_evaluate = loop.evaluate
    calls = []

    def evaluate_then_fill_the_disk(*args, **kwargs):
        calls.append(1)
        disk_full_at_fsync["full"] = len(calls) == 2  # the disk fills up during epoch 2
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", evaluate_then_fill_the_disk)
    data = make_class_folders(tmp_path / "data", per_class=4)
    run = tmp_path / "runs" / "sim"
    args = train_args(data, tmp_path / "runs", "--epochs", "2", "--name", "sim", "--model", "B0")  # any case
    fails_with(train.main, args, capsys, f"{run}: no space left for", "1.0 kB are free",
               f"continue with python train.py --resume {run}", status=1)
    assert load(run / "last.pth")["epoch"] == 1 and load(run / "last.pth")["variant"] == "b0"
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # header and epoch 1

    disk_full_at_fsync["full"] = False
    monkeypatch.setattr(loop, "evaluate", real_evaluate)
    assert train.main(["--resume", str(run), "--progress", "false"]) == 0
    assert load(run / "last.pth")["epoch"] == 2
    assert [row.split(",")[0] for row in (run / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2"]


def test_a_single_class_is_refused_before_any_work(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=4)
    shutil.rmtree(data / "green")
    for path in (data / "blue").iterdir():  # a class whose images are all unreadable is no class either
        path.write_bytes(b"not an image")
    fails_with(train.main, train_args(data, tmp_path / "runs"), capsys, "one class only (red)", "two or more")
    assert not (tmp_path / "runs").exists()
    shutil.rmtree(data / "blue")
    fails_with(train.main, train_args(data, tmp_path / "runs"), capsys, "one class only (red)")


@pytest.mark.parametrize("seed", ["100000000000000", "-1", str(2**32)])
def test_an_impossible_seed_is_refused_before_anything_is_written(seed, tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    fails_with(train.main, train_args(data, tmp_path / "runs", "--seed", seed), capsys,
               f"--seed {seed}: use a whole number from 0 to 4294967295")
    assert not (tmp_path / "runs").exists()


def test_the_split_leaves_out_a_strip_by_path(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    Image.new("RGB", (20000, 1)).save(data / "red" / "strip.png")
    split = loop.read_split_data(data)
    assert str(data / "red" / "strip.png") not in split.train_paths + split.val_paths
    assert f"skipping unreadable image {data / 'red' / 'strip.png'}: UnsupportedImageError" in capsys.readouterr().err


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


def test_a_missing_last_checkpoint_points_to_an_intact_best_one_that_resumes(tmp_path, monkeypatch, capsys):
    real_evaluate = loop.evaluate
    calls = []

    def evaluate_worse_in_epoch_2(*args, **kwargs):  # so that best.pth stays at epoch 1
        calls.append(1)
        result = real_evaluate(*args, **kwargs)
        return dataclasses.replace(result, accuracy=-0.5) if len(calls) == 2 else result

    monkeypatch.setattr(loop, "evaluate", evaluate_worse_in_epoch_2)
    data = make_class_folders(tmp_path / "data", per_class=4)
    assert train.main(train_args(data, tmp_path / "runs", "--epochs", "2", "--name", "r")) == 0
    monkeypatch.setattr(loop, "evaluate", real_evaluate)
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
    args = train_args(data, tmp_path / "runs")
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


def test_the_meta_device_is_refused_in_one_line(trained_run, tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    fails_with(predict.main, [str(data / "red" / "000.jpg"), "--weights", str(trained_run / "best.pth"),
                              "--device", "meta"], capsys, "--device meta: only cpu, cuda and mps")
    fails_with(train.main, train_args(data, tmp_path / "runs", "--device", "meta"), capsys, "--device meta")
    with pytest.raises(UsageError, match="--device meta"):
        Classifier(M.efficientnet_b0(num_classes=3), device="meta")


def test_model_names_in_any_case(capsys):
    parse = train.build_parser().parse_args
    assert [parse(["--model", name]).model for name in ("B0", "b3", "EfficientNet_B7")] == ["b0", "b3", "b7"]
    with pytest.raises(SystemExit) as exit_info:
        parse(["--model", "b9"])
    assert exit_info.value.code == 2 and "unknown EfficientNet variant 'b9'" in capsys.readouterr().err


def test_default_workers_count_only_the_cpus_this_process_may_use():
    # one usable CPU, as under `taskset -c 0` or a one-CPU container: one worker, and no DataLoader warning
    code = ("import os, warnings, torch.utils.data as D; from effnet import hardware\n"
            "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
            "workers = hardware.default_workers(16)\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    D.DataLoader(range(4), num_workers=workers).check_worker_number_rationality()\n"
            "print(workers, len(caught))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["1", "0"], result.stderr
    assert hardware.usable_cpus() == len(os.sched_getaffinity(0))


def test_ctrl_c_before_the_first_epoch_is_one_line_and_exit_130(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=3)
    code = ("import sys, train\nfrom effnet.training import loop\n"
            "def interrupted(*args, **kwargs):\n"
            "    raise KeyboardInterrupt  # Ctrl-C while the images are being listed\n"
            "loop.read_split_data = interrupted\n"
            f"sys.exit(train.main({train_args(data, tmp_path / 'runs')!r}))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 130
    assert one_error_line(result.stderr) == ("error: interrupted before the first epoch; nothing was trained, so "
                                             "there is nothing to resume")


def test_an_epoch_with_non_finite_validation_outputs_is_never_the_best(tmp_path, monkeypatch, capsys):
    # Early epochs from scratch can overflow in evaluation mode (the BatchNorm statistics lag behind the
    # weights): seen with 32 px images, batch 4, one epoch. Such weights classify nothing.
    data = make_class_folders(tmp_path / "data", per_class=6)
    real_evaluate, calls = loop.evaluate, []

    def overflowing_first(*args, **kwargs):
        result = real_evaluate(*args, **kwargs)
        calls.append(result)
        return dataclasses.replace(result, loss=float("nan")) if len(calls) == 1 else result

    monkeypatch.setattr(loop, "evaluate", overflowing_first)
    assert train.main(train_args(data, tmp_path / "runs", "--epochs", "2", "--name", "late")) == 0
    out = capsys.readouterr().out
    assert "epoch 1/2: " in out and "outputs not finite in evaluation, so not kept as best" in out
    assert "new best" in next(line for line in out.splitlines() if line.startswith("epoch 2/2"))
    assert torch.load(tmp_path / "runs" / "late" / "best.pth", weights_only=True)["best_epoch"] == 2

    monkeypatch.setattr(loop, "evaluate",
                        lambda *a, **k: dataclasses.replace(real_evaluate(*a, **k), loss=float("inf")))
    assert train.main(train_args(data, tmp_path / "runs", "--epochs", "1", "--name", "never")) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: no epoch gave finite outputs in evaluation, so {tmp_path / 'runs' / 'never'} "
                                f"has no best.pth; train for more epochs (the first ones from scratch often overflow) "
                                f"or lower --lr"]
    assert (tmp_path / "runs" / "never" / "last.pth").is_file() and not (tmp_path / "runs" / "never" / "best.pth").exists()


def test_a_random_bytes_checkpoint_is_one_line_everywhere_without_pytorchs_warning(tmp_path, capsys):
    import app
    import export
    import warnings

    stray = tmp_path / "downloads" / "last.pth"
    stray.parent.mkdir()
    stray.write_bytes(b"\x80\x05" + bytes(range(256)) * 20)  # starts like a pickle of protocol 5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(W.WeightsError, match="not a readable PyTorch weights file"):
            W.read_weights_file(stray)
    assert [str(warning.message) for warning in caught] == []  # PyTorch's two lines before our one
    line = fails_with(train.main, ["--resume", str(stray.parent)], capsys, "not a readable PyTorch weights file",
                      f"{stray.parent} is not a run folder of train.py", "--resume takes a run folder")
    assert "start it again" not in line  # no run of which an epoch could have been saved
    for main, argv in ((predict.main, ["x.jpg", "--weights", str(stray)]), (export.main, [str(stray)]),
                       (app.main, ["--weights", str(stray), "--port", "0"])):
        fails_with(main, argv, capsys, f"{stray} is not a readable PyTorch weights file")
