"""The train/validation (and test) split of a class-per-folder tree: DataSplit, made at random per class as the
tutorial's read_split_data does, or taken from a dataset's own train/ val/ test/ folders; saved as a run's
split.json and read back when it resumes. No PyTorch here."""
import os
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from effnet.command_line import UsageError
from effnet.data.class_folders import ClassFolders, presplit_folders, scan_class_folders
from effnet.data.images import IMAGE_EXTENSIONS

DEFAULT_VAL_RATE = 0.2  # the tutorial's share of each class held out for validation


@dataclass
class DataSplit:
    """Training, validation and (optionally) test images of a class-per-folder tree, with their labels."""

    root: str
    classes: list[str]
    train_paths: list[str] = field(default_factory=list)
    train_labels: list[int] = field(default_factory=list)
    val_paths: list[str] = field(default_factory=list)
    val_labels: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: reason" for each file left out
    test_paths: list[str] = field(default_factory=list)  # from a pre-split dataset's test/ folder
    test_labels: list[int] = field(default_factory=list)
    # (path, label, part, why) of each image --drop-duplicates took out of the split
    left_out: list[tuple[str, int, str, str]] = field(default_factory=list)

    def counts(self, labels: Sequence[int]) -> list[int]:
        counts = [0] * len(self.classes)
        for label in labels:
            counts[label] += 1
        return counts

    def describe(self) -> str:
        """'240 training and 60 validation images', or '..., 60 validation and 50 test images'."""
        train, val, test = len(self.train_paths), len(self.val_paths), len(self.test_paths)
        if test:
            return f"{train} training, {val} validation and {test} test images"
        return f"{train} training and {val} validation images"

    def parts(self) -> tuple[tuple[str, list[str], list[int]], ...]:
        """("train" | "val" | "test", paths, labels) for each part of the split."""
        return (("train", self.train_paths, self.train_labels), ("val", self.val_paths, self.val_labels),
                ("test", self.test_paths, self.test_labels))

    def images(self) -> list[tuple[str, str, str]]:
        """(path, class name, part) of every image of the split, and of those left out of it."""
        listed = [(path, self.classes[label], name) for name, paths, labels in self.parts()
                  for path, label in zip(paths, labels)]
        return listed + [(path, self.classes[label], part) for path, label, part, _ in self.left_out]

    def leave_out(self, reasons: Mapping[str, str]) -> None:
        """Take the images named in `reasons` (path -> why) out of the split, recording them in `left_out`."""
        for name, paths, labels in self.parts():
            pairs = list(zip(paths, labels))
            self.left_out += [(path, label, name, reasons[path]) for path, label in pairs if path in reasons]
            paths[:] = [path for path, _ in pairs if path not in reasons]
            labels[:] = [label for path, label in pairs if path not in reasons]

    def to_json(self) -> dict[str, Any]:
        """The split with paths relative to the data root, so a moved dataset still resumes."""
        saved: dict[str, Any] = {"root": os.path.abspath(self.root), "classes": self.classes}
        for name, paths, labels in self.parts():
            if name != "test" or paths:
                saved[name] = [[os.path.relpath(p, self.root), label] for p, label in zip(paths, labels)]
        if self.left_out:
            saved["left_out"] = [[os.path.relpath(path, self.root), label, part, why]
                                 for path, label, part, why in self.left_out]
        return saved

    @staticmethod
    def json_problem(saved: Any) -> str | None:
        """What is wrong with a loaded split.json (hand-edited or damaged), or None if from_json can read it."""
        if not isinstance(saved, dict) or not isinstance(saved.get("classes"), list):
            return "no list of 'classes'"
        classes = saved["classes"]
        if len(classes) < 2 or not all(isinstance(name, str) for name in classes):
            return "'classes' must name two or more classes"
        if not isinstance(saved.get("root", ""), str):
            return "'root' is not a folder name"
        for part in ("train", "val"):
            pairs = saved.get(part)
            if not isinstance(pairs, list) or not all(
                    isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
                    and type(pair[1]) is int and 0 <= pair[1] < len(classes) for pair in pairs):
                return f"'{part}' must list [image path, class index] pairs"
        left_out = saved.get("left_out", [])
        if not isinstance(left_out, list) or not all(
                isinstance(item, list) and len(item) == 4 and isinstance(item[0], str) and type(item[1]) is int
                and 0 <= item[1] < len(classes) and item[2] in ("train", "val", "test") and isinstance(item[3], str)
                for item in left_out):
            return "'left_out' must list [image path, class index, part, reason] entries"
        return None

    @classmethod
    def from_json(cls, saved: Mapping[str, Any], root: str) -> "DataSplit":
        split = cls(root=root, classes=list(saved["classes"]))
        for name, paths, labels in split.parts():
            for relative, label in saved.get(name, []):
                paths.append(os.path.join(root, relative))
                labels.append(int(label))
        split.left_out = [(os.path.join(root, relative), int(label), part, why)
                          for relative, label, part, why in saved.get("left_out", [])]
        missing = [p for p in split.train_paths + split.val_paths + split.test_paths if not os.path.isfile(p)]
        if missing:
            raise UsageError(f"{len(missing)} images of the saved split are gone from {root} "
                             f"(first: {missing[0]}); restore them or start a new run")
        return split


def _warner(report: bool) -> Callable[[str], None]:
    def warn(message: str) -> None:
        if report:
            print(f"warning: {message}", file=sys.stderr)
    return warn


def _check_data_root(root: str) -> None:
    if not os.path.isdir(root):
        raise UsageError(f"data path {root} does not exist or is not a folder; give a folder with one "
                         f"sub-folder of images per class via --data-path")


