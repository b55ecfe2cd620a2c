"""INT8 exports (effnet/inference/int8.py): export.py --int8 on a trained run, its agreement check and refusal,
and --precision int8 in predict.py, evaluate.py and app.py's classifier."""
import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_export import fails_with
from test_predict import json_lines, val_images

import evaluate
import export
import predict
from effnet.inference import int8, onnx_conversion
from effnet.inference.classifier import Classifier
from effnet.inference.export_format import EXPORT_FORMAT
from effnet.model_flags import classifier_from_flags


@pytest.fixture(scope="module")
def int8_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the session's trained run with its INT8 export (default threshold), and export.py's output."""
    run = tmp_path_factory.mktemp("int8") / "run"
    shutil.copytree(trained_run, run)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        keep_the_float_export(patch, run)
        real_range = int8._CalibrationPhotos.set_range
        patch.setattr(int8._CalibrationPhotos, "set_range",
                      lambda self, start_index, end_index: (CALIBRATION_RANGES.append((start_index, end_index)),
                                                            real_range(self, start_index, end_index)))
        assert export.main([str(run / "best.pth"), "--int8"]) == 0
    return run, out.getvalue()


CALIBRATION_RANGES: list[tuple[int, int]] = []  # the batches ONNX Runtime's calibrator asked for, pass by pass


def keep_the_float_export(patch: pytest.MonkeyPatch, run: Path) -> None:
    """export.py takes the run's best.onnx as training wrote and checked it, instead of exporting the same
    network again (seconds of PyTorch's exporter; test_export.py tests that part)."""
    exported = (run / "best.onnx", onnx_conversion.ExportCheck(4, False, 0.0, 4))
    patch.setattr(onnx_conversion, "export_checkpoint", lambda *args: exported)


def test_the_int8_export_of_a_trained_run_agrees_with_float32_and_says_so(int8_run):
    run, out = int8_run
    quantized = run / "best.int8.onnx"
    split = json.loads((run / "split.json").read_text())
    validation = len(split["val"])
    assert f"wrote {quantized} (" in out and "INT8)" in out
    assert "validation photos" in out and "accuracy float32 " in out and ", int8 " in out
    metadata = {entry.key: entry.value for entry in onnx.load(quantized).metadata_props}
    assert metadata["precision"] == "int8" and metadata["format"] == EXPORT_FORMAT
    calibration, agreement = json.loads(metadata["calibration"]), json.loads(metadata["agreement"])
    assert calibration["photos"] == min(len(split["train"]), int8.CALIBRATION_PHOTOS)
    # what ONNX Runtime's CalibPercentile 99.99 means with asymmetric ranges: 0.005% cut from each end
    assert calibration["method"].startswith("Percentile: from the 0.005th to the 99.995th percentile")
    assert "CalibPercentile 99.99" in calibration["method"]
    assert all(line.startswith("wrote ") for line in out.splitlines()), out  # no calibrator chatter on stdout
    batches = -(-calibration["photos"] // int8.CALIBRATION_BATCH)  # one pass per batch: memory for one batch only
    assert CALIBRATION_RANGES == [(index, index + 1) for index in range(batches)]
    assert calibration["format"] == "QDQ" and calibration["weights"] == "int8 per channel"
    assert agreement["photos"] == validation and agreement["same_top1"] >= 0.99 * validation
    assert f"for {agreement['same_top1']} of {validation} validation photos" in out
    graph = onnx.load(quantized).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)  # really quantized
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer)  # int8 weights
    assert quantized.stat().st_size < 0.5 * (run / "best.onnx").stat().st_size


def test_predict_evaluate_and_the_app_run_the_int8_export_when_asked(int8_run, tmp_path, capsys):
    run, _ = int8_run
    photos, labels = val_images(run)
    best, quantized = str(run / "best.pth"), str(run / "best.int8.onnx")
    assert Classifier.from_weights(best).backend.origin == str(run / "best.onnx")  # float32 by default
    classifier = Classifier.from_weights(best, precision="int8")
    assert classifier.backend.name == "onnxruntime" and classifier.backend.origin == quantized
    assert classifier.backend.card.precision == "int8"
    float32 = Classifier.from_weights(best)
    batch = np.stack([float32.preprocess(p) for p in photos])
    expected, answered = float32.probabilities(batch), classifier.probabilities(batch)
    assert np.allclose(answered.sum(1), 1, atol=1e-4)  # the softmax stays float32
    assert (expected.argmax(1) == answered.argmax(1)).mean() >= 0.99
    for argv in ([photos[0], "--weights", best, "--precision", "int8"], [photos[0], "--weights", quantized]):
        capsys.readouterr()
        assert predict.main([*argv, "--json"]) == 0
        [result] = json_lines(capsys.readouterr().out)
        assert result["predictions"][0]["class"] == classifier.class_names[answered[0].argmax()]
    data = json.loads((run / "split.json").read_text())["root"]
    assert evaluate.main([data, "--weights", best, "--precision", "int8", "--output-dir", str(tmp_path / "e")]) == 0
    assert quantized in (tmp_path / "e" / "evaluated.json").read_text()
    import app

    args = app.build_parser().parse_args(["--weights", best, "--precision", "int8"])
    assert classifier_from_flags(args, precision=args.precision).backend.origin == quantized


