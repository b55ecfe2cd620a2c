"""The dataset over a class-per-folder tree: training and evaluation transforms, and the epoch sampler.

Decoding (any image mode to upright RGB, reduced-size JPEG decoding, refusing decompression bombs) lives in
images.py; this file turns decoded photos into tensors for training and validation.
"""
import contextlib
import math
import sys
from typing import Callable, Iterator, Sequence

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image
from torch.utils.data import BatchSampler, Dataset, Sampler

from effnet.data.images import Preprocessing, normalize, open_image, oriented_size, reduce_jpeg_decode, to_rgb


def to_normalized_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float tensor normalised with the ImageNet mean and std, as ToTensor + Normalize do."""
    return torch.from_numpy(normalize(image))


class TrainTransform:
    """RandomResizedCrop(size) -> RandomHorizontalFlip -> [augment] -> ToTensor -> Normalize -> [RandomErasing],
    on a lazily opened image.

    The crop is drawn from the image's size before decoding, so a large JPEG can be decoded at the largest
    reduction that still leaves the crop at least `size` pixels on each side. `augment` is an extra PIL
    transform (TrivialAugment, RandAugment); `random_erase` the probability of erasing a random rectangle of
    the normalised tensor to 0 (the mean colour). All their random draws come from torch's generator, which
    MyDataSet seeds per sample.
    """

    decodes_lazily = True  # takes an Image.open()ed image and does the decoding itself

    def __init__(self, size: int, reduced_decode: bool = True, augment: Callable | None = None,
                 random_erase: float = 0.0) -> None:
        self.size = size
        self.reduced_decode = reduced_decode
        self.augment = augment
        self.erase = T.RandomErasing(p=random_erase, value=0) if random_erase > 0 else None

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
        if self.augment is not None:
            image = self.augment(image)
        tensor = to_normalized_tensor(image)
        return self.erase(tensor) if self.erase is not None else tensor


class EvalTransform(Preprocessing):
    """Resize(resize, interpolation) -> CenterCrop(crop) -> ToTensor -> Normalize, on a lazily opened image.

    `view(image)` is the RGB crop the network sees; calling it gives the normalised (3, crop, crop) tensor.
    """

    decodes_lazily = True

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(self.array(image))


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


class EpochSampler(Sampler):
    """Yields (index, seed) pairs: a per-epoch order and a per-sample augmentation seed.

    Both depend only on (seed, epoch, index), so a resumed run sees exactly the batches and crops an
    uninterrupted run would, whatever the number of data-loading workers. With `num_replicas` > 1 each
    process takes every num_replicas-th sample. Training (`pad=True`) pads by repeating the first samples
    so every process runs the same number of steps; evaluation (`pad=False`) sees every sample exactly once
    across all processes.

    With `weights` (one per sample), each epoch instead draws `size` samples with replacement, sample i with
    probability proportional to weights[i] (balanced sampling); an image drawn twice gets two different
    augmentations, as the seed then depends on the draw's position rather than on the index.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, num_replicas: int = 1,
                 pad: bool = True, weights: Sequence[float] | None = None) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.num_replicas = num_replicas
        self.pad = pad
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _pairs(self) -> list[tuple[int, int]]:
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None and self.size:
            drawn = torch.multinomial(self.weights, self.size, replacement=True, generator=generator).tolist()
            pairs = [(index, (base + position) % 2**62) for position, index in enumerate(drawn)]
        else:
            order = torch.randperm(self.size, generator=generator).tolist() if self.shuffle else range(self.size)
            pairs = [(index, (base + index) % 2**62) for index in order]
        if self.pad and pairs and len(pairs) % self.num_replicas:
            total = math.ceil(len(pairs) / self.num_replicas) * self.num_replicas
            pairs = (pairs * math.ceil(total / len(pairs)))[:total]  # fewer samples than processes repeat more
        return pairs[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._pairs())

    def __len__(self) -> int:  # counted, not drawn: the loader asks every epoch
        total = self.size
        if self.pad and total % self.num_replicas:
            total = math.ceil(total / self.num_replicas) * self.num_replicas
        return len(range(self.rank, total, self.num_replicas))


class LastBatchMerged(BatchSampler):
    """Batches of `batch_size` samples, where a last batch of a single sample joins the one before it.

    BatchNorm cannot train on one image whose feature maps have shrunk to 1 x 1 (32 px images): such a lone
    last batch would stop the run, and dropping it would leave that image out of the epoch.
    """

    def __init__(self, sampler: Sampler, batch_size: int) -> None:
        super().__init__(sampler, batch_size, drop_last=False)

    def __iter__(self) -> Iterator[list]:
        batches = list(super().__iter__())
        if self.batch_size > 1 and len(batches) > 1 and len(batches[-1]) == 1:
            lone = batches.pop()
            batches[-1] = batches[-1] + lone
        return iter(batches)

    def __len__(self) -> int:
        full, rest = divmod(len(self.sampler), self.batch_size)
        return full + (rest > 0) - (rest == 1 and full > 0 and self.batch_size > 1)
