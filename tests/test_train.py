"""train.py end to end: the files a run writes, what it learns and prints, frozen layers, the last batch."""
import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import fails_with, load, train_args, training_only_args
from imagegen import make_class_folders
from torch.utils.data import DataLoader

import model as M
import predict
import train
from effnet import checkpoints, variants
from effnet.training import recipe
from effnet.training.flags import build_parser
from effnet.training.progress import Progress
from effnet.training.settings import settings_from_flags
from effnet.training.steps import EpochResult
from my_dataset import MyDataSet, eval_transform
from utils import StepSettings, evaluate_epoch

REPO = Path(__file__).resolve().parents[1]


def read_metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def untrained_accuracy(images: list[str], labels: list[int], settings: dict, seed: int = 0) -> float:
    """Validation accuracy of the network train.py starts from (same seed, no training): the control."""
    torch.manual_seed(seed)
    network = M.create_model("b0", num_classes=3).to(memory_format=torch.channels_last)
    dataset = MyDataSet(images, labels, eval_transform(settings["eval_resize"], settings["eval_crop"],
                                                       settings["interpolation"]), decode_size=settings["eval_resize"])
    loader = DataLoader(dataset, batch_size=16, collate_fn=MyDataSet.collate_fn)
    return evaluate_epoch(network, loader, StepSettings.for_device(torch.device("cpu")), progress=False).accuracy


def test_end_to_end_training_learns_and_predicts(trained_run, capsys):
    for name in ("last.pth", "best.pth", "metrics.csv", "curves.png", "confusion_matrix.png",
                 "class_distribution.png", "class_indices.json", "split.json"):
        assert (trained_run / name).is_file(), name
    best = load(trained_run / "best.pth")
    assert best["format"] == checkpoints.CHECKPOINT_FORMAT and best["variant"] == "b0"
    assert best["class_names"] == ["blue", "green", "red"]
    assert best["image"] == variants.image_settings("b0", 48)
    assert {"optimizer", "scheduler", "epoch", "best_acc", "args", "history"} <= set(best)
    assert json.loads((trained_run / "class_indices.json").read_text()) == {"0": "blue", "1": "green", "2": "red"}
    rows = read_metrics(trained_run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert max(float(r["val_acc"]) for r in rows) == best["best_acc"]

    split = json.loads((trained_run / "split.json").read_text())
    val_images = [os.path.join(split["root"], path) for path, _ in split["val"]]
    labels = [label for _, label in split["val"]]
    # learned: far above the untrained network on the same photos (which answers one class for all: 1/3),
    # and far above chance (this budget reaches 0.94-1.0; see TRAINED_RUN_ARGS)
    control = untrained_accuracy(val_images, labels, best["image"])
    assert control <= 0.5 and best["best_acc"] >= 0.8, (control, best["best_acc"])

    capsys.readouterr()
    assert predict.main([*val_images, "--weights", str(trained_run / "best.pth"), "--json"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # one JSON object per line
    names = best["class_names"]
    correct = sum(r["predictions"][0]["class"] == names[label] for r, label in zip(results, labels))
    assert correct / len(val_images) == pytest.approx(best["best_acc"])  # predict.py sees what validation saw


def test_tensorboard_events_when_installed(trained_run):
    events = list(trained_run.glob("events.out.tfevents.*"))
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert not events
    else:
        assert events


def test_per_class_precision_and_recall_are_printed(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=5)
    assert train.main(training_only_args(data, tmp_path / "runs", "--epochs", "1")) == 0
    out = capsys.readouterr().out
    assert "precision  recall" in out and "best validation accuracy" in out
    for name in ("blue", "green", "red"):
        assert any(line.startswith(name) for line in out.splitlines())


def test_optimizer_and_schedule_follow_the_recipe(trained_run):
    last = load(trained_run / "last.pth")
    group = last["optimizer"]["param_groups"][0]
    assert (group["momentum"], group["weight_decay"]) == (0.9, 1e-4)
    lrs = [float(r["lr"]) for r in read_metrics(trained_run)]
    expected = [0.03 * (((1 + math.cos(e * math.pi / 8)) / 2) * (1 - 0.01) + 0.01) for e in range(8)]  # --lr 0.03
    assert lrs == pytest.approx(expected)


def test_the_flower_sample_trains(flower_sample, tmp_path, capsys):
    args = train_args(flower_sample, tmp_path / "runs", "--epochs", "1", "--batch-size", "16", "--name", "mini")
    assert train.main(args) == 0
    split = json.loads((tmp_path / "runs" / "mini" / "split.json").read_text())
    assert split["classes"] == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert (len(split["train"]), len(split["val"])) == (120, 30)
    assert "5 classes" in capsys.readouterr().out


def test_frozen_layers_keep_weights_and_batchnorm_statistics(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=6)
    start = M.efficientnet_b0(num_classes=3)
    torch.save(checkpoints.checkpoint_fields(start), tmp_path / "start.pth")
    args = training_only_args(data, tmp_path / "runs", "--epochs", "1", "--name", "frozen")
    args[args.index("--weights") + 1] = str(tmp_path / "start.pth")
    args[args.index("--freeze-layers") + 1] = "true"
    assert train.main(args) == 0
    after = load(tmp_path / "runs" / "frozen" / "last.pth")["model"]
    before = start.state_dict()
    for key in ("features.stem_conv.0.weight", "features.stem_conv.1.running_mean",
                "features.4b.block.dwconv.1.running_var", "features.7a.block.project_conv.1.num_batches_tracked"):
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["features.top.1.running_mean"], after["features.top.1.running_mean"])
    assert not torch.equal(before["classifier.1.weight"], after["classifier.1.weight"])


def test_frozen_layers_on_a_random_backbone_are_warned_about(capsys):
    settings = settings_from_flags(build_parser().parse_args(["--weights", "none", "--freeze-layers",
                                                                           "true"]), {"weights", "freeze_layers"})
    recipe.load_starting_weights(M.efficientnet_b0(num_classes=3), settings)
    warning, = capsys.readouterr().err.splitlines()
    assert warning.startswith("warning: --freeze-layers true with --weights none trains only the head")



def test_a_last_training_batch_of_one_image_at_32_px_trains(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=6)  # 15 training images: batches of 7, 7 and 1
    assert train.main(training_only_args(data, tmp_path / "runs", "--image-size", "32", "--batch-size", "7",
                                         "--epochs", "1", "--name", "lone")) == 0
    assert "Traceback" not in capsys.readouterr().err
    fails_with(train.main, training_only_args(data, tmp_path / "runs", "--image-size", "32", "--batch-size", "1"),
               capsys, "--batch-size 1 at --image-size 32")


def test_an_epoch_that_read_no_image_is_never_the_best():
    settings = settings_from_flags(build_parser().parse_args(["--weights", "none"]), set())
    empty = EpochResult(0.0, 0.0, 0, 1.0, torch.zeros(2, 2, dtype=torch.int64))
    progress = Progress()
    assert not progress.record(1, 0.01, 48, empty, empty, settings)
    assert progress.best_epoch == -1 and progress.next_epoch == 1
