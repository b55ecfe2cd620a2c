"""predict.py: checkpoints, bare state_dicts of both layouts, agreement with validation, and bad input."""
import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import model as M
import predict
from effnet import weights as W
from effnet.inference.class_names import imagenet_class_names
from my_dataset import MyDataSet, eval_transform
from utils import StepSettings, evaluate_epoch


def val_images(run: Path) -> tuple[list[str], list[int]]:
    split = json.loads((run / "split.json").read_text())
    return [os.path.join(split["root"], p) for p, _ in split["val"]], [label for _, label in split["val"]]


def json_lines(text: str) -> list[dict]:
    """predict.py --json prints one JSON object per image and line."""
    return [json.loads(line) for line in text.splitlines()]


def run_json(capsys, *argv: str) -> tuple[int, list[dict]]:
    capsys.readouterr()
    status = predict.main([*argv, "--json"])
    return status, json_lines(capsys.readouterr().out)


def test_predict_agrees_with_the_validation_loop(trained_run):
    checkpoint = torch.load(trained_run / "best.pth", weights_only=True)
    model = M.model_from_checkpoint(checkpoint)
    paths, labels = val_images(trained_run)
    image = checkpoint["image"]
    loader = torch.utils.data.DataLoader(
        MyDataSet(paths, labels, eval_transform(image["eval_resize"], image["eval_crop"], image["interpolation"]),
                  decode_size=image["eval_resize"]),
        batch_size=len(paths), collate_fn=MyDataSet.collate_fn)
    images, _ = next(iter(loader))
    model.eval()
    with torch.no_grad():
        expected = model(images).softmax(1)
    result = evaluate_epoch(model, loader, StepSettings(torch.device("cpu")), progress=False)
    assert result.accuracy == checkpoint["best_acc"]

    classifier = predict.Classifier.from_weights(trained_run / "best.pth")
    predictions = classifier.predict(paths, top_k=3)
    for row, prediction in zip(expected, predictions):
        probabilities = dict(prediction.ranked)
        assert prediction.ranked[0][0] == classifier.class_names[int(row.argmax())]
        for index, name in enumerate(classifier.class_names):
            assert probabilities[name] == pytest.approx(float(row[index]), abs=1e-4)


def test_default_is_the_newest_runs_best_checkpoint(trained_run, tmp_path, monkeypatch, capsys):
    older = tmp_path / "runs" / "older"
    newer = tmp_path / "runs" / "newer"
    for folder in (older, newer):
        shutil.copytree(trained_run, folder)
    os.utime(older / "best.pth", (1, 1))
    monkeypatch.chdir(tmp_path)
    assert predict.newest_checkpoint() == Path("runs") / "newer" / "best.pth"
    paths, _ = val_images(trained_run)
    status, results = run_json(capsys, paths[0])
    assert status == 0 and len(results[0]["predictions"]) == 3  # min(5, classes)


def test_output_lists_top_k_for_many_images_folders_and_globs(trained_run, capsys):
    paths, _ = val_images(trained_run)
    folder = str(Path(paths[0]).parent)
    status, results = run_json(capsys, paths[0], folder, f"{folder}/*.png", "--weights",
                               str(trained_run / "best.pth"), "--top-k", "2", "--batch-size", "4")
    assert status == 0
    assert len(results) == 1 + len(os.listdir(folder)) + len(list(Path(folder).glob("*.png")))
    for result in results:
        probabilities = [p["probability"] for p in result["predictions"]]
        assert len(probabilities) == 2 and probabilities == sorted(probabilities, reverse=True)
    status = predict.main([paths[0], "--weights", str(trained_run / "best.pth")])
    text = capsys.readouterr().out.splitlines()
    assert status == 0 and text[0] == paths[0] and len(text) == 4


def test_bad_images_are_reported_and_the_rest_classified(trained_run, tmp_path, capsys):
    paths, _ = val_images(trained_run)
    (tmp_path / "fake.jpg").write_text("not an image")
    status = predict.main([str(tmp_path / "missing.jpg"), paths[0], str(tmp_path / "fake.jpg"), paths[1],
                           "--weights", str(trained_run / "best.pth"), "--json"])
    captured = capsys.readouterr()
    results = json_lines(captured.out)
    assert status == 1
    assert [r["error"] is None for r in results] == [False, True, False, True]  # in the order given
    assert f"error: {tmp_path / 'missing.jpg'}: no such file" in captured.err
    assert f"error: {tmp_path / 'fake.jpg'}: UnidentifiedImageError" in captured.err
    assert "Traceback" not in captured.err


