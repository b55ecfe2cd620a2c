"""This project's checkpoints and weight files on disk: reading any .pth safely (weights_only), the fields a
checkpoint of this project carries (its format mark, variant, classes, BatchNorm eps, evaluation sizes) and
their checks, so that a hand-edited or damaged file is one clear error."""
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from effnet.data.images import INTERPOLATIONS
from effnet.variants import VARIANTS, variant_name

CHECKPOINT_FORMAT = "efficientnet-tutorial-checkpoint/1"  # marks this project's self-describing checkpoints


class WeightsError(ValueError):
    """Weights that cannot be loaded; the message names the file or keys and what to do."""


def read_weights_file(path: str | os.PathLike, remedy: str = "re-download or re-save it") -> Any:
    """torch.load with weights_only=True, turning every failure into a one-line WeightsError; `remedy` says
    what to do about an unreadable file ("" to leave it to the caller)."""
    if not os.path.exists(path):
        raise WeightsError(f"weights file {path} does not exist; check the path")
    if os.path.isdir(path):
        raise WeightsError(f"weights path {path} is a folder; give the .pth file inside it")
    unreadable = (f"{path} is not a readable PyTorch weights file (corrupt, truncated or another format")
    remedy = f"; {remedy}" if remedy else ""
    try:
        with warnings.catch_warnings():
            # a stray file can start like a pickle of another protocol: PyTorch warns in two lines before it
            # fails, and the failure is reported below in one
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses any global it does not know: name the one that would have been imported
        blocked = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line.upper()), None)
        if blocked is None:
            raise WeightsError(f"{unreadable}){remedy}") from None
        raise WeightsError(f"{path} holds Python objects beyond tensors, which could run code when loaded; "
                           f"refusing it ({blocked[:160]}). Re-save it as a plain state_dict") from None
    except Exception as error:  # zip, EOF and unpickling errors all mean the same thing to a user
        raise WeightsError(f"{unreadable}: {type(error).__name__}){remedy}") from None



def bn_eps_of(model: nn.Module) -> float:
    """The eps of the model's BatchNorm layers (all share one)."""
    return next(m.eps for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def checkpoint_fields(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint needs to rebuild `model` exactly: merge into a dict and torch.save it."""
    return {"format": CHECKPOINT_FORMAT, "variant": model.variant, "num_classes": model.num_classes,
            "bn_eps": bn_eps_of(model), "model": model.state_dict()}


def is_checkpoint(loaded: Any) -> bool:
    """Whether a loaded file is one of this project's self-describing checkpoints (not a bare state_dict)."""
    return isinstance(loaded, Mapping) and loaded.get("format") == CHECKPOINT_FORMAT


@dataclass(frozen=True)
class CheckpointHeader:
    """The validated fields of a checkpoint that describe its model."""

    variant: str
    num_classes: int
    bn_eps: float
    class_names: list[str] | None
    image: dict[str, Any] | None  # evaluation sizes and normalisation, as train.py saved them


IMAGE_FIELDS = {"eval_resize": int, "eval_crop": int, "interpolation": str}


def checkpoint_header(checkpoint: Mapping[str, Any], origin: str) -> CheckpointHeader:
    """Check the fields that describe the model, with one clear WeightsError for a hand-edited or damaged file."""
    def bad(field: str, expected: str) -> WeightsError:
        return WeightsError(f"{origin}: checkpoint field '{field}' is {checkpoint.get(field)!r}, expected "
                            f"{expected}; re-save the checkpoint with train.py")

    try:
        variant = variant_name(str(checkpoint.get("variant")))
    except ValueError:
        raise bad("variant", f"one of {', '.join(VARIANTS)}") from None
    num_classes = checkpoint.get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise bad("num_classes", "a positive whole number")
    bn_eps = checkpoint.get("bn_eps")
    if not isinstance(bn_eps, (int, float)) or isinstance(bn_eps, bool) or not 0 < bn_eps < 1:
        raise bad("bn_eps", "a small positive number")
    if not isinstance(checkpoint.get("model"), Mapping):
        raise bad("model", "a state_dict")
    names = checkpoint.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != num_classes
                              or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names)):
        raise bad("class_names", f"a list of {num_classes} different names")
    image = checkpoint.get("image")
    if image is not None and not _valid_image_settings(image):
        raise bad("image", "the evaluation settings " + ", ".join(IMAGE_FIELDS) + " (sizes in pixels, "
                  f"interpolation {' or '.join(INTERPOLATIONS)}; mean and std three numbers each, if given)")
    return CheckpointHeader(variant, num_classes, float(bn_eps), names, dict(image) if image else None)


def _valid_image_settings(image: Any) -> bool:
    def numbers(value: Any) -> bool:
        return isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)

    return (isinstance(image, Mapping)
            and all(isinstance(image.get(key), kind) and not isinstance(image.get(key), bool)
                    for key, kind in IMAGE_FIELDS.items())
            and image["eval_resize"] > 0 and image["eval_crop"] > 0 and image["interpolation"] in INTERPOLATIONS
            and all(numbers(image[key]) for key in ("mean", "std") if key in image))

