"""Class-per-folder image trees on disk: the classes and images of a folder, and the pre-split layout.

A class-per-folder tree is ROOT/<class name>/<image files>: classes are the sub-folders (sorted, hidden ones
ignored), images the files directly inside them with an image extension in any letter case. A pre-split
dataset holds such trees in ROOT/train/ and ROOT/val/ and/or ROOT/test/, the common layout of public
datasets. No PyTorch here: evaluate.py lists its folders with this before any model is loaded.
"""
import os
from dataclasses import dataclass, field

from effnet.data.images import check_image_header, is_image_name

SPLIT_FOLDERS = ("train", "val", "test")


@dataclass
class ClassFolders:
    """The classes of one class-per-folder tree and their images."""

    root: str
    images: dict[str, list[str]] = field(default_factory=dict)  # class name -> image paths, sorted
    skipped: list[str] = field(default_factory=list)  # "path: reason" for each file whose header is unreadable
    empty: list[str] = field(default_factory=list)  # class folders without a (readable) image
    loose_images: int = 0  # image files directly in root, outside any class folder

    @property
    def classes(self) -> list[str]:
        return list(self.images)

    @property
    def count(self) -> int:
        return sum(len(paths) for paths in self.images.values())


def _is(entry: os.DirEntry, kind: str) -> bool:
    """entry.is_dir() or entry.is_file(), False for a symbolic link that loops (which raises instead)."""
    try:
        return entry.is_dir() if kind == "folder" else entry.is_file()
    except OSError:
        return False


def subfolders(root: str) -> list[str]:
    """Names of the visible sub-folders of `root`, sorted."""
    return sorted(e.name for e in os.scandir(root) if _is(e, "folder") and not e.name.startswith("."))


def image_names(folder: str) -> list[str]:
    """Names of the image files directly in `folder`, sorted; a symbolic link with an image name that leads
    nowhere (a missing file, a loop) is listed too, so that it is reported as unreadable, not passed over."""
    return sorted(e.name for e in os.scandir(folder)
                  if is_image_name(e.name) and (_is(e, "file") or e.is_symlink() and not _is(e, "folder")))


def scan_class_folders(root: str | os.PathLike, check_headers: bool = True) -> ClassFolders:
    """The class folders of an existing folder `root` and the images directly inside each.

    With `check_headers`, a file whose header cannot be read (empty, truncated, not an image) is left out
    and listed in `skipped`; without, every file with an image name is listed (and fails when decoded).
    """
    root = os.fspath(root)
    found = ClassFolders(root)
    found.loose_images = len(image_names(root))
    for class_name in subfolders(root):
        class_dir = os.path.join(root, class_name)
        paths = []
        for path in (os.path.join(class_dir, name) for name in image_names(class_dir)):
            problem = check_image_header(path) if check_headers else None
            if problem:
                found.skipped.append(f"{path}: {problem}")
            else:
                paths.append(path)
        if paths:
            found.images[class_name] = paths
        else:
            found.empty.append(class_dir)
    return found


def presplit_folders(root: str | os.PathLike) -> dict[str, str] | None:
    """{"train": ..., "val": ..., "test": ...} (those present) when `root` is split already: it holds a
    train/ folder of class folders and a val/ or test/ folder beside it; else None."""
    root = os.fspath(root)
    present = {name: os.path.join(root, name) for name in SPLIT_FOLDERS if os.path.isdir(os.path.join(root, name))}
    if "train" not in present or len(present) < 2 or not subfolders(present["train"]):
        return None
    return present