def test_figure_and_grad_cam_are_saved(trained_run, tmp_path):
    paths, _ = val_images(trained_run)
    out = tmp_path / "figures" / "prediction.png"
    assert predict.main([paths[0], "--weights", str(trained_run / "best.pth"), "--save", str(out), "--cam"]) == 0
    assert Image.open(out).size[0] > 400 and Image.open(out.with_name("prediction_cam.png")).size[0] > 600
    assert predict.main([*paths[:2], "--weights", str(trained_run / "best.pth"), "--save", str(out)]) == 0
    assert (out.parent / f"prediction_000_{Path(paths[0]).stem}.png").is_file()


def test_figures_of_same_named_photos_in_different_folders_do_not_collide(trained_run, tmp_path, monkeypatch):
    paths, _ = val_images(trained_run)
    for folder, source in (("a", paths[0]), ("b", paths[1])):
        (tmp_path / folder).mkdir()
        shutil.copy(source, tmp_path / folder / "photo.png")
    monkeypatch.chdir(tmp_path)
    weights = ["--weights", str(trained_run / "best.pth")]
    assert predict.main(["a/photo.png", "b/photo.png", *weights, "--cam"]) == 0
    assert sorted(p.name for p in (tmp_path / "gradcam").iterdir()) == ["000_photo_cam.png", "001_photo_cam.png"]
    assert predict.main(["a/photo.png", "b/photo.png", *weights, "--save", "figures/"]) == 0
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["000_photo_pred.png", "001_photo_pred.png"]


def test_an_unwritable_figure_is_reported_and_the_results_still_printed(trained_run, tmp_path, capsys):
    paths, _ = val_images(trained_run)
    (tmp_path / "a_file").write_text("not a folder")
    capsys.readouterr()
    status = predict.main([paths[0], "--weights", str(trained_run / "best.pth"),
                           "--save", str(tmp_path / "a_file" / "out.png")])
    out, err = capsys.readouterr()
    assert status == 1 and paths[0] in out and "Traceback" not in err
    assert f"error: {paths[0]}: --save {tmp_path / 'a_file' / 'out.png'}: {tmp_path / 'a_file'} is a file, not a " \
           f"folder" in err


def test_figures_never_overwrite_the_photos(trained_run, tmp_path, capsys):
    paths, _ = val_images(trained_run)
    photo = tmp_path / "photos" / "rose.png"
    photo.parent.mkdir()
    shutil.copy(paths[0], photo)
    before = photo.read_bytes()
    weights = ["--weights", str(trained_run / "best.pth")]
    assert predict.main([str(photo), *weights, "--save", str(photo.parent)]) == 0  # the photos' own folder
    assert photo.read_bytes() == before and (photo.parent / "rose_pred.png").is_file()
    capsys.readouterr()
    assert predict.main([str(photo), *weights, "--save", str(photo)]) == 1
    assert photo.read_bytes() == before
    assert "would overwrite the photo" in capsys.readouterr().err


def test_a_figure_format_matplotlib_cannot_write_is_refused_first(trained_run, capsys):
    paths, _ = val_images(trained_run)
    _fails_with([paths[0], "--weights", str(trained_run / "best.pth"), "--save", "out.v2"], capsys,
                "--save out.v2", "cannot write .v2 figures", ".png")


def test_grad_cam_highlights_the_informative_region(trained_run):
    classifier = predict.Classifier.from_weights(trained_run / "best.pth")
    path = val_images(trained_run)[0][0]
    view, cam, target = classifier.grad_cam(path)
    assert cam.shape == (view.size[1], view.size[0]) and 0 <= float(cam.min()) and float(cam.max()) == 1.0
    assert target == int(classifier.probabilities(classifier.preprocess(path)[None]).argmax())


def test_notebook_function_takes_paths_pil_images_models_and_checkpoints(trained_run):
    paths, _ = val_images(trained_run)
    from_path = predict.classify(paths[:2], trained_run / "best.pth")
    with Image.open(paths[0]) as image:
        from_pil = predict.classify(image, str(trained_run / "best.pth"))  # one photo: one ranking
    assert [name for name, _ in from_pil] == [name for name, _ in from_path[0]]
    assert [p for _, p in from_pil] == pytest.approx([p for _, p in from_path[0]], abs=1e-6)
    best = trained_run / "best.pth"
    assert predict.classify(paths[:1], best) == [predict.classify(paths[0], best)]  # a list of one: a list of one
    assert [p for _, p in from_path[0]] == sorted((p for _, p in from_path[0]), reverse=True)
    model = M.model_from_checkpoint(trained_run / "best.pth")
    with_names = predict.classify(paths[0], model, class_names=["blue", "green", "red"], top_k=1)
    assert len(with_names) == 1 and with_names[0][0] in ("blue", "green", "red")  # at B0's 224 px
    image = torch.load(trained_run / "best.pth", weights_only=True)["image"]
    same_view = predict.Classifier(model, ["blue", "green", "red"], image)
    assert predict.classify(paths[0], same_view)[0][0] == from_path[0][0][0]
    with pytest.raises(ValueError, match="cannot read"):
        predict.classify(["nope.jpg"], model)


