"""Class names for a model that does not carry its own (a bare state_dict, a plain ONNX export).

A class_indices.json maps "0", "1", ... to names, as the tutorial writes it. Where none is given, the first
one beside the weights and then in the current folder whose count fits the model is used, and the caller
is told which.
"""
import json
import os
from pathlib import Path

from cli import UsageError


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a class_indices.json ({"0": "daisy", ...}), in index order."""
    try:
        mapping = json.loads(Path(path).read_text())
        names = [str(mapping[str(i)]) for i in range(len(mapping))]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UsageError(f"{path} is not a readable class_indices.json mapping '0', '1', ... to names "
                         f"({type(error).__name__}: {error})") from None
    return names


def imagenet_class_names() -> list[str]:
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.DEFAULT.meta["categories"])


def find_class_names(weights: Path | None, explicit: str | None, num_classes: int | None) -> tuple[list[str], str]:
    """(names, where they came from): --class-indices, else the first class_indices.json (beside the
    weights, then here) whose count fits the weights, else ImageNet's for a 1000-class model."""
    if explicit:
        return read_class_names(explicit), explicit
    passed_over = []
    for candidate in ([weights.parent / "class_indices.json"] if weights else []) + [Path("class_indices.json")]:
        if candidate.is_file():
            names = read_class_names(candidate)
            if num_classes is None or len(names) == num_classes:
                return names, str(candidate)
            passed_over.append(f"{candidate} has {len(names)}")
    if num_classes == 1000:
        return imagenet_class_names(), "torchvision's ImageNet categories"
    found = f" ({'; '.join(passed_over)})" if passed_over else ""
    raise UsageError(f"no class_indices.json with the weights' {num_classes or 'unknown number of'} classes "
                     f"beside them or in this folder{found}; pass --class-indices FILE")
