"""Images of a class-per-folder tree as tensors: robust decoding and the train / eval transforms.

Every image becomes RGB the same way (EXIF orientation applied, alpha composited onto white, 16-bit scaled,
palette / CMYK / grayscale converted). Large JPEGs are decoded at a reduced scale (1/2, 1/4 or 1/8, done
inside the JPEG decoder and much faster) whenever the output still gets at least as many source pixels as it
has; small photos take exactly torchvision's path, so their tensors equal the tutorial transforms'.
"""
import contextlib
import sys
import warnings
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import ExifTags, Image, ImageOps
from torch.utils.data import Dataset

from model import MEAN, STD

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
_TORCHVISION_INTERPOLATIONS = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def is_image_name(name: str) -> bool:
    """An image extension in any letter case, and not a hidden file (such as macOS's ._photo.jpg)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def open_image(path: str) -> Image.Image:
    """Open an image lazily (header only), refusing decompression bombs instead of only warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except Image.DecompressionBombWarning as warning:
            raise Image.DecompressionBombError(str(warning)) from None


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) the image will have once its EXIF orientation is applied, without decoding it."""
    width, height = image.size
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return (height, width) if orientation in _ROTATED_ORIENTATIONS else (width, height)


def reduce_jpeg_decode(image: Image.Image, max_reduction: float) -> None:
    """Ask the JPEG decoder for 1/8, 1/4 or 1/2 scale, the largest not exceeding `max_reduction`.

    A no-op for other formats and for images already decoded.
    """
    if image.format != "JPEG":
        return
    reduction = next((r for r in (8, 4, 2) if r <= max_reduction), 1)
    if reduction > 1:
        width, height = image.size
        image.draft(None, (width // reduction, height // reduction))


def to_rgb(image: Image.Image) -> Image.Image:
    """Decode `image` and return it as 8-bit RGB, upright."""
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit grayscale: scale, don't clip
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def to_normalized_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float tensor normalised with the ImageNet mean and std, as ToTensor + Normalize do."""
    return F.normalize(F.to_tensor(image), MEAN, STD)


class TrainTransform:
    """RandomResizedCrop(size) -> RandomHorizontalFlip -> ToTensor -> Normalize, on a lazily opened image.

    The crop is drawn from the image's size before decoding, so a large JPEG can be decoded at the largest
    reduction that still leaves the crop at least `size` pixels on each side.
    """

    decodes_lazily = True  # takes an Image.open()ed image and does the decoding itself

    def __init__(self, size: int, reduced_decode: bool = True) -> None:
        self.size = size
        self.reduced_decode = reduced_decode

    def __call__(self, image: Image.Image) -> torch.Tensor:
        width, height = oriented_size(image)
        # get_params only reads the shape: an empty tensor stands in for the undecoded image
        top, left, crop_h, crop_w = T.RandomResizedCrop.get_params(
            torch.empty(0, height, width), scale=[0.08, 1.0], ratio=[3.0 / 4.0, 4.0 / 3.0])
        if self.reduced_decode:
            reduce_jpeg_decode(image, min(crop_w, crop_h) / self.size)
        image = to_rgb(image)
        if image.size == (width, height):
            image = F.resized_crop(image, top, left, crop_h, crop_w, [self.size, self.size],
                                   T.InterpolationMode.BILINEAR)
        else:  # decoded at reduced scale: the same crop, in the smaller image's coordinates
            sx, sy = image.width / width, image.height / height
            box = (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy)
            image = image.resize((self.size, self.size), Image.BILINEAR, box=box)
        if torch.rand(1) < 0.5:  # the same draw RandomHorizontalFlip makes
            image = F.hflip(image)
        return to_normalized_tensor(image)


class EvalTransform:
    """Resize(resize, interpolation) -> CenterCrop(crop) -> ToTensor -> Normalize, on a lazily opened image."""

    decodes_lazily = True

    def __init__(self, resize: int, crop: int, interpolation: str = "bicubic", reduced_decode: bool = True) -> None:
        self.resize = resize
        self.crop = crop
        self.interpolation = _TORCHVISION_INTERPOLATIONS[interpolation]
        self.reduced_decode = reduced_decode

    def view(self, image: Image.Image) -> Image.Image:
        """The RGB crop the network sees, before normalisation."""
        if self.reduced_decode:
            reduce_jpeg_decode(image, min(oriented_size(image)) / self.resize)
        image = to_rgb(image)
        image = F.resize(image, self.resize, self.interpolation)
        return F.center_crop(image, [self.crop, self.crop])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return to_normalized_tensor(self.view(image))


def load_rgb_tensor(image: Image.Image, transform: Callable | None) -> object:
    """Apply `transform` to an opened image, decoding first unless the transform decodes lazily itself."""
    if transform is None:
        return to_rgb(image)
    if getattr(transform, "decodes_lazily", False):
        return transform(image)
    return transform(to_rgb(image))


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Run the transform with its own seed, leaving the caller's random state untouched."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class MyDataSet(Dataset):
    """Images and labels from lists of paths; an unreadable image is reported by path and left out.

    An index may be a plain int, or an (index, seed) pair from utils.EpochSampler, which makes each sample's
    augmentation depend only on (seed, epoch, index): the same whatever the number of workers or processes.
    """

    def __init__(self, images_path: Sequence[str], images_class: Sequence[int],
                 transform: Callable | None = None) -> None:
        self.images_path = list(images_path)
        self.images_class = list(images_class)
        self.transform = transform
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.images_path)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int] | None:
        index, seed = item if isinstance(item, tuple) else (item, None)
        path = self.images_path[index]
        try:
            with _seeded(seed), open_image(path) as opened:  # closed at once, not when collected
                image = load_rgb_tensor(opened, self.transform)
                if image is opened:  # no transform and already RGB: keep a copy that outlives the file
                    image = opened.copy()
        except Exception as error:  # any broken file must cost one sample, never the epoch
            if path not in self._reported:
                self._reported.add(path)
                print(f"warning: skipping unreadable image {path} ({type(error).__name__}: {error})",
                      file=sys.stderr)
            return None
        return image, self.images_class[index]

    @staticmethod
    def collate_fn(batch: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Stack a batch, dropping the samples that could not be read (None if none could)."""
        samples = [sample for sample in batch if sample is not None]
        if not samples:
            return None
        images, labels = zip(*samples)
        return torch.stack(images, dim=0), torch.as_tensor(labels)
