"""EfficientNet-B0 ... B7.

The state_dict keys follow the tutorial's layout (``features.stem_conv``, ``features.1a.block.dwconv``,
``features.top``, ``classifier.1``) so its checkpoints load unchanged; the arithmetic is torchvision's, so
with the same weights both give the same outputs. This file holds the network and its factories; the
numbers of B0 ... B7 live in variants.py, the reading of weight files in checkpoints.py and weights.py.
"""
import contextlib
import functools
import numbers
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.nn import functional as F

from effnet.checkpoints import WeightsError, checkpoint_header, is_checkpoint, read_weights_file  # noqa: F401

# Re-exported so that `from model import VARIANTS, MEAN, load_weights, _make_divisible` keeps working.
from effnet.variants import (  # noqa: F401
    BASELINE_STAGES,
    MEAN,
    STD,
    VARIANTS,
    _make_divisible,
    head_channels,
    stage_repeats,
    variant_name,
)
from effnet.weights import load_weights  # noqa: F401


class _BatchNormSiLU(torch.autograd.Function):
    """Training-mode BatchNorm2d followed by SiLU, storing only the BatchNorm input for backward.

    The normalised tensor that SiLU's gradient needs is recomputed from the stored input and batch
    statistics in one pass instead of being kept: one activation tensor fewer per layer, 12-22% less
    training memory at the same speed (docs/benchmarks.md), and the same results as the two modules in a row.
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
            # in place: the same gradients, one allocation and memory pass fewer (measured in benchmarks/speed.py)
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
    repeats = stage_repeats(depth)
    total = sum(repeats)
    configs: list[InvertedResidualConfig] = []
    for stage_number, (stage, count) in enumerate(zip(BASELINE_STAGES, repeats), start=1):
        out_channels = _make_divisible(stage.out_channels * width)
        for i in range(count):
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
        layers: OrderedDict[str, nn.Module] = OrderedDict()
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


def check_num_classes(num_classes: object) -> None:
    """ValueError unless `num_classes` is a whole number of at least 1: PyTorch would otherwise fail deep inside
    nn.Linear (or, for True, build a one-class model). There is no features-only model: forward_features gives
    the feature map of any EfficientNet."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a whole number of at least 1, not {num_classes!r}")


class EfficientNet(nn.Module):
    """EfficientNet with the tutorial's module names.

    ``forward(x)``: (N, 3, H, W) images -> (N, num_classes) logits.
    ``forward_features(x)``: (N, 3, H, W) -> (N, C, H/32, W/32), the feature map before pooling.
    """

    def __init__(self, width_coefficient: float, depth_coefficient: float, num_classes: int = 1000,
                 dropout_rate: float = 0.2, drop_connect_rate: float = 0.2, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, variant: str | None = None) -> None:
        super().__init__()
        check_num_classes(num_classes)
        self.variant = variant  # "b0" ... "b7" when built by a factory; recorded in checkpoints
        self.num_classes = num_classes
        self.grad_checkpointing = False
        norm_layer = functools.partial(nn.BatchNorm2d, eps=bn_eps, momentum=bn_momentum)
        configs = block_configs(width_coefficient, depth_coefficient, drop_connect_rate)
        head_width = head_channels(width_coefficient)

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["stem_conv"] = ConvBNActivation(3, configs[0].in_channels, 3, stride=2, norm_layer=norm_layer)
        for cnf in configs:
            layers[cnf.name] = InvertedResidual(cnf, norm_layer)
        layers["top"] = ConvBNActivation(configs[-1].out_channels, head_width, 1, norm_layer=norm_layer)
        self.features = nn.Sequential(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout_rate, inplace=True),
                                        nn.Linear(head_width, num_classes))
        self.num_features = head_width

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

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """nn.Module.load_state_dict, which also takes a whole checkpoint of this project, so that the tutorial's
        `model.load_state_dict(torch.load("runs/.../best.pth"))` works: its "model" entry is loaded (strictly; its
        variant and class count must be this model's, whatever `strict` says) and BatchNorm eps set to the
        checkpoint's. Anything else (the tutorial's own state_dicts, strict=False, ...) is nn.Module's, unchanged."""
        if not is_checkpoint(state_dict):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        header = checkpoint_header(state_dict, "the checkpoint")
        if header.num_classes != self.num_classes or header.variant != (self.variant or header.variant):
            raise WeightsError(f"the checkpoint holds efficientnet_{header.variant} with {header.num_classes} classes, "
                               f"this model is efficientnet_{self.variant or 'custom'} with {self.num_classes}; build "
                               f"the model from the checkpoint instead: model = model_from_checkpoint(path)")
        # load_weights names any stray, missing or misshapen key in one line (PyTorch's error lists them all)
        load_weights(self, state_dict, allow_new_classifier=False, verbose=False)
        return nn.modules.module._IncompatibleKeys([], [])  # what nn.Module returns when every key matched

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


def model_from_checkpoint(checkpoint: str | os.PathLike | Mapping[str, Any]) -> EfficientNet:
    """Build the variant a checkpoint of this project describes and load its weights into it."""
    if isinstance(checkpoint, (str, os.PathLike)):
        origin, checkpoint = str(checkpoint), read_weights_file(checkpoint)
    else:
        origin = "the given checkpoint"
    if not is_checkpoint(checkpoint):
        raise WeightsError(f"{origin} is not a checkpoint of this project (a bare state_dict?); build the model "
                           f"with create_model and call load_weights instead")
    header = checkpoint_header(checkpoint, origin)
    model = create_model(header.variant, header.num_classes)
    load_weights(model, checkpoint, verbose=False)
    return model