def _check_classes(classes: list[str], root: str) -> None:
    """A classifier needs two classes or more: refuse none, and refuse one (it would "learn" to always
    answer that class, with accuracy 1.0)."""
    if not classes:
        raise UsageError(f"data path {root} holds no class folders with images ({', '.join(IMAGE_EXTENSIONS)}); "
                         f"expected {root}/<class name>/<image files>, or train/ and val/ folders of those")
    if len(classes) == 1:
        raise UsageError(f"data path {root} holds images of one class only ({classes[0]}); a classifier "
                         f"needs two or more class folders, each with its images")


def _scan(root: str, warn: Callable[[str], None]) -> ClassFolders:
    """The class folders of `root`, warning about unreadable files and folders without images."""
    found = scan_class_folders(root)
    for class_dir in found.empty:
        warn(f"class folder {class_dir} holds no readable images; it is not a class")
    for line in found.skipped:
        warn(f"skipping unreadable image {line}")
    return found


def _random_split(split: DataSplit, found: ClassFolders, val_rate: float, seed: int,
                  warn: Callable[[str], None]) -> None:
    """Shuffle each class with `seed` on its own and hold out round(n * val_rate) of it (at least one of
    two or more images) for validation; the classes are appended to `split.classes`."""
    rng = random.Random(seed)
    for class_name, class_paths in found.images.items():
        paths = list(class_paths)
        label = len(split.classes)
        split.classes.append(class_name)
        rng.shuffle(paths)
        n_val = min(max(1, round(len(paths) * val_rate)), len(paths) - 1) if len(paths) >= 2 else 0
        if n_val == 0:
            warn(f"class {class_name} has a single image; it goes to training only")
        split.val_paths += paths[:n_val]
        split.val_labels += [label] * n_val
        split.train_paths += paths[n_val:]
        split.train_labels += [label] * (len(paths) - n_val)


def split_class_folders(root: str | os.PathLike, val_rate: float = DEFAULT_VAL_RATE, seed: int = 0,
                        report: bool = True) -> DataSplit:
    """Split a class-per-folder tree into training and validation images (what utils.read_split_data returns
    as the tutorial's four lists).

    Classes are the sub-folders of `root` (sorted; hidden ones ignored), images the files directly inside
    them with an image extension, in any letter case. Each class is shuffled with `seed` on its own, and
    round(n * val_rate) of its images, at least one when it has two or more, go to validation. Files whose
    header cannot be read (empty, truncated before the header, not an image) are left out and listed in
    `skipped`; deeper sub-folders and other files are ignored. Warnings go to stderr when `report`.
    """
    root = os.fspath(root)
    if not 0.0 < val_rate < 1.0:
        raise UsageError(f"--val-rate {val_rate} must be between 0 and 1 (exclusive)")
    _check_data_root(root)
    found = _scan(root, _warner(report))
    split = DataSplit(root=root, classes=[], skipped=found.skipped)
    _random_split(split, found, val_rate, seed, _warner(report))
    _check_classes(split.classes, root)
    return split


def read_presplit_data(root: str | os.PathLike, val_rate: float | None = None, seed: int = 0,
                       report: bool = True) -> DataSplit:
    """The split a pre-split dataset comes with: root/train/, root/val/ and root/test/ class folders.

    The classes are train/'s; val/ and test/ may hold any of them (a class they do not know is an error).
    Without val/, train/ is split at random as split_class_folders does (`val_rate`, default 0.2); with val/,
    `val_rate` must be None: the dataset's own validation set is used as it is.
    """
    root = os.fspath(root)
    _check_data_root(root)
    folders = presplit_folders(root)
    if folders is None:
        raise UsageError(f"{root} is not split into train/ and val/ (or test/) class folders")
    if "val" in folders and val_rate is not None:
        raise UsageError(f"--val-rate {val_rate}: {root} is split already (it has train/ and val/ folders), "
                         f"so its val/ images are the validation set; leave --val-rate out")
    warn = _warner(report)
    train = _scan(folders["train"], warn)
    split = DataSplit(root=root, classes=[], skipped=list(train.skipped))
    if "val" in folders:
        split.classes = train.classes
        for class_name, paths in train.images.items():
            split.train_paths += paths
            split.train_labels += [split.classes.index(class_name)] * len(paths)
    else:
        _random_split(split, train, DEFAULT_VAL_RATE if val_rate is None else val_rate, seed, warn)
    _check_classes(split.classes, folders["train"])
    for name, paths, labels in split.parts()[1:]:
        if name in folders:
            _add_presplit_part(split, folders[name], paths, labels, warn)
    return split


def _add_presplit_part(split: DataSplit, folder: str, paths: list[str], labels: list[int],
                       warn: Callable[[str], None]) -> None:
    found = _scan(folder, warn)
    unknown = [name for name in found.classes if name not in split.classes]
    if unknown:
        raise UsageError(f"{os.path.join(folder, unknown[0])}: class '{unknown[0]}' has no folder in "
                         f"{os.path.join(split.root, 'train')}; add its training images there or remove it")
    if not found.count:
        raise UsageError(f"{folder} holds no class folders with images; fill it, or remove it")
    split.skipped += found.skipped
    for class_name, class_paths in found.images.items():
        paths += class_paths
        labels += [split.classes.index(class_name)] * len(class_paths)


def read_data(root: str | os.PathLike, val_rate: float | None = None, seed: int = 0,
              report: bool = True) -> DataSplit:
    """A pre-split dataset's own split (read_presplit_data), else a random one (split_class_folders); `val_rate`
    None means the user did not choose one."""
    if os.path.isdir(root) and presplit_folders(root) is not None:
        return read_presplit_data(root, val_rate, seed, report)
    return split_class_folders(root, DEFAULT_VAL_RATE if val_rate is None else val_rate, seed, report)
