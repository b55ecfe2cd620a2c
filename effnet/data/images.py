"""Photos in, arrays out: decoding any image file to upright 8-bit RGB, and the evaluation preprocessing.

Pillow and numpy only, no PyTorch, so that prediction through ONNX Runtime or OpenVINO starts fast; the
training transforms (my_dataset.py) build on the same decoding, and `Preprocessing` computes exactly the
tensor that torchvision's Resize -> CenterCrop -> ToTensor -> Normalize computes (tested on real photos).

Every image becomes RGB the same way (EXIF orientation applied, alpha composited onto white, 16-bit scaled,
palette / CMYK / grayscale converted). Large JPEGs are decoded at a reduced scale (1/2, 1/4 or 1/8, done
inside the JPEG decoder and much faster) whenever the output still gets at least as many source pixels as it
has; small photos take exactly torchvision's path.
"""
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, JpegImagePlugin

from effnet.variants import MEAN, STD

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_ASPECT_RATIO = 50  # wider than any panorama; at 50:1 a 600 px evaluation resize is still only 54 MB
INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def is_image_name(name: str) -> bool:
    """An image extension in any letter case, and not a hidden file (such as macOS's ._photo.jpg)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


class UnsupportedImageError(ValueError):
    """An image file that opens but that we will not decode: its pixels or shape are out of bounds."""


def check_shape(image: Image.Image) -> None:
    """Refuse an image whose sides are more than MAX_ASPECT_RATIO apart, from its size alone: a 20000 x 1
    strip is a few bytes on disk, but resized to the evaluation size its long side becomes millions of pixels."""
    width, height = image.size
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise UnsupportedImageError(f"{width} x {height} pixels: one side is more than {MAX_ASPECT_RATIO} times "
                                    f"the other; crop it to the subject first")


def images_under(folder: str | os.PathLike) -> Iterator[str]:
    """Image files in `folder` and its sub-folders, found lazily (a huge folder starts at once), sorted by
    name within each folder."""
    for root, folders, files in os.walk(folder):
        folders.sort()
        yield from (os.path.join(root, name) for name in sorted(files) if is_image_name(name))


_LEAST_REDUCTION = "least_jpeg_reduction"  # image.info key set by open_image: the pixel limit's scale


def _open_header(path: "str | os.PathLike | BinaryIO") -> Image.Image:
    """Image.open without Pillow's own size check for a JPEG (it refuses anything over twice its pixel limit,
    which a JPEG decoded at 1/8 scale need not be); open_image checks the size itself."""
    start = None if isinstance(path, (str, os.PathLike)) else path.tell()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is enforced by open_image
        try:
            return Image.open(path)
        except Image.DecompressionBombError as error:
            if start is not None:  # an upload: read it again from where it starts
                path.seek(start)
            if _file_start(path) != b"\xff\xd8\xff":  # not a JPEG: refused, in the words open_image uses
                limit, counted = Image.MAX_IMAGE_PIXELS, re.search(r"\((\d+) pixels\)", str(error))
                size = f"{int(counted.group(1)):,} pixels" if counted else f"more than {2 * limit:,} pixels"
                raise Image.DecompressionBombError(f"{size}, over the limit of {limit:,} (PIL.Image.MAX_IMAGE_PIXELS); "
                                                   f"scale it down first") from None
    return JpegImagePlugin.JpegImageFile(path)  # what Image.open returns for a JPEG, without the check


def _file_start(source: "str | os.PathLike | BinaryIO") -> bytes:
    """The first three bytes of a file, named or open (left where it was)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            return file.read(3)
    position = source.tell()
    start = source.read(3)
    source.seek(position)
    return start


