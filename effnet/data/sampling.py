"""Which samples an epoch sees, in which order, and with which random seed: EpochSampler, which makes every
sample's augmentation depend only on (seed, epoch, index), so that a resumed or distributed run sees exactly
the batches an uninterrupted one would; LastBatchMerged; and `seeded`, which MyDataSet draws each sample's
augmentation under."""
import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, Sampler


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Draw the random numbers of the block from torch's generator seeded with `seed` (a sample's own seed from
    EpochSampler), leaving the caller's random state untouched; None: the block draws as usual."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


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
