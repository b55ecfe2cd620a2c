"""Weights into a model: torchvision's ImageNet weights (download, sha256), the tutorial's and torchvision's
state_dict layouts and the key map between them, which variant a state_dict belongs to, and load_weights.

Works on any model with the tutorial's module names (model.py's EfficientNet); it never builds one, so the
network module can import this one for ``pretrained=True`` without a cycle. Reading files and this project's
checkpoint fields: checkpoints.py.
"""
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from effnet.checkpoints import WeightsError, checkpoint_header, is_checkpoint, read_weights_file
from effnet.download import DownloadError, download_file
from effnet.variants import (
    BASELINE_STAGES,
    TUTORIAL_BN_EPS,
    VARIANTS,
    _make_divisible,
    head_channels,
    is_imagenet,
    stage_repeats,
    variant_name,
)

WEIGHTS_BASE_URL = "https://download.pytorch.org/models/"
WEIGHTS_MIRROR_ENV = "EFFICIENTNET_WEIGHTS_MIRROR"  # set to a base URL (or file:// folder) to fetch elsewhere
CLASSIFIER_KEYS = ("classifier.1.weight", "classifier.1.bias")


# ---------------------------------------------------------------------------------------------------------------
# torchvision's ImageNet weights


def imagenet_weights_url(variant: str) -> str:
    base = os.environ.get(WEIGHTS_MIRROR_ENV) or WEIGHTS_BASE_URL
    return base.rstrip("/") + "/" + VARIANTS[variant_name(variant)].weights_file


def download_imagenet_weights(variant: str, progress: bool | None = None) -> str:
    """Path of torchvision's ImageNet weights for `variant` in the torch hub cache, downloading them if absent.

    The file lands where torchvision itself caches it, so a copy torchvision already fetched is reused. A progress
    bar is drawn as `progress` says (default: on a terminal).
    """
    file_name = VARIANTS[variant_name(variant)].weights_file
    destination = os.path.join(torch.hub.get_dir(), "checkpoints", file_name)
    sha256_prefix = re.search(r"-([0-9a-f]+)\.pth$", file_name).group(1)
    try:
        return str(download_file(imagenet_weights_url(variant), destination, sha256_prefix, progress))
    except DownloadError as error:
        raise WeightsError(f"ImageNet weights for efficientnet_{variant_name(variant)}: {error}") from None


# ---------------------------------------------------------------------------------------------------------------
# Layouts


