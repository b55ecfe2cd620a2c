"""model.py: architecture, tutorial key layout, parity with torchvision, weight loading."""
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import randomize_

import model as M
from effnet import checkpoints
from effnet import weights as W
from effnet.download import sha256_of
from effnet.inference.torch_backend import fuse_batchnorm
from effnet.variants import Variant

GOLDEN_B0_KEYS = Path(__file__).parent / "data" / "tutorial_b0_state_dict.json"


def tiny_model(num_classes: int = 5) -> M.EfficientNet:
    """A narrow, shallow EfficientNet with every kind of block, for tests that only need the code paths."""
    return M.EfficientNet(width_coefficient=0.25, depth_coefficient=0.1, num_classes=num_classes, variant=None)


def torchvision_model(variant: str, seed: int = 0) -> torch.nn.Module:
    return randomize_(getattr(torchvision.models, f"efficientnet_{variant}")(), seed).eval()


@pytest.mark.parametrize("variant", list(M.VARIANTS))
def test_parameter_counts_equal_torchvision(variant):
    with torch.device("meta"):
        model = M.create_model(variant)
    assert sum(p.numel() for p in model.parameters()) == M.VARIANTS[variant].num_params


def test_make_divisible_rounds_to_multiples_of_eight():
    assert M._make_divisible(32 * 1.1) == 32  # 35.2 -> 32 (within 10%)
    assert M._make_divisible(16 * 1.4) == 24  # 22.4 -> 24
    assert M._make_divisible(3.0) == 8  # never below the divisor
    assert M._make_divisible(90) == 88
    assert M._make_divisible(2000 * 1.0, 8) == 2000


def test_state_dict_has_the_tutorial_layout():
    """The keys and shapes of B0 equal the tutorial's model (recorded in tests/data)."""
    golden = json.loads(GOLDEN_B0_KEYS.read_text())
    state = M.efficientnet_b0().state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == golden
    block_names = [name for name in M.efficientnet_b0().features._modules if name not in ("stem_conv", "top")]
    assert block_names == ["1a", "2a", "2b", "3a", "3b", "4a", "4b", "4c", "5a", "5b", "5c",
                           "6a", "6b", "6c", "6d", "7a"]
    with torch.device("meta"):
        b7 = M.efficientnet_b7()
    assert len(b7.features) - 2 == 55


def test_tutorial_checkpoint_loads_strictly_with_or_without_module_prefix():
    golden = json.loads(GOLDEN_B0_KEYS.read_text())
    tutorial_state = {k: torch.randn(shape) if shape else torch.tensor(7) for k, shape in golden.items()}
    M.efficientnet_b0().load_state_dict(tutorial_state, strict=True)

    model = M.efficientnet_b0()
    summary = M.load_weights(model, {"module." + k: v for k, v in tutorial_state.items()}, verbose=False)
    assert "tutorial layout" in summary
    assert torch.equal(model.state_dict()["features.3a.block.se.fc1.weight"],
                       tutorial_state["features.3a.block.se.fc1.weight"])
    assert checkpoints.bn_eps_of(model) == W.TUTORIAL_BN_EPS  # the tutorial trained every variant with eps 1e-3


def test_stochastic_depth_rates_grow_linearly_with_block_index():
    configs = M.block_configs(1.0, 1.0, 0.2)
    assert [c.drop_rate for c in configs] == pytest.approx([0.2 * i / 16 for i in range(16)])
    model = M.efficientnet_b0()
    blocks = [m for m in model.modules() if isinstance(m, M.InvertedResidual)]
    assert [b.drop_rate for b in blocks] == pytest.approx([0.2 * i / 16 for i in range(16)])
    assert model.classifier[0].p == 0.2 and M.efficientnet_b7 is not None


def test_drop_path_drops_whole_samples_and_is_identity_in_eval():
    torch.manual_seed(0)
    x = torch.ones(4000, 3, 2, 2)
    out = M.drop_path(x, 0.25, training=True)
    per_sample = out.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1])  # a sample is dropped entirely or not at all
    kept = per_sample[:, 0] != 0
    assert torch.allclose(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.75))
    assert abs(kept.float().mean().item() - 0.75) < 0.03
    assert M.drop_path(x, 0.25, training=False) is x


