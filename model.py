"""EfficientNet-B0 ... B7.

The state_dict keys follow the tutorial's layout (``features.stem_conv``, ``features.1a.block.dwconv``,
``features.top``, ``classifier.1``) so its checkpoints load unchanged; the arithmetic is torchvision's, so
with the same weights both give the same outputs. ``load_weights`` reads either layout, and this project's
own checkpoints, and fetches torchvision's ImageNet weights on request.
"""
import contextlib
import copy
import functools
import math
import os
import pickle
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple

import torch
import torch.nn.utils.fusion
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.nn import functional as F

from download import DownloadError, download_file

MEAN = (0.485, 0.456, 0.406)  # ImageNet RGB mean and std, used by every variant's weights
STD = (0.229, 0.224, 0.225)
TUTORIAL_BN_EPS = 1e-3  # the tutorial built every variant with this eps, so its checkpoints expect it
WEIGHTS_BASE_URL = "https://download.pytorch.org/models/"
WEIGHTS_MIRROR_ENV = "EFFICIENTNET_WEIGHTS_MIRROR"  # set to a base URL (or file:// folder) to fetch elsewhere
CHECKPOINT_FORMAT = "efficientnet-tutorial-checkpoint/1"  # marks this project's self-describing checkpoints


@dataclass(frozen=True)
class Variant:
    """Everything that differs between B0 ... B7; the only copy of these numbers in the project."""

    width: float  # channel multiplier
    depth: float  # block-repeat multiplier (repeats are rounded up)
    dropout: float  # classifier dropout before the final Linear
    drop_connect_rate: float  # stochastic-depth rate of the last block; block i of N gets rate * i / N
    train_size: int  # RandomResizedCrop size for training (the paper's resolution)
    eval_resize: int  # shorter side before the centre crop at evaluation
    eval_crop: int  # evaluation crop, the size the ImageNet accuracy below was measured at
    interpolation: str  # "bicubic" or "bilinear", for the evaluation resize
    bn_eps: float  # BatchNorm eps/momentum of torchvision's ImageNet weights for this variant
    bn_momentum: float
    weights_file: str  # torchvision's ImageNet weights; the part after the last '-' starts its sha256
    imagenet_top1: float  # ImageNet top-1 accuracy (%) of those weights at eval_resize / eval_crop
    num_params: int  # parameter count with 1000 classes


VARIANTS: Mapping[str, Variant] = MappingProxyType({
    "b0": Variant(1.0, 1.0, 0.2, 0.2, 224, 256, 224, "bicubic", 1e-5, 0.1,
                  "efficientnet_b0_rwightman-7f5810bc.pth", 77.692, 5_288_548),
    "b1": Variant(1.0, 1.1, 0.2, 0.2, 240, 255, 240, "bilinear", 1e-5, 0.1,
                  "efficientnet_b1-c27df63c.pth", 79.838, 7_794_184),
    "b2": Variant(1.1, 1.2, 0.3, 0.2, 260, 288, 288, "bicubic", 1e-5, 0.1,
                  "efficientnet_b2_rwightman-c35c1473.pth", 80.608, 9_109_994),
    "b3": Variant(1.2, 1.4, 0.3, 0.2, 300, 320, 300, "bicubic", 1e-5, 0.1,
                  "efficientnet_b3_rwightman-b3899882.pth", 82.008, 12_233_232),
    "b4": Variant(1.4, 1.8, 0.4, 0.2, 380, 384, 380, "bicubic", 1e-5, 0.1,
                  "efficientnet_b4_rwightman-23ab8bcd.pth", 83.384, 19_341_616),
    "b5": Variant(1.6, 2.2, 0.4, 0.2, 456, 456, 456, "bicubic", 1e-3, 0.01,
                  "efficientnet_b5_lukemelas-1a07897c.pth", 83.444, 30_389_784),
    "b6": Variant(1.8, 2.6, 0.5, 0.2, 528, 528, 528, "bicubic", 1e-3, 0.01,
                  "efficientnet_b6_lukemelas-24a108a5.pth", 84.008, 43_040_704),
    "b7": Variant(2.0, 3.1, 0.5, 0.2, 600, 600, 600, "bicubic", 1e-3, 0.01,
                  "efficientnet_b7_lukemelas-c5b4e57e.pth", 84.122, 66_347_960),
})


