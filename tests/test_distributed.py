"""torchrun: two CPU processes with Gloo train like one, write one set of outputs, and fail together."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import train_args
from imagegen import make_class_folders

import model as M
from my_dataset import MyDataSet, eval_transform
from utils import StepSettings, evaluate_epoch

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # torchrun starts two training processes per test: the slower suite


def torchrun(*args: str, script: str = "train.py", timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("ddp")
    data = make_class_folders(root / "data", per_class=10)  # 3 validation images per class, 9 in all
    result = torchrun(*train_args(data, root / "runs", "--epochs", "2", "--val-rate", "0.3", "--image-size", "64",
                                  "--progressive-resizing", "0.5", "--train-crop", "0.75",  # 32 px, then 48
                                  "--zero-init-residual"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "runs", result


def test_two_processes_write_one_set_of_outputs(distributed_run):
    runs, result = distributed_run
    folders = list(runs.iterdir())
    assert len(folders) == 1
    run = folders[0]
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith("events")) == sorted(
        ["best.pth", "best.onnx", "last.pth", "metrics.csv", "curves.png", "confusion_matrix.png",
         "class_distribution.png", "class_indices.json", "split.json", "per_class.csv", "report.html", "recipe.json",
         "duplicates.csv", "data_check.json", "label_issues.csv"])
    assert result.stdout.count("data check of 30 images") == 1  # rank 0 checks; the others take its result
    assert len(list(run.glob("events.out.tfevents.*"))) <= 1
    assert result.stdout.count("epoch 2/2:") == 1  # only rank 0 reports
    assert "x 2 processes" in result.stdout
    last = torch.load(run / "last.pth", weights_only=True)
    assert not any(key.startswith("module.") for key in last["model"])
    assert [row["train_size"] for row in last["history"]] == [32, 48] and last["image"]["eval_crop"] == 64
    assert json.loads((run / "recipe.json").read_text())["zero_init_residual"] is True


def test_validation_counts_every_image_once_and_matches_one_process(distributed_run):
    runs, _ = distributed_run
    run = next(runs.iterdir())
    last = torch.load(run / "last.pth", weights_only=True)
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]) % 2 == 1  # an odd count: padding would have counted one image twice
    assert int(last["confusion"].sum()) == len(split["val"])

    model = M.model_from_checkpoint(last)
    image = last["image"]
    paths = [os.path.join(split["root"], p) for p, _ in split["val"]]
    labels = [label for _, label in split["val"]]
    loader = torch.utils.data.DataLoader(
        MyDataSet(paths, labels, eval_transform(image["eval_resize"], image["eval_crop"], image["interpolation"]),
                  decode_size=image["eval_resize"]),
        batch_size=4, collate_fn=MyDataSet.collate_fn)
    single = evaluate_epoch(model.to(memory_format=torch.channels_last), loader, StepSettings(torch.device("cpu")),
                            progress=False)
    assert single.accuracy == last["history"][-1]["val_acc"]
    assert torch.equal(single.confusion, last["confusion"])
    assert single.loss == pytest.approx(last["history"][-1]["val_loss"], rel=1e-5)


def test_resume_under_torchrun(distributed_run):
    runs, _ = distributed_run
    run = next(runs.iterdir())
    result = torchrun("--resume", str(run), "--progress", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stdout and torch.load(run / "last.pth", weights_only=True)["epoch"] == 2


def torchrun_patched(data: Path, tmp_path: Path, patch: str, epochs: int, batch_size: int,
                     *extra: str) -> subprocess.CompletedProcess:
    """torchrun of train.py on `data` with `extra` flags, with `patch` (Python source) applied in every process
    first."""
    wrapper = tmp_path / "patched_train.py"
    wrapper.write_text(f"import os, sys, train, utils\n{patch}\nsys.exit(train.main())\n")
    return torchrun(*train_args(data, tmp_path / "runs", "--epochs", str(epochs), "--batch-size", str(batch_size),
                                *extra),
                    script=str(wrapper), timeout=240)


def test_a_failure_on_one_rank_stops_every_rank(tmp_path):
    start = time.time()
    result = torchrun_patched(make_class_folders(tmp_path / "data", per_class=6), tmp_path, (
        "real = utils.train_step\n"
        "def step(*args, **kwargs):\n"
        "    if os.environ['RANK'] == '1':\n"
        "        raise RuntimeError('injected failure on rank 1')\n"
        "    return real(*args, **kwargs)\n"
        "utils.train_step = step"), epochs=3, batch_size=4)
    assert result.returncode != 0
    assert "injected failure on rank 1" in result.stderr
    assert time.time() - start < 200  # stopped, not hung until the collective timeout


def test_uneven_batches_across_the_processes_leave_none_waiting(tmp_path):
    """Two ways for one process to have a batch the other lacks, in one run. Training: every image of rank 1's
    first batch is unreadable, so every process skips that step together (one skipping alone would leave the
    other waiting in the gradient all-reduce). Validation: one image for two processes; evaluation runs outside
    DistributedDataParallel, on rank 0's BatchNorm statistics, so the process without a batch waits for none."""
    data = make_class_folders(tmp_path / "data", per_class=7)  # red: 6 training images and 1 validation image
    for name in ("green", "blue"):
        for path in sorted((data / name).iterdir())[1:]:
            path.unlink()  # one image each: nothing of theirs is held out
    result = torchrun_patched(data, tmp_path, (
        "from my_dataset import MyDataSet\n"
        "real = MyDataSet.collate_fn\n"
        "calls = []\n"
        "def collate(batch):\n"
        "    calls.append(1)\n"
        "    if os.environ['RANK'] == '1' and len(calls) == 1:\n"
        "        print('rank 1 loses its first batch', flush=True)\n"
        "        return None\n"
        "    return real(batch)\n"
        "MyDataSet.collate_fn = staticmethod(collate)"), 1, 2,  # 4 images each: 2 steps of 2
        "--lr-schedule", "onecycle")  # stepped after every batch: the processes must step alike
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1 loses its first batch" in result.stdout and "epoch 1/1:" in result.stdout
    run = next((tmp_path / "runs").iterdir())
    last = torch.load(run / "last.pth", weights_only=True)
    assert int(last["confusion"].sum()) == 1
