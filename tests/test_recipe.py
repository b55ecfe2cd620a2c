"""The training recipe (recipe.py and its train.py flags): every option shows its effect."""
import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torchvision.transforms as T
from conftest import fails_with, load, train_args
from imagegen import make_class_folders
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import model as M
import train
import utils
from effnet.command_line import UsageError
from effnet.data import flower_photos
from effnet.data.sampling import EpochSampler
from effnet.training import recipe
from effnet.training.flags import build_parser, given_flags
from effnet.training.settings import PRESETS, TrainSettings, describe_sizes, settings_from_flags
from my_dataset import MyDataSet, eval_transform, train_transform

REPO = Path(__file__).resolve().parents[1]


def resolved(*argv: str) -> TrainSettings:
    """train.py's settings for a new run with these flags, the preset and dependent defaults applied."""
    return settings_from_flags(build_parser().parse_args(list(argv)), given_flags(list(argv)))


def run_args(data: Path, runs: Path, *extra: str) -> list[str]:
    """train_args for runs that test the training itself: no best.onnx or report.html at the end."""
    return train_args(data, runs, "--report", "false", "--onnx", "false", *extra)


# --- presets and defaults -------------------------------------------------------------------------------------


def test_without_recipe_flags_the_run_is_the_tutorials():
    args = resolved()
    assert (args.recipe, args.opt, args.lr, args.weight_decay, args.warmup_epochs) == ("tutorial", "sgd", 0.01, 1e-4, 0)
    assert (args.label_smoothing, args.ema, args.auto_augment, args.random_erase) == (0.0, None, "none", 0.0)
    assert (args.mixup_alpha, args.cutmix_alpha, args.drop_path) == (0.0, 0.0, 0.2)  # the variant table's
    assert (args.class_weights, args.balanced_sampling, args.early_stopping, args.best_metric) == \
        ("none", False, None, "acc")
    assert args.freeze_layers is False  # the tutorial's default: every layer trains


@pytest.mark.parametrize("name", ["modern", "fast"])
def test_each_preset_resolves_to_the_flags_the_training_page_documents(name):
    page = (REPO / "docs" / "training.md").read_text()
    documented = re.search(rf"`--recipe {name}` stands for `([^`]+)`", page).group(1).split()
    preset, spelled_out = resolved("--recipe", name), resolved(*documented)
    assert preset == dataclasses.replace(spelled_out, recipe=name)
    for key, value in PRESETS[name].items():
        assert getattr(preset, key) == value, key


def test_flags_given_explicitly_win_over_the_preset():
    args = resolved("--recipe", "modern", "--lr", "0.05", "--opt", "sgd", "--ema", "0.5")
    assert (args.lr, args.opt, args.ema) == (0.05, "sgd", 0.5)
    assert args.warmup_epochs == PRESETS["modern"]["warmup_epochs"]  # the rest still comes from it
    assert args.weight_decay == 1e-4  # the default of the optimizer that was chosen
    assert resolved("--recipe", "modern", "--opt", "adamw").lr == PRESETS["modern"]["lr"]


def test_a_presets_warm_up_shortens_to_fit_a_short_run(capsys):
    for epochs, warmup in (("1", 0), ("2", 1), ("3", 2)):
        args = resolved("--recipe", "modern", "--epochs", epochs)  # accepted: nobody asked for 2 warm-up epochs
        assert args.warmup_epochs == warmup
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == ["note: --recipe modern warms up over 2 epochs; with --epochs 1 the warm-up is 0 epochs",
                     "note: --recipe modern warms up over 2 epochs; with --epochs 2 the warm-up is 1 epoch"]
    with pytest.raises(UsageError, match="--warmup-epochs 2: use 0 or more, fewer than --epochs 1"):
        resolved("--recipe", "modern", "--epochs", "1", "--warmup-epochs", "2")  # asked for


