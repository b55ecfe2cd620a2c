"""What a careless or hostile user does to predict.py (issue 15, part B): --save onto a link of a photo or onto
someone else's file, file names that are not UTF-8, class names from nowhere in particular, --show without
a display, impossible devices, --class-indices with a named checkpoint, our own figures in a photo folder,
and Ctrl-C; and (issue 21) --csv onto a photo or the weights, a newline in a file name, huge JPEGs, class
names that repeat, and a torchvision state_dict of another variant."""
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import assert_usage_error
from PIL import Image

import app
import evaluate
import model as M
import predict
from effnet.reports import figures

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def photo(trained_run: Path, tmp_path: Path) -> Path:
    """A photo of the trained run's classes, alone in its folder."""
    split = json.loads((trained_run / "split.json").read_text())
    path = tmp_path / "photos" / "rose.jpg"
    path.parent.mkdir()
    shutil.copy(os.path.join(split["root"], split["val"][0][0]), path)
    return path


def weights(trained_run: Path, name: str = "best.pth") -> list[str]:
    return ["--weights", str(trained_run / name)]


def lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


# --- item 3: --save never replaces a photo, nor a file that is not one of our figures ---------------------------


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_save_onto_another_name_of_the_photo_leaves_the_photo_alone(link, trained_run, photo, capsys):
    other_name = photo.with_name("other_name.png")
    (os.link if link == "hard" else os.symlink)(photo, other_name)
    before = photo.read_bytes()
    for extra in ([], ["--overwrite"]):  # not even --overwrite replaces an input photo
        capsys.readouterr()
        assert predict.main([str(photo), *weights(trained_run), "--save", str(other_name), *extra]) == 1
        error, = lines(capsys.readouterr().err, "error:")
        assert f"would overwrite the photo {photo} ({other_name} is another name of it)" in error
        assert photo.read_bytes() == before and os.path.samefile(photo, other_name)


def test_save_replaces_only_our_own_figures_unless_told_to(trained_run, photo, tmp_path, capsys):
    notes, picture = tmp_path / "notes.png", tmp_path / "picture.png"
    notes.write_text("my notes")
    Image.new("RGB", (8, 8), "red").save(picture)  # a PNG, but not one predict.py drew
    for existing in (notes, picture):
        before = existing.read_bytes()
        capsys.readouterr()
        assert predict.main([str(photo), *weights(trained_run), "--save", str(existing)]) == 1
        out, err = capsys.readouterr()
        assert out.startswith(str(photo)) and existing.read_bytes() == before  # the prediction is still printed
        assert lines(err, "error:") == [f"error: {photo}: {existing} exists and is not a figure of predict.py; "
                                        f"pass --overwrite to replace it, or choose another --save"]
    assert predict.main([str(photo), *weights(trained_run), "--save", str(notes), "--overwrite"]) == 0
    assert figures.is_prediction_figure(notes)
    assert predict.main([str(photo), *weights(trained_run), "--save", str(notes)]) == 0  # ours now: replaced
    # PNG and JPEG figures carry the mark (a text chunk, a comment): running again replaces them
    assert predict.main([str(photo), *weights(trained_run), "--save", str(tmp_path / "figure.jpg")]) == 0
    assert figures.is_prediction_figure(tmp_path / "figure.jpg")
    assert predict.main([str(photo), *weights(trained_run), "--save", str(tmp_path / "figure.jpg")]) == 0
    # other formats cannot say who drew them, so replacing one needs --overwrite, and the error says why
    assert predict.main([str(photo), *weights(trained_run), "--save", str(tmp_path / "figure.pdf")]) == 0
    capsys.readouterr()
    assert predict.main([str(photo), *weights(trained_run), "--save", str(tmp_path / "figure.pdf")]) == 1
    assert "figure.pdf exists and may not be a figure of predict.py (only its .png, .jpg, .jpeg figures say so)" \
        in capsys.readouterr().err
    assert predict.main([str(photo), *weights(trained_run), "--save", str(tmp_path / "figure.pdf"), "--overwrite"]) == 0