def test_stochastic_depth_acts_on_the_residual_branch_only():
    torch.manual_seed(0)
    cnf = M.InvertedResidualConfig("2b", 3, 1, 16, 16, 64, 4, drop_rate=0.5)
    block = M.InvertedResidual(cnf, torch.nn.BatchNorm2d)
    randomize_(block)
    block.train()
    block.block.eval()  # fixed BatchNorm statistics, so the branch is deterministic
    x = torch.randn(64, 16, 8, 8)
    with torch.no_grad():
        branch = block.block(x)
        out = block(x)
    dropped = torch.isclose(out, x, atol=1e-6).flatten(1).all(1)
    kept = torch.isclose(out, x + branch / 0.5, atol=1e-5).flatten(1).all(1)
    assert torch.all(dropped ^ kept) and dropped.any() and kept.any()
    block.eval()
    with torch.no_grad():
        assert torch.allclose(block(x), x + branch, atol=1e-6)


# b5-b7 take 1.5-3 s each on a 2-core CPU: the slower suite checks them
@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.slow) if v in ("b5", "b6", "b7") else v
                                     for v in M.VARIANTS])
def test_outputs_equal_torchvision_with_random_weights(variant):
    reference = torchvision_model(variant)
    ours = M.create_model(variant).eval()
    summary = M.load_weights(ours, reference.state_dict(), verbose=False)
    assert "torchvision layout" in summary
    assert checkpoints.bn_eps_of(ours) == M.VARIANTS[variant].bn_eps
    size = 224 if variant in ("b0", "b1") else 64  # small inputs keep B2-B7 fast on a CPU
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert expected.abs().max() > 0.1  # the randomised network is far from trivial
    assert (expected - actual).abs().max().item() <= 1e-5


def test_wrong_eps_would_be_caught_by_the_parity_check():
    """Guards the test above: with the tutorial's eps the outputs move well beyond 1e-5."""
    reference = torchvision_model("b0")
    ours = M.efficientnet_b0().eval()
    M.load_weights(ours, reference.state_dict(), bn_eps=1e-3, verbose=False)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (reference(x) - ours(x)).abs().max().item() > 1e-4


def test_torchvision_key_map_names_every_tensor_once():
    mapping = W.torchvision_key_map(M.efficientnet_b0())
    reference_keys = set(torchvision.models.efficientnet_b0().state_dict())
    assert set(mapping.values()) == reference_keys
    assert mapping["features.stem_conv.0.weight"] == "features.0.0.weight"
    assert mapping["features.2a.block.se.fc1.weight"] == "features.2.0.block.2.fc1.weight"
    assert mapping["features.1a.block.project_conv.1.bias"] == "features.1.0.block.2.1.bias"
    assert mapping["features.top.1.running_var"] == "features.8.1.running_var"


def test_own_checkpoint_format_round_trips_with_its_eps(tmp_path):
    source = randomize_(M.efficientnet_b0(num_classes=5)).eval()
    source.set_bn_eps(1e-4)
    path = tmp_path / "ckpt.pth"
    torch.save({**checkpoints.checkpoint_fields(source), "epoch": 3}, path)
    rebuilt = M.model_from_checkpoint(path).eval()
    assert rebuilt.variant == "b0" and rebuilt.num_classes == 5 and checkpoints.bn_eps_of(rebuilt) == 1e-4
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(x), rebuilt(x))


def test_a_checkpoint_loads_the_tutorials_way_with_load_state_dict(tmp_path):
    source = randomize_(M.efficientnet_b0(num_classes=5)).eval()
    source.set_bn_eps(1e-4)
    path = tmp_path / "best.pth"
    torch.save({**checkpoints.checkpoint_fields(source), "class_names": list("abcde"), "epoch": 3}, path)
    model = M.efficientnet_b0(num_classes=5).eval()
    assert str(model.load_state_dict(torch.load(path))) == "<All keys matched successfully>"
    assert checkpoints.bn_eps_of(model) == 1e-4
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(x), model(x))