def test_tutorial_layout_state_dict_with_class_indices(trained_run, tmp_path, capsys):
    model = M.model_from_checkpoint(trained_run / "best.pth")
    model.set_bn_eps(W.TUTORIAL_BN_EPS)  # what a tutorial-trained model uses
    folder = tmp_path / "tutorial"
    folder.mkdir()
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, folder / "model-29.pth")
    (folder / "class_indices.json").write_text(json.dumps({"0": "blue", "1": "green", "2": "red"}))
    paths, _ = val_images(trained_run)
    status, results = run_json(capsys, *paths[:4], "--weights", str(folder / "model-29.pth"), "--model", "b0")
    assert status == 0
    expected = predict.classify(paths[:4], model, class_names=["blue", "green", "red"])
    for result, ranked in zip(results, expected):
        assert [(p["class"], p["probability"]) for p in result["predictions"]] == \
            [(name, pytest.approx(probability, abs=1e-5)) for name, probability in ranked]


def test_torchvision_layout_state_dict(trained_run, tmp_path, capsys):
    model = M.model_from_checkpoint(trained_run / "best.pth")
    mapping = W.torchvision_key_map(model)
    torch.save({mapping[k]: v for k, v in model.state_dict().items()}, tmp_path / "tv.pth")
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"0": "blue", "1": "green", "2": "red"}))
    paths, _ = val_images(trained_run)
    status, results = run_json(capsys, paths[0], "--weights", str(tmp_path / "tv.pth"), "--class-indices",
                               str(names))
    assert status == 0
    expected = predict.classify(paths[0], model, class_names=["blue", "green", "red"])
    assert results[0]["predictions"][0]["class"] == expected[0][0]
    assert results[0]["predictions"][0]["probability"] == pytest.approx(expected[0][1], abs=1e-5)


