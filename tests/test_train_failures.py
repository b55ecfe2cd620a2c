"""A run that must stop: a full disk, a loss that diverges, photos that go away, Ctrl-C at any moment. Each is one
line, and nothing already saved is lost."""
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import fails_with, load, one_error_line, training_only_args
from imagegen import make_class_folders
from test_train import read_metrics

import train
import utils

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
    args = training_only_args(data, small_disk, "--epochs", "2", "--freeze-layers", "true", "--name", "full")
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


@pytest.mark.slow
def test_a_simulated_full_disk_mid_run_keeps_the_checkpoint_and_resumes(tmp_path, monkeypatch, capsys,
                                                                         disk_full_at_fsync):
    real_evaluate = utils.evaluate_epoch
    calls = []

    def evaluate_then_fill_the_disk(*args, **kwargs):
        calls.append(1)
        disk_full_at_fsync["full"] = len(calls) == 2  # the disk fills up during epoch 2
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(utils, "evaluate_epoch", evaluate_then_fill_the_disk)
    data = make_class_folders(tmp_path / "data", per_class=4)
    run = tmp_path / "runs" / "sim"
    args = training_only_args(data, tmp_path / "runs", "--epochs", "2", "--name", "sim", "--model", "B0")  # any case
    fails_with(train.main, args, capsys, f"{run}: no space left for", "1.0 kB are free",
               f"continue with python train.py --resume {run}", status=1)
    assert load(run / "last.pth")["epoch"] == 1 and load(run / "last.pth")["variant"] == "b0"
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # header and epoch 1

    disk_full_at_fsync["full"] = False
    monkeypatch.setattr(utils, "evaluate_epoch", real_evaluate)
    assert train.main(["--resume", str(run), "--progress", "false"]) == 0
    assert load(run / "last.pth")["epoch"] == 2
    assert [row.split(",")[0] for row in (run / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2"]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real_loss = torch.nn.CrossEntropyLoss

    class FailingLoss(real_loss):
        def forward(self, logits, labels):
            calls["n"] += 1
            loss = super().forward(logits, labels)
            return loss * float("nan") if calls["n"] > 4 else loss  # epoch 1: 3 steps, 1 val batch

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", FailingLoss)
    data = make_class_folders(tmp_path / "data", per_class=10)
    assert train.main(training_only_args(data, tmp_path / "runs", "--epochs", "3", "--name", "nan")) == 1
    out = capsys.readouterr().out
    assert "the training loss became nan in epoch 2, step 1" in out and "holds the last completed epoch" in out
    last = load(tmp_path / "runs" / "nan" / "last.pth")
    assert last["epoch"] == 1 and all(torch.isfinite(t).all() for t in last["model"].values()
                                      if t.is_floating_point())


@pytest.mark.slow
def test_an_epoch_with_non_finite_validation_outputs_is_never_the_best(tmp_path, monkeypatch, capsys):
    # Early epochs from scratch can overflow in evaluation mode (the BatchNorm statistics lag behind the
    # weights): seen with 32 px images, batch 4, one epoch. Such weights classify nothing.
    data = make_class_folders(tmp_path / "data", per_class=6)
    real_evaluate, calls = utils.evaluate_epoch, []

    def overflowing_first(*args, **kwargs):
        result = real_evaluate(*args, **kwargs)
        calls.append(result)
        return dataclasses.replace(result, loss=float("nan")) if len(calls) == 1 else result

    monkeypatch.setattr(utils, "evaluate_epoch", overflowing_first)
    assert train.main(training_only_args(data, tmp_path / "runs", "--epochs", "2", "--name", "late")) == 0
    out = capsys.readouterr().out
    assert "epoch 1/2: " in out and "outputs not finite in evaluation, so not kept as best" in out
    assert "new best" in next(line for line in out.splitlines() if line.startswith("epoch 2/2"))
    assert torch.load(tmp_path / "runs" / "late" / "best.pth", weights_only=True)["best_epoch"] == 2

    monkeypatch.setattr(utils, "evaluate_epoch",
                        lambda *a, **k: dataclasses.replace(real_evaluate(*a, **k), loss=float("inf")))
    assert train.main(training_only_args(data, tmp_path / "runs", "--epochs", "1", "--name", "never")) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: no epoch gave finite outputs in evaluation, so {tmp_path / 'runs' / 'never'} "
                                f"has no best.pth; train for more epochs (the first ones from scratch often overflow) "
                                f"or lower --lr"]
    never = tmp_path / "runs" / "never"
    assert (never / "last.pth").is_file() and not (never / "best.pth").exists()


@pytest.mark.slow
def test_an_epoch_whose_images_are_gone_stops_the_run_and_keeps_the_last_good_epoch(tmp_path, monkeypatch, capsys):
    data = make_class_folders(tmp_path / "data", per_class=5)
    real_evaluate = utils.evaluate_epoch

    def evaluate_then_unmount(*args, **kwargs):  # the data folder disappears after epoch 1
        result = real_evaluate(*args, **kwargs)
        if data.exists():
            data.rename(tmp_path / "moved")
        return result

    monkeypatch.setattr(utils, "evaluate_epoch", evaluate_then_unmount)
    run = tmp_path / "runs" / "gone"
    assert train.main(training_only_args(data, tmp_path / "runs", "--epochs", "3", "--name", "gone")) == 1
    out, err = capsys.readouterr()
    error, = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and error.startswith("error: epoch 2: only 0 of 12 training images could be read")
    assert f"{data} is gone" in error and f"python train.py --resume {run}" in error and "--data-path" in error
    assert "epoch 2/3" not in out and [row["epoch"] for row in read_metrics(run)] == ["1"]
    assert load(run / "last.pth")["epoch"] == 1  # resumable from the last good epoch
    monkeypatch.setattr(utils, "evaluate_epoch", real_evaluate)
    assert train.main(["--resume", str(run), "--data-path", str(tmp_path / "moved"), "--progress", "false"]) == 0


def test_ctrl_c_while_pytorch_is_imported_is_one_line_and_exit_130(tmp_path):
    code = ("import runpy, sys\n"
            "class CtrlC:  # Ctrl-C arrives while `import torch` runs\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, CtrlC())\n"
            f"sys.argv = ['train.py', '--data-path', {str(tmp_path)!r}]\n"
            f"runpy.run_path({str(REPO / 'train.py')!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 130 and result.stdout == ""
    assert result.stderr == "error: interrupted while starting; nothing was trained, so there is nothing to resume\n"


def _loaded(pid: int, library: str) -> bool:
    """Whether the process has mapped a shared library whose path holds `library` (its import is under way)."""
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc to see what a process loaded")
@pytest.mark.parametrize("library", ["_multiarray_umath", "libtorch_cpu", "torchvision/_C"])
def test_a_real_ctrl_c_at_any_moment_of_the_start_is_one_line_and_exit_130(library, tmp_path):
    """SIGINT as numpy, PyTorch or torchvision is being imported (the moment their shared library appears in the
    process): a KeyboardInterrupt inside their initialisation used to leave half-imported modules (tracebacks from
    numpy or matplotlib at exit), or was swallowed and the run trained on. Now it is one line and status 130."""
    data = make_class_folders(tmp_path / "data", per_class=4)
    process = subprocess.Popen([sys.executable, str(REPO / "train.py"), *training_only_args(data, tmp_path / "runs",
                                "--epochs", "30")], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    while process.poll() is None and not _loaded(process.pid, library):
        time.sleep(0.001)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err and "epoch 1/" not in out, (out, err)
    assert one_error_line(err) in ("error: interrupted while starting; nothing was trained, so there is nothing to "
                                   "resume", "error: interrupted before the first epoch; nothing was trained, so "
                                   "there is nothing to resume")


def test_ctrl_c_before_the_first_epoch_is_one_line_and_exit_130(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=3)
    code = ("import sys, train, utils\n"
            "def interrupted(*args, **kwargs):\n"
            "    raise KeyboardInterrupt  # Ctrl-C while the images are being listed\n"
            "utils.read_data = interrupted\n"
            f"sys.exit(train.main({training_only_args(data, tmp_path / 'runs')!r}))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 130
    assert one_error_line(result.stderr) == ("error: interrupted before the first epoch; nothing was trained, so "
                                             "there is nothing to resume")


def test_ctrl_c_in_the_first_epoch_says_nothing_was_saved(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(utils, "train_epoch", interrupted)
    data = make_class_folders(tmp_path / "data", per_class=3)
    assert train.main(training_only_args(data, tmp_path / "runs", "--name", "early")) == 130
    out = capsys.readouterr().out
    assert "no epoch was completed, so no checkpoint was saved" in out and "--resume" not in out
