"""utils.py's loops over batches on their own: training lowers the loss, evaluation counts what it should (each
image once across processes, unreadable ones not at all), a loss that diverges stops at once."""
import pytest
import torch
from imagegen import make_class_folders
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

import utils
from effnet.data.sampling import EpochSampler
from effnet.training.steps import NonFiniteLossError
from my_dataset import MyDataSet, eval_transform, train_transform


class ColourVote(nn.Module):
    """Answers each photo's dominant colour (classes blue, green, red: the channels B, G, R), with no weights to
    learn: its accuracy on the generated colour photos is known in advance."""

    num_classes = 3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))[:, [2, 1, 0]] * 10


def tiny_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3))


@pytest.fixture
def colours(tmp_path) -> tuple[list[str], list[int]]:
    """9 generated photos, 3 per class (blue 0, green 1, red 2)."""
    root = make_class_folders(tmp_path / "data", per_class=3)
    paths = sorted(str(path) for path in root.glob("*/*"))
    return paths, [("blue", "green", "red").index(path.split("/")[-2]) for path in paths]


def test_training_lowers_the_loss_over_a_few_epochs(colours):
    paths, labels = colours
    dataset = MyDataSet(paths, labels, train_transform(32))
    loader = DataLoader(dataset, batch_size=3, sampler=EpochSampler(len(dataset), shuffle=True, seed=0),
                        collate_fn=MyDataSet.collate_fn)
    model = tiny_network()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    losses = [utils.train_epoch(model, optimizer, loader, "cpu", epoch, progress=False).loss for epoch in range(1, 9)]
    assert losses[-1] < 0.6 * losses[0], losses
    result = utils.train_epoch(model, optimizer, loader, "cpu", 9, progress=False)
    assert result.images == 9 and result.accuracy * 9 == pytest.approx(round(result.accuracy * 9))


def test_evaluation_counts_each_readable_image_once(colours, tmp_path):
    paths, labels = colours
    labels = [(label + 1) % 3 if index in (1, 5) else label for index, label in enumerate(labels)]  # 2 mislabelled
    (tmp_path / "broken.jpg").write_bytes(b"not a photo")
    dataset = MyDataSet([*paths, str(tmp_path / "broken.jpg")], [*labels, 0], eval_transform(40, 32))
    loader = DataLoader(dataset, batch_size=4, collate_fn=MyDataSet.collate_fn)
    result = utils.evaluate_epoch(ColourVote(), loader, "cpu", progress=False)
    assert (result.images, result.accuracy) == (9, 7 / 9)  # the unreadable photo is left out, not counted wrong
    assert result.confusion.sum() == 9 and result.confusion.trace() == 7
    assert result.confusion[1, 0] == 1 and result.confusion[2, 1] == 1  # (true, predicted) of the two mislabelled
    assert utils.evaluate(ColourVote(), loader, "cpu", progress=False) == 7 / 9


def test_the_shards_of_two_processes_count_every_image_once(colours):
    """Under torchrun each process evaluates its shard and the counts are summed; EpochSampler(pad=False) gives
    each image to exactly one process, where torch's DistributedSampler pads an odd count with a repeat."""
    paths, labels = colours
    dataset = MyDataSet(paths, labels, eval_transform(40, 32))
    counted = []
    for rank in range(2):
        shard = EpochSampler(len(dataset), shuffle=False, rank=rank, num_replicas=2, pad=False)
        loader = DataLoader(dataset, batch_size=4, sampler=shard, collate_fn=MyDataSet.collate_fn)
        counted.append(utils.evaluate_epoch(ColourVote(), loader, "cpu", progress=False).images)
    assert counted == [5, 4] and sum(counted) == 9
    padded = sum(len(DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=False)) for rank in range(2))
    assert padded == 10  # what the tutorial's multi-GPU evaluation would have counted


def test_a_loss_that_becomes_nan_stops_training_at_that_step(colours):
    paths, labels = colours
    dataset = MyDataSet(paths, labels, train_transform(32))
    loader = DataLoader(dataset, batch_size=3, collate_fn=MyDataSet.collate_fn)
    model = tiny_network()
    with torch.no_grad():
        model[-1].bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="the training loss became nan in epoch 4, step 1"):
        utils.train_one_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, "cpu", 4, progress=False)
