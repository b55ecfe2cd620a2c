"""effnet/reports/chance.py, and a model that learned nothing saying so: train.py's last line, report.html's
top, the export checks, float32 and INT8 (a one-epoch run from scratch on pictures that all look alike)."""
import contextlib
import html
import io
import re
import shutil
from fractions import Fraction
from math import comb
from pathlib import Path

import numpy as np
import pytest
from conftest import train_args
from PIL import Image

import train
from effnet.inference import int8
from effnet.reports.chance import clearly_above_chance, guessing_interval, learned_nothing, one_answer


def exact_quantile(fraction: Fraction, trials: int, classes: int) -> int:
    """The smallest count c with P(X <= c) >= fraction, X ~ Binomial(trials, 1/classes), in exact arithmetic."""
    p, cumulative = Fraction(1, classes), Fraction(0)
    for count in range(trials + 1):
        cumulative += comb(trials, count) * p**count * (1 - p) ** (trials - count)
        if cumulative >= fraction:
            return count
    return trials


@pytest.mark.parametrize("classes, images", [(2, 10), (3, 6), (5, 30), (5, 150), (10, 40), (102, 1020)])
def test_the_guessing_interval_is_the_central_95_percent_of_the_binomial(classes, images):
    low, high = guessing_interval(classes, images)
    assert round(low * images) == exact_quantile(Fraction(1, 40), images, classes)
    assert round(high * images) == exact_quantile(Fraction(39, 40), images, classes)
    assert low <= 1 / classes <= high


def test_clearly_above_chance_starts_just_above_the_interval():
    assert guessing_interval(5, 30) == (2 / 30, 11 / 30)  # 0.2 for 5 classes: guessing gets 2 to 11 of 30 right
    assert [clearly_above_chance(correct, 30, 5) for correct in (6, 11, 12)] == [False, False, True]
    assert not clearly_above_chance(3, 3, 3)  # three images: even a perfect score could be luck
    assert clearly_above_chance(2_000, 100_000, 100)  # large sets: fast, and 2% is far above 1%


def test_one_answer_names_the_class_that_got_every_image():
    assert one_answer([0, 7, 0]) == 1
    assert one_answer([3, 4, 0]) is None and one_answer([0, 1, 0]) is None  # one image says nothing


def test_a_model_that_learned_says_nothing_and_one_that_did_not_is_told_why():
    names = ["daisy", "roses", "tulips"]
    assert learned_nothing(np.diag([10, 10, 10]), names) is None
    at_chance = learned_nothing([[4, 3, 3], [3, 4, 3], [3, 3, 4]], names)
    assert at_chance.startswith("the model has learned nothing usable: the best epoch's validation accuracy, 0.400 "
                                "(12 of 30 images), is not clearly above chance: 0.333 for 3 classes")
    assert "same top class" not in at_chance and "more epochs" in at_chance
    assert "ImageNet weights (--weights imagenet, which needs their one-time download)" in at_chance
    assert at_chance == learned_nothing([[4, 3, 3], [3, 4, 3], [3, 3, 4]], names, "none")
    # a run that started from ImageNet's weights is not told to use them (offline, they are what failed)
    assert "imagenet" not in learned_nothing([[4, 3, 3], [3, 4, 3], [3, 3, 4]], names, "imagenet").lower()
    # one answer for every photo: told so even where a large class makes the accuracy look good
    constant = learned_nothing([[80, 0, 0], [10, 0, 0], [10, 0, 0]], names)  # 0.8 right, all of it 'daisy'
    assert "not clearly above chance" not in constant and "the same top class, 'daisy'" in constant
    assert "hold out more (--val-rate)" in learned_nothing(np.diag([1, 1, 1]), names)


@pytest.fixture(scope="module")
def chance_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str, str]:
    """One epoch from scratch (--recipe modern) on three classes of one and the same picture: no model can tell
    them apart, so every validation photo gets the same answer. (run folder, status, stdout, stderr)"""
    root = tmp_path_factory.mktemp("chance")
    picture = Image.linear_gradient("L").resize((64, 56)).convert("RGB")
    for name in ("daisy", "roses", "tulips"):
        (root / "data" / name).mkdir(parents=True)
        for i in range(10):
            picture.save(root / "data" / name / f"{i}.png")
    out, err = io.StringIO(), io.StringIO()  # capsys is per test: capture by hand for the module
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = train.main(train_args(root / "data", root / "runs", "--epochs", "1", "--recipe", "modern",
                                       "--name", "chance"))
    return root / "runs" / "chance", status, out.getvalue(), err.getvalue()


def test_a_run_that_learned_nothing_ends_with_a_warning(chance_run):
    run, status, out, err = chance_run
    assert status == 0, err  # --recipe modern trains in one epoch (its warm-up shortened to fit)
    last = err.strip().splitlines()[-1]
    assert last.startswith("warning: the model has learned nothing usable: the best epoch's validation accuracy, "
                           "0.333 (2 of 6 images), is not clearly above chance: 0.333 for 3 classes"), err
    assert "the same top class" in last and "more epochs" in last and "--lr" in last
    assert "--weights imagenet, which needs their one-time download" in last  # the run trained from scratch
    export_line = next(line for line in out.splitlines() if line.startswith(f"wrote {run / 'best.onnx'}"))
    assert "same top-1 class for 6 of 6 (but PyTorch gives all 6 the same top class" in export_line
    assert "proves nothing" in export_line


def test_the_report_shows_the_warning_first_and_the_settings_as_used(chance_run):
    run, _, _, err = chance_run
    page = (run / "report.html").read_text()
    banner = re.search(r'<p class="warning" role="alert"><b>warning:</b> (.*?)</p>', page)
    assert banner and html.unescape(banner.group(1)) == err.strip().splitlines()[-1].removeprefix("warning: ")
    assert banner.start() < page.index('class="highlights"') < page.index('id="settings"')
    cells = re.findall(r"<tr><td>(--[a-z-_]+)</td><td>(.*?)</td></tr>", page)
    settings = {flag: html.unescape(value) for flag, value in cells}
    assert len(settings) > 30 and not {"None", "True", "False"} & set(settings.values()), settings
    assert {flag: settings[flag] for flag in ("--device", "--amp", "--workers", "--num-classes", "--ema",
                                              "--image-size", "--name", "--early-stopping", "--channels-last")} == {
        "--device": "auto: cpu", "--amp": "off (CPU)", "--workers": "0", "--num-classes": "3", "--ema": "off",
        "--image-size": "48", "--name": "chance", "--early-stopping": "off", "--channels-last": "on"}


def test_the_int8_check_of_a_model_that_answers_one_class_gives_the_float32_checks_caveat(chance_run, tmp_path):
    run, _, out, _ = chance_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    _, agreement = int8.export_int8(copy / "best.onnx", copy / "best.pth", min_agreement=0)  # export.py --int8's
    float32_line = next(line for line in out.splitlines() if line.startswith(f"wrote {run / 'best.onnx'}"))
    float32_caveat = re.search(r" \(but PyTorch gives all 6 .*?agrees trivially\)", float32_line).group()
    assert f"validation photos ({agreement.percent:.1f}%, at least 0% needed){float32_caveat}".replace(
        "PyTorch", "float32") in agreement.summary()
