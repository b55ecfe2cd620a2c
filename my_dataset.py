"""The tutorial's dataset, MyDataSet: photos and their labels from two lists, each photo decoded to RGB and passed
through a transform; and the transforms train.py gives it (edit train_transform to change the augmentation).

The transforms are torchvision's, composed as the tutorial composes them. What a training run needs beyond the
tutorial comes from MyDataSet itself: any image becomes RGB (grayscale, CMYK, 16-bit, transparent, rotated by its
EXIF orientation); an unreadable file is reported once and left out of its batch instead of ending the epoch; a
large JPEG is decoded at a reduced scale when the transform cannot use its full resolution; and each sample's
random draws come from its own seed (EpochSampler), so a resumed run sees the same crops and flips.
"""
import math
import sys
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from effnet.data.images import open_image, oriented_size, reduce_jpeg_decode, to_rgb
from effnet.data.sampling import EpochSampler, seeded  # noqa: F401 (EpochSampler: imported from here too)
from effnet.variants import MEAN, STD

Sample = tuple[torch.Tensor, int]


def train_transform(size: int, auto_augment: str = "none", random_erase: float = 0.0) -> transforms.Compose:
    """What training sees of a photo: the tutorial's random crop (8% to 100% of the photo, 3:4 to 4:3, resized
    to `size`) and flip, then --auto-augment's TrivialAugmentWide or RandAugment and --random-erase's rectangle
    (erased to 0, the mean colour) with that probability."""
    steps: list[Callable] = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
    if auto_augment == "trivialaugment":
        steps.append(transforms.TrivialAugmentWide())
    elif auto_augment == "randaugment":
        steps.append(transforms.RandAugment())
    steps += [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    if random_erase > 0:
        steps.append(transforms.RandomErasing(p=random_erase, value=0))
    return transforms.Compose(steps)


def eval_transform(resize: int, crop: int, interpolation: str = "bicubic") -> transforms.Compose:
    """What validation (and predict.py) sees of a photo: the shorter side resized to `resize`, the centre
    `crop` x `crop`, normalised. predict.py computes the same numbers without PyTorch (images.Preprocessing)."""
    return transforms.Compose([transforms.Resize(resize, transforms.InterpolationMode(interpolation)),
                               transforms.CenterCrop(crop), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def crop_decode_size(size: int, scale: float = 0.08, ratio: float = 3 / 4) -> int:
    """The shorter side a photo must keep for train_transform(size): RandomResizedCrop's smallest crop (`scale` of
    the area, at aspect `ratio`) then still spans `size` source pixels, so decoding down to it changes no crop."""
    return math.ceil(size / math.sqrt(scale * ratio))


# The names these had when they were classes of their own (scripts written against earlier versions).
TrainTransform, EvalTransform = train_transform, eval_transform


class MyDataSet(Dataset):
    """`dataset[i]` is (transform(photo i), label i), as in the tutorial; None for a photo that cannot be read.

    `decode_size`: a JPEG is decoded at 1/2, 1/4 or 1/8 scale (Pillow's draft mode, several times faster) as long
    as its shorter side stays at least this many pixels (eval: the resize; training: crop_decode_size); None
    decodes every photo whole. An index may be an (index, seed) pair, as EpochSampler yields: the transform's
    random draws then come from that seed alone, the same in any worker, process or resumed run.
    """

    def __init__(self, images_path: Sequence[str], images_class: Sequence[int], transform: Callable | None = None,
                 *, decode_size: int | None = None) -> None:
        self.images_path = list(images_path)
        self.images_class = list(images_class)
        self.transform = transform
        self.decode_size = decode_size
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.images_path)

    def __getitem__(self, item: int | tuple[int, int]) -> Sample | None:
        index, seed = item if isinstance(item, tuple) else (item, None)
        path = self.images_path[index]
        try:
            with seeded(seed), open_image(path) as opened:  # the file is closed at once, not when collected
                image = self.decode(opened)
                sample = self.transform(image) if self.transform is not None else image
                if sample is opened:  # no transform and already RGB: a copy that outlives the file
                    sample = opened.copy()
        except Exception as error:  # any broken file must cost one sample, never the epoch
            if path not in self._reported:
                self._reported.add(path)
                print(f"warning: skipping unreadable image {path} ({type(error).__name__}: {error})",
                      file=sys.stderr)
            return None
        return sample, self.images_class[index]

    def decode(self, image: Image.Image) -> Image.Image:
        """An opened (not yet decoded) photo as upright 8-bit RGB, at a reduced scale where `decode_size` allows."""
        if self.decode_size:
            reduce_jpeg_decode(image, min(oriented_size(image)) / self.decode_size)
        return to_rgb(image)

    @staticmethod
    def collate_fn(batch: list[Sample | None]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Stack a batch, dropping the samples that could not be read (None if none could)."""
        samples = [sample for sample in batch if sample is not None]
        if not samples:
            return None
        images, labels = zip(*samples)
        return torch.stack(images, dim=0), torch.as_tensor(labels)
