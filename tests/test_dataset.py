"""my_dataset.py, the split and the epoch sampler: every awkward file, deterministic stratified splits, exact
transforms."""
import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from conftest import train_args
from imagegen import class_image, jpeg_bytes, make_class_folders
from PIL import Image

import train
from effnet.data.images import open_image, to_rgb
from effnet.data.sampling import EpochSampler, LastBatchMerged
from effnet.data.split import DataSplit, split_class_folders
from model import MEAN, STD
from my_dataset import MyDataSet, crop_decode_size, eval_transform, train_transform


def photo(seed: int = 0, size: tuple[int, int] = (90, 70)) -> Image.Image:
    return class_image((200, 60, 40), random.Random(seed), size)


@pytest.fixture
def awkward_tree(tmp_path: Path) -> Path:
    """A class-per-folder tree holding every kind of file users have."""
    root = tmp_path / "awkward"
    good = root / "good"
    good.mkdir(parents=True)
    for i in range(4):
        photo(i).save(good / f"plain{i}.jpg")
    photo(10).save(good / "UPPER.JPG")
    photo(11).save(good / "long.jpeg")
    photo(12).save(good / "bitmap.bmp")
    photo(13).save(good / "web.webp")
    photo(14).save(good / "scan.TIFF")
    photo(15).convert("L").save(good / "grayscale.png")
    rgba = photo(16).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(good / "rgba.png")
    photo(17).convert("P", palette=Image.ADAPTIVE).save(good / "palette.png", transparency=0)
    photo(18).convert("CMYK").save(good / "cmyk.jpg")
    sixteen = (np.linspace(0, 65535, 90 * 70).reshape(70, 90)).astype(np.uint16)
    Image.fromarray(sixteen).save(good / "sixteen_bit.png")  # mode I;16
    rotated = photo(19, (100, 50))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    rotated.save(good / "rotated.jpg", exif=exif)

    broken = root / "broken"
    broken.mkdir()
    for i in range(3):
        photo(20 + i).save(broken / f"fine{i}.jpg")
    whole = jpeg_bytes(photo(30, (300, 200)))
    (broken / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    corrupt = bytearray(whole)
    corrupt[600:1400] = bytes(random.Random(1).randrange(256) for _ in range(800))
    (broken / "corrupt.jpg").write_bytes(bytes(corrupt))
    (broken / "empty.jpg").write_bytes(b"")
    (broken / "fake.jpg").write_text("this is not a picture")
    (broken / "notes.txt").write_text("a stray text file")
    (broken / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (broken / "._fine0.jpg").write_bytes(b"\0\5\26\7 mac resource fork")
    (broken / "nested").mkdir()
    photo(40).save(broken / "nested" / "deeper.jpg")

    single = root / "single"
    single.mkdir()
    photo(50).save(single / "only.png")
    (root / "empty_class").mkdir()
    (root / ".hidden_class").mkdir()
    photo(60).save(root / ".hidden_class" / "x.jpg")
    (root / "README.txt").write_text("stray file at the top")
    return root


def test_split_finds_every_image_kind_and_ignores_the_rest(awkward_tree, capsys):
    split = split_class_folders(awkward_tree, val_rate=0.2, seed=0)
    err = capsys.readouterr().err
    assert split.classes == ["broken", "good", "single"]  # empty and hidden folders are not classes
    names = {Path(p).name for p in split.train_paths + split.val_paths}
    assert {"UPPER.JPG", "long.jpeg", "bitmap.bmp", "web.webp", "scan.TIFF", "cmyk.jpg", "sixteen_bit.png"} <= names
    assert not names & {"notes.txt", ".DS_Store", "._fine0.jpg", "deeper.jpg", "empty.jpg", "fake.jpg"}
    skipped = "\n".join(split.skipped)
    assert "empty.jpg: empty file" in skipped and "fake.jpg" in skipped
    assert "empty_class holds no readable images" in err
    assert "class single has a single image; it goes to training only" in err
    assert split.counts(split.val_labels)[2] == 0 and split.counts(split.train_labels)[2] == 1


def test_every_image_mode_becomes_rgb(awkward_tree):
    good = awkward_tree / "good"
    for path in sorted(good.iterdir()):
        image = to_rgb(open_image(str(path)))
        assert image.mode == "RGB", path.name
    # 16-bit values are scaled to 8 bits, not clipped to white
    sixteen = np.asarray(to_rgb(open_image(str(good / "sixteen_bit.png"))))
    assert sixteen[0, 0, 0] == 0 and 120 < sixteen[35, 45, 0] < 135 and sixteen[-1, -1, 0] == 255
    # transparent pixels are composited onto white
    assert np.asarray(to_rgb(open_image(str(good / "rgba.png")))).mean() > np.asarray(photo(16)).mean()


def test_exif_orientation_is_applied(awkward_tree):
    image = to_rgb(open_image(str(awkward_tree / "good" / "rotated.jpg")))
    assert image.size == (50, 100)
    tensor, _ = MyDataSet([str(awkward_tree / "good" / "rotated.jpg")], [0], eval_transform(60, 50))[0]
    assert tensor.shape == (3, 50, 50)


def test_broken_files_are_reported_by_path_and_left_out(awkward_tree, capsys):
    broken = sorted(str(p) for p in (awkward_tree / "broken").glob("*.jpg") if not p.name.startswith("._"))
    dataset = MyDataSet(broken, [0] * len(broken), eval_transform(40, 32))
    samples = [dataset[i] for i in range(len(dataset))]
    err = capsys.readouterr().err
    by_name = dict(zip((Path(p).name for p in broken), samples))
    assert by_name["truncated.jpg"] is None and f"skipping unreadable image {awkward_tree}/broken/truncated.jpg" in err
    assert by_name["empty.jpg"] is None and by_name["fake.jpg"] is None
    assert all(by_name[f"fine{i}.jpg"][0].shape == (3, 32, 32) for i in range(3))
    batch = MyDataSet.collate_fn(samples)
    assert batch[0].shape[0] == sum(s is not None for s in samples)
    assert MyDataSet.collate_fn([None, None]) is None


def test_training_survives_the_awkward_tree(awkward_tree, tmp_path, capsys):
    assert train.main(train_args(awkward_tree, tmp_path / "runs", "--epochs", "1", "--name", "awkward")) == 0
    captured = capsys.readouterr()
    assert "truncated.jpg" in captured.err and "epoch 1/1" in captured.out


def test_decompression_bombs_are_refused(tmp_path, monkeypatch, capsys):
    photo().save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the photo counts as a bomb now
    with pytest.raises(Image.DecompressionBombError):
        open_image(str(tmp_path / "big.png"))
    assert MyDataSet([str(tmp_path / "big.png")], [0], eval_transform(40, 32))[0] is None
    assert "DecompressionBomb" in capsys.readouterr().err


def test_split_is_deterministic_stratified_and_keeps_every_class_in_validation(tmp_path):
    root = make_class_folders(tmp_path / "data", per_class=7)
    first = split_class_folders(root, 0.2, seed=3)
    assert first == split_class_folders(root, 0.2, seed=3)
    assert first.val_paths != split_class_folders(root, 0.2, seed=4).val_paths
    assert first.counts(first.val_labels) == [1, 1, 1]  # round(7 * 0.2) = 1 per class
    assert not set(first.train_paths) & set(first.val_paths)
    assert len(first.train_paths) + len(first.val_paths) == 21
    tiny = split_class_folders(root, 0.01, seed=0)
    assert tiny.counts(tiny.val_labels) == [1, 1, 1]  # at least one per class with two or more images


def test_split_round_trips_through_json(tmp_path):
    root = make_class_folders(tmp_path / "data", per_class=4)
    split = split_class_folders(root, 0.25, seed=0)
    assert DataSplit.from_json(split.to_json(), str(root)) == DataSplit(
        root=str(root), classes=split.classes, train_paths=split.train_paths, train_labels=split.train_labels,
        val_paths=split.val_paths, val_labels=split.val_labels)


def test_epoch_sampler_covers_each_sample_once_per_epoch_and_reshuffles():
    sampler = EpochSampler(10, shuffle=True, seed=1)
    first = [i for i, _ in sampler]
    sampler.set_epoch(1)
    second = [i for i, _ in sampler]
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    seeds = [s for _, s in sampler]
    assert len(set(seeds)) == 10
    shards = [[i for i, _ in EpochSampler(10, False, rank=r, num_replicas=3, pad=False)] for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))
    padded = [len(EpochSampler(10, True, rank=r, num_replicas=3, pad=True)) for r in range(3)]
    assert padded == [4, 4, 4]
    tiny = [[i for i, _ in EpochSampler(1, True, rank=r, num_replicas=4, pad=True)] for r in range(4)]
    assert tiny == [[0], [0], [0], [0]]  # fewer samples than processes: every process still gets a step


def test_augmentation_depends_only_on_the_sample_seed(tmp_path):
    path = tmp_path / "p.jpg"
    photo(size=(120, 90)).save(path)
    dataset = MyDataSet([str(path)], [0], train_transform(48))
    torch.manual_seed(0)
    a = dataset[(0, 1234)][0]
    torch.manual_seed(99)
    b = dataset[(0, 1234)][0]
    assert torch.equal(a, b) and not torch.equal(a, dataset[(0, 1235)][0])
    state = torch.get_rng_state()
    dataset[(0, 5)]
    assert torch.equal(state, torch.get_rng_state())  # the caller's random state is untouched


# --- exactness of the fast pipeline ----------------------------------------------------------------------------


def _small_photos(flowers: Path | None, tmp_path: Path) -> list[str]:
    if flowers is not None:
        return sorted(str(p) for p in flowers.glob("*/*.jpg"))[::15]
    root = make_class_folders(tmp_path / "small", per_class=4)
    return sorted(str(p) for p in root.glob("*/*"))


@pytest.mark.parametrize("use_flowers", [True, False])
def test_small_photos_match_the_tutorial_transforms_exactly(use_flowers, request, tmp_path):
    flowers = request.getfixturevalue("flower_sample") if use_flowers else None
    reference_train = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                                 T.Normalize(MEAN, STD)])
    reference_eval = T.Compose([T.Resize(256, T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                                T.Normalize(MEAN, STD)])
    paths = _small_photos(flowers, tmp_path)
    train_set = MyDataSet(paths, [0] * len(paths), train_transform(224), decode_size=crop_decode_size(224))
    eval_set = MyDataSet(paths, [0] * len(paths), eval_transform(256, 224, "bicubic"), decode_size=256)
    for index, path in enumerate(paths):
        torch.manual_seed(7)
        expected = reference_train(Image.open(path).convert("RGB"))
        assert torch.equal(train_set[(index, 7)][0], expected), path
        expected = reference_eval(Image.open(path).convert("RGB"))
        assert torch.equal(eval_set[index][0], expected), path


def test_reduced_size_decoding_of_a_large_jpeg_is_close_to_full_decoding(tmp_path):
    """Decoding at 1/2, 1/4 or 1/8 scale (the JPEG decoder's own scaling) gives the pixels of full decoding then
    resizing (a box filter, the average of each 2 x 2 ... 8 x 8 block) within a stated tolerance: on average under
    1.5 of 255 grey levels, and 99% of the values within 12."""
    from harness import make_large_jpeg

    path = str(make_large_jpeg(tmp_path / "large.jpg", size=(4000, 3000)))
    whole = MyDataSet([path], [0]).decode(open_image(path))
    for size, expected in ((224, (2000, 1500)), (160, (1000, 750)), (64, (500, 375))):
        reduced = MyDataSet([path], [0], decode_size=crop_decode_size(size)).decode(open_image(path))
        assert reduced.size == expected  # the decoder did reduce, as far as the smallest crop allows
        difference = np.abs(np.asarray(reduced, float) - np.asarray(whole.resize(expected, Image.BOX), float))
        assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 12, (size, difference.mean())
    evaluation = eval_transform(256, 224)  # and what validation sees of it: a normalised unit is ~58 grey levels
    full, fast = MyDataSet([path], [0], evaluation), MyDataSet([path], [0], evaluation, decode_size=256)
    assert fast.decode(open_image(path)).size == (500, 375)
    assert (fast[0][0] - full[0][0]).abs().mean() < 0.05


@pytest.mark.parametrize("size", [(1, 1), (257, 129), (224, 224)])
def test_numpy_normalisation_gives_torchvisions_bits(size):
    from effnet.data.images import MEAN, STD, normalize

    image = Image.fromarray(np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    for mean, std in ((MEAN, STD), ((0.5,), (0.5,))):  # three values, or one for every channel
        expected = T.Compose([T.ToTensor(), T.Normalize(mean, std)])(image).numpy()
        ours = normalize(image, mean, std)
        assert ours.flags["C_CONTIGUOUS"] and ours.dtype == np.float32
        assert np.array_equal(ours.view(np.uint32), expected.view(np.uint32))


def test_epoch_sampler_repeats_an_epoch_exactly_and_its_shards_cover_each_item_once():
    for weights in (None, [1.0 + i for i in range(11)]):
        def pairs(seed: int, epoch: int, rank: int = 0, replicas: int = 1, pad: bool = True,
                  weights: list | None = weights) -> list:
            sampler = EpochSampler(11, True, seed, rank, replicas, pad, weights)
            sampler.set_epoch(epoch)
            return list(sampler)

        assert pairs(3, 2) == pairs(3, 2)  # another sampler, the same seed and epoch: the same order and seeds
        assert pairs(3, 2) != pairs(3, 1) and pairs(3, 2) != pairs(4, 2)
        if weights is None:  # the shards of 3 processes: each item exactly once, or padded to equal lengths
            shards = [pairs(3, 2, rank, 3, pad=False) for rank in range(3)]
            assert sorted(pair for shard in shards for pair in shard) == sorted(pairs(3, 2))
            padded = [pairs(3, 2, rank, 3) for rank in range(3)]
            assert [len(shard) for shard in padded] == [4, 4, 4]
            assert {pair for shard in padded for pair in shard} == set(pairs(3, 2))


def test_epoch_sampler_length_is_what_it_yields():
    for size, replicas, pad, balanced in itertools.product([0, 1, 2, 7, 33], [1, 3, 8], [True, False], [False, True]):
        for rank in range(replicas):
            weights = [1.0 + i for i in range(size)] if balanced else None
            sampler = EpochSampler(size, True, 3, rank, replicas, pad, weights)
            assert len(sampler) == len(list(sampler)), (size, replicas, pad, balanced, rank)


def test_links_that_lead_nowhere_are_skipped_with_a_note(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    (data / "red" / "self.jpg").symlink_to("self.jpg")  # a loop: its stat fails with ELOOP
    (data / "blue" / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (data / "loop").symlink_to("loop")  # a class folder that is a loop: not a folder, passed over
    split = split_class_folders(data)
    assert split.classes == ["blue", "green", "red"] and len(split.train_paths) + len(split.val_paths) == 9
    err = capsys.readouterr().err
    assert f"skipping unreadable image {data / 'red' / 'self.jpg'}: a symbolic link to self.jpg" in err
    assert f"skipping unreadable image {data / 'blue' / 'gone.jpg'}: a symbolic link to {tmp_path / 'missing.jpg'}" \
        in err


@pytest.mark.parametrize("samples, batch, sizes", [(10, 3, [3, 3, 4]), (9, 3, [3, 3, 3]), (1, 3, [1]),
                                                   (4, 1, [1, 1, 1, 1]), (8, 3, [3, 3, 2])])
def test_a_lone_last_sample_joins_the_batch_before(samples, batch, sizes):
    sampler = LastBatchMerged(range(samples), batch)
    assert [len(b) for b in sampler] == sizes and len(sampler) == len(sizes)
    assert sorted(i for b in sampler for i in b) == list(range(samples))


def test_the_split_leaves_out_a_strip_by_path(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    Image.new("RGB", (20000, 1)).save(data / "red" / "strip.png")
    split = split_class_folders(data)
    assert str(data / "red" / "strip.png") not in split.train_paths + split.val_paths
    assert f"skipping unreadable image {data / 'red' / 'strip.png'}: UnsupportedImageError" in capsys.readouterr().err