def test_int8_requests_that_cannot_be_served_are_one_line_errors(int8_run, tmp_path, capsys):
    run, _ = int8_run
    photo = val_images(run)[0][0]
    best = str(run / "best.pth")
    fails_with([photo, "--weights", best, "--precision", "int8", "--cam"], capsys, "--precision int8",
               "Grad-CAM (--cam)")
    fails_with([photo, "--weights", best, "--precision", "int8", "--backend", "torch"], capsys, "--backend torch")
    fails_with([photo, "--weights", best, "--csv", str(run / "best.int8.onnx")], capsys, "the INT8 export")
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(run / "best.pth", lone / "best.pth")
    fails_with([photo, "--weights", str(lone / "best.pth"), "--precision", "int8"], capsys,
               f"there is no {lone / 'best.int8.onnx'}", f"python export.py {lone / 'best'}.pth --int8")
    fails_with([str(lone / "best.pth"), "--int8"], capsys, "split.json does not exist", program=export)
    assert sorted(p.name for p in lone.iterdir()) == ["best.pth"]  # refused before anything was written


def test_a_stale_int8_export_is_refused_with_the_command_that_rewrites_it(int8_run, tmp_path, capsys):
    run, _ = int8_run
    stale = tmp_path / "run"
    shutil.copytree(run, stale)
    with open(stale / "best.pth", "ab") as checkpoint:
        checkpoint.write(b"\0")  # a newer best.pth, as far as size and checksum tell
    fails_with([val_images(run)[0][0], "--weights", str(stale / "best.pth"), "--precision", "int8"], capsys,
               "not exported from", f"python export.py {stale / 'best.pth'} --int8")