class Stage(NamedTuple):
    """One row of the B0 baseline; other variants scale channels by width and repeats by depth."""

    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    repeats: int


BASELINE_STAGES = (
    Stage(1, 3, 1, 32, 16, 1),
    Stage(6, 3, 2, 16, 24, 2),
    Stage(6, 5, 2, 24, 40, 2),
    Stage(6, 3, 2, 40, 80, 3),
    Stage(6, 5, 1, 80, 112, 3),
    Stage(6, 5, 2, 112, 192, 4),
    Stage(6, 3, 1, 192, 320, 1),
)
HEAD_CHANNELS = 1280  # width of the 1x1 conv before pooling, for B0


class WeightsError(ValueError):
    """Weights that cannot be loaded; the message names the file or keys and what to do."""


def variant_name(name: str) -> str:
    """Normalise 'B3', 'b3' or 'efficientnet_b3' to 'b3'; a clear error for anything else."""
    key = name.lower().removeprefix("efficientnet_").removeprefix("efficientnet-")
    if key not in VARIANTS:
        raise ValueError(f"unknown EfficientNet variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return key


def _make_divisible(ch: float, divisor: int = 8, min_ch: int | None = None) -> int:
    """Round a channel count to the nearest multiple of `divisor`, never dropping more than 10%."""
    if min_ch is None:
        min_ch = divisor
    new_ch = max(min_ch, int(ch + divisor / 2) // divisor * divisor)
    if new_ch < 0.9 * ch:
        new_ch += divisor
    return new_ch


class _BatchNormSiLU(torch.autograd.Function):
    """Training-mode BatchNorm2d followed by SiLU, storing only the BatchNorm input for backward.

    The normalised tensor that SiLU's gradient needs is recomputed from the stored input and batch
    statistics in one pass instead of being kept: one activation tensor fewer per layer, about 15% less
    training memory at the same speed (benchmark.py), and the same results as the two modules in a row.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor,
                momentum: float, eps: float) -> Tensor:
        out, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, running_mean, running_var, True,
                                                             momentum, eps)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.eps = eps
        return F.silu(out, inplace=True)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias, mean, invstd = ctx.saved_tensors
        scale = (weight * invstd).view(1, -1, 1, 1)
        normalised = torch.addcmul(bias.view(1, -1, 1, 1) - mean.view(1, -1, 1, 1) * scale, x, scale)
        grad_normalised = torch.ops.aten.silu_backward(grad, normalised)
        del normalised
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_normalised, x, weight, None, None, mean, invstd, True, ctx.eps, [True, True, True])
        return grad_x, grad_weight, grad_bias, None, None, None, None


class ConvBNActivation(nn.Sequential):
    """Conv2d (no bias, 'same' padding) -> BatchNorm2d -> SiLU, or Identity where `activation` is False."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 activation: bool = True) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            norm_layer(out_channels),
            # in place: the same gradients, one allocation and memory pass fewer (measured in benchmark.py)
            nn.SiLU(inplace=True) if activation else nn.Identity(),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self[0](x)
        if not torch.jit.is_scripting() and self._memory_efficient(x):
            return self._batchnorm_silu(x)
        return self[2](self[1](x))

    @torch.jit.unused
    def _memory_efficient(self, x: Tensor) -> bool:
        """Training a plain BatchNorm2d + SiLU on the CPU (the path tests cover; GPUs take the usual one)."""
        norm = self[1]
        return (x.device.type == "cpu" and norm.training and torch.is_grad_enabled() and type(norm) is nn.BatchNorm2d
                and isinstance(self[2], nn.SiLU) and norm.affine and norm.track_running_stats
                and x.dtype == norm.weight.dtype)  # CPU autocast hands bfloat16 activations to float32 weights

    @torch.jit.unused
    def _batchnorm_silu(self, x: Tensor) -> Tensor:
        norm = self[1]
        norm.num_batches_tracked.add_(1)  # as nn.BatchNorm2d does, including its cumulative-average mode
        momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
        return _BatchNormSiLU.apply(x, norm.weight, norm.bias, norm.running_mean, norm.running_var, momentum,
                                    norm.eps)


class SqueezeExcitation(nn.Module):
    """Rescale each channel by a gate computed from the globally pooled feature map."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.ac1 = nn.SiLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.ac2 = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)  # (N, C, 1, 1)
        scale = self.ac2(self.fc2(self.ac1(self.fc1(scale))))
        return x * scale


@dataclass(frozen=True)
class InvertedResidualConfig:
    """One MBConv block, with its channels already scaled to the variant's width."""

    name: str  # the tutorial's block name: stage number + letter, e.g. "2b"
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    expanded_channels: int
    squeeze_channels: int  # SE width: a quarter of the block's *input* channels
    drop_rate: float  # stochastic-depth probability of this block


def block_configs(width: float, depth: float, drop_connect_rate: float) -> list[InvertedResidualConfig]:
    """The blocks of a variant in order, with block i of N given drop rate drop_connect_rate * i / N."""
    repeats = [int(math.ceil(stage.repeats * depth)) for stage in BASELINE_STAGES]
    total = sum(repeats)
    configs: list[InvertedResidualConfig] = []
    for stage_number, (stage, stage_repeats) in enumerate(zip(BASELINE_STAGES, repeats), start=1):
        out_channels = _make_divisible(stage.out_channels * width)
        for i in range(stage_repeats):
            in_channels = _make_divisible(stage.in_channels * width) if i == 0 else out_channels
            configs.append(InvertedResidualConfig(
                name=f"{stage_number}{chr(ord('a') + i)}",
                kernel=stage.kernel,
                stride=stage.stride if i == 0 else 1,
                in_channels=in_channels,
                out_channels=out_channels,
                expanded_channels=_make_divisible(in_channels * stage.expand_ratio),
                squeeze_channels=max(1, in_channels // 4),
                drop_rate=drop_connect_rate * len(configs) / total,
            ))
    return configs


def drop_path(x: Tensor, drop_rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero the whole residual branch of random samples, rescaling the survivors."""
    if not training or drop_rate == 0.0:
        return x
    keep = 1.0 - drop_rate
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    if keep > 0.0:
        mask.div_(keep)
    return x * mask


class InvertedResidual(nn.Module):
    """MBConv: 1x1 expand -> depthwise conv -> squeeze-and-excitation -> 1x1 project, plus a skip."""

    def __init__(self, cnf: InvertedResidualConfig, norm_layer: Callable[[int], nn.Module]) -> None:
        super().__init__()
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        # expand (absent when the expansion ratio is 1)
        if cnf.expanded_channels != cnf.in_channels:
            layers["expand_conv"] = ConvBNActivation(cnf.in_channels, cnf.expanded_channels, 1,
                                                     norm_layer=norm_layer)
        # depthwise
        layers["dwconv"] = ConvBNActivation(cnf.expanded_channels, cnf.expanded_channels, cnf.kernel,
                                            cnf.stride, groups=cnf.expanded_channels, norm_layer=norm_layer)
        # squeeze and excitation
        layers["se"] = SqueezeExcitation(cnf.expanded_channels, cnf.squeeze_channels)
        # project (linear bottleneck: no activation)
        layers["project_conv"] = ConvBNActivation(cnf.expanded_channels, cnf.out_channels, 1,
                                                  norm_layer=norm_layer, activation=False)
        self.block = nn.Sequential(layers)
        self.use_res_connect = cnf.stride == 1 and cnf.in_channels == cnf.out_channels
        self.drop_rate = cnf.drop_rate
        self.out_channels = cnf.out_channels

    def forward(self, x: Tensor) -> Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = drop_path(result, self.drop_rate, self.training)
            result += x
        return result


class EfficientNet(nn.Module):
    """EfficientNet with the tutorial's module names.

    ``forward(x)``: (N, 3, H, W) images -> (N, num_classes) logits.
    ``forward_features(x)``: (N, 3, H, W) -> (N, C, H/32, W/32), the feature map before pooling.
    """

    def __init__(self, width_coefficient: float, depth_coefficient: float, num_classes: int = 1000,
                 dropout_rate: float = 0.2, drop_connect_rate: float = 0.2, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, variant: str | None = None) -> None:
        super().__init__()
        self.variant = variant  # "b0" ... "b7" when built by a factory; recorded in checkpoints
        self.num_classes = num_classes
        self.grad_checkpointing = False
        norm_layer = functools.partial(nn.BatchNorm2d, eps=bn_eps, momentum=bn_momentum)
        configs = block_configs(width_coefficient, depth_coefficient, drop_connect_rate)
        head_channels = _make_divisible(HEAD_CHANNELS * width_coefficient)

        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        layers["stem_conv"] = ConvBNActivation(3, configs[0].in_channels, 3, stride=2, norm_layer=norm_layer)
        for cnf in configs:
            layers[cnf.name] = InvertedResidual(cnf, norm_layer)
        layers["top"] = ConvBNActivation(configs[-1].out_channels, head_channels, 1, norm_layer=norm_layer)
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout_rate, inplace=True),
                                        nn.Linear(head_channels, num_classes))
        self.num_features = head_channels

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                # small, class-count independent (as the tutorial does): torchvision's uniform(1/sqrt(classes))
                # gives a 5-class head logits of about +-5 and a poor start when fine-tuning
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations during backward instead of storing them (saves memory)."""
        self.grad_checkpointing = enable

    def set_bn_eps(self, eps: float) -> None:
        """Set every BatchNorm's eps, which must match the eps the loaded weights were trained with."""
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):  # SyncBatchNorm too
                m.eps = eps

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return self._checkpointed_features(x)
        return self.features(x)

    @torch.jit.unused
    def _checkpointed_features(self, x: Tensor) -> Tensor:
        for block in self.features:
            x = torch.utils.checkpoint.checkpoint(
                block, x, use_reentrant=False,
                context_fn=lambda b=block: (contextlib.nullcontext(), _FrozenBatchNormStats(b)))
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        x = self.avgpool(x)  # (N, C, 1, 1)
        x = torch.flatten(x, 1)  # (N, C)
        return self.classifier(x)  # (N, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class _FrozenBatchNormStats:
    """During a checkpoint's recomputation, stop BatchNorm from counting the same batch twice."""

    def __init__(self, module: nn.Module) -> None:
        self.norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.saved: list[tuple[float | None, Tensor | None]] = []

    def __enter__(self) -> None:
        for m in self.norms:
            counter = None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
            self.saved.append((m.momentum, counter))
            m.momentum = 0.0  # running = 1 * running + 0 * batch: unchanged, exactly
        return None

    def __exit__(self, *exc: object) -> None:
        for m, (momentum, counter) in zip(self.norms, self.saved):
            m.momentum = momentum
            if counter is not None:
                m.num_batches_tracked.copy_(counter)
        self.saved.clear()


# ---------------------------------------------------------------------------------------------------------------
# Factories


def create_model(variant: str, num_classes: int = 1000, pretrained: bool = False,
                 drop_connect_rate: float | None = None, dropout_rate: float | None = None) -> EfficientNet:
    """Build EfficientNet-`variant` ('b0' ... 'b7'), optionally with torchvision's ImageNet weights.

    With `pretrained` and a `num_classes` other than 1000, everything but the classifier is loaded.
    """
    key = variant_name(variant)
    spec = VARIANTS[key]
    model = EfficientNet(spec.width, spec.depth, num_classes,
                         dropout_rate=spec.dropout if dropout_rate is None else dropout_rate,
                         drop_connect_rate=spec.drop_connect_rate if drop_connect_rate is None else drop_connect_rate,
                         bn_eps=spec.bn_eps, bn_momentum=spec.bn_momentum, variant=key)
    if pretrained:
        load_weights(model, "imagenet")
    return model


def _factory(variant: str) -> Callable[..., EfficientNet]:
    """efficientnet_bX(num_classes=1000, pretrained=False), documented from the variant table."""
    spec = VARIANTS[variant]

    def build(num_classes: int = 1000, pretrained: bool = False) -> EfficientNet:
        return create_model(variant, num_classes, pretrained)

    build.__name__ = build.__qualname__ = f"efficientnet_{variant}"
    build.__doc__ = (f"EfficientNet-{variant.upper()}: {spec.num_params:,} parameters at 1000 classes, trained at "
                     f"{spec.train_size} px, evaluated at {spec.eval_crop} px. With pretrained=True it loads "
                     f"torchvision's ImageNet weights ({spec.imagenet_top1}% top-1), all but the classifier "
                     f"when num_classes is not 1000.")
    return build


efficientnet_b0 = _factory("b0")
efficientnet_b1 = _factory("b1")
efficientnet_b2 = _factory("b2")
efficientnet_b3 = _factory("b3")
efficientnet_b4 = _factory("b4")
efficientnet_b5 = _factory("b5")
efficientnet_b6 = _factory("b6")
efficientnet_b7 = _factory("b7")


# ---------------------------------------------------------------------------------------------------------------
# Weights


def imagenet_weights_url(variant: str) -> str:
    base = os.environ.get(WEIGHTS_MIRROR_ENV) or WEIGHTS_BASE_URL
    return base.rstrip("/") + "/" + VARIANTS[variant_name(variant)].weights_file


def download_imagenet_weights(variant: str, progress: bool = True) -> str:
    """Path of torchvision's ImageNet weights for `variant` in the torch hub cache, downloading them if absent.

    The file lands where torchvision itself caches it, so a copy torchvision already fetched is reused.
    """
    file_name = VARIANTS[variant_name(variant)].weights_file
    destination = os.path.join(torch.hub.get_dir(), "checkpoints", file_name)
    sha256_prefix = re.search(r"-([0-9a-f]+)\.pth$", file_name).group(1)
    try:
        return str(download_file(imagenet_weights_url(variant), destination, sha256_prefix, progress))
    except DownloadError as error:
        raise WeightsError(f"ImageNet weights for efficientnet_{variant_name(variant)}: {error}") from None


def bn_eps_of(model: nn.Module) -> float:
    """The eps of the model's BatchNorm layers (all share one)."""
    return next(m.eps for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def checkpoint_fields(model: EfficientNet) -> dict[str, Any]:
    """What a checkpoint needs to rebuild `model` exactly: merge into a dict and torch.save it."""
    return {"format": CHECKPOINT_FORMAT, "variant": model.variant, "num_classes": model.num_classes,
            "bn_eps": bn_eps_of(model), "model": model.state_dict()}


def model_from_checkpoint(checkpoint: str | os.PathLike | Mapping[str, Any]) -> EfficientNet:
    """Build the variant a checkpoint of this project describes and load its weights into it."""
    if isinstance(checkpoint, (str, os.PathLike)):
        origin, checkpoint = str(checkpoint), read_weights_file(checkpoint)
    else:
        origin = "the given checkpoint"
    if not isinstance(checkpoint, Mapping) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{origin} is not a checkpoint of this project (a bare state_dict?); build the model "
                           f"with create_model and call load_weights instead")
    model = create_model(checkpoint["variant"], int(checkpoint["num_classes"]))
    load_weights(model, checkpoint, verbose=False)
    return model


def read_weights_file(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True, turning every failure into a one-line WeightsError."""
    if not os.path.exists(path):
        raise WeightsError(f"weights file {path} does not exist; check the path")
    if os.path.isdir(path):
        raise WeightsError(f"weights path {path} is a folder; give the .pth file inside it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses any global it does not know: name the one that would have been imported
        blocked = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line.upper()), None)
        if blocked is None:
            raise WeightsError(f"{path} is not a readable PyTorch weights file (corrupt, truncated or another "
                               f"format); re-download or re-save it") from None
        raise WeightsError(f"{path} holds Python objects beyond tensors, which could run code when loaded; "
                           f"refusing it ({blocked[:160]}). Re-save it as a plain state_dict") from None
    except Exception as error:  # zip, EOF and unpickling errors all mean the same thing to a user
        raise WeightsError(f"{path} is not a readable PyTorch weights file (corrupt, truncated or another "
                           f"format: {type(error).__name__}); re-download or re-save it") from None


def _strip_wrappers(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the 'module.' of DataParallel/DDP and the '_orig_mod.' of torch.compile from every key."""
    state = dict(state)
    for prefix in ("module.", "_orig_mod."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def torchvision_key_map(model: EfficientNet) -> dict[str, str]:
    """Map each of this model's state_dict keys to torchvision's name for the same tensor.

    torchvision numbers what the tutorial names: stem 'features.0', stage s block b 'features.s.b',
    the parts of a block by position ('block.0' = expand or depthwise, ...), the head 'features.<last>'.
    """
    names = list(model.features._modules)
    head_index = len({name[:-1] for name in names if re.fullmatch(r"\d+[a-z]", name)}) + 1
    mapping: dict[str, str] = {}
    for name, module in model.features.named_children():
        block_match = re.fullmatch(r"(\d+)([a-z])", name)
        for key in module.state_dict():
            if name == "stem_conv":
                mapping[f"features.{name}.{key}"] = f"features.0.{key}"
            elif name == "top":
                mapping[f"features.{name}.{key}"] = f"features.{head_index}.{key}"
            else:
                stage, letter = block_match.groups()
                part, rest = key.removeprefix("block.").split(".", 1)
                position = list(module.block._modules).index(part)
                mapping[f"features.{name}.{key}"] = (
                    f"features.{stage}.{ord(letter) - ord('a')}.block.{position}.{rest}")
    for key in model.classifier.state_dict():
        mapping[f"classifier.{key}"] = f"classifier.{key}"
    return mapping


@functools.lru_cache(maxsize=None)
def _variant_signature(variant: str) -> tuple[frozenset, dict[str, str]]:
    """(tutorial-layout keys and shapes without the classifier, torchvision key map) of a variant."""
    with torch.device("meta"):
        reference = create_model(variant)
    shapes = frozenset((k, tuple(v.shape)) for k, v in reference.state_dict().items()
                       if not k.startswith("classifier."))
    return shapes, torchvision_key_map(reference)


def identify_variant(state: Mapping[str, Tensor]) -> str | None:
    """Which of b0 ... b7 a tutorial- or torchvision-layout state_dict belongs to, or None."""
    state = _strip_wrappers(state)
    for variant in VARIANTS:
        shapes, tv_map = _variant_signature(variant)
        if "features.0.0.weight" in state:  # torchvision layout
            inverse = {tv: ours for ours, tv in tv_map.items()}
            state_shapes = {(inverse.get(k, k), tuple(v.shape)) for k, v in state.items()}
        else:
            state_shapes = {(k, tuple(v.shape)) for k, v in state.items()}
        if shapes == {(k, shape) for k, shape in state_shapes if not k.startswith("classifier.")}:
            return variant
    return None


def _describe(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_weights(model: EfficientNet, source: str | os.PathLike | Mapping[str, Any], *,
                 bn_eps: float | None = None, allow_new_classifier: bool = True, verbose: bool = True) -> str:
    """Load weights into `model` and return a one-line summary (also printed to stderr when `verbose`).

    `source` is "imagenet" (torchvision's ImageNet weights for the model's variant, downloaded to the torch
    hub cache and checked against their sha256), a path to a .pth file, or an already loaded dict. The layout
    is detected: this project's checkpoints (a dict with "format", "model", "bn_eps"), the tutorial's
    state_dict (keys 'features.stem_conv...', optionally prefixed 'module.'), or torchvision's
    ('features.0.0...'). BatchNorm eps is set to what the weights were trained with (the checkpoint's own,
    1e-3 for the tutorial, torchvision's per variant) unless `bn_eps` is given.

    If only the classifier's class count differs (and `allow_new_classifier`, for fine-tuning), everything else
    is loaded and the classifier keeps its fresh initialisation. Any other missing, unexpected or mis-shaped key raises WeightsError naming them.
    """
    variant = model.variant
    if isinstance(source, (str, os.PathLike)) and str(source).lower() == "imagenet":
        if variant is None:
            raise WeightsError("ImageNet weights need a model built by create_model / efficientnet_bX")
        origin = f"torchvision ImageNet weights ({VARIANTS[variant].imagenet_top1}% top-1)"
        loaded: Any = read_weights_file(download_imagenet_weights(variant))
    elif isinstance(source, (str, os.PathLike)):
        origin = str(source)
        loaded = read_weights_file(source)
    else:
        origin, loaded = "the given state_dict", source
    if not isinstance(loaded, Mapping):
        raise WeightsError(f"{origin} holds a {type(loaded).__name__}, not a state_dict or checkpoint")

    trained_eps: float
    if loaded.get("format") == CHECKPOINT_FORMAT:
        state, trained_eps, layout = loaded["model"], float(loaded["bn_eps"]), "checkpoint"
        if variant is not None and loaded.get("variant") not in (None, variant):
            raise WeightsError(f"{origin} holds efficientnet_{loaded['variant']} weights but the model is "
                               f"efficientnet_{variant} (use variant {loaded['variant']} for them)")
    else:
        # other people's training scripts often wrap the state_dict in {"model": ...} or {"state_dict": ...}
        state = next((loaded[k] for k in ("model", "state_dict") if isinstance(loaded.get(k), Mapping)), loaded)
        layout = "torchvision" if "features.0.0.weight" in _strip_wrappers(state) else "tutorial"
        trained_eps = VARIANTS[variant].bn_eps if layout == "torchvision" and variant else TUTORIAL_BN_EPS
    state = _strip_wrappers(state)
    bad_values = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad_values:
        raise WeightsError(f"{origin} is not a state_dict: {_describe(bad_values)} are not tensors")
    if layout == "torchvision":
        inverse = {tv: ours for ours, tv in torchvision_key_map(model).items()}
        state = {inverse.get(k, k): v for k, v in state.items()}

    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    classifier_only = (allow_new_classifier and not missing and not unexpected and mismatched
                       and set(mismatched) <= {"classifier.1.weight", "classifier.1.bias"}
                       and state["classifier.1.weight"].shape[1:] == expected["classifier.1.weight"].shape[1:])
    if (missing or unexpected or mismatched) and not classifier_only:
        actual = identify_variant(state)
        if actual is not None and actual == variant and mismatched and set(mismatched) <= {
                "classifier.1.weight", "classifier.1.bias"}:
            raise WeightsError(f"{origin} has {state['classifier.1.weight'].shape[0]} classes but the model "
                               f"{model.num_classes}; the class names must match the weights")
        if actual is not None and actual != variant:
            raise WeightsError(f"{origin} holds efficientnet_{actual} weights but the model is "
                               f"efficientnet_{variant} (use variant {actual} for them)")
        problems = []
        if missing:
            problems.append(f"missing {_describe(missing)}")
        if unexpected:
            problems.append(f"unexpected {_describe(unexpected)}")
        if mismatched:
            problems.append("wrong shape " + _describe(
                [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched]))
        raise WeightsError(f"{origin} does not fit efficientnet_{variant or 'custom'}: {'; '.join(problems)}")

    if classifier_only:
        weights_classes = state["classifier.1.weight"].shape[0]
        for key in mismatched:
            state[key] = expected[key]
    model.load_state_dict(state, strict=True)
    eps = trained_eps if bn_eps is None else bn_eps
    model.set_bn_eps(eps)
    summary = f"loaded {origin} ({layout} layout, BatchNorm eps {eps:g})"
    if classifier_only:
        summary += (f"; classifier left freshly initialised: the weights have "
                    f"{weights_classes} classes, the model {model.num_classes}")
    if verbose:
        print(summary, file=sys.stderr)
    return summary



def fuse_batchnorm(model: EfficientNet) -> EfficientNet:
    """An inference-only copy of `model` with every BatchNorm folded into the convolution before it.

    Each conv gets weight * gamma / sqrt(var + eps) and a bias, saving a full pass over every feature map;
    outputs equal the unfolded model's in eval mode up to float rounding.
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, ConvBNActivation) and isinstance(module[1], nn.BatchNorm2d):
            module[0] = torch.nn.utils.fusion.fuse_conv_bn_eval(module[0], module[1])
            module[1] = nn.Identity()
    return fused