def open_image(path: "str | os.PathLike | BinaryIO") -> Image.Image:
    """Open an image lazily (header only), checking its size before anything is decoded.

    Over Pillow's pixel limit (Image.MAX_IMAGE_PIXELS, 89 million), a JPEG is marked to decode at no less
    than the reduced scale that fits (1/2, 1/4 or 1/8, done by the JPEG decoder; reduce_jpeg_decode and to_rgb
    apply it, so that a caller wanting a smaller scale still gets it: Pillow takes only the first request);
    a JPEG that does not fit even at 1/8 and any other image over the limit are refused, as is one with a
    far-fetched aspect ratio (check_shape).
    """
    image = _open_header(path)
    try:
        check_shape(image)
        limit = Image.MAX_IMAGE_PIXELS
        width, height = image.size
        if limit and width * height > limit:
            reduction = next((r for r in (2, 4, 8) if -(-width // r) * -(-height // r) <= limit), None)
            if image.format != "JPEG" or reduction is None:
                at_eighth = " even at 1/8 scale" if image.format == "JPEG" else ""
                raise Image.DecompressionBombError(
                    f"{width} x {height} = {width * height:,} pixels, over the limit of {limit:,}{at_eighth} "
                    f"(PIL.Image.MAX_IMAGE_PIXELS); scale it down first")
            image.info[_LEAST_REDUCTION] = reduction
    except BaseException:
        image.close()
        raise
    return image


def check_image_header(path: str) -> str | None:
    """Why the file at `path` cannot be an image we can read, or None if its header looks fine."""
    if os.path.islink(path) and not os.path.exists(path):
        try:
            os.stat(path)
        except OSError as error:  # a loop, or a missing target
            return f"a symbolic link to {os.readlink(path)}, which cannot be opened ({error.strerror})"
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with open_image(path) as image:
            image.size  # noqa: B018 - reading the header is the check
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) the image will have once its EXIF orientation is applied, without decoding it."""
    width, height = image.size
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return (height, width) if orientation in _ROTATED_ORIENTATIONS else (width, height)


def reduce_jpeg_decode(image: Image.Image, max_reduction: float) -> None:
    """Ask the JPEG decoder for 1/8, 1/4 or 1/2 scale, the largest not exceeding `max_reduction`.

    Never less than the pixel limit needs (open_image). A no-op for other formats and for images already
    decoded.
    """
    if image.format != "JPEG":
        return
    reduction = max(image.info.get(_LEAST_REDUCTION, 1), next((r for r in (8, 4, 2) if r <= max_reduction), 1))
    if reduction > 1:
        width, height = image.size
        image.draft(None, (width // reduction, height // reduction))


def to_rgb(image: Image.Image) -> Image.Image:
    """Decode `image` and return it as 8-bit RGB, upright."""
    reduce_jpeg_decode(image, 1)  # no reduction asked for, but what the pixel limit needs, if not done yet
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit grayscale: scale, don't clip
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":  # 32-bit float grayscale: Pillow would clip 0 ... 1 to black
        image = Image.fromarray(_float_to_8_bit(np.asarray(image, dtype=np.float64)), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _float_to_8_bit(values: np.ndarray) -> np.ndarray:
    """Float pixels in 0 ... 1 (the convention of float image files) to 0 ... 255; anything else is refused,
    since its scale cannot be known."""
    if not np.isfinite(values).all():
        raise UnsupportedImageError("32-bit float pixels that are not numbers (NaN or infinite); save it as "
                                    "an 8- or 16-bit image")
    if values.size and (values.min() < 0 or values.max() > 1):
        raise UnsupportedImageError(f"32-bit float pixels from {values.min():g} to {values.max():g}, not within "
                                    f"0 ... 1; save it as an 8- or 16-bit image")
    return np.round(values * 255.0).astype(np.uint8)


def normalize(image: Image.Image, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> np.ndarray:
    """(3, H, W) float32 array: pixels / 255, minus the mean, over the std, as ToTensor + Normalize do
    (the same float32 operations in the same order, so the same bits)."""
    # Channels first while still bytes, then in place one channel at a time: 4x faster than broadcasting
    # over the last axis (docs/benchmarks.md, data pipeline), and the same float32 operations on every pixel.
    pixels = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)).astype(np.float32)
    pixels /= np.float32(255)
    means, stds = (np.broadcast_to(np.asarray(values, np.float32), (3,)) for values in (mean, std))  # 1 or 3 values
    for channel, channel_mean, channel_std in zip(pixels, means, stds):
        channel -= channel_mean
        channel /= channel_std
    return pixels


@dataclass(frozen=True)
class Preprocessing:
    """Resize(resize, interpolation) -> CenterCrop(crop) -> ToTensor -> Normalize, on a lazily opened image."""

    resize: int
    crop: int
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD
    reduced_decode: bool = True

    def view(self, image: Image.Image) -> Image.Image:
        """The RGB crop the network sees, before normalisation."""
        check_shape(image)  # also for images handed over already opened
        if self.reduced_decode:
            reduce_jpeg_decode(image, min(oriented_size(image)) / self.resize)
        image = to_rgb(image)
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_short, new_long = self.resize, int(self.resize * long / short)  # torchvision's rounding
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        if size != image.size:
            image = image.resize(size, INTERPOLATIONS[self.interpolation])
        top = int(round((size[1] - self.crop) / 2.0))
        left = int(round((size[0] - self.crop) / 2.0))
        return image.crop((left, top, left + self.crop, top + self.crop))

    def array(self, image: Image.Image) -> np.ndarray:
        """(3, crop, crop) float32, normalised."""
        return normalize(self.view(image), self.mean, self.std)

    def load(self, source: "str | os.PathLike | Image.Image") -> np.ndarray:
        """`array` of a file path (opened lazily, so JPEGs decode at reduced size) or of a PIL image."""
        if isinstance(source, Image.Image):
            return self.array(source.copy())
        with open_image(source) as opened:
            return self.array(opened)

    def load_view(self, source: "str | os.PathLike | Image.Image") -> Image.Image:
        if isinstance(source, Image.Image):
            return self.view(source.copy())
        with open_image(source) as opened:
            return self.view(opened)

    @classmethod
    def from_settings(cls, image: dict, reduced_decode: bool = True) -> "Preprocessing":
        """From the `image` settings a checkpoint or an exported model stores."""
        return cls(int(image["eval_resize"]), int(image["eval_crop"]), str(image.get("interpolation", "bicubic")),
                   tuple(image.get("mean", MEAN)), tuple(image.get("std", STD)), reduced_decode)

    def to_settings(self) -> dict[str, object]:
        """The `image` settings that from_settings reads back: what an export stores in its metadata."""
        return {"eval_resize": self.resize, "eval_crop": self.crop, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std)}