def test_adamw_gets_its_own_learning_rate_and_weight_decay_unless_given():
    args = resolved("--opt", "adamw")
    optimizer = recipe.build_optimizer(nn.Linear(3, 2), args)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert (optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["weight_decay"]) == (0.001, 0.05)
    args = resolved("--opt", "adamw", "--lr", "0.003", "--weight-decay", "0")
    optimizer = recipe.build_optimizer(nn.Linear(3, 2), args)
    assert (optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["weight_decay"]) == (0.003, 0.0)
    optimizer = recipe.build_optimizer(nn.Linear(3, 2), resolved())
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["momentum"] == 0.9


def test_the_optimizer_holds_every_parameter_that_trains_once_with_the_recipes_decay():
    for argv, kind, decay in (([], torch.optim.SGD, 1e-4), (["--opt", "adamw"], torch.optim.AdamW, 0.05),
                              (["--opt", "adamw", "--weight-decay", "0.01"], torch.optim.AdamW, 0.01)):
        model = M.efficientnet_b0(num_classes=3)
        for frozen in (False, True):
            if frozen:  # --freeze-layers: only the head conv and the classifier train, and only they are optimized
                recipe.freeze_all_but_head(model)
            settings = resolved(*argv)
            optimizer = recipe.build_optimizer(model, settings)
            held = [parameter for group in optimizer.param_groups for parameter in group["params"]]
            trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
            assert isinstance(optimizer, kind) and len(optimizer.param_groups) == 1
            assert len(held) == len({id(p) for p in held}) == len(trainable) and {id(p) for p in held} == {
                id(p) for p in trainable}
            assert optimizer.param_groups[0]["weight_decay"] == decay and optimizer.param_groups[0]["lr"] == settings.lr
        assert len(trainable) == 5  # features.top's conv weight and BatchNorm weight and bias, the classifier's two


def test_warm_up_rises_linearly_then_follows_the_cosine():
    args = resolved("--epochs", "6", "--warmup-epochs", "2", "--lrf", "0.1")
    optimizer = recipe.build_optimizer(nn.Linear(3, 2), args)
    schedule = recipe.build_scheduler(optimizer, args)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.after_batch()  # a no-op for the tutorial's cosine, which steps per epoch
        schedule.after_epoch()
    cosine = [0.01 * (((1 + math.cos(k * math.pi / 4)) / 2) * 0.9 + 0.1) for k in range(4)]
    assert lrs == pytest.approx([0.01 / 3, 0.02 / 3, *cosine])


def test_onecycle_rises_from_a_25th_then_follows_the_cosine_every_batch():
    args = resolved("--epochs", "4", "--warmup-epochs", "1", "--lrf", "0.1", "--lr-schedule", "onecycle")
    model = nn.Linear(3, 2)
    optimizer = recipe.build_optimizer(model, args)
    schedule = recipe.build_scheduler(optimizer, args, steps_per_epoch=5)
    lrs = []
    for _ in range(4):
        for _ in range(5):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.after_batch()
        schedule.after_epoch()  # a no-op here: the schedule steps per batch
    expected_rise = [0.01 * (1 / 25 + (1 - 1 / 25) * step / 5) for step in range(5)]
    expected_fall = [0.01 * (0.1 + 0.9 * (1 + math.cos(math.pi * k / 14)) / 2) for k in range(15)]
    assert lrs == pytest.approx(expected_rise + expected_fall)
    assert lrs[5] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.001)  # the top, then --lr x --lrf at the end


@pytest.mark.parametrize("epochs, start, sizes", [
    (8, "0.5", [112, 112, 144, 144, 192, 192, 224, 224]), (6, "0.5", [112, 112, 144, 192, 192, 224]),
    (3, "0.57", [128, 176, 224]), (1, "0.5", [224]), (8, None, [224] * 8)])