def test_an_int8_model_below_the_agreement_threshold_is_refused_and_not_written(trained_run, tmp_path, monkeypatch,
                                                                                 capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    real_batches = int8._CalibrationPhotos.get_next

    def squeezed(self):  # calibrated on images of a hundredth the contrast: every real activation clips
        batch = real_batches(self)
        return batch and {name: images / 100 for name, images in batch.items()}

    monkeypatch.setattr(int8._CalibrationPhotos, "get_next", squeezed)
    monkeypatch.setattr(int8, "CALIBRATION_PHOTOS", 16)  # enough to calibrate badly
    keep_the_float_export(monkeypatch, run)
    line = fails_with([str(run / "best.pth"), "--int8"], capsys, f"{run / 'best.int8.onnx'}: the INT8 model was "
                      "refused", "validation photos", "at least 99% needed", "accuracy float32", "--min-agreement",
                      program=export)
    assert "nothing was written" in line
    assert not (run / "best.int8.onnx").exists() and not list(run.glob(".best.int8.onnx*"))
    with pytest.raises(SystemExit) as stopped:
        export.main([str(run / "best.pth"), "--int8", "--min-agreement", "101"])
    assert stopped.value.code == 2 and "101: give a percentage from 0 to 100" in capsys.readouterr().err


# --- hostile round 3: an INT8 file is what its name says, and --precision is what runs --------------------------


def strip_metadata(source: Path, target: Path) -> Path:
    """A plain copy of an export: the same network, no metadata to say what it is."""
    model = onnx.load(source)
    del model.metadata_props[:]
    onnx.save(model, target)
    return target


def test_a_file_of_the_wrong_precision_is_refused_in_one_line_naming_it(int8_run, tmp_path, capsys):
    run, _ = int8_run
    photo = val_images(run)[0][0]
    mixed = tmp_path / "run"  # float32 in best.int8.onnx and INT8 in best.onnx: the names lie
    shutil.copytree(run, mixed)
    shutil.copy(run / "best.onnx", mixed / "best.int8.onnx")
    shutil.copy(run / "best.int8.onnx", mixed / "best.onnx")
    best, quantized = str(mixed / "best.pth"), str(mixed / "best.int8.onnx")
    for argv in ([photo, "--weights", best, "--precision", "int8"], [photo, "--weights", quantized],
                 [photo, "--weights", quantized, "--precision", "int8"]):
        fails_with(argv, capsys, f"{quantized} is a float32 model", "its metadata")
    fails_with([photo, "--weights", str(mixed / "best.onnx")], capsys, f"{mixed / 'best.onnx'} is an INT8 model",
               "--precision int8")
    fails_with([photo, "--weights", best, "--backend", "onnxruntime"], capsys, f"{mixed / 'best.onnx'} is an INT8 "
               "model")
    data = json.loads((run / "split.json").read_text())["root"]
    fails_with([data, "--weights", best, "--precision", "int8", "--output-dir", str(tmp_path / "e")], capsys,
               f"{quantized} is a float32 model", program=evaluate)
    capsys.readouterr()
    assert predict.main([photo, "--weights", best, "--json"]) == 0  # auto: PyTorch, with a note why
    assert f"{mixed / 'best.onnx'} is an INT8 model" in capsys.readouterr().err


def test_a_plain_export_is_known_for_int8_by_its_operators(int8_run, tmp_path, capsys):
    run, _ = int8_run
    photo = val_images(run)[0][0]
    names = ["--class-indices", str(run / "class_indices.json")]
    plain_int8 = strip_metadata(run / "best.int8.onnx", tmp_path / "plain.int8.onnx")
    plain_float = strip_metadata(run / "best.onnx", tmp_path / "other.int8.onnx")
    capsys.readouterr()
    assert predict.main([photo, "--weights", str(plain_int8), "--precision", "int8", *names]) == 0
    fails_with([photo, "--weights", str(plain_float), "--precision", "int8", *names], capsys,
               f"{plain_float} is a float32 model", "its operators")
    fails_with([photo, "--weights", str(strip_metadata(run / "best.int8.onnx", tmp_path / "q.onnx")), *names],
               capsys, f"{tmp_path / 'q.onnx'} is an INT8 model", "its operators")


def run_with_split(trained_run: Path, folder: Path, change) -> Path:
    """A copy of the run whose split.json `change(split)` has edited, with its photos copied beside it."""
    run = folder / "run"
    shutil.copytree(trained_run, run)
    split = json.loads((run / "split.json").read_text())
    shutil.copytree(split["root"], folder / "photos")
    split["root"] = str(folder / "photos")
    change(split)
    (run / "split.json").write_text(json.dumps(split))
    return run


def test_split_json_labels_outside_the_classes_or_no_training_photos_are_refused(trained_run, tmp_path, capsys):
    def labels_99(split):
        split["val"] = [[photo, 99] for photo, _ in split["val"]]

    run = run_with_split(trained_run, tmp_path / "a", labels_99)
    fails_with([str(run / "best.pth"), "--int8", "--min-agreement", "0"], capsys, f"{run / 'split.json'}",
               "label 99", "not one of the 3 classes", program=export)
    run = run_with_split(trained_run, tmp_path / "b", lambda split: split.update(train=[]))
    line = fails_with([str(run / "best.pth"), "--int8"], capsys, f"{run / 'split.json'} lists no train photos",
                      program=export)
    assert "none of the 0" not in line
    assert not list((tmp_path / "a" / "run").glob("*.int8.onnx")) and not list(run.glob("*.int8.onnx"))


def test_unreadable_calibration_photos_are_named_in_a_warning(trained_run, tmp_path, monkeypatch, capsys):
    broken = []

    def break_half(split):  # half of the 16 photos the calibration will take
        for relative in int8.spread([relative for relative, _ in split["train"]], 16)[::2]:
            (Path(split["root"]) / relative).write_bytes(b"not a photo any more")
            broken.append(str(Path(split["root"]) / relative))

    run = run_with_split(trained_run, tmp_path, break_half)
    monkeypatch.setattr(int8, "CALIBRATION_PHOTOS", 16)
    keep_the_float_export(monkeypatch, run)
    assert export.main([str(run / "best.pth"), "--int8", "--min-agreement", "0"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert any(path in line for line in warnings for path in broken), err
    assert any("8 of the 16 calibration photos could not be read" in line for line in warnings), err
    assert len(warnings) <= int8.UNREADABLE_NAMED + 1, err
