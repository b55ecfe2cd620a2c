"""train.py end to end: outputs, resume, interruption, recipe, and clear errors."""
import csv
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import model as M
from effnet import command_line
from effnet import atomic_files
from effnet.data import flower_photos
from effnet import hardware
from effnet import variants
from effnet import pretrained as W
import predict
from effnet.training import flags
import train
from effnet.training import loop
from conftest import fails_with, load, train_args
from effnet.training.distributed import Distributed
from effnet.download import sha256_of
from imagegen import make_class_folders
from effnet.data.dataset import EvalTransform, MyDataSet

REPO = Path(__file__).resolve().parents[1]


def read_metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def untrained_accuracy(images: list[str], labels: list[int], settings: dict, seed: int = 0) -> float:
    """Validation accuracy of the network train.py starts from (same seed, no training): the control."""
    torch.manual_seed(seed)
    network = M.create_model("b0", num_classes=3).to(memory_format=torch.channels_last)
    dataset = MyDataSet(images, labels, EvalTransform(settings["eval_resize"], settings["eval_crop"],
                                                      settings["interpolation"]))
    loader = DataLoader(dataset, batch_size=16, collate_fn=MyDataSet.collate_fn)
    return loop.evaluate(network, loader, loop.StepSettings.for_device(torch.device("cpu")), 3, False).accuracy


def test_end_to_end_training_learns_and_predicts(trained_run, capsys):
    for name in ("last.pth", "best.pth", "metrics.csv", "curves.png", "confusion_matrix.png",
                 "class_distribution.png", "class_indices.json", "split.json"):
        assert (trained_run / name).is_file(), name
    best = load(trained_run / "best.pth")
    assert best["format"] == W.CHECKPOINT_FORMAT and best["variant"] == "b0"
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


@pytest.mark.usefixtures("training_only")
def test_per_class_precision_and_recall_are_printed(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=5)
    assert train.main(train_args(data, tmp_path / "runs", "--epochs", "1")) == 0
    out = capsys.readouterr().out
    assert "precision  recall" in out and "best validation accuracy" in out
    for name in ("blue", "green", "red"):
        assert any(line.startswith(name) for line in out.splitlines())


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
                      "--best-metric", "macro_f1"]


@pytest.mark.usefixtures("training_only")
@pytest.mark.parametrize("recipe_flags", [[], ALL_RECIPE_OPTIONS], ids=["tutorial", "every-option"])
def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path, recipe_flags):
    data = make_class_folders(tmp_path / "data", per_class=8)
    args = train_args(data, tmp_path / "runs", "--epochs", "4", *recipe_flags)
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