def test_progressive_resizing_grows_the_crop_in_stages_to_the_full_size(epochs, start, sizes):
    flags = ["--epochs", str(epochs), *(["--progressive-resizing", start] if start else [])]
    assert resolved(*flags).train_sizes(224) == sizes
    assert resolved("--epochs", "8", "--progressive-resizing", "0.1").train_sizes(64)[0] == 32  # never below 32 px


@pytest.mark.parametrize("flags, sizes", [
    (["--train-crop", "0.8"], [176] * 4),  # 179.2 px, to a multiple of 16
    (["--train-crop", "0.8", "--progressive-resizing", "0.4"], [96, 112, 144, 176]),
    (["--recipe", "fast"], [96, 112, 144, 176]),  # the preset: from 0.4 to 0.8 of 224 px
    (["--recipe", "fast", "--train-crop", "1"], [96, 128, 176, 224]),  # a flag given explicitly wins
    (["--train-crop", "1"], [224] * 4)])
def test_train_crop_is_the_last_training_size_below_the_validation_size(flags, sizes):
    assert resolved("--epochs", "4", *flags).train_sizes(224) == sizes


@pytest.mark.parametrize("flags, full, sizes", [
    (["--train-crop", "0.99"], 41, [41] * 4),  # 40.6 px would round up to 48: kept at the full 41
    (["--progressive-resizing", "1"], 56, [56] * 4),  # 56 rounds up to 64: never above the last size
    (["--progressive-resizing", "0.9", "--train-crop", "0.9"], 47, [47] * 4)])
def test_rounding_never_trains_above_the_full_size(flags, full, sizes):
    assert resolved("--epochs", "4", *flags).train_sizes(full) == sizes


def test_the_sizes_are_said_by_stage_with_the_validation_size_where_it_differs():
    assert describe_sizes([224] * 3, validated=224) == "224 px"
    assert describe_sizes([176] * 3, validated=224) == "176 px, validated at 224 px"
    assert describe_sizes([96, 96, 176], validated=224) == "96 px (epochs 1-2), 176 px (3), validated at 224 px"
    assert describe_sizes([32, 48]) == "32 px (epoch 1), 48 px (2)"


@pytest.mark.parametrize("flags, says", [
    (["--train-crop", "0"], "--train-crop 0.0: a share of --image-size, 0.1 to 1"),
    (["--train-crop", "1.5"], "--train-crop 1.5: a share of --image-size, 0.1 to 1"),
    (["--train-crop", "0.5", "--progressive-resizing", "0.6"],
     "--progressive-resizing 0.6 starts above --train-crop 0.5, where the crops grow to; give a START of at most 0.5"),
    (["--recipe", "fast", "--train-crop", "0.3"], "--progressive-resizing 0.4 starts above --train-crop 0.3")])
def test_impossible_train_crops_are_refused_in_one_line(flags, says):
    with pytest.raises(UsageError, match=re.escape(says)):
        resolved(*flags)


# --- the loss --------------------------------------------------------------------------------------------------


