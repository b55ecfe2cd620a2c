"""The tutorial's own calls of utils.py and my_dataset.py, as its train.py and notebooks write them (keywords and
positional), with the tutorial's return types: four lists, a float, a float."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

import utils
from effnet.variants import MEAN, STD
from my_dataset import MyDataSet

TUTORIAL_TRANSFORM = transforms.Compose([transforms.RandomResizedCrop(32), transforms.RandomHorizontalFlip(),
                                         transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def tiny_network(classes: int = 5) -> nn.Module:
    """A few thousand weights: any network works with the tutorial's loops, and this one trains in milliseconds."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, classes))


@pytest.fixture
def tutorial_folder(flower_sample, tmp_path, monkeypatch) -> Path:
    """The tutorial runs from its own folder, where read_split_data writes class_indices.json."""
    monkeypatch.chdir(tmp_path)
    return flower_sample


def test_read_split_data_gives_four_lists_and_writes_class_indices_as_the_tutorial(tutorial_folder, capsys):
    train_paths, train_labels, val_paths, val_labels = utils.read_split_data(str(tutorial_folder))
    assert all(type(part) is list for part in (train_paths, train_labels, val_paths, val_labels))
    assert (len(train_paths), len(val_paths)) == (120, 30) == (len(train_labels), len(val_labels))
    assert all(isinstance(label, int) and 0 <= label < 5 for label in train_labels + val_labels)
    indices = json.loads(Path("class_indices.json").read_text())
    assert indices == {"0": "daisy", "1": "dandelion", "2": "roses", "3": "sunflowers", "4": "tulips"}
    assert capsys.readouterr().out.splitlines() == ["150 images were found in the dataset.",
                                                    "120 images for training.", "30 images for validation."]
    with_keywords = utils.read_split_data(root=str(tutorial_folder), val_rate=0.2)
    assert with_keywords == (train_paths, train_labels, val_paths, val_labels)
    assert len(utils.read_split_data(tutorial_folder, 0.5)[2]) == 75  # positional val_rate: half of each class


def test_my_dataset_and_its_collate_fn_as_the_tutorial_builds_them(tutorial_folder):
    paths, labels, _, _ = utils.read_split_data(tutorial_folder, report=False)
    by_keywords = MyDataSet(images_path=paths, images_class=labels, transform=TUTORIAL_TRANSFORM)
    positional = MyDataSet(paths, labels, TUTORIAL_TRANSFORM)
    assert len(by_keywords) == len(positional) == 120
    image, label = by_keywords[3]
    assert image.shape == (3, 32, 32) and label == labels[3]
    loader = DataLoader(positional, batch_size=8, shuffle=True, collate_fn=positional.collate_fn)
    images, batch_labels = next(iter(loader))
    assert images.shape == (8, 3, 32, 32) and batch_labels.dtype == torch.int64


@pytest.fixture
def loaders(tutorial_folder) -> tuple[DataLoader, DataLoader]:
    train_paths, train_labels, val_paths, val_labels = utils.read_split_data(tutorial_folder, report=False)
    val_transform = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor(),
                                        transforms.Normalize(MEAN, STD)])
    train_set = MyDataSet(train_paths[::6], train_labels[::6], TUTORIAL_TRANSFORM)
    val_set = MyDataSet(val_paths, val_labels, val_transform)
    return (DataLoader(train_set, batch_size=8, shuffle=True, collate_fn=train_set.collate_fn),
            DataLoader(val_set, batch_size=8, collate_fn=val_set.collate_fn))


def test_train_one_epoch_and_evaluate_return_the_tutorials_floats(loaders):
    train_loader, val_loader = loaders
    model = tiny_network()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    device = torch.device("cpu")
    mean_loss = utils.train_one_epoch(model=model, optimizer=optimizer, data_loader=train_loader, device=device,
                                      epoch=0)
    acc = utils.evaluate(model=model, data_loader=val_loader, device=device)
    assert type(mean_loss) is float and mean_loss > 0 and type(acc) is float and 0 <= acc <= 1
    assert acc * 30 == pytest.approx(round(acc * 30))  # a count of the 30 validation photos
    assert utils.evaluate(model, val_loader, "cpu") == acc  # positional, the device by name
    assert type(utils.train_one_epoch(model, optimizer, train_loader, "cpu", 1)) is float


def test_plot_data_loader_image_shows_a_batch_with_its_class_names(loaders, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    _, val_loader = loaders  # class_indices.json was written by read_split_data, here, as in the tutorial
    shown = []
    monkeypatch.setattr(pyplot, "show", lambda *args, **kwargs: shown.append(pyplot.gcf()))
    utils.plot_data_loader_image(val_loader, batches=2)
    assert len(shown) == 2  # a figure per batch, as the tutorial's loop shows them
    titles = [axis.get_xlabel() for axis in shown[0].axes]
    assert len(titles) == 4 and set(titles) <= {"daisy", "dandelion", "roses", "sunflowers", "tulips"}
    utils.plot_data_loader_image(val_loader, save="batch.png")
    assert Path("batch.png").read_bytes().startswith(b"\x89PNG")