def test_grad_cam_figures_are_checked_the_same_way(trained_run, photo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gradcam").mkdir()
    (tmp_path / "gradcam" / "rose_cam.png").write_text("someone's file")
    assert predict.main([str(photo), *weights(trained_run), "--cam"]) == 1
    assert "gradcam/rose_cam.png exists and is not a figure of predict.py" in capsys.readouterr().err
    assert (tmp_path / "gradcam" / "rose_cam.png").read_text() == "someone's file"


# --- item 8: file names that are not UTF-8, printed on a strict UTF-8 stdout ------------------------------------


def test_file_names_that_are_not_utf8_are_printed_escaped(trained_run, photo, tmp_path):
    folder = tmp_path / "names"
    folder.mkdir()
    try:
        shutil.copy(photo, os.fsencode(folder) + b"/caf\xe9.jpg")
        with open(os.fsencode(folder) + b"/bad\xff.jpg", "wb") as bad:
            bad.write(b"not an image")
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses file names that are not UTF-8")
    environment = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "PYTHONPATH": str(REPO)}
    table = tmp_path / "table.csv"

    def run(*extra: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, str(REPO / "predict.py"), str(folder), *weights(trained_run),
                                 *extra], capture_output=True, text=True, env=environment, timeout=300)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr  # 1: the bad file
        assert lines(result.stderr, "error:") == [f"error: {folder}/bad\\xff.jpg: UnidentifiedImageError: cannot "
                                                  f"identify image file '{folder}/bad\\udcff.jpg'"]
        return result

    assert run("--csv", str(table)).stdout.splitlines()[0] == f"{folder}/caf\\xe9.jpg"
    assert [row["image"] for row in csv.DictReader(table.open(encoding="utf-8"))] == [
        f"{folder}/bad\\xff.jpg", f"{folder}/caf\\xe9.jpg"]
    results = [json.loads(line) for line in run("--json").stdout.splitlines()]  # ASCII JSON, \udcXX escapes
    assert [os.fsencode(r["image"]) for r in results] == [os.fsencode(folder) + name for name in (b"/bad\xff.jpg",
                                                                                                  b"/caf\xe9.jpg")]
    assert all(os.path.exists(r["image"]) for r in results)  # each leads back to its file
    assert results[1]["error"] is None and results[1]["predictions"]


# --- weak spots -----------------------------------------------------------------------------------------------


def test_class_names_found_on_their_own_are_named_in_one_note(photo, tmp_path, monkeypatch, capsys):
    torch.save(M.efficientnet_b0(num_classes=5).state_dict(), tmp_path / "model-29.pth")
    monkeypatch.chdir(REPO)  # the repository's own class_indices.json: the five flowers
    assert predict.main([str(photo), "--weights", str(tmp_path / "model-29.pth")]) == 0
    out, err = capsys.readouterr()
    assert lines(err, "note:") == [f"note: {tmp_path / 'model-29.pth'} carries no class names; using the 5 in "
                                   f"class_indices.json (found in the current folder); pass --class-indices FILE "
                                   f"for others"]
    assert all(name in out for name in ("daisy", "dandelion", "roses", "sunflowers", "tulips"))
    shutil.copy(REPO / "class_indices.json", tmp_path / "class_indices.json")
    assert predict.main([str(photo), "--weights", str(tmp_path / "model-29.pth"), "--json"]) == 0
    assert "(found beside the weights)" in capsys.readouterr().err
    assert predict.main([str(photo), "--weights", str(tmp_path / "model-29.pth"), "--class-indices",
                         str(REPO / "class_indices.json")]) == 0
    assert not lines(capsys.readouterr().err, "note:")  # asked for: nothing to say


