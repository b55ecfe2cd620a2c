"""train.py's flags and settings: the tutorial's defaults, real switches, and impossible values or combinations
refused in one line before any work (a download, a run folder)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import fails_with, train_args, training_only_args
from imagegen import make_class_folders

import model as M
import predict
import train
from effnet import command_line, hardware, variants
from effnet import weights as W
from effnet.command_line import UsageError
from effnet.data import flower_photos
from effnet.inference.classifier import Classifier
from effnet.training.flags import build_parser

REPO = Path(__file__).resolve().parents[1]


def _fails_with(argv: list[str], capsys, *fragments: str) -> None:
    fails_with(train.main, argv, capsys, *fragments)


def test_flags_default_to_the_tutorial_recipe():
    args = build_parser().parse_args([])
    assert (args.epochs, args.batch_size, args.lr, args.lrf) == (30, 16, 0.01, 0.01)
    assert (args.model, args.weights, args.freeze_layers, args.val_rate) == ("b0", "imagenet", False, 0.2)
    assert hardware.default_workers(16) == min(len(os.sched_getaffinity(0)), 8)


@pytest.mark.parametrize("text, expected", [("False", False), ("false", False), ("0", False), ("no", False),
                                            ("True", True), ("1", True), ("yes", True)])
def test_freeze_layers_is_a_real_switch(text, expected):
    assert build_parser().parse_args(["--freeze-layers", text]).freeze_layers is expected
    assert build_parser().parse_args(["--freeze-layers"]).freeze_layers is True


def test_freeze_layers_rejects_nonsense(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--freeze-layers", "maybe"])
    assert exit_info.value.code == 2 and "expected true or false" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--epochs", "0"), ("--batch-size", "0"), ("--lr", "0"), ("--lrf", "2"),
                                         ("--val-rate", "1"), ("--workers", "-1"), ("--image-size", "16"),
                                         ("--image-size", "100000"), ("--lr", "inf"), ("--lr", "nan"),
                                         ("--name", "../../escape"), ("--name", "..")])
def test_impossible_settings_are_refused_before_any_download(flag, value, tmp_path, capsys, monkeypatch,
                                                                closed_port_url):
    monkeypatch.chdir(tmp_path)  # the default data folder is missing: a late check would try to download first
    monkeypatch.setenv(flower_photos.FLOWER_PHOTOS_URL_ENV, closed_port_url + "/flower_photos.tgz")
    _fails_with(["--weights", "none", flag, value], capsys, f"{flag} {value}")


@pytest.mark.parametrize("seed", ["100000000000000", "-1", str(2**32)])
def test_an_impossible_seed_is_refused_before_anything_is_written(seed, tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    fails_with(train.main, training_only_args(data, tmp_path / "runs", "--seed", seed), capsys,
               f"--seed {seed}: use a whole number from 0 to 4294967295")
    assert not (tmp_path / "runs").exists()


def test_model_names_in_any_case(capsys):
    parse = build_parser().parse_args
    assert [parse(["--model", name]).model for name in ("B0", "b3", "EfficientNet_B7")] == ["b0", "b3", "b7"]
    with pytest.raises(SystemExit) as exit_info:
        parse(["--model", "b9"])
    assert exit_info.value.code == 2 and "unknown EfficientNet variant 'b9'" in capsys.readouterr().err


def test_image_sizes_come_from_the_variant_table():
    for variant, spec in M.VARIANTS.items():
        settings = variants.image_settings(variant, None)
        assert (settings["train_size"], settings["eval_resize"], settings["eval_crop"], settings["interpolation"]) \
            == (spec.train_size, spec.eval_resize, spec.eval_crop, spec.interpolation)
    assert variants.image_settings("b0", 112)["eval_resize"] == 128


def test_class_count_that_disagrees_with_the_folders(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    _fails_with(train_args(data, tmp_path / "runs", "--num_classes", "5"), capsys,
                "--num_classes 5", "has 3 class folders", "--num_classes 3")


def test_a_single_class_is_refused_before_any_work(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=4)
    shutil.rmtree(data / "green")
    for path in (data / "blue").iterdir():  # a class whose images are all unreadable is no class either
        path.write_bytes(b"not an image")
    fails_with(train.main, training_only_args(data, tmp_path / "runs"), capsys, "one class only (red)", "two or more")
    assert not (tmp_path / "runs").exists()
    shutil.rmtree(data / "blue")
    fails_with(train.main, training_only_args(data, tmp_path / "runs"), capsys, "one class only (red)")


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


def test_an_output_folder_that_cannot_be_created(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    (tmp_path / "a_file").write_text("not a folder")
    _fails_with(train_args(data, tmp_path / "a_file"), capsys, f"--output-dir {tmp_path / 'a_file'} is a file")
    _fails_with(train_args(data, data / "runs"), capsys, f"--output-dir {data / 'runs'} lies in the data folder")
    assert not (data / "runs").exists()  # the next run would have taken it for a class


def test_unavailable_device(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    _fails_with(train_args(data, tmp_path / "runs", "--device", "cuda:99"), capsys, "--device cuda:99")
    _fails_with(train_args(data, tmp_path / "runs", "--device", "toaster"), capsys,
                "--device toaster: only cpu, cuda and mps")


def test_the_meta_device_is_refused_in_one_line(trained_run, tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    fails_with(predict.main, [str(data / "red" / "000.jpg"), "--weights", str(trained_run / "best.pth"),
                              "--device", "meta"], capsys, "--device meta: only cpu, cuda and mps")
    fails_with(train.main, training_only_args(data, tmp_path / "runs", "--device", "meta"), capsys, "--device meta")
    with pytest.raises(UsageError, match="--device meta"):
        Classifier(M.efficientnet_b0(num_classes=3), device="meta")


def test_sync_bn_needs_cuda_processes(tmp_path, capsys, monkeypatch, closed_port_url):
    monkeypatch.chdir(tmp_path)  # refused before the missing flower photos would be downloaded
    monkeypatch.setenv(flower_photos.FLOWER_PHOTOS_URL_ENV, closed_port_url + "/flower_photos.tgz")
    _fails_with(["--weights", "none", "--sync-bn"], capsys, "--sync-bn", "torchrun")


def test_an_explicit_gpu_index_is_refused_under_torchrun():
    with pytest.raises(command_line.UsageError, match="LOCAL_RANK"):
        hardware.resolve_device("cuda:1", local_rank=0, distributed=True)


def test_on_a_cpu_of_two_cores_or_fewer_a_cpu_run_loads_its_photos_without_workers(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for cores, on_cpu, elsewhere in ((1, 0, 1), (2, 0, 2), (4, 4, 4), (16, 8, 8)):
        monkeypatch.setattr(hardware, "usable_cpus", lambda cores=cores: cores)
        assert hardware.default_workers(16, cpu) == on_cpu, cores
        assert hardware.default_workers(16, gpu) == hardware.default_workers(16) == elsewhere, cores
    assert hardware.default_workers(1, gpu) == 0  # batch 1: no workers, as before


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