def test_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path):
    target = tmp_path / "last.pth"
    atomic_files.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, target)
    script = f"""
import os, signal, torch
from effnet import atomic_files
def dying_save(obj, f, *a, **k):
    f.write(b"PK\\x03\\x04 half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
atomic_files.save_checkpoint({{"epoch": 2}}, {str(target)!r})
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == -signal.SIGKILL
    assert load(target)["epoch"] == 1


def test_atomically_written_files_get_the_usual_permissions(tmp_path):
    atomic_files.write_text(tmp_path / "metrics.csv", "epoch\n")  # mkstemp alone would leave it private (0o600)
    assert (tmp_path / "metrics.csv").stat().st_mode & 0o777 == 0o666 & ~atomic_files._UMASK


@pytest.mark.usefixtures("training_only")
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real_loss = torch.nn.CrossEntropyLoss

    class FailingLoss(real_loss):
        def forward(self, logits, labels):
            calls["n"] += 1
            loss = super().forward(logits, labels)
            return loss * float("nan") if calls["n"] > 4 else loss  # epoch 1: 3 steps, 1 val batch

    monkeypatch.setattr(loop.nn, "CrossEntropyLoss", FailingLoss)
    data = make_class_folders(tmp_path / "data", per_class=10)
    assert train.main(train_args(data, tmp_path / "runs", "--epochs", "3", "--name", "nan")) == 1
    out = capsys.readouterr().out
    assert "the training loss became nan in epoch 2, step 1" in out and "holds the last completed epoch" in out
    last = load(tmp_path / "runs" / "nan" / "last.pth")
    assert last["epoch"] == 1 and all(torch.isfinite(t).all() for t in last["model"].values()
                                      if t.is_floating_point())


def test_ctrl_c_in_the_first_epoch_says_nothing_was_saved(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_one_epoch", interrupted)
    data = make_class_folders(tmp_path / "data", per_class=3)
    assert train.main(train_args(data, tmp_path / "runs", "--name", "early")) == 130
    out = capsys.readouterr().out
    assert "no epoch was completed, so no checkpoint was saved" in out and "--resume" not in out


@pytest.mark.usefixtures("training_only")
def test_resume_finds_the_data_from_elsewhere_or_where_it_moved(tmp_path, monkeypatch, capsys):
    real_evaluate = loop.evaluate
    evaluations = []

    def evaluate_then_stop_in_epoch_2(*args, **kwargs):
        evaluations.append(1)
        if len(evaluations) >= 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", evaluate_then_stop_in_epoch_2)
    monkeypatch.chdir(tmp_path)
    make_class_folders(tmp_path / "data", per_class=4)
    assert train.main(train_args(Path("data"), Path("runs"), "--epochs", "2", "--name", "r")) == 130
    run = tmp_path / "runs" / "r"
    assert load(run / "last.pth")["epoch"] == 1

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the run's relative --data-path no longer points at the images
    assert train.main(["--resume", str(run), "--progress", "false"]) == 130  # found them: got to epoch 2
    (tmp_path / "data").rename(tmp_path / "moved")
    _fails_with(["--resume", str(run)], capsys, "no longer in", "--data-path")

    monkeypatch.setattr(loop, "evaluate", real_evaluate)
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


@pytest.mark.parametrize("flag, value", [("--epochs", "0"), ("--batch-size", "0"), ("--lr", "0"), ("--lrf", "2"),
                                         ("--val-rate", "1"), ("--workers", "-1"), ("--image-size", "16"),
                                         ("--image-size", "100000"), ("--lr", "inf"), ("--lr", "nan"),
                                         ("--name", "../../escape"), ("--name", "..")])
def test_impossible_settings_are_refused_before_any_download(flag, value, tmp_path, capsys, monkeypatch,
                                                                closed_port_url):
    monkeypatch.chdir(tmp_path)  # the default data folder is missing: a late check would try to download first
    monkeypatch.setenv(flower_photos.FLOWER_PHOTOS_URL_ENV, closed_port_url + "/flower_photos.tgz")
    _fails_with(["--weights", "none", flag, value], capsys, f"{flag} {value}")


def test_without_network_the_main_job_points_to_the_quick_try(tmp_path, capsys, monkeypatch, closed_port_url):
    monkeypatch.chdir(tmp_path)  # no flower_data/ here, and the archive's URL does not answer
    monkeypatch.setenv(flower_photos.FLOWER_PHOTOS_URL_ENV, closed_port_url + "/flower_photos.tgz")
    _fails_with(["--num_classes", "5"], capsys, "could not download", flower_photos.QUICK_TRY)
    data = make_class_folders(tmp_path / "data", per_class=2)  # photos at hand, but no ImageNet weights
    monkeypatch.setenv(W.WEIGHTS_MIRROR_ENV, closed_port_url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached copy of the weights either
    _fails_with(["--data-path", str(data)], capsys, "could not download", flower_photos.QUICK_TRY)


def test_the_quick_try_in_the_readme_trains_on_the_sample_that_ships():
    assert flower_photos.QUICK_TRY in (REPO / "README.md").read_text()
    command = flower_photos.QUICK_TRY.split()
    assert command[:2] == ["python", "train.py"]
    args = train.build_parser().parse_args(command[2:])
    assert (REPO / args.data_path).resolve() == flower_photos.FLOWER_SAMPLE and args.weights == "none"
    classes = sorted(p.name for p in flower_photos.FLOWER_SAMPLE.iterdir() if p.is_dir())
    assert classes == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert all(len(list((flower_photos.FLOWER_SAMPLE / name).glob("*.jpg"))) == 30 for name in classes)


def test_sync_bn_needs_cuda_processes(tmp_path, capsys, monkeypatch, closed_port_url):
    monkeypatch.chdir(tmp_path)  # refused before the missing flower photos would be downloaded
    monkeypatch.setenv(flower_photos.FLOWER_PHOTOS_URL_ENV, closed_port_url + "/flower_photos.tgz")
    _fails_with(["--weights", "none", "--sync-bn"], capsys, "--sync-bn", "torchrun")


def test_an_explicit_gpu_index_is_refused_under_torchrun():
    with pytest.raises(command_line.UsageError, match="LOCAL_RANK"):
        hardware.resolve_device("cuda:1", local_rank=0, distributed=True)


def test_an_output_folder_that_cannot_be_created(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    (tmp_path / "a_file").write_text("not a folder")
    _fails_with(train_args(data, tmp_path / "a_file"), capsys, f"--output-dir {tmp_path / 'a_file'} is a file")
    _fails_with(train_args(data, data / "runs"), capsys, f"--output-dir {data / 'runs'} lies in the data folder")
    assert not (data / "runs").exists()  # the next run would have taken it for a class


def test_flags_default_to_the_tutorial_recipe():
    args = train.build_parser().parse_args([])
    assert (args.epochs, args.batch_size, args.lr, args.lrf) == (30, 16, 0.01, 0.01)
    assert (args.model, args.weights, args.freeze_layers, args.val_rate) == ("b0", "imagenet", False, 0.2)
    assert hardware.default_workers(16) == min(len(os.sched_getaffinity(0)), 8)


@pytest.mark.parametrize("text, expected", [("False", False), ("false", False), ("0", False), ("no", False),
                                            ("True", True), ("1", True), ("yes", True)])
def test_freeze_layers_is_a_real_switch(text, expected):
    assert train.build_parser().parse_args(["--freeze-layers", text]).freeze_layers is expected
    assert train.build_parser().parse_args(["--freeze-layers"]).freeze_layers is True


def test_freeze_layers_rejects_nonsense(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.build_parser().parse_args(["--freeze-layers", "maybe"])
    assert exit_info.value.code == 2 and "expected true or false" in capsys.readouterr().err


@pytest.mark.usefixtures("training_only")
def test_frozen_layers_keep_weights_and_batchnorm_statistics(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=6)
    start = M.efficientnet_b0(num_classes=3)
    torch.save(W.checkpoint_fields(start), tmp_path / "start.pth")
    args = train_args(data, tmp_path / "runs", "--epochs", "1", "--name", "frozen")
    args[args.index("--weights") + 1] = str(tmp_path / "start.pth")
    args[args.index("--freeze-layers") + 1] = "true"
    assert train.main(args) == 0
    after = load(tmp_path / "runs" / "frozen" / "last.pth")["model"]
    before = start.state_dict()
    for key in ("features.stem_conv.0.weight", "features.stem_conv.1.running_mean", "features.4b.block.dwconv.1.running_var",
                "features.7a.block.project_conv.1.num_batches_tracked"):
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["features.top.1.running_mean"], after["features.top.1.running_mean"])
    assert not torch.equal(before["classifier.1.weight"], after["classifier.1.weight"])


def test_optimizer_and_schedule_follow_the_recipe(trained_run):
    last = load(trained_run / "last.pth")
    group = last["optimizer"]["param_groups"][0]
    assert (group["momentum"], group["weight_decay"]) == (0.9, 1e-4)
    lrs = [float(r["lr"]) for r in read_metrics(trained_run)]
    expected = [0.03 * (((1 + math.cos(e * math.pi / 8)) / 2) * (1 - 0.01) + 0.01) for e in range(8)]  # --lr 0.03
    assert lrs == pytest.approx(expected)


def test_image_sizes_come_from_the_variant_table():
    for variant, spec in M.VARIANTS.items():
        settings = variants.image_settings(variant, None)
        assert (settings["train_size"], settings["eval_resize"], settings["eval_crop"], settings["interpolation"]) \
            == (spec.train_size, spec.eval_resize, spec.eval_crop, spec.interpolation)
    assert variants.image_settings("b0", 112)["eval_resize"] == 128


def test_the_flower_sample_trains(flower_sample, tmp_path, capsys):
    args = train_args(flower_sample, tmp_path / "runs", "--epochs", "1", "--batch-size", "16", "--name", "mini")
    assert train.main(args) == 0
    split = json.loads((tmp_path / "runs" / "mini" / "split.json").read_text())
    assert split["classes"] == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert (len(split["train"]), len(split["val"])) == (120, 30)
    assert "5 classes" in capsys.readouterr().out


# --- bad input: one clear line, exit status 2 -----------------------------------------------------------------


def _fails_with(argv: list[str], capsys, *fragments: str) -> None:
    fails_with(train.main, argv, capsys, *fragments)


def test_class_count_that_disagrees_with_the_folders(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    _fails_with(train_args(data, tmp_path / "runs", "--num_classes", "5"), capsys,
                "--num_classes 5", "has 3 class folders", "--num_classes 3")


def test_unavailable_device(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    _fails_with(train_args(data, tmp_path / "runs", "--device", "cuda:99"), capsys, "--device cuda:99")
    _fails_with(train_args(data, tmp_path / "runs", "--device", "toaster"), capsys, "--device toaster: only cpu, cuda and mps")


def test_missing_or_empty_data_path(tmp_path, capsys):
    _fails_with(train_args(tmp_path / "nowhere", tmp_path / "runs"), capsys, "does not exist", "--data-path")
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    (tmp_path / "empty" / "cats" / "notes.txt").write_text("no images here")
    _fails_with(train_args(tmp_path / "empty", tmp_path / "runs"), capsys, "holds no class folders with images")


def test_weights_of_another_variant(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    torch.save(M.efficientnet_b3(num_classes=3).state_dict(), tmp_path / "b3.pth")
    args = train_args(data, tmp_path / "runs")
    args[args.index("--weights") + 1] = str(tmp_path / "b3.pth")
    _fails_with(args, capsys, "efficientnet_b3 weights but the model is efficientnet_b0")


def test_imagenet_weights_without_network_name_the_scratch_flag(tmp_path, capsys, monkeypatch, closed_port_url):
    monkeypatch.setenv(W.WEIGHTS_MIRROR_ENV, closed_port_url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    data = make_class_folders(tmp_path / "data", per_class=3)
    args = train_args(data, tmp_path / "runs")
    args[args.index("--weights") + 1] = "imagenet"
    _fails_with(args, capsys, closed_port_url, "save it as", "--weights none")


def test_missing_flower_photos_without_network(tmp_path, capsys, monkeypatch, closed_port_url):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(flower_photos.FLOWER_PHOTOS_URL_ENV, closed_port_url + "/flower_photos.tgz")
    _fails_with(["--num_classes", "5", "--weights", "none"], capsys,
                closed_port_url, "tar -xzf", "--data-path")
    assert not (tmp_path / "flower_data" / "flower_photos").exists()


def test_resume_of_a_missing_run(tmp_path, capsys):
    _fails_with(["--resume", str(tmp_path / "nope")], capsys, "--resume", "last.pth")


# --- the flower archive: download, checksum, safe extraction --------------------------------------------------


def _archive(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    import io

    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def test_flower_archive_downloads_verifies_and_extracts(http_server, tmp_path, monkeypatch):
    base_url, served = http_server
    from imagegen import class_image, jpeg_bytes
    import random

    photo = jpeg_bytes(class_image((200, 40, 40), random.Random(0)))
    archive = _archive(served / "flower_photos.tgz", {"flower_photos/LICENSE.txt": b"CC-BY",
                                                      "flower_photos/roses/1.jpg": photo,
                                                      "flower_photos/tulips/2.jpg": photo})
    monkeypatch.setattr(flower_photos, "FLOWER_PHOTOS_SHA256", sha256_of(archive))
    target = tmp_path / "flower_data" / "flower_photos"
    flower_photos.ensure_flower_photos(target, url=f"{base_url}/flower_photos.tgz")
    assert (target / "roses" / "1.jpg").read_bytes() == photo
    assert not (tmp_path / "flower_data" / "flower_photos.tgz").exists()  # the archive is removed after use


def test_flower_archive_with_a_wrong_checksum_is_rejected(http_server, tmp_path, monkeypatch):
    base_url, served = http_server
    _archive(served / "flower_photos.tgz", {"flower_photos/roses/1.jpg": b"x"})
    target = tmp_path / "flower_data" / "flower_photos"
    with pytest.raises(command_line.UsageError, match="corrupted or altered"):
        flower_photos.ensure_flower_photos(target, url=f"{base_url}/flower_photos.tgz")
    assert not target.exists() and not list((tmp_path / "flower_data").iterdir())


@pytest.mark.parametrize("members, links", [({"flower_photos/../../escaped.txt": b"x"}, None),
                                            ({"/tmp/absolute.txt": b"x"}, None),
                                            ({"flower_photos/a.txt": b"x"}, {"flower_photos/link": "/etc/passwd"})])
def test_archives_that_escape_the_target_are_refused(tmp_path, members, links):
    archive = _archive(tmp_path / "evil.tgz", members, links)
    with pytest.raises(command_line.UsageError, match="refusing the archive"):
        flower_photos.extract_tar_safely(archive, tmp_path / "out" / "data")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out" / "data").exists()


# --- issue 21: data that goes away, a lone last image, Ctrl-C while PyTorch loads, a head on a random backbone ----


@pytest.mark.usefixtures("training_only")
def test_an_epoch_whose_images_are_gone_stops_the_run_and_keeps_the_last_good_epoch(tmp_path, monkeypatch, capsys):
    data = make_class_folders(tmp_path / "data", per_class=5)
    real_evaluate = loop.evaluate

    def evaluate_then_unmount(*args, **kwargs):  # the data folder disappears after epoch 1
        result = real_evaluate(*args, **kwargs)
        if data.exists():
            data.rename(tmp_path / "moved")
        return result

    monkeypatch.setattr(loop, "evaluate", evaluate_then_unmount)
    run = tmp_path / "runs" / "gone"
    assert train.main(train_args(data, tmp_path / "runs", "--epochs", "3", "--name", "gone")) == 1
    out, err = capsys.readouterr()
    error, = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and error.startswith("error: epoch 2: only 0 of 12 training images could be read")
    assert f"{data} is gone" in error and f"python train.py --resume {run}" in error and "--data-path" in error
    assert "epoch 2/3" not in out and [row["epoch"] for row in read_metrics(run)] == ["1"]
    assert load(run / "last.pth")["epoch"] == 1  # resumable from the last good epoch
    monkeypatch.setattr(loop, "evaluate", real_evaluate)
    assert train.main(["--resume", str(run), "--data-path", str(tmp_path / "moved"), "--progress", "false"]) == 0


def test_an_epoch_that_read_no_image_is_never_the_best():
    run = type("Run", (), {})()
    run.args = train.build_parser().parse_args(["--weights", "none"])
    run.progress, run.folder = train.Progress(), type("Folder", (), {"writes": False})()
    run.split, run.ddp = loop.DataSplit("data", ["a", "b"], ["x"] * 2, [0, 1]), Distributed()
    empty = loop.EpochResult(0.0, 0.0, 0, 1.0, torch.zeros(2, 2, dtype=torch.int64))
    train.end_of_epoch(run, 1, 0.01, empty, empty)
    assert run.progress.best_epoch == -1


@pytest.mark.usefixtures("training_only")
def test_a_last_training_batch_of_one_image_at_32_px_trains(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=6)  # 15 training images: batches of 7, 7 and 1
    assert train.main(train_args(data, tmp_path / "runs", "--image-size", "32", "--batch-size", "7", "--epochs", "1",
                                 "--name", "lone")) == 0
    assert "Traceback" not in capsys.readouterr().err
    _fails_with(train_args(data, tmp_path / "runs", "--image-size", "32", "--batch-size", "1"), capsys,
                "--batch-size 1 at --image-size 32")


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


def test_frozen_layers_on_a_random_backbone_are_warned_about(capsys):
    args = train.build_parser().parse_args(["--weights", "none", "--freeze-layers", "true"])
    train.build_model(flags.fill_defaults(args), 3, None, Distributed())
    warning, = capsys.readouterr().err.splitlines()
    assert warning.startswith("warning: --freeze-layers true with --weights none trains only the head")