def test_show_with_a_display_that_does_not_answer_says_so_in_one_line(trained_run, photo, tmp_path):
    environment = {**os.environ, "DISPLAY": ":99", "PYTHONPATH": str(REPO)}  # no X server listens there
    environment.pop("MPLBACKEND", None)
    result = subprocess.run([sys.executable, str(REPO / "predict.py"), str(photo), *weights(trained_run), "--show",
                             "--cam", "--cam-dir", str(tmp_path / "maps")], capture_output=True, text=True,
                            env=environment, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith(str(photo)), result.stderr
    assert result.stderr.splitlines() == ["warning: --show: matplotlib found no window system it can use (it chose "
                                          "the agg backend), so no window opens; keep the figures with --save FILE.png"]
    assert (tmp_path / "maps" / "rose_cam.png").is_file()


def test_file_only_figures_leave_the_window_backend_to_show(tmp_path):
    # a Grad-CAM map written before the --show figure must not lock matplotlib into drawing to files only
    code = ("import sys, numpy as np; from PIL import Image; import matplotlib; from effnet.reports import figures\n"
            "view = Image.new('RGB', (32, 32))\n"
            f"figures.prediction_figure(view, 'x', [('a', 0.6)], {str(tmp_path / 'cam.png')!r},"
            " cam=np.ones((32, 32)))\n"
            "print('matplotlib.pyplot' in sys.modules, matplotlib.get_backend())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "TkAgg"})
    assert result.stdout.split() == ["False", "TkAgg"], result.stderr
    assert figures.is_prediction_figure(tmp_path / "cam.png")


def test_show_without_a_display_says_so_in_one_line(trained_run, photo, monkeypatch, capsys):
    drawn = []
    monkeypatch.setattr(figures, "prediction_figure", lambda *args, **kwargs: drawn.append(kwargs))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert figures.why_no_window() == "no display here (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    assert predict.main([str(photo), *weights(trained_run), "--show"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(str(photo)) and not drawn
    assert err.splitlines() == ["warning: --show: no display here (neither DISPLAY nor WAYLAND_DISPLAY is set), "
                                "so no window opens; keep the figures with --save FILE.png"]
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    monkeypatch.setattr(figures, "_pyplot", lambda: type("FakePyplot", (), {"get_backend": lambda: "QtAgg"}))
    assert figures.why_no_window() is None
    assert predict.main([str(photo), *weights(trained_run), "--show"]) == 0
    assert drawn and drawn[0]["show"] and not capsys.readouterr().err


@pytest.mark.parametrize("device", ["meta", "bogus", "cuda:x"])
def test_impossible_devices_are_one_line_in_every_program(device, trained_run, photo, capsys):
    expected = f"--device {device}: only cpu, cuda and mps are supported"
    for model in ("best.pth", "best.onnx"):  # also where ONNX Runtime would run the model
        assert_usage_error(predict.main, [str(photo), *weights(trained_run, model), "--device", device], capsys,
                           expected)
    assert_usage_error(evaluate.main, [str(photo.parent.parent), *weights(trained_run), "--device", device],
                       capsys, expected)
    assert_usage_error(app.main, ["--port", "0", *weights(trained_run), "--device", device], capsys, expected)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_class_indices_replace_a_checkpoints_own_names_when_the_count_fits(backend, trained_run, photo, tmp_path,
                                                                           capsys):
    renamed, four = tmp_path / "renamed.json", tmp_path / "four.json"
    renamed.write_text(json.dumps({"0": "azure", "1": "jade", "2": "scarlet"}))
    four.write_text(json.dumps({str(i): f"c{i}" for i in range(4)}))
    flags = [*weights(trained_run), "--backend", backend, "--json"]
    capsys.readouterr()
    assert predict.main([str(photo), *flags]) == 0
    own = [p["class"] for p in json.loads(capsys.readouterr().out)["predictions"]]
    assert predict.main([str(photo), *flags, "--class-indices", str(renamed)]) == 0
    out, err = capsys.readouterr()
    renaming = {"blue": "azure", "green": "jade", "red": "scarlet"}
    assert [p["class"] for p in json.loads(out)["predictions"]] == [renaming[name] for name in own]
    note, = lines(err, "note:")
    assert f"using the class names of {renamed} instead of those" in note and "carries (blue, green, red)" in note
    assert_usage_error(predict.main, [str(photo), *flags, "--class-indices", str(four)], capsys,
                       f"--class-indices {four} has 4 class names but", "has 3 classes",
                       "leave it out to use the model's own (blue, green, red)")


def test_our_figures_in_a_photo_folder_are_not_taken_for_photos(trained_run, photo, capsys):
    shutil.copy(photo, photo.with_name("tulip.png"))
    folder = str(photo.parent)
    assert predict.main([folder, *weights(trained_run), "--save", folder + "/", "--cam"]) == 0
    assert len(list(photo.parent.iterdir())) == 6  # two photos, and a figure and a map for each
    capsys.readouterr()
    assert predict.main([folder, *weights(trained_run), "--json"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["image"] for line in out.splitlines()] == [str(photo), str(photo.with_name("tulip.png"))]
    assert lines(err, "note:") == [f"note: {folder}: passed over 4 figures that predict.py saved there"]
    assert predict.main([f"{folder}/*.png", *weights(trained_run), "--json"]) == 0  # globs alike
    assert len(capsys.readouterr().out.splitlines()) == 1
    named = str(photo.with_name("rose_pred.png"))  # a folder gets <photo>_pred.png figures
    assert predict.main([named, *weights(trained_run), "--json"]) == 0  # a figure named by itself is taken
    assert json.loads(capsys.readouterr().out)["image"] == named
    for path in photo.parent.glob("*.jpg"):
        path.unlink()
    photo.with_name("tulip.png").unlink()
    assert predict.main([folder, *weights(trained_run)]) == 1
    assert f"error: {folder}: folder holds no images but predict.py's figures" in capsys.readouterr().err


def test_ctrl_c_keeps_every_result_written_and_exits_130(trained_run, photo, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(400):  # long enough that the run is still going when Ctrl-C comes
        os.link(photo, folder / f"{index:03d}.jpg")
    table = tmp_path / "results.csv"
    process = subprocess.Popen([sys.executable, str(REPO / "predict.py"), str(folder), *weights(trained_run),
                                "--json", "--csv", str(table), "--batch-size", "2"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    first = process.stdout.readline()
    process.send_signal(signal.SIGINT)
    # read through the same buffered stream: readline() may already hold the next lines (communicate() would
    # read past them, from the pipe itself)
    out, err = process.stdout.read(), process.stderr.read()
    process.wait(timeout=120)
    printed = [json.loads(line) for line in [first, *out.splitlines()]]  # every line whole
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert process.returncode == 130 and "Traceback" not in err, err
    assert 0 < len(printed) < 400 and [row["image"] for row in rows] == [r["image"] for r in printed]
    assert lines(err, "error:") == [f"error: interrupted after {len(printed)} image{'s' * (len(printed) > 1)}; the "
                                    f"results written so far are complete (also in {table})"]


def test_ctrl_c_while_the_model_loads_is_one_line(photo, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "classifier_from_flags", interrupted)
    assert predict.main([str(photo)]) == 130
    assert capsys.readouterr().err == "error: interrupted while the model was loading; nothing was classified\n"


def test_ctrl_c_waits_until_a_result_is_in_every_output():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with predict.interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("the rest of the block")
    assert done == ["the rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # where the default action is set, it ends the program too
    try:
        with pytest.raises(KeyboardInterrupt):
            with predict.interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_results_written_from_another_thread_go_through():
    written = []

    def write() -> None:
        with predict.interrupts_deferred():  # only the main thread may hold Ctrl-C back; others just write
            written.append("result")

    worker = threading.Thread(target=write)
    worker.start()
    worker.join()
    assert written == ["result"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --- issue 21: --csv follows the rule of --save; what a file name or a file may hold ------------------------------


def checksums(*paths: Path) -> list[str]:
    return [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]


def test_csv_never_replaces_a_photo_taken_for_a_switch_or_named_twice(trained_run, photo, capsys):
    other = photo.with_name("tulip.jpg")
    shutil.copy(photo, other)
    before = checksums(photo, other)
    # `--csv a.jpg b.jpg`: --csv taken for a switch, so a.jpg is the table and b.jpg the one photo
    assert_usage_error(predict.main, [*weights(trained_run), "--csv", str(photo), str(other)], capsys,
                       f"{photo} exists and is not a CSV table of predict.py", "--overwrite",
                       "--csv takes the name of the table to write")
    for extra in ([], ["--overwrite"]):  # `a.jpg --csv a.jpg`: an input, never replaced
        assert_usage_error(predict.main, [str(photo), *weights(trained_run), "--csv", str(photo), *extra], capsys,
                           f"--csv {photo} would overwrite the photo {photo}")
    assert checksums(photo, other) == before


def test_overwrite_never_lets_csv_replace_a_picture_that_is_not_an_input(trained_run, photo, tmp_path, capsys):
    other = photo.with_name("o8.jpg")  # `--overwrite --csv o8.jpg b.jpg`: o8.jpg is no input, but a photo
    renamed = tmp_path / "holiday.dat"  # a photo whose name does not say so: its first bytes do
    shutil.copy(photo, other)
    shutil.copy(photo, renamed)
    before = checksums(other, renamed)
    for target in (other, renamed):
        assert_usage_error(predict.main, [*weights(trained_run), "--overwrite", "--csv", str(target), str(photo)],
                           capsys, f"{target} exists and is not a CSV table of predict.py: it is a picture",
                           "not even with --overwrite")
    assert checksums(other, renamed) == before


def test_csv_never_replaces_the_weights_or_class_names(trained_run, photo, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (tmp_path / "link.csv").symlink_to(run / "best.pth")
    before = checksums(run / "best.pth", run / "best.onnx", run / "class_indices.json")
    for target, what in ((run / "best.pth", "the checkpoint"), (tmp_path / "link.csv", "the checkpoint"),
                         (run / "best.onnx", "the exported model"), (run / "class_indices.json", "the class names")):
        assert_usage_error(predict.main, [str(photo), "--weights", str(run / "best.pth"), "--csv", str(target),
                                          "--overwrite"], capsys, f"--csv {target} would overwrite {what}")
    assert checksums(run / "best.pth", run / "best.onnx", run / "class_indices.json") == before


def test_csv_replaces_its_own_tables_and_other_files_only_with_overwrite(trained_run, photo, tmp_path, capsys):
    table, notes = tmp_path / "results.csv", tmp_path / "notes.csv"
    notes.write_text("my,own\nnotes,here\n")
    for _ in range(2):  # the second run replaces the first one's table
        assert predict.main([str(photo), *weights(trained_run), "--csv", str(table)]) == 0
    assert table.read_text().startswith("image,class_1,probability_1,")
    assert_usage_error(predict.main, [str(photo), *weights(trained_run), "--csv", str(notes)], capsys,
                       f"{notes} exists and is not a CSV table of predict.py; pass --overwrite")
    assert notes.read_text() == "my,own\nnotes,here\n"
    assert predict.main([str(photo), *weights(trained_run), "--csv", str(notes), "--overwrite"]) == 0
    assert notes.read_text().startswith("image,")
    assert_usage_error(predict.main, [str(photo.parent), *weights(trained_run), "--csv", str(photo.parent / "t.png")],
                       capsys, "lies in the photo folder")  # the next run would read it as a photo


def test_a_newline_in_a_file_name_stays_on_its_line(trained_run, photo, capsys):
    named = photo.with_name("two\nlines.jpg")
    photo.rename(named)
    assert predict.main([str(named), *weights(trained_run), "--top-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(named).replace("\n", "\\n") and all(line.startswith("  ") for line in out[1:])
    assert predict.main([str(named), *weights(trained_run), "--json"]) == 0  # JSON has its own escapes
    assert json.loads(capsys.readouterr().out)["image"] == str(named)


def test_a_folder_gets_photo_pred_png_figures(trained_run, photo, tmp_path):
    shutil.copy(photo, photo.with_name("tulip.jpg"))
    assert predict.main([str(photo), str(photo.with_name("tulip.jpg")), *weights(trained_run),
                         "--save", str(tmp_path / "figs") + "/"]) == 0
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["rose_pred.png", "tulip_pred.png"]


def test_a_jpeg_far_over_the_pixel_limit_is_decoded_reduced_others_refused(trained_run, photo, monkeypatch, capsys):
    Image.new("RGB", (600, 400), "red").save(photo)
    Image.new("RGB", (600, 400), "red").save(photo.with_suffix(".png"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 240,000 pixels: more than twice over, Pillow refuses
    assert predict.main([str(photo), *weights(trained_run), "--backend", "torch"]) == 0  # decoded at 1/8
    assert predict.main([str(photo.with_suffix(".png")), *weights(trained_run), "--backend", "torch"]) == 1
    assert lines(capsys.readouterr().err, "error:") == [
        f"error: {photo.with_suffix('.png')}: DecompressionBombError: 240,000 pixels, over the limit of 10,000 "
        f"(PIL.Image.MAX_IMAGE_PIXELS); scale it down first"]


def test_class_names_must_differ(trained_run, photo, tmp_path, capsys):
    (tmp_path / "same.json").write_text(json.dumps({str(i): "rose" for i in range(3)}))
    names = ["--class-indices", str(tmp_path / "same.json")]
    assert_usage_error(predict.main, [str(photo), *weights(trained_run), *names], capsys,
                       "names two classes 'rose' (0 and 1)")


def test_a_torchvision_state_dict_of_another_variant_needs_no_model_flag(photo, tmp_path, capsys):
    import torchvision

    torch.save(torchvision.models.efficientnet_b1().state_dict(), tmp_path / "b1.pth")
    assert predict.main([str(photo), "--weights", str(tmp_path / "b1.pth"), "--top-k", "1"]) == 0
    assert capsys.readouterr().out.startswith(str(photo))
    assert_usage_error(predict.main, [str(photo), "--weights", str(tmp_path / "b1.pth"), "--model", "b0"], capsys,
                       "holds efficientnet_b1 weights but the model is efficientnet_b0 (use variant b1")
