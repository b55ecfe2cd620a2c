"""Deployment: ONNX export and its check, the ONNX Runtime / OpenVINO backends, backend choice, stale and bad
exports, test-time augmentation, streamed output, and non-finite outputs on every backend."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_predict import json_lines, val_images

import export
import model as M
import predict
from effnet.data.images import images_under
from effnet.inference import exported_backends, onnx_conversion, runtimes
from effnet.inference.classifier import Classifier, UsageError
from effnet.inference.export_format import is_exported_from
from effnet.inference.runtimes import is_installed
from my_dataset import MyDataSet, eval_transform

REPO = Path(__file__).resolve().parents[1]
openvino_only = pytest.mark.skipif(not is_installed("openvino"), reason="openvino is not installed")
EXPORTED_BACKENDS = ["onnxruntime", pytest.param("openvino", marks=openvino_only)]


def copy_run(trained_run: Path, destination: Path) -> Path:
    shutil.copytree(trained_run, destination)
    return destination


def fails_with(argv: list[str], capsys, *fragments: str, program=predict) -> str:
    """The program exits 2 with one `error:` line holding every fragment, and no traceback."""
    capsys.readouterr()
    status = program.main(argv)
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error:"), err
    for fragment in fragments:
        assert fragment in line, line
    return line


# --- export ---------------------------------------------------------------------------------------------------


def test_training_writes_a_checked_best_onnx_that_predict_uses_by_default(trained_run, capsys):
    exported = trained_run / "best.onnx"
    assert exported.is_file()
    card = exported_backends.OnnxRuntimeBackend(exported).card
    assert card.class_names == ["blue", "green", "red"] and card.variant == "b0"
    assert card.preprocessing.crop == 48 and card.outputs_probabilities  # the run's --image-size
    assert is_exported_from(card.checkpoint, trained_run / "best.pth")
    paths, _ = val_images(trained_run)
    fast = Classifier.from_weights(trained_run / "best.pth")
    slow = Classifier.from_weights(trained_run / "best.pth", backend="torch")
    assert (fast.backend.name, slow.backend.name) == ("onnxruntime", "torch")
    batch = np.stack([fast.preprocess(p) for p in paths])
    answers, expected = fast.probabilities(batch), slow.probabilities(batch)
    np.testing.assert_allclose(answers, expected, atol=1e-4)  # float rounding, different kernels
    assert np.array_equal(answers.argmax(1), expected.argmax(1))


def test_export_program_checks_against_pytorch_on_photos(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    (run / "best.onnx").unlink()
    photos = str(Path(val_images(trained_run)[0][0]).parent)
    assert export.main([str(run / "best.pth"), "--images", photos]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run / 'best.onnx'}" in out and "checked against PyTorch on" in out and " photos: " in out
    assert "max |probability difference|" in out and "same top-1 class for" in out
    assert Classifier.from_weights(run / "best.pth").backend.name == "onnxruntime"


def test_a_bare_tutorial_state_dict_exports_with_its_variant_and_class_names(trained_run, tmp_path, capsys):
    network = M.model_from_checkpoint(trained_run / "best.pth")
    torch.save(network.state_dict(), tmp_path / "model-29.pth")
    (tmp_path / "names.json").write_text(json.dumps({"0": "blue", "1": "green", "2": "red"}))
    fails_with([str(tmp_path / "model-29.pth"), "--class-indices", str(tmp_path / "none.json")], capsys,
               "none.json", program=export)
    assert export.main([str(tmp_path / "model-29.pth"), "--model", "b0", "--class-indices",
                        str(tmp_path / "names.json")]) == 0
    assert "synthetic images" in capsys.readouterr().out
    card = exported_backends.OnnxRuntimeBackend(tmp_path / "model-29.onnx").card
    assert card.class_names == ["blue", "green", "red"] and card.preprocessing.crop == 224  # b0's own size


def test_an_export_that_does_not_match_pytorch_leaves_the_old_file(trained_run, tmp_path, monkeypatch, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    before = (run / "best.onnx").read_bytes()
    monkeypatch.setattr(onnx_conversion, "TOLERANCE", -1.0)  # no difference is small enough now
    fails_with([str(run / "best.pth")], capsys, "does not match PyTorch", "nothing was written", program=export)
    assert (run / "best.onnx").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in trained_run.iterdir())  # no leftovers


def test_export_refuses_to_write_over_the_weights_or_with_the_wrong_suffix(trained_run, capsys):
    best = str(trained_run / "best.pth")
    fails_with([best, "--output", best.replace(".pth", ".onnx.pth")], capsys, "must end in .onnx", program=export)
    fails_with([best, "--images", "/nonexistent/photos"], capsys, "no such file or folder", program=export)


def test_resume_of_a_finished_run_writes_its_missing_best_onnx(trained_run, tmp_path, capsys):
    import train

    run = copy_run(trained_run, tmp_path / "run")
    (run / "best.onnx").unlink()
    assert train.main(["--resume", str(run)]) == 0
    assert f"wrote {run / 'best.onnx'}" in capsys.readouterr().out
    assert is_exported_from(exported_backends.OnnxRuntimeBackend(run / "best.onnx").card.checkpoint,
                                         run / "best.pth")


@openvino_only
def test_openvino_format(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    assert export.main([str(run / "best.pth"), "--format", "openvino"]) == 0
    assert (run / "best.xml").is_file() and (run / "best.bin").is_file()
    paths, _ = val_images(trained_run)
    status, from_ir = run_json(capsys, *paths[:4], "--weights", str(run / "best.xml"))
    _, from_torch = run_json(capsys, *paths[:4], "--weights", str(run / "best.pth"), "--backend", "torch")
    assert status == 0 and same_answers(from_ir, from_torch)


# --- backends on real photos ------------------------------------------------------------------------------------


def test_onnx_preprocessing_and_answers_equal_torch_on_every_flower_photo(trained_run, flower_sample):
    """The trained colour model, on real photos: the same tensors as validation during training, the same answers."""
    photos = list(images_under(flower_sample))
    assert len(photos) == 150
    fast = Classifier.from_weights(trained_run / "best.pth")
    torch_path = Classifier.from_weights(trained_run / "best.pth", backend="torch")
    assert fast.backend.name == "onnxruntime"
    settings = torch.load(trained_run / "best.pth", weights_only=True)["image"]
    validation = MyDataSet(photos, [0] * len(photos), eval_transform(settings["eval_resize"], settings["eval_crop"],
                                                                     settings["interpolation"]),
                           decode_size=settings["eval_resize"])
    others = [Classifier.from_weights(trained_run / "best.onnx", backend="openvino")
              ] if is_installed("openvino") else []
    top_classes = set()
    for start in range(0, len(photos), 50):
        chunk = photos[start:start + 50]
        batch = np.stack([fast.preprocess(p) for p in chunk])
        for position, (array, photo) in enumerate(zip(batch, chunk), start=start):
            assert np.array_equal(array, validation[position][0].numpy()), photo  # the same tensor, bit for bit
        expected = torch_path.probabilities(batch)
        top_classes |= set(expected.argmax(1).tolist())
        for classifier in [fast, *others]:
            answers = classifier.probabilities(batch)
            np.testing.assert_allclose(answers, expected, atol=1e-4)
            assert np.array_equal(answers.argmax(1), expected.argmax(1)), classifier.backend.name
    assert len(top_classes) >= 2  # the photos get different answers: the comparison means something


@pytest.mark.parametrize("backend", ["torch", *EXPORTED_BACKENDS])
def test_test_time_augmentation_averages_each_photo_and_its_mirror_image(trained_run, flower_sample, backend):
    photos = list(images_under(flower_sample))[::15]
    weights = trained_run / ("best.pth" if backend == "torch" else "best.onnx")
    plain = Classifier.from_weights(weights, backend=backend)
    tta = Classifier.from_weights(weights, backend=backend, tta=True)
    batch = np.stack([plain.preprocess(p) for p in photos])
    mirrored = np.ascontiguousarray(batch[..., ::-1])
    expected = (plain.probabilities(batch) + plain.probabilities(mirrored)) / 2
    np.testing.assert_allclose(tta.probabilities(batch), expected, atol=1e-6)
    assert np.abs(tta.probabilities(batch) - plain.probabilities(batch)).max() > 1e-6  # the mirror image counts


def test_the_onnx_path_imports_neither_torch_nor_torchvision_nor_matplotlib(trained_run):
    """Nor, for one photo, what only figures and folders of photos need (a one-photo run counts milliseconds)."""
    photo = val_images(trained_run)[0][0]
    unneeded = ('torch', 'torchvision', 'matplotlib', 'effnet.reports.figures', 'concurrent.futures', 'csv')
    code = ("import sys, predict; status = predict.main([sys.argv[1], '--weights', sys.argv[2], '--json']); "
            f"print(sorted(m for m in {unneeded!r} if m in sys.modules), status)")
    result = subprocess.run([sys.executable, "-c", code, photo, str(trained_run / "best.pth")], cwd=REPO,
                            capture_output=True, text=True, check=True)
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "[] 0", result.stdout + result.stderr
    assert json.loads(lines[0])["predictions"][0]["class"] in ("blue", "green", "red")


# --- choosing a backend, stale and bad exports ------------------------------------------------------------------


def run_json(capsys, *argv: str) -> tuple[int, list[dict]]:
    capsys.readouterr()
    status = predict.main([*argv, "--json"])
    return status, json_lines(capsys.readouterr().out)


def same_answers(first: list[dict], second: list[dict]) -> bool:
    return all([p["class"] for p in a["predictions"]] == [p["class"] for p in b["predictions"]] and
               np.allclose([p["probability"] for p in a["predictions"]],
                           [p["probability"] for p in b["predictions"]], atol=1e-5) for a, b in zip(first, second))


def test_a_stale_best_onnx_is_never_used_silently(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    os.utime(run / "best.pth", (1, 1))  # as a copy that does not keep file times: the content still matches
    assert Classifier.from_weights(run / "best.pth").backend.name == "onnxruntime"
    checkpoint = torch.load(run / "best.pth", weights_only=True)
    checkpoint["model"]["classifier.1.bias"] += 1.0  # a newer best.pth, as a resumed run writes
    torch.save(checkpoint, run / "best.pth")
    photo = val_images(trained_run)[0][0]
    status = predict.main([photo, "--weights", str(run / "best.pth")])
    err = capsys.readouterr().err
    assert status == 0 and "note:" in err and "export it again" in err and "using PyTorch" in err
    fails_with([photo, "--weights", str(run / "best.pth"), "--backend", "onnxruntime"], capsys,
               "not exported from", "python export.py")
    fails_with([photo, "--weights", str(run / "best.onnx")], capsys, "exported from an earlier best.pth",
               "python export.py")


def test_a_plain_onnx_needs_class_names_and_they_must_fit(trained_run, tmp_path, capsys):
    import onnx

    plain = onnx.load(trained_run / "best.onnx")
    del plain.metadata_props[:]
    onnx.save(plain, tmp_path / "plain.onnx")
    photo = val_images(trained_run)[0][0]
    fails_with([photo, "--weights", str(tmp_path / "plain.onnx")], capsys, "class_indices.json", "--class-indices")
    (tmp_path / "five.json").write_text(json.dumps({str(i): f"c{i}" for i in range(5)}))
    fails_with([photo, "--weights", str(tmp_path / "plain.onnx"), "--class-indices", str(tmp_path / "five.json")],
               capsys, "outputs 3 classes but has 5 class names")
    (tmp_path / "class_indices.json").write_text(json.dumps({"0": "blue", "1": "green", "2": "red"}))
    status, plain_answers = run_json(capsys, photo, "--weights", str(tmp_path / "plain.onnx"), "--model", "b0")
    _, ours = run_json(capsys, photo, "--weights", str(trained_run / "best.onnx"))
    assert status == 0 and same_answers(plain_answers, ours)  # b0's preprocessing at the model's own 64 px


def test_corrupt_truncated_and_missing_onnx_files(trained_run, tmp_path, capsys):
    photo = val_images(trained_run)[0][0]
    data = (trained_run / "best.onnx").read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[:len(data) // 2])
    (tmp_path / "noise.onnx").write_bytes(bytes(range(256)) * 64)
    for name in ("truncated.onnx", "noise.onnx"):
        fails_with([photo, "--weights", str(tmp_path / name)], capsys,
                   f"{tmp_path / name} is not a readable ONNX model")
    fails_with([photo, "--weights", str(tmp_path / "missing.onnx")], capsys, "does not exist")
    fails_with([photo, "--weights", str(tmp_path / "noise.onnx"), "--backend", "torch"], capsys,
               "is an exported model", "--backend torch")
    with pytest.raises(UsageError, match="unknown backend 'tensorflow'"):
        Classifier.from_weights(trained_run / "best.pth", backend="tensorflow")


def test_requests_only_pytorch_can_serve_take_the_torch_backend(trained_run, capsys):
    best = str(trained_run / "best.pth")
    assert Classifier.from_weights(best, precision="bfloat16").backend.name == "torch"
    assert Classifier.from_weights(best, gradients=True).backend.name == "torch"
    fails_with([val_images(trained_run)[0][0], "--weights", best, "--backend", "onnxruntime", "--cam"], capsys,
               "Grad-CAM (--cam) needs the torch backend")
    fast = Classifier.from_weights(best)
    view, cam, target = fast.grad_cam(val_images(trained_run)[0][0])  # opens the checkpoint with torch for it
    assert fast.backend.name == "onnxruntime" and cam.shape == view.size[::-1]


def test_without_onnxruntime_prediction_falls_back_to_torch_with_a_note(trained_run, monkeypatch, capsys):
    monkeypatch.setattr(runtimes, "is_installed", lambda backend: False)
    photo = val_images(trained_run)[0][0]
    status, results = run_json(capsys, photo, "--weights", str(trained_run / "best.pth"), "--backend", "onnxruntime")
    assert status == 0 and results[0]["predictions"]
    capsys.readouterr()
    predict.main([photo, "--weights", str(trained_run / "best.pth"), "--backend", "onnxruntime"])
    err = capsys.readouterr().err.strip()
    assert err == "note: --backend onnxruntime: onnxruntime is not installed (pip install onnxruntime); using PyTorch"


# --- streamed output, and outputs that are not numbers -----------------------------------------------------------


def test_json_lines_and_csv_rows_stream_in_input_order(trained_run, tmp_path, capsys):
    paths, _ = val_images(trained_run)
    (tmp_path / "fake.jpg").write_text("not an image")
    table = tmp_path / "results.csv"
    argv = [paths[0], str(tmp_path / "fake.jpg"), *paths[1:5], str(tmp_path / "nothing.jpg"), "--weights",
            str(trained_run / "best.pth"), "--top-k", "2", "--batch-size", "2", "--csv", str(table)]
    status, results = run_json(capsys, *argv)
    assert status == 1 and [r["image"] for r in results] == argv[:7]
    assert [r["error"] is None for r in results] == [True, False, True, True, True, True, False]
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image", "class_1", "probability_1", "class_2", "probability_2", "error"]
    assert [row["image"] for row in rows] == argv[:7] and rows[1]["error"].startswith("UnidentifiedImageError")
    assert rows[0]["class_1"] == results[0]["predictions"][0]["class"]
    assert float(rows[0]["probability_1"]) == pytest.approx(results[0]["predictions"][0]["probability"], abs=1e-6)


def test_a_progress_bar_on_a_terminal(trained_run, monkeypatch, capsys):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(predict.Output, "progress_delay", 0.0)  # at once, not after a second
    paths, _ = val_images(trained_run)
    assert predict.main([*paths[:3], "--weights", str(trained_run / "best.pth"), "--json"]) == 0
    assert "3image" in terminal.getvalue().replace(" ", "")  # "3 image [00:00, ...]" as tqdm draws it
    assert len(json_lines(capsys.readouterr().out)) == 3  # the results themselves go to stdout as usual


def test_output_starts_before_the_input_is_all_found(trained_run, tmp_path):
    """A folder of many photos streams: the first results arrive while later photos are still unread."""
    source = Path(val_images(trained_run)[0][0])
    for index in range(96):
        shutil.copy(source, tmp_path / f"{index:03d}{source.suffix}")
    classifier = Classifier.from_weights(trained_run / "best.pth")
    consumed = []

    def inputs():
        for path in predict.expand_inputs([str(tmp_path)]):
            consumed.append(path)
            yield path

    first = next(iter(classifier.scores(inputs(), batch_size=8)))
    assert first.error is None and len(consumed) <= 2 * 8  # decoded at most two batches ahead


def nan_checkpoint(trained_run: Path, folder: Path) -> Path:
    checkpoint = torch.load(trained_run / "best.pth", weights_only=True)
    checkpoint["model"]["classifier.1.weight"][0, 0] = float("nan")
    folder.mkdir()
    torch.save(checkpoint, folder / "best.pth")
    return folder / "best.pth"


@pytest.mark.parametrize("backend", ["torch", *EXPORTED_BACKENDS])
def test_outputs_that_are_not_finite_are_an_error_on_every_backend(trained_run, tmp_path, capsys, backend):
    import onnx
    from onnx import numpy_helper

    weights = nan_checkpoint(trained_run, tmp_path / "nan")
    if backend != "torch":  # an export with a NaN weight (export.py itself refuses to write one)
        exported = onnx.load(trained_run / "best.onnx")
        initializer = max(exported.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        values = numpy_helper.to_array(initializer).copy()
        values.flat[0] = np.nan
        initializer.CopyFrom(numpy_helper.from_array(values, initializer.name))
        onnx.save(exported, tmp_path / "nan.onnx")
        weights = tmp_path / "nan.onnx"
    capsys.readouterr()
    status = predict.main([*val_images(trained_run)[0][:3], "--weights", str(weights), "--backend", backend, "--json"])
    captured = capsys.readouterr()
    assert status == 1 and "NaN" not in captured.out and "Traceback" not in captured.err
    assert captured.err.strip().startswith("error: the model's outputs are not finite")


def test_export_refuses_a_model_with_nan_weights(trained_run, tmp_path, capsys):
    weights = nan_checkpoint(trained_run, tmp_path / "nan")
    fails_with([str(weights)], capsys, "does not match PyTorch", program=export)
    assert not weights.with_suffix(".onnx").exists()


def test_export_refuses_impossible_opsets_and_folders_and_says_when_no_photo_could_be_read(trained_run, tmp_path,
                                                                                           capsys):
    for opset in ("1", "many"):  # refused while the flags are read
        with pytest.raises(SystemExit) as stopped:
            export.main([str(trained_run / "best.pth"), "--output", str(tmp_path / "x.onnx"), "--opset", opset])
        assert stopped.value.code == 2
        assert f"argument --opset: {opset}: choose an opset from 13 to " in capsys.readouterr().err
    # newer than PyTorch writes: known once PyTorch is imported, still before anything is written
    fails_with([str(trained_run / "best.pth"), "--output", str(tmp_path / "x.onnx"), "--opset", "1000"], capsys,
               "--opset 1000: choose an opset from 13 to ", program=export)
    assert not (tmp_path / "x.onnx").exists()
    (tmp_path / "folder.onnx").mkdir()
    assert export.main([str(trained_run / "best.pth"), "--output", str(tmp_path / "folder.onnx")]) == 2
    assert capsys.readouterr().err == (f"error: --output {tmp_path / 'folder.onnx'} is a folder; give a file name "
                                       f"ending in .onnx\n")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"not a photo")
    output = str(tmp_path / "x.onnx")
    assert export.main([str(trained_run / "best.pth"), "--output", output, "--images", str(junk)]) == 0
    out, err = capsys.readouterr()
    assert "on 4 synthetic images" in out
    assert err == "warning: none of the 1 --images could be read, so the check used synthetic images\n"


# --- issue 21: export.py's output follows the rule of every output flag ----------------------------------------


def test_export_replaces_its_own_exports_but_nothing_else_unless_told(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    best = str(run / "best.pth")
    assert export.main([best]) == 0  # best.onnx beside it, training's own export: replaced
    foreign = run / "best.onnx"
    foreign.write_bytes(b"an ONNX file from elsewhere")
    fails_with([best], capsys, f"{foreign} exists and is not an export of this project; pass --overwrite",
               program=export)
    assert foreign.read_bytes() == b"an ONNX file from elsewhere"
    assert export.main([best, "--overwrite"]) == 0 and exported_backends.load(foreign).variant == "b0"
    photo = val_images(run)[0][0]
    (tmp_path / "photo.onnx").symlink_to(photo)
    before = Path(photo).read_bytes()
    fails_with([best, "--output", str(tmp_path / "photo.onnx"), "--images", photo, "--overwrite"], capsys,
               f"would overwrite the photo {photo}", program=export)
    assert Path(photo).read_bytes() == before


def test_export_names_its_own_arguments_in_its_messages(trained_run, tmp_path, monkeypatch, capsys):
    line = fails_with([str(trained_run / "best.onnx")], capsys, "is an exported model already",
                      f"such as {trained_run / 'best.pth'}", program=export)
    assert "--output" not in line
    monkeypatch.chdir(tmp_path)  # no runs here
    line = fails_with([], capsys, "no trained checkpoint found", "python export.py CHECKPOINT", program=export)
    assert "--weights" not in line


# --- hostile round 3: another run's export, and --output with --int8 --------------------------------------------


def test_export_never_writes_into_another_runs_folder(trained_run, tmp_path, capsys):
    a, b = copy_run(trained_run, tmp_path / "A"), copy_run(trained_run, tmp_path / "B")
    before = (b / "best.onnx").read_bytes()
    for extra in ([], ["--overwrite"]):
        fails_with([str(a / "best.pth"), "--output", str(b / "best.onnx"), *extra], capsys,
                   f"best.onnx is a file of the run folder {b}", "not even with --overwrite", program=export)
    assert (b / "best.onnx").read_bytes() == before


def test_output_with_int8_names_the_float32_export_and_min_agreement_needs_int8(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    before = (run / "best.onnx").read_bytes()
    fails_with([str(run / "best.pth"), "--int8", "--min-agreement", "0", "--output", str(run / "best.int8.onnx")],
               capsys, f"--output {run / 'best.int8.onnx'}", "--output names the float32 export",
               f"the INT8 one goes beside it as {run / 'best'}.int8.onnx", program=export)
    fails_with([str(run / "best.pth"), "--output", str(tmp_path / "model.int8.onnx")], capsys,
               "--output names the float32 export", program=export)
    fails_with([str(run / "best.pth"), "--min-agreement", "90"], capsys, "--min-agreement 90 needs --int8",
               program=export)
    assert (run / "best.onnx").read_bytes() == before and not (run / "best.int8.onnx").exists()
    assert not (tmp_path / "model.int8.onnx").exists()