def test_imagenet_weights_use_imagenet_class_names(tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    from effnet.download import sha256_of

    payload = tmp_path / "mirror" / "w.pth"
    payload.parent.mkdir()
    torch.save(M.efficientnet_b0().state_dict(), payload)
    name = f"efficientnet_b0_x-{sha256_of(payload)[:8]}.pth"
    payload.rename(payload.parent / name)
    monkeypatch.setattr(W, "VARIANTS", {**W.VARIANTS, "b0": replace(M.VARIANTS["b0"], weights_file=name)})
    monkeypatch.setenv(W.WEIGHTS_MIRROR_ENV, payload.parent.as_uri())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    Image.new("RGB", (300, 260), (200, 30, 30)).save(tmp_path / "red.png")
    status, results = run_json(capsys, str(tmp_path / "red.png"), "--weights", "imagenet")
    assert status == 0 and len(results[0]["predictions"]) == 5
    assert all(p["class"] in imagenet_class_names() for p in results[0]["predictions"])


# --- bad weights: one clear line, exit status 2 ---------------------------------------------------------------


def _fails_with(argv: list[str], capsys, *fragments: str) -> None:
    status = predict.main(argv)
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    line = err.strip()
    assert line.startswith("error:") and "\n" not in line, err
    for fragment in fragments:
        assert fragment in line, line


def test_missing_weights_and_no_runs(tmp_path, monkeypatch, capsys):
    _fails_with(["x.jpg", "--weights", str(tmp_path / "none.pth")], capsys, "does not exist")
    monkeypatch.chdir(tmp_path)
    _fails_with(["x.jpg"], capsys, "no trained checkpoint found under runs", "--weights")


def test_class_count_that_disagrees_with_class_indices(trained_run, tmp_path, capsys):
    model = M.model_from_checkpoint(trained_run / "best.pth")
    torch.save(model.state_dict(), tmp_path / "model.pth")
    (tmp_path / "five.json").write_text(json.dumps({str(i): f"c{i}" for i in range(5)}))
    _fails_with(["x.jpg", "--weights", str(tmp_path / "model.pth"), "--class-indices", str(tmp_path / "five.json")],
                capsys, "has 3 classes but the model 5", f"5 from {tmp_path / 'five.json'}")
    # a class_indices.json found on its own (beside the weights, or here) that does not fit is passed over
    (tmp_path / "class_indices.json").write_text(json.dumps({str(i): f"c{i}" for i in range(5)}))
    _fails_with(["x.jpg", "--weights", str(tmp_path / "model.pth")], capsys,
                "no class_indices.json with the weights' 3 classes", f"{tmp_path / 'class_indices.json'} has 5",
                "--class-indices")


def test_a_fitting_class_indices_here_is_used_when_the_one_beside_the_weights_does_not_fit(
        trained_run, tmp_path, monkeypatch, capsys):
    model = M.model_from_checkpoint(trained_run / "best.pth")
    (tmp_path / "weights").mkdir()
    torch.save(model.state_dict(), tmp_path / "weights" / "model.pth")
    (tmp_path / "weights" / "class_indices.json").write_text(json.dumps({str(i): f"c{i}" for i in range(5)}))
    (tmp_path / "class_indices.json").write_text(json.dumps({"0": "blue", "1": "green", "2": "red"}))
    monkeypatch.chdir(tmp_path)
    paths, _ = val_images(trained_run)
    status, results = run_json(capsys, paths[0], "--weights", str(tmp_path / "weights" / "model.pth"))
    assert status == 0 and {p["class"] for p in results[0]["predictions"]} == {"blue", "green", "red"}


def test_weights_of_another_variant(tmp_path, capsys):
    torch.save(M.efficientnet_b2(num_classes=3).state_dict(), tmp_path / "b2.pth")
    (tmp_path / "class_indices.json").write_text(json.dumps({"0": "a", "1": "b", "2": "c"}))
    _fails_with(["x.jpg", "--weights", str(tmp_path / "b2.pth"), "--model", "b0"], capsys,
                "efficientnet_b2 weights but the model is efficientnet_b0", "use variant b2")


def test_bad_class_indices_file(trained_run, tmp_path, capsys):
    model = M.model_from_checkpoint(trained_run / "best.pth")
    torch.save(model.state_dict(), tmp_path / "model.pth")
    (tmp_path / "class_indices.json").write_text("{broken json")
    _fails_with(["x.jpg", "--weights", str(tmp_path / "model.pth")], capsys, "is not a readable class_indices.json")


def test_the_progress_bar_is_drawn_on_a_terminal_only(monkeypatch):
    """Written to a file or pipe, stderr gets the errors alone, no redrawn bars (test_export.py draws one)."""
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    args = predict.build_parser().parse_args(["rose.jpg"])
    for stderr, drawn in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr(sys, "stderr", stderr)
        output = predict.Output(args, class_count=5)
        assert (output.bar is not None) == drawn
        output.close()


# --- hostile round 3: the Python API refuses bad arguments in one clear exception ---------------------------------


def test_classify_takes_numpy_arrays_and_refuses_what_it_cannot_read(trained_run):
    import numpy as np

    paths, _ = val_images(trained_run)
    best = trained_run / "best.pth"
    classifier = predict.Classifier.from_weights(best)
    with Image.open(paths[0]) as image:
        pixels = np.asarray(image.convert("RGB"))
    from_path, from_array = predict.classify(paths[0], classifier), predict.classify(pixels, classifier)
    assert [name for name, _ in from_array] == [name for name, _ in from_path]
    assert [p for _, p in from_array] == pytest.approx([p for _, p in from_path], abs=1e-6)
    assert predict.classify([pixels, paths[0]], classifier) == [from_array, from_path]
    for wrong in (os.fsencode(paths[0]), 42, {"image": paths[0]}):
        with pytest.raises(TypeError, match="a path .*a PIL image or a numpy array"):
            predict.classify(wrong, classifier)
    with pytest.raises(TypeError, match="bytes"):
        predict.classify([paths[0], os.fsencode(paths[0])], classifier)
    for shape, dtype in (((8, 8), np.uint8), ((8, 8, 4), np.uint8), ((8, 8, 3), np.float32)):
        with pytest.raises(ValueError, match=r"\(H, W, 3\) array of uint8"):
            predict.classify(np.zeros(shape, dtype), classifier)


@pytest.mark.parametrize("top_k", [0, -1, 1.5, True, "3"])
def test_classify_refuses_a_top_k_that_is_not_a_positive_whole_number(trained_run, top_k):
    paths, _ = val_images(trained_run)
    with pytest.raises(ValueError, match="top_k must be a whole number of at least 1"):
        predict.classify(paths[0], trained_run / "best.pth", top_k=top_k)