@pytest.mark.parametrize("built", [lambda: M.efficientnet_b3(num_classes=5), lambda: M.efficientnet_b0(num_classes=3)])
def test_a_checkpoint_that_does_not_fit_names_model_from_checkpoint_and_loads_nothing(built):
    checkpoint = checkpoints.checkpoint_fields(randomize_(M.efficientnet_b0(num_classes=5)))
    model = built()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(M.WeightsError, match=r"holds efficientnet_b0 with 5 classes.*model_from_checkpoint") as error:
        model.load_state_dict(checkpoint)
    assert "\n" not in str(error.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_state_dict_of_a_plain_state_dict_is_nn_modules():
    good = randomize_(M.efficientnet_b0()).state_dict()
    partial = {k: v for k, v in good.items() if not k.startswith("classifier.")}
    model = M.efficientnet_b0()
    result = model.load_state_dict(partial, strict=False)
    assert result.missing_keys == ["classifier.1.weight", "classifier.1.bias"] and result.unexpected_keys == []
    assert torch.equal(model.features.top[0].weight, good["features.top.0.weight"])
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(partial)
    assert checkpoints.bn_eps_of(model) == 1e-5  # eps is the caller's business for a plain state_dict


def test_classifier_with_another_class_count_is_left_out_with_one_line(capsys):
    source = randomize_(M.efficientnet_b0(num_classes=1000))
    target = M.efficientnet_b0(num_classes=5)
    fresh_classifier = target.classifier[1].weight.clone()
    summary = M.load_weights(target, source.state_dict())
    assert "classifier left freshly initialised" in summary and "1000 classes" in summary
    assert capsys.readouterr().err.strip() == summary and "\n" not in summary
    assert torch.equal(target.classifier[1].weight, fresh_classifier)
    assert torch.equal(target.features.top[0].weight, source.features.top[0].weight)


def test_imagenet_weights_download_convert_and_load(http_server, tmp_path, monkeypatch):
    base_url, served = http_server
    reference = torchvision_model("b0")
    payload = tmp_path / "payload.pth"
    torch.save(reference.state_dict(), payload)
    file_name = f"efficientnet_b0_test-{sha256_of(payload)[:8]}.pth"
    (served / file_name).write_bytes(payload.read_bytes())
    monkeypatch.setattr(W, "VARIANTS", {**W.VARIANTS, "b0": _with_file(W.VARIANTS["b0"], file_name)})
    monkeypatch.setenv(W.WEIGHTS_MIRROR_ENV, base_url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    model = M.efficientnet_b0(pretrained=True).eval()
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / file_name
    assert cached.is_file()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max() <= 1e-5
    (served / file_name).unlink()  # a second request is served from the cache
    M.efficientnet_b0(num_classes=5, pretrained=True)


def test_imagenet_weights_from_a_file_url(tmp_path, monkeypatch):
    payload = tmp_path / "mirror" / "weights.pth"
    payload.parent.mkdir()
    torch.save(torchvision_model("b0").state_dict(), payload)
    file_name = f"efficientnet_b0_file-{sha256_of(payload)[:8]}.pth"
    payload.rename(payload.parent / file_name)
    monkeypatch.setattr(W, "VARIANTS", {**W.VARIANTS, "b0": _with_file(W.VARIANTS["b0"], file_name)})
    monkeypatch.setenv(W.WEIGHTS_MIRROR_ENV, payload.parent.as_uri())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    model = M.efficientnet_b0()
    assert "torchvision" in M.load_weights(model, "imagenet", verbose=False)


def test_imagenet_download_with_a_wrong_hash_saves_nothing(http_server, tmp_path, monkeypatch):
    base_url, served = http_server
    file_name = "efficientnet_b0_bad-00000000.pth"
    torch.save({"x": torch.zeros(3)}, served / file_name)
    monkeypatch.setattr(W, "VARIANTS", {**W.VARIANTS, "b0": _with_file(W.VARIANTS["b0"], file_name)})
    monkeypatch.setenv(W.WEIGHTS_MIRROR_ENV, base_url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(M.WeightsError, match="corrupted or altered"):
        M.efficientnet_b0(pretrained=True)
    assert not list((tmp_path / "torch_home" / "hub" / "checkpoints").iterdir())


def test_imagenet_download_without_network_names_url_and_destination(closed_port_url, tmp_path, monkeypatch):
    monkeypatch.setenv(W.WEIGHTS_MIRROR_ENV, closed_port_url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(M.WeightsError) as error:
        M.efficientnet_b3(pretrained=True)
    message = str(error.value)
    assert f"{closed_port_url}/efficientnet_b3_rwightman-b3899882.pth" in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "efficientnet_b3_rwightman-b3899882.pth") in message
    assert "\n" not in message


def test_real_weights_url_is_torchvisions(monkeypatch):
    monkeypatch.delenv(W.WEIGHTS_MIRROR_ENV, raising=False)
    assert W.imagenet_weights_url("B0") == \
        "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth"
    assert torchvision.models.EfficientNet_B7_Weights.DEFAULT.url == W.imagenet_weights_url("efficientnet_b7")


def _with_file(variant: Variant, file_name: str) -> Variant:
    from dataclasses import replace

    return replace(variant, weights_file=file_name)


# --- bad input ------------------------------------------------------------------------------------------------


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(M.WeightsError, match="does not exist"):
        M.load_weights(M.efficientnet_b0(), tmp_path / "nope.pth")
    with pytest.raises(M.WeightsError, match="is a folder"):
        M.load_weights(M.efficientnet_b0(), tmp_path)


def test_truncated_and_corrupt_files_are_clear_errors(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save(M.efficientnet_b0().state_dict(), whole)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    for path in (truncated, garbage):
        with pytest.raises(M.WeightsError, match="not a readable PyTorch weights file"):
            M.load_weights(M.efficientnet_b0(), path)


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"features.stem_conv.0.weight": torch.zeros(1), "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(M.WeightsError, match="could run code"):
        M.load_weights(M.efficientnet_b0(), path)
    assert not marker.exists()
    plain_pickle = tmp_path / "plain.pkl"
    plain_pickle.write_bytes(pickle.dumps(_RunsCode(str(marker))))
    with pytest.raises(M.WeightsError):
        M.load_weights(M.efficientnet_b0(), plain_pickle)
    assert not marker.exists()


def test_weights_of_another_variant_are_named(tmp_path):
    path = tmp_path / "b3.pth"
    torch.save(M.efficientnet_b3(num_classes=5).state_dict(), path)
    with pytest.raises(M.WeightsError, match=r"holds efficientnet_b3 weights but the model is efficientnet_b0"):
        M.load_weights(M.efficientnet_b0(num_classes=5), path)
    tv_b2 = torchvision.models.efficientnet_b2().state_dict()
    with pytest.raises(M.WeightsError, match=r"efficientnet_b2 weights"):
        M.load_weights(M.efficientnet_b1(), tv_b2)
    checkpoint = checkpoints.checkpoint_fields(M.efficientnet_b1(num_classes=3))
    with pytest.raises(M.WeightsError, match=r"efficientnet_b1 weights but the model is efficientnet_b0"):
        M.load_weights(M.efficientnet_b0(num_classes=3), checkpoint)


def test_stray_missing_and_misshapen_keys_are_named_and_nothing_loads():
    model = M.efficientnet_b0()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = randomize_(M.efficientnet_b0()).state_dict()

    stray = {**good, "features.9z.block.dwconv.0.weight": torch.zeros(1)}
    with pytest.raises(M.WeightsError, match=r"unexpected features\.9z\.block\.dwconv\.0\.weight"):
        M.load_weights(model, stray)
    missing = {k: v for k, v in good.items() if not k.startswith("features.4b.")}
    with pytest.raises(M.WeightsError, match=r"missing features\.4b\.block\.expand_conv\.0\.weight"):
        M.load_weights(model, missing)
    headless = {k: v for k, v in good.items() if not k.startswith("classifier.")}
    with pytest.raises(M.WeightsError, match=r"missing classifier\.1\.weight, classifier\.1\.bias"):
        M.load_weights(model, headless)
    misshapen = {**good, "features.top.1.weight": torch.zeros(7)}
    with pytest.raises(M.WeightsError, match=r"wrong shape features\.top\.1\.weight \(7,\) vs \(1280,\)"):
        M.load_weights(model, misshapen)
    with pytest.raises(M.WeightsError, match="not tensors"):
        M.load_weights(model, {**good, "epoch": 3})
    with pytest.raises(M.WeightsError, match="holds a list"):
        M.load_weights(model, [1, 2])  # type: ignore[arg-type]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no partial load


# --- execution modes ------------------------------------------------------------------------------------------


def test_forward_features_is_the_map_before_pooling():
    model = M.efficientnet_b0(num_classes=5).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 1280, 3, 4)
        assert torch.equal(model.forward_head(features), model(x))


def test_bfloat16_and_channels_last_match_float32():
    model = randomize_(M.efficientnet_b0(num_classes=10)).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = model(x)
        fast = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        assert (fast - expected).abs().max() < 1e-4
        half = model.to(torch.bfloat16)(x.to(torch.bfloat16))
        assert half.dtype == torch.bfloat16
        assert (half.float() - expected).abs().max() < 0.1 * expected.abs().max()


def test_torchscript_matches_eager():
    model = randomize_(tiny_model()).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-6)
        assert torch.allclose(scripted.forward_features(x), model.forward_features(x), atol=1e-6)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = randomize_(tiny_model()).eval()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients_and_statistics():
    torch.manual_seed(0)
    plain = randomize_(tiny_model()).train()
    checkpointed = randomize_(tiny_model()).train()
    checkpointed.set_grad_checkpointing(True)
    x = torch.randn(4, 3, 64, 64)
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # same stochastic-depth draws in both
        model(x).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        assert torch.equal(a, b), name  # running statistics updated once, not twice


def test_variant_names_are_normalised_and_unknown_ones_rejected():
    assert M.variant_name("B3") == M.variant_name("efficientnet_b3") == "b3"
    with pytest.raises(ValueError, match="unknown EfficientNet variant 'b9'"):
        M.variant_name("b9")


def test_class_indices_file_lists_the_five_flowers():
    classes = json.loads((Path(__file__).parents[1] / "class_indices.json").read_text())
    assert classes == {"0": "daisy", "1": "dandelion", "2": "roses", "3": "sunflowers", "4": "tulips"}


@pytest.mark.parametrize("momentum", [0.1, None])
def test_memory_efficient_batchnorm_silu_equals_the_two_modules(momentum, monkeypatch):
    """Training on the CPU takes _BatchNormSiLU; it must compute exactly what BatchNorm2d then SiLU do."""
    efficient = randomize_(tiny_model()).train()
    plain = randomize_(tiny_model()).train()
    for model in (efficient, plain):
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = momentum
    for module in plain.modules():
        if isinstance(module, M.ConvBNActivation):
            monkeypatch.setattr(module, "_memory_efficient", lambda x: False)
    calls = []
    real = M._BatchNormSiLU.apply
    monkeypatch.setattr(M._BatchNormSiLU, "apply", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    for model in (efficient, plain):
        for _ in range(2):
            torch.manual_seed(1)
            model.zero_grad()
            model(x).square().sum().backward()
    assert calls  # the efficient path really ran, in the efficient model only
    for (name, a), b in zip(efficient.named_parameters(), plain.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
    for (name, a), b in zip(efficient.state_dict().items(), plain.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_cpu_autocast_training_takes_the_usual_batchnorm_path():
    """Under bfloat16 autocast, BatchNorm sees bfloat16 activations with float32 weights: the fused
    function does not handle mixed dtypes, so those layers must fall back and still train."""
    model = randomize_(tiny_model()).train()
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().square().sum()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_torch_hub_entry_points():
    repo = str(Path(__file__).resolve().parents[1])
    model = torch.hub.load(repo, "efficientnet_b0", source="local", num_classes=5)
    assert isinstance(model, M.EfficientNet) and model.num_classes == 5


def test_the_documented_variant_table_matches_the_model_table():
    page = (Path(__file__).resolve().parents[1] / "docs" / "model.md").read_text()
    for variant, spec in M.VARIANTS.items():
        row = f"| {variant} | `efficientnet_{variant}` | {spec.num_params:,} | {spec.train_size} | " \
              f"{spec.eval_resize} / {spec.eval_crop} {spec.interpolation} | {spec.imagenet_top1:.3f} | " \
              f"{spec.bn_eps:g} |"
        assert row in page, row


@pytest.mark.parametrize("variant", ["b0", "b3"])
def test_folded_batchnorm_computes_the_same_function(variant):
    model = randomize_(M.create_model(variant, num_classes=10)).eval()
    folded = fuse_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(3, 3, 96, 96)
    with torch.inference_mode():
        expected = model(x)
        assert (folded(x) - expected).abs().max() <= 1e-4
        fast = folded.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        assert (fast - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("num_classes", [0, -1, 1.5, True, "5", None])
def test_a_num_classes_that_is_not_a_positive_whole_number_is_one_clear_error(num_classes):
    for build in (M.efficientnet_b0, lambda **kwargs: M.create_model("b1", **kwargs)):
        with pytest.raises(ValueError, match=f"num_classes must be a whole number of at least 1, not {num_classes!r}"):
            build(num_classes=num_classes)
