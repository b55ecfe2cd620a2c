"""Class names for a model: from --class-indices, found beside the weights or here, or the model's own.

A class_indices.json maps "0", "1", ... to names, as the tutorial writes it. For a model that does not carry
its own names (a bare state_dict, a plain ONNX export) and no --class-indices, the first one beside the
weights and then in the current folder whose count fits the model is used, with a note saying which. For a
model that does carry them (this project's checkpoints and exports), --class-indices replaces them when
its count fits, with a note, and is refused when it does not.
"""
import json
import os
from pathlib import Path
from typing import NamedTuple

from effnet.command_line import UsageError


class ClassNamesError(UsageError):
    """Class names that cannot be read or do not fit the model: the same whatever backend runs it."""


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a class_indices.json ({"0": "daisy", ...}), in index order."""
    try:
        mapping = json.loads(Path(path).read_text())
        names = [str(mapping[str(i)]) for i in range(len(mapping))]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ClassNamesError(f"{path} is not a readable class_indices.json mapping '0', '1', ... to names "
                         f"({type(error).__name__}: {error})") from None
    repeated = next((name for index, name in enumerate(names) if name in names[:index]), None)
    if repeated is not None:  # two outputs of one name: its probability would be shown twice, scores mixed up
        first, second = [index for index, name in enumerate(names) if name == repeated][:2]
        raise ClassNamesError(f"{path} names two classes '{repeated}' ({first} and {second}); every class needs "
                              f"a name of its own")
    return names


def imagenet_class_names() -> list[str]:
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.DEFAULT.meta["categories"])


class ClassNames(NamedTuple):
    names: list[str]
    origin: str  # where they came from, in words, for messages
    note: str | None = None  # what to tell the user when they were not what the model or the user said


def find_class_names(weights: Path | None, explicit: str | None, num_classes: int | None) -> ClassNames:
    """The names of a model without its own: --class-indices, else the first class_indices.json (beside the
    weights, then here) whose count fits the weights, else ImageNet's for a 1000-class model."""
    if explicit:
        return ClassNames(read_class_names(explicit), explicit)
    unnamed = f"{weights or 'the model'} carries no class names"
    passed_over = []
    candidates = [(weights.parent / "class_indices.json", "beside the weights")] if weights else []
    for candidate, where in candidates + [(Path("class_indices.json"), "in the current folder")]:
        if candidate.is_file():
            names = read_class_names(candidate)
            if num_classes is None or len(names) == num_classes:
                return ClassNames(names, str(candidate), f"{unnamed}; using the {len(names)} in {candidate} "
                                                         f"(found {where}); pass --class-indices FILE for others")
            passed_over.append(f"{candidate} has {len(names)}")
    if num_classes == 1000:
        return ClassNames(imagenet_class_names(), "torchvision's ImageNet categories",
                          f"{unnamed}; using torchvision's ImageNet categories for its 1000 classes")
    found = f" ({'; '.join(passed_over)})" if passed_over else ""
    raise ClassNamesError(f"no class_indices.json with the weights' {num_classes or 'unknown number of'} classes "
                     f"beside them or in this folder{found}; pass --class-indices FILE")


def replace_own_names(own: list[str], explicit: str | None, model: str) -> ClassNames:
    """The names of a model that carries its own: those, or the --class-indices file's when one is given and
    its count fits (with a note when they differ); a UsageError when its count does not fit."""
    if not explicit:
        return ClassNames(own, model)
    names = read_class_names(explicit)
    shown = ", ".join(own[:10]) + (", ..." if len(own) > 10 else "")
    if len(names) != len(own):
        raise ClassNamesError(f"--class-indices {explicit} has {len(names)} class names but {model} has {len(own)} "
                         f"classes; leave it out to use the model's own ({shown})")
    note = None if names == own else f"using the class names of {explicit} instead of those {model} carries ({shown})"
    return ClassNames(names, explicit, note)