def test_label_smoothing_changes_the_loss_on_a_fixed_batch_as_the_formula_says():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [-0.5, 1.5, 0.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([0, 2, 1, 0])
    log_p = logits.log_softmax(1)
    eps = 0.2
    expected = ((1 - eps) * -log_p[torch.arange(4), labels] + eps * -log_p.mean(1)).mean()
    smoothed = recipe.TrainingSteps.build(resolved("--label-smoothing", str(eps)), [0, 1, 2], 3, None, "cpu")
    plain = recipe.TrainingSteps.build(resolved(), [0, 1, 2], 3, None, "cpu")
    assert smoothed.loss_function(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert plain.loss_function(logits, labels).item() == pytest.approx(-log_p[torch.arange(4), labels].mean().item())


def test_class_weights_are_inverse_frequencies_in_the_loss():
    labels = [0] * 8 + [1] * 2
    assert recipe.inverse_frequency(labels, 2) == pytest.approx([10 / (2 * 8), 10 / (2 * 2)])
    steps = recipe.TrainingSteps.build(resolved("--class-weights", "auto"), labels, 2, None, "cpu")
    logits, targets = torch.tensor([[1.0, -1.0], [0.3, 0.2], [-2.0, 1.0]]), torch.tensor([0, 1, 1])
    losses = -logits.log_softmax(1)[torch.arange(3), targets]
    weights = torch.tensor([0.625, 2.5])[targets]
    expected = ((weights * losses).sum() / weights.sum()).item()
    assert steps.loss_function(logits, targets).item() == pytest.approx(expected)


def _blob_recall(class_weights: str) -> float:
    """Train a linear classifier on overlapping, imbalanced 2-D blobs (200 : 20) through utils.train_epoch
    with the recipe's loss; the minority class's recall on a balanced test set."""
    generator = torch.Generator().manual_seed(0)

    def blobs(majority: int, minority: int) -> tuple[torch.Tensor, torch.Tensor]:
        points = torch.cat([torch.randn(majority, 2, generator=generator),
                            torch.randn(minority, 2, generator=generator) + torch.tensor([1.5, 1.5])])
        return points, torch.tensor([0] * majority + [1] * minority)

    train_x, train_y = blobs(200, 20)
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    args = resolved("--class-weights", class_weights)
    steps = recipe.TrainingSteps.build(args, train_y.tolist(), 2, model, "cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(train_x, train_y), batch_size=20, shuffle=True,
                        generator=torch.Generator().manual_seed(0))  # mixed batches: a one-class batch is unweighted
    for epoch in range(30):
        utils.train_epoch(model, optimizer, loader, "cpu", epoch + 1, recipe=steps, progress=False)
    test_x, test_y = blobs(500, 500)
    found = model(test_x).argmax(1)[test_y == 1]
    return (found == 1).float().mean().item()


def test_class_weights_raise_the_minority_recall_on_an_imbalanced_sample():
    plain, weighted = _blob_recall("none"), _blob_recall("auto")
    assert weighted > plain + 0.2, (plain, weighted)


# --- mixup and CutMix ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_and_cutmix_mix_labels_in_the_same_proportion_as_pixels(mixup, cutmix):
    # image i is filled with the value 10 i and is the only image of class i: a mixed image's mean value,
    # divided by 10, is then the class average its target must give
    images = torch.arange(6.0).mul(10).view(6, 1, 1, 1).expand(6, 3, 16, 16).contiguous()
    labels = torch.arange(6)
    mixer = recipe.BatchMixer(mixup, cutmix, num_classes=6)
    torch.manual_seed(3)
    mixed_any = False
    for _ in range(5):
        mixed, targets = mixer(images, labels)
        assert targets.shape == (6, 6) and torch.allclose(targets.sum(1), torch.ones(6))
        class_values = torch.arange(6.0) * 10
        assert torch.allclose(mixed.mean(dim=(1, 2, 3)), targets @ class_values, atol=1e-4)
        mixed_any |= bool((targets.max(1).values < 0.999).any())
    assert mixed_any


def test_cutmix_pastes_a_box_and_mixup_blends_everywhere():
    images = torch.stack([torch.zeros(3, 16, 16), torch.ones(3, 16, 16)])
    torch.manual_seed(0)
    for _ in range(10):
        cut, _ = recipe.BatchMixer(0.0, 1.0, 2)(images, torch.tensor([0, 1]))
        assert set(cut.unique().tolist()) <= {0.0, 1.0}  # pixels are copied, never blended
        blended, targets = recipe.BatchMixer(1.0, 0.0, 2)(images, torch.tensor([0, 1]))
        assert torch.allclose(blended[0], torch.full((3, 16, 16), targets[0, 1].item()))


# --- weight average --------------------------------------------------------------------------------------------


def test_ema_follows_the_formula():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = recipe.ModelEMA(model, decay=0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()
    model(torch.randn(4, 2))  # moves the BatchNorm statistics
    ema.update()
    decay = min(0.9, 2 / 11)
    for key, value in ema.module.state_dict().items():
        current = model.state_dict()[key]
        if value.is_floating_point():
            assert torch.allclose(value, decay * before[key] + (1 - decay) * current), key
        else:
            assert torch.equal(value, current), key
    assert not any(p.requires_grad for p in ema.module.parameters())


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ema")
    data = make_class_folders(root / "data", per_class=8)
    assert train.main(run_args(data, root / "runs", "--epochs", "3", "--name", "ema", "--ema", "0.9",
                               "--label-smoothing", "0.1")) == 0
    return root / "runs" / "ema"


def test_ema_weights_differ_from_the_raw_ones_and_are_what_best_pth_holds(ema_run):
    best, last = load(ema_run / "best.pth"), load(ema_run / "last.pth")
    changed = [key for key, value in best["model"].items()
               if value.is_floating_point() and not torch.equal(value, best["trained_model"][key])]
    assert len(changed) > 100
    assert last["ema_updates"] == 3 * math.ceil(18 / 8)  # one per optimizer step: 3 steps x 3 epochs
    # validation scored the averaged weights: evaluating a checkpoint's "model" gives the recorded loss, its
    # "trained_model" another one
    split = json.loads((ema_run / "split.json").read_text())
    image = best["image"]
    dataset = MyDataSet([str(Path(split["root"]) / p) for p, _ in split["val"]], [label for _, label in split["val"]],
                        eval_transform(image["eval_resize"], image["eval_crop"], image["interpolation"]),
                        decode_size=image["eval_resize"])
    loader = DataLoader(dataset, batch_size=4, collate_fn=MyDataSet.collate_fn)
    settings = utils.StepSettings.for_device(torch.device("cpu"))

    def val_loss(checkpoint: dict) -> float:
        model = M.model_from_checkpoint(checkpoint).to(memory_format=torch.channels_last)
        return utils.evaluate_epoch(model, loader, settings, progress=False).loss

    for checkpoint in (best, last):
        recorded = checkpoint["history"][checkpoint["epoch"] - 1]["val_loss"]
        assert val_loss(checkpoint) == pytest.approx(recorded, abs=1e-6)
        assert abs(val_loss(recipe.trained_weights(checkpoint)) - recorded) > 1e-4


def test_the_run_folder_records_the_resolved_recipe(ema_run):
    saved = json.loads((ema_run / "recipe.json").read_text())
    assert saved["ema"] == 0.9 and saved["label_smoothing"] == 0.1 and saved["recipe"] == "tutorial"
    assert (saved["opt"], saved["weight_decay"], saved["drop_path"]) == ("sgd", 1e-4, 0.2)


# --- augmentation and sampling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("augment", ["trivialaugment", "randaugment"])
def test_auto_augment_changes_images_reproducibly_per_sample(augment, tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=2)
    path = next((data / "red").iterdir())
    plain = MyDataSet([str(path)], [0], train_transform(64))
    augmented = MyDataSet([str(path)], [0], train_transform(64, resolved("--auto-augment", augment).auto_augment))
    seeds = range(8)
    assert all(torch.equal(augmented[(0, s)][0], augmented[(0, s)][0]) for s in seeds)  # seeded per sample
    assert sum(not torch.equal(plain[(0, s)][0], augmented[(0, s)][0]) for s in seeds) >= 4


def test_random_erase_blanks_a_rectangle(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=2)
    path = next((data / "green").iterdir())
    erased = MyDataSet([str(path)], [0], train_transform(64, random_erase=resolved("--random-erase", "1").random_erase))
    plain = MyDataSet([str(path)], [0], train_transform(64))
    for seed in range(4):
        blank = (erased[(0, seed)][0] == 0).all(0)
        assert (plain[(0, seed)][0] == 0).all(0).sum() < 5
        rows, cols = blank.any(1).nonzero(), blank.any(0).nonzero()
        assert blank.sum() >= 10 and blank.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def test_balanced_sampling_draws_every_class_about_equally():
    labels = [0] * 90 + [1] * 10
    weights = recipe.sample_weights(labels, 2, resolved("--balanced-sampling"))
    assert recipe.sample_weights(labels, 2, resolved()) is None
    sampler = EpochSampler(len(labels), shuffle=True, seed=0, weights=weights)
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn.append([labels[i] for i, _ in sampler])
    minority_share = sum(d.count(1) for d in drawn) / sum(len(d) for d in drawn)
    assert len(drawn[0]) == 100 and 0.42 < minority_share < 0.58
    sampler.set_epoch(3)
    assert list(sampler) == list(sampler)  # the same epoch draws the same again (resume)
    pairs = list(sampler)
    seeds = [seed for _, seed in pairs]
    assert len(set(seeds)) == len(seeds)  # an image drawn twice is augmented twice, differently


@pytest.mark.slow
def test_balanced_sampling_reaches_the_training_loader(tmp_path, monkeypatch):
    data = make_class_folders(tmp_path / "data", per_class=10)
    for photo in sorted((data / "blue").iterdir())[2:]:  # 2 blue photos, 10 green, 10 red
        photo.unlink()
    drawn = []
    real = MyDataSet.__getitem__

    def recording(dataset, item):  # the training photos: drawn with a sample's seed, in the first epoch
        if dataset.transform is not None and isinstance(dataset.transform.transforms[0], T.RandomResizedCrop):
            drawn.append(dataset.images_class[item[0]])
        return real(dataset, item)

    monkeypatch.setattr(MyDataSet, "__getitem__", recording)
    for flags, blue_share in (([], (0.05, 0.07)), (["--balanced-sampling"], (0.2, 0.5))):  # 1 of 17; about 1/3
        drawn.clear()
        assert train.main(run_args(data, tmp_path / "runs", "--epochs", "3", *flags)) == 0
        assert len(drawn) == 3 * 17 and blue_share[0] < drawn.count(0) / len(drawn) < blue_share[1], (flags, drawn)


# --- stochastic depth ------------------------------------------------------------------------------------------


def test_drop_path_sets_the_block_rates_and_makes_training_passes_random():
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for rate in (0.0, 0.5):
        settings = resolved("--weights", "none", "--drop-path", str(rate))
        model = M.create_model(settings.model, num_classes=3, drop_connect_rate=settings.drop_path)  # as train.py
        blocks = [m for m in model.modules() if isinstance(m, M.InvertedResidual)]
        assert blocks[-1].drop_rate == pytest.approx(rate * 15 / 16)
        model.train()
        torch.manual_seed(1)
        first = model.forward_features(x)
        torch.manual_seed(2)
        second = model.forward_features(x)
        assert torch.equal(first, second) == (rate == 0.0)


# --- residual blocks that start as the identity ---------------------------------------------------------------


def _starting_model(*flags: str) -> M.EfficientNet:
    """A 3-class b0 with the starting weights train.py gives it for these flags (a new run)."""
    settings = resolved(*flags)
    model = M.create_model(settings.model, num_classes=3, drop_connect_rate=settings.drop_path)
    recipe.load_starting_weights(model, settings, verbose=False)
    return model


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_zero_init_residual_makes_every_residual_block_pass_its_input_through(mode):
    torch.manual_seed(0)
    plain = _starting_model("--weights", "none")
    torch.manual_seed(0)
    zeroed = _starting_model("--weights", "none", "--zero-init-residual")
    residual = [name for name, m in zeroed.features.named_children()
                if isinstance(m, M.InvertedResidual) and m.use_res_connect]
    assert len(residual) == 9  # b0's 16 blocks less the first of each of its 7 stages, which have no skip
    changed = {key for key, value in zeroed.state_dict().items() if not torch.equal(value, plain.state_dict()[key])}
    assert changed == {f"features.{name}.block.project_conv.1.weight" for name in residual}  # and nothing else
    assert not any(zeroed.state_dict()[key].any() for key in changed)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for model, passes_through in ((zeroed, True), (plain, False)):
        getattr(model, mode)()
        h = x
        for name, block in model.features.named_children():
            out = block(h)
            if name in residual:
                assert torch.equal(out, h) == passes_through, (name, mode)
            h = out


def test_starting_weights_replace_the_zero_init(tmp_path):
    torch.manual_seed(0)
    saved = _starting_model("--weights", "none")
    torch.save(saved.state_dict(), tmp_path / "start.pth")
    loaded = _starting_model("--weights", str(tmp_path / "start.pth"), "--zero-init-residual", "true")
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in saved.state_dict().items())


def test_only_the_fast_preset_zero_inits_and_the_flag_overrides_it(capsys):
    assert [resolved("--recipe", name).zero_init_residual for name in PRESETS] == [name == "fast" for name in PRESETS]
    assert resolved("--recipe", "fast", "--zero-init-residual", "false").zero_init_residual is False
    recipe_help = next(action.help for action in build_parser()._actions if action.dest == "recipe")
    assert "--zero-init-residual true" in recipe_help  # spelled as docs/training.md and the flag take it
    assert "note:" not in capsys.readouterr().err  # the preset's with ImageNet weights: nothing to say
    resolved("--weights", "imagenet", "--zero-init-residual")
    assert capsys.readouterr().err.strip() == ("note: --zero-init-residual changes only a run from scratch "
                                               "(--weights none); --weights imagenet replaces it")


# --- early stopping and the best epoch ------------------------------------------------------------------------


def _scripted_evaluation(monkeypatch, accuracies: list[float], stop_at_call: int | None = None) -> list[int]:
    """utils.evaluate with the accuracy of the n-th call replaced by accuracies[n]; KeyboardInterrupt at
    call `stop_at_call`. Returns the list of calls made so far (shared, so a resumed run continues it)."""
    real, calls = utils.evaluate_epoch, []

    def scripted(*args, **kwargs):
        calls.append(len(calls))
        if stop_at_call is not None and len(calls) == stop_at_call:
            raise KeyboardInterrupt
        return dataclasses.replace(real(*args, **kwargs), accuracy=accuracies[len(calls) - 1])

    monkeypatch.setattr(utils, "evaluate_epoch", scripted)
    return calls


@pytest.mark.slow
def test_early_stopping_stops_and_a_resumed_run_counts_on(tmp_path, monkeypatch, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    scores = [0.5, 0.6, 0.6, 0.55, 0.6, 0.6, 0.6, 0.6]
    args = run_args(data, tmp_path / "runs", "--epochs", "8", "--early-stopping", "2")
    _scripted_evaluation(monkeypatch, scores)
    assert train.main([*args, "--name", "whole"]) == 0
    out = capsys.readouterr().out
    assert "early stopping: validation acc has not improved for 2 epochs (best at epoch 2)" in out
    whole = load(tmp_path / "runs" / "whole" / "last.pth")
    assert whole["epoch"] == 4 and whole["best_epoch"] == 2

    _scripted_evaluation(monkeypatch, scores, stop_at_call=4)  # Ctrl-C in epoch 4, after 3 were saved
    assert train.main([*args, "--name", "stopped"]) == 130
    stopped = tmp_path / "runs" / "stopped"
    assert load(stopped / "last.pth")["epoch"] == 3
    calls = _scripted_evaluation(monkeypatch, scores[3:])
    assert train.main(["--resume", str(stopped), "--progress", "false"]) == 0
    assert len(calls) == 1  # epoch 4 only: the epoch without improvement before the stop was counted
    resumed = load(stopped / "last.pth")
    assert (resumed["epoch"], resumed["best_epoch"]) == (4, 2)
    assert [row["val_acc"] for row in resumed["history"]] == [row["val_acc"] for row in whole["history"]]
    assert train.main(["--resume", str(stopped), "--progress", "false"]) == 0  # stopped: nothing more to train
    assert len(calls) == 1 and "has not improved" in capsys.readouterr().out


@pytest.mark.parametrize("metric, best_epoch", [("acc", 1), ("macro_f1", 2)])
def test_best_metric_picks_the_epoch_best_pth_holds(metric, best_epoch, tmp_path, monkeypatch):
    # epoch 1 finds every blue and green image but no red one: higher accuracy (7 of 9), lower macro F1
    # than epoch 2, which gets 6 of 9 right with every class found
    epochs = [torch.tensor([[5, 0, 0], [0, 2, 0], [0, 2, 0]]), torch.tensor([[3, 2, 0], [0, 2, 0], [0, 1, 1]])]
    real, calls = utils.evaluate_epoch, []

    def scripted(*args, **kwargs):
        confusion = epochs[len(calls)]
        calls.append(1)
        result = real(*args, **kwargs)
        return dataclasses.replace(result, confusion=confusion, accuracy=confusion.trace().item() / 9)

    monkeypatch.setattr(utils, "evaluate_epoch", scripted)
    data = make_class_folders(tmp_path / "data", per_class=3)
    assert train.main(run_args(data, tmp_path / "runs", "--epochs", "2", "--name", "m", "--best-metric", metric)) == 0
    best = load(tmp_path / "runs" / "m" / "best.pth")
    assert best["epoch"] == best["best_epoch"] == best_epoch
    assert best["best_acc"] == pytest.approx(epochs[best_epoch - 1].trace().item() / 9)


# --- bad settings: one clear line before any work --------------------------------------------------------------


@pytest.mark.parametrize("flags, fragment", [
    (["--label-smoothing", "-0.1"], "--label-smoothing -0.1"),
    (["--label-smoothing", "1"], "--label-smoothing 1.0"),
    (["--warmup-epochs", "30"], "--warmup-epochs 30"),
    (["--ema", "1.5"], "--ema 1.5"),
    (["--random-erase", "2"], "--random-erase 2.0"),
    (["--mixup-alpha", "-1"], "--mixup-alpha -1.0"),
    (["--cutmix-alpha", "-0.5"], "--cutmix-alpha -0.5"),
    (["--drop-path", "1"], "--drop-path 1.0"),
    (["--early-stopping", "0"], "--early-stopping 0"),
    (["--weight-decay", "-1"], "--weight-decay -1.0"),
    (["--weight-decay", "inf"], "--weight-decay inf"),
    (["--mixup-alpha", "nan"], "--mixup-alpha nan"),
    (["--cutmix-alpha", "inf"], "--cutmix-alpha inf"),
    (["--class-weights", "auto", "--balanced-sampling"], "use one of them"),
])
def test_impossible_recipes_are_refused_before_any_download(flags, fragment, tmp_path, capsys, monkeypatch,
                                                            closed_port_url):
    monkeypatch.chdir(tmp_path)  # the default data folder is missing: a late check would try to download first
    monkeypatch.setenv(flower_photos.FLOWER_PHOTOS_URL_ENV, closed_port_url + "/flower_photos.tgz")
    fails_with(train.main, ["--weights", "none", *flags], capsys, fragment)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag, value", [("--auto-augment", "autoaugment"), ("--opt", "lion"),
                                         ("--recipe", "fancy"), ("--best-metric", "loss")])
def test_unknown_names_are_refused_by_the_parser(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main([flag, value])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert exit_info.value.code == 2 and len(errors) == 1 and f"invalid choice: '{value}'" in errors[0]