def strip_wrappers(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the 'module.' of DataParallel/DDP and the '_orig_mod.' of torch.compile from every key."""
    state = dict(state)
    for prefix in ("module.", "_orig_mod."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def is_torchvision_layout(state: Mapping[str, Any]) -> bool:
    return "features.0.0.weight" in state


def torchvision_key_map(model: nn.Module) -> dict[str, str]:
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


def _shape_fingerprint(state: Mapping[str, Any]) -> tuple[tuple[int, ...], int, int] | None:
    """(blocks per stage, stem channels, head channels) of a tutorial- or torchvision-layout state_dict."""
    torchvision = is_torchvision_layout(state)
    block = re.compile(r"features\.(\d+)\.(\d+)\.block\." if torchvision else r"features\.(\d+)([a-z])\.block\.")
    blocks: dict[int, set[str]] = {}
    for key in state:
        match = block.match(key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(match.group(2))
    stem_key = "features.0.0.weight" if torchvision else "features.stem_conv.0.weight"
    head_key = f"features.{len(blocks) + 1}.0.weight" if torchvision else "features.top.0.weight"
    if sorted(blocks) != list(range(1, len(BASELINE_STAGES) + 1)) or not all(
            hasattr(state.get(k), "shape") for k in (stem_key, head_key)):
        return None
    counts = tuple(len(blocks[stage]) for stage in sorted(blocks))
    return counts, int(state[stem_key].shape[0]), int(state[head_key].shape[0])


def identify_variant(state: Mapping[str, Tensor]) -> str | None:
    """Which of b0 ... b7 a tutorial- or torchvision-layout state_dict belongs to (by its stage depths and
    stem and head widths), or None."""
    fingerprint = _shape_fingerprint(strip_wrappers(state))
    for variant, spec in VARIANTS.items():
        expected = (tuple(stage_repeats(spec.depth)), _make_divisible(BASELINE_STAGES[0].in_channels * spec.width),
                    head_channels(spec.width))
        if fingerprint == expected:
            return variant
    return None


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _describe(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _read_source(model: nn.Module, source: str | os.PathLike | Mapping[str, Any]) -> tuple[str, Any]:
    """(where the weights come from, in words; what was loaded)."""
    if is_imagenet(source):
        if model.variant is None:
            raise WeightsError("ImageNet weights need a model built by create_model / efficientnet_bX")
        origin = f"torchvision ImageNet weights ({VARIANTS[model.variant].imagenet_top1}% top-1)"
        return origin, read_weights_file(download_imagenet_weights(model.variant))
    if isinstance(source, (str, os.PathLike)):
        return str(source), read_weights_file(source)
    return "the given state_dict", source


def bare_state_dict(loaded: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state_dict of a loaded file that is not one of our checkpoints: other people's training scripts often
    wrap it in {"model": ...} or {"state_dict": ...}."""
    return next((loaded[k] for k in ("model", "state_dict") if isinstance(loaded.get(k), Mapping)), loaded)


def _unpack(loaded: Any, origin: str, variant: str | None) -> tuple[dict[str, Tensor], float, str]:
    """(state_dict in this project's key names, BatchNorm eps it was trained with, layout name)."""
    if not isinstance(loaded, Mapping):
        raise WeightsError(f"{origin} holds a {type(loaded).__name__}, not a state_dict or checkpoint")
    if is_checkpoint(loaded):
        header = checkpoint_header(loaded, origin)
        if variant is not None and header.variant != variant:
            raise WeightsError(f"{origin} holds efficientnet_{header.variant} weights but the model is "
                               f"efficientnet_{variant} (use variant {header.variant} for them)")
        state, eps, layout = loaded["model"], header.bn_eps, "checkpoint"
    else:
        state = bare_state_dict(loaded)
        layout = "torchvision" if is_torchvision_layout(strip_wrappers(state)) else "tutorial"
        eps = VARIANTS[variant].bn_eps if layout == "torchvision" and variant else TUTORIAL_BN_EPS
    state = strip_wrappers(state)
    bad_values = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad_values:
        raise WeightsError(f"{origin} is not a state_dict: {_describe(bad_values)} are not tensors")
    return state, eps, layout


def _check_fit(model: nn.Module, state: dict[str, Tensor], origin: str, allow_new_classifier: bool,
               actual: str | None) -> bool:
    """Raise WeightsError unless `state` fits `model`; True when only the classifier's class count differs
    (and that is allowed), so the classifier keeps its fresh initialisation. `actual`: the variant the
    weights' shapes show (identify_variant), if any."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or mismatched):
        return False
    only_classes_differ = (not missing and not unexpected and set(mismatched) <= set(CLASSIFIER_KEYS)
                           and state[CLASSIFIER_KEYS[0]].shape[1:] == expected[CLASSIFIER_KEYS[0]].shape[1:])
    if only_classes_differ and allow_new_classifier:
        return True
    variant = model.variant
    if only_classes_differ and actual == variant:
        raise WeightsError(f"{origin} has {state[CLASSIFIER_KEYS[0]].shape[0]} classes but the model "
                           f"{model.num_classes}; the class names must match the weights")
    if actual is not None and actual != variant:
        raise WeightsError(f"{origin} holds efficientnet_{actual} weights but the model is "
                           f"efficientnet_{variant} (use variant {actual} for them)")
    problems = [f"missing {_describe(missing)}"] if missing else []
    if unexpected:
        problems.append(f"unexpected {_describe(unexpected)}")
    if mismatched:
        problems.append("wrong shape " + _describe(
            [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched]))
    raise WeightsError(f"{origin} does not fit efficientnet_{variant or 'custom'}: {'; '.join(problems)}")


def load_weights(model: nn.Module, source: str | os.PathLike | Mapping[str, Any], *,
                 bn_eps: float | None = None, allow_new_classifier: bool = True, verbose: bool = True) -> str:
    """Load weights into `model` and return a one-line summary (also printed to stderr when `verbose`).

    `source` is "imagenet" (torchvision's ImageNet weights for the model's variant, downloaded to the torch
    hub cache and checked against their sha256), a path to a .pth file, or an already loaded dict. The layout
    is detected: this project's checkpoints (a dict with "format", "model", "bn_eps"), the tutorial's
    state_dict (keys 'features.stem_conv...', optionally prefixed 'module.'), or torchvision's
    ('features.0.0...'). BatchNorm eps is set to what the weights were trained with (the checkpoint's own,
    1e-3 for the tutorial, torchvision's per variant) unless `bn_eps` is given.

    If only the classifier's class count differs (and `allow_new_classifier`, for fine-tuning), everything
    else is loaded and the classifier keeps its fresh initialisation. Any other missing, unexpected or
    mis-shaped key raises WeightsError naming them.
    """
    origin, loaded = _read_source(model, source)
    state, trained_eps, layout = _unpack(loaded, origin, model.variant)
    actual = identify_variant(state)  # before the key names change: a mapping for another variant misses keys
    if layout == "torchvision":
        inverse = {tv: ours for ours, tv in torchvision_key_map(model).items()}
        state = {inverse.get(k, k): v for k, v in state.items()}
    new_classifier = _check_fit(model, state, origin, allow_new_classifier, actual)
    summary_classes = ""
    if new_classifier:
        summary_classes = (f"; classifier left freshly initialised: the weights have "
                           f"{state[CLASSIFIER_KEYS[0]].shape[0]} classes, the model {model.num_classes}")
        state.update({key: model.state_dict()[key] for key in CLASSIFIER_KEYS})
    model.load_state_dict(state, strict=True)
    eps = trained_eps if bn_eps is None else bn_eps
    model.set_bn_eps(eps)
    summary = f"loaded {origin} ({layout} layout, BatchNorm eps {eps:g}){summary_classes}"
    if verbose:
        print(summary, file=sys.stderr)
    return summary

