"""EfficientNet-B0 ... B7 as numbers: the compound-scaling table, the baseline stages and channel rounding.

Pure Python, no PyTorch: the network (model.py), the weights module, the ONNX backend and the web app all
read these numbers, and the last two must start without importing torch.
"""
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

MEAN = (0.485, 0.456, 0.406)  # ImageNet RGB mean and std, used by every variant's weights
STD = (0.229, 0.224, 0.225)
TUTORIAL_BN_EPS = 1e-3  # the tutorial built every variant with this eps, so its checkpoints expect it
IMAGENET = "imagenet"  # --weights imagenet: torchvision's ImageNet weights for the variant (Variant.weights_file)


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


def is_imagenet(weights: object) -> bool:
    return isinstance(weights, (str, os.PathLike)) and str(weights).lower() == IMAGENET


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


def stage_repeats(depth: float) -> list[int]:
    """Blocks per stage for a depth multiplier (rounded up, as the paper does)."""
    return [int(math.ceil(stage.repeats * depth)) for stage in BASELINE_STAGES]


def head_channels(width: float) -> int:
    return _make_divisible(HEAD_CHANNELS * width)


def image_settings(variant: str, image_size: int | None = None) -> dict[str, Any]:
    """Train/eval sizes and normalisation: the variant's, or scaled to a custom crop size."""
    spec = VARIANTS[variant_name(variant)]
    settings = {"train_size": spec.train_size, "eval_resize": spec.eval_resize, "eval_crop": spec.eval_crop,
                "interpolation": spec.interpolation, "mean": list(MEAN), "std": list(STD)}
    if image_size is not None:
        settings.update(train_size=image_size, eval_crop=image_size,
                        eval_resize=round(image_size * spec.eval_resize / spec.eval_crop))
    return settings
