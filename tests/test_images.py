"""effnet/data/images.py on hostile images: float TIFFs, extreme shapes, the pixel limit."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from effnet.data import images
from my_dataset import MyDataSet, crop_decode_size, eval_transform, train_transform


def float_tiff(path: Path, high: float = 1.0) -> Path:
    """A 32-bit float grayscale TIFF: a left-to-right ramp from 0 to `high`."""
    Image.fromarray(np.tile(np.linspace(0, high, 96, dtype=np.float32), (80, 1))).save(path)
    return path


def test_float_tiffs_in_0_to_1_are_scaled_not_black(tmp_path):
    path = float_tiff(tmp_path / "scan.tif")
    assert images.open_image(path).mode == "F"
    rgb = np.asarray(images.to_rgb(images.open_image(path)))
    assert rgb.shape == (80, 96, 3) and rgb[:, 0].max() == 0 and rgb[:, -1].min() == 255
    assert abs(rgb.mean() - 127.5) < 1
    for transform, decode_size in ((train_transform(64), crop_decode_size(64)), (eval_transform(73, 64), 73)):
        tensor, _ = MyDataSet([str(path)], [0], transform, decode_size=decode_size)[0]  # training and prediction
        # a black image has std 0; the ramp keeps over 0.25 even in the narrowest random crop (8% of the area)
        assert tensor.shape == (3, 64, 64) and tensor.std() > 0.25
    sixteen = tmp_path / "sixteen.png"  # 16-bit keeps its scaling
    Image.fromarray((np.linspace(0, 65535, 96 * 80).reshape(80, 96)).astype(np.uint16)).save(sixteen)
    assert np.asarray(images.to_rgb(images.open_image(sixteen))).max() == 255


def test_float_tiffs_of_unknown_scale_are_refused_by_path(tmp_path, capsys):
    path = float_tiff(tmp_path / "raw.tif", high=4000.0)
    assert MyDataSet([str(path)], [0], eval_transform(73, 64))[0] is None
    assert f"skipping unreadable image {path} (UnsupportedImageError: 32-bit float pixels from 0 to 4000, " \
           f"not within 0 ... 1" in capsys.readouterr().err


def test_extreme_aspect_ratios_are_refused_before_decoding(tmp_path, monkeypatch, capsys):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (20000, 1), (200, 30, 30)).save(strip)
    assert strip.stat().st_size < 200

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(images.UnsupportedImageError, match="20000 x 1 pixels: one side is more than 50 times"):
        images.open_image(strip)
    assert "UnsupportedImageError: 20000 x 1 pixels" in images.check_image_header(str(strip))
    assert MyDataSet([str(strip)], [0], eval_transform(73, 64))[0] is None
    assert f"skipping unreadable image {strip} (UnsupportedImageError: 20000 x 1" in capsys.readouterr().err
    with pytest.raises(images.UnsupportedImageError):  # an image handed over already opened, too
        images.Preprocessing(73, 64).view(Image.new("RGB", (1, 60)))


def test_over_the_pixel_limit_a_jpeg_is_decoded_reduced_and_others_refused(tmp_path, monkeypatch):
    photo = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "big.jpg")
    Image.fromarray(photo).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 90 x 70 = 6,300 pixels is over it now
    with images.open_image(tmp_path / "big.jpg") as opened:
        assert images.to_rgb(opened).size == (45, 35)  # decoded at 1/2 scale, within the limit
    assert MyDataSet([str(tmp_path / "big.jpg")], [0], eval_transform(40, 32))[0][0].shape == (3, 32, 32)
    with pytest.raises(Image.DecompressionBombError, match="90 x 70 = 6,300 pixels, over the limit of 4,000"):
        images.open_image(tmp_path / "big.png")


def test_a_jpeg_over_the_pixel_limit_still_decodes_as_small_as_the_crop_allows(tmp_path, monkeypatch):
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # 120,000 pixels: at least 1/2 scale is needed
    with images.open_image(tmp_path / "a.jpg") as opened:
        images.reduce_jpeg_decode(opened, 300 / 40)  # a 40 px resize allows 1/4, more than the limit needs
        assert images.to_rgb(opened).size == (100, 75)
