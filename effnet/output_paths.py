"""Where an output flag may write: the one rule behind every program's --csv, --json, --report, --output,
--output-dir, --save and --cam-dir, checked before any work starts (before a model loads, before training).

1. Never over an input of the same run, not even with --overwrite: a photo, a checkpoint, an export, a class
   file. Files are compared as files (device and inode, links followed), so a hard or symbolic link or
   another spelling of the path is recognised. Nor inside a folder the run scans for its inputs (train.py's
   data, evaluate.py's class folders; predict.py's folders, for names it would read as photos): the output
   would become an input of the next run.
   What any run or program reads back is an input in this sense too, whoever wrote it: in a run folder of
   train.py (a folder holding split.json) its split.json, data_check.json, class_indices.json, recipe.json,
   metrics.csv, duplicates.csv, report.html, checkpoints and exports (run_files.READ_BACK_NAMES), whether they
   exist yet or not; and every other file in a run folder belongs to that run, so no other output goes there.
   Only the program that writes a file for the run writes it there (export.py: the exports beside the
   checkpoint it exports).
   Elsewhere, a checkpoint or an export (.pth, .onnx, .xml, .bin) is replaced only by an export.
2. Never over an existing file the program did not write itself, unless --overwrite is given. What the
   programs write says so where it is cheap to read: figures in a PNG text chunk or JPEG comment, CSV
   tables by their fixed header, JSON files in a "generator" field, HTML pages in a generator meta tag, ONNX
   and OpenVINO exports in their metadata. A format without room for a mark (a PDF figure) is replaced only
   with --overwrite. --overwrite never lets a table, a JSON file, a page or an export replace a picture (a file
   whose name or first bytes say it is an image): only a figure replaces a picture.
3. A file where a file goes, a folder where a folder goes.

The modules that write a format give its mark (OutputKind); nothing here imports a program, PyTorch or
matplotlib.
"""
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from effnet.command_line import UsageError
from effnet.data.images import is_image_name
from effnet.run_files import MODEL_SUFFIXES, is_read_back, is_run_folder

SIGNATURE = "efficientnet-tutorial"  # in every mark below: what says "this project wrote the file"

Identity = tuple[int, int]
Recogniser = Callable[[str], bool]


def file_identity(path: str | os.PathLike) -> Identity | None:
    """(device, inode) of the file at `path`, links followed, or None where there is none: every name of one
    file (a hard link, a symbolic link, another spelling of the path) has the same."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return status.st_dev, status.st_ino


def generator_field(program: str) -> dict[str, str]:
    """The first field of the JSON files `program` writes: its mark."""
    return {"generator": f"{SIGNATURE} {program}"}


def html_generator_tag(program: str) -> str:
    """The generator meta tag of the HTML pages `program` writes: its mark, which tells a training run's report
    from evaluate.py's (a report of an earlier version names no program: replaced only with --overwrite)."""
    return f'<meta name="generator" content="{SIGNATURE} {program}">'


# ---------------------------------------------------------------------------------------------------------------
# Recognising a file the programs wrote


def _read_end(path: str, size: int, from_end: bool) -> bytes:
    try:
        with open(path, "rb") as file:
            if from_end:
                file.seek(max(0, os.fstat(file.fileno()).st_size - size))
            return file.read(size)
    except (OSError, ValueError):
        return b""


def marked_at_start(marker: str, size: int = 4096) -> Recogniser:
    """A file with `marker` in its first `size` bytes (a PNG text chunk, a JSON field, an HTML meta tag)."""
    return lambda path: marker.encode() in _read_end(path, size, from_end=False)


def marked_at_end(marker: str, size: int = 2**20) -> Recogniser:
    """A file with `marker` in its last `size` bytes: where ONNX and OpenVINO keep their metadata."""
    return lambda path: marker.encode() in _read_end(path, size, from_end=True)


def header_matches(pattern: str) -> Recogniser:
    """A text file whose first line is all of `pattern` (a regular expression): a CSV table's fixed header."""
    def recognise(path: str) -> bool:
        first = _read_end(path, 4096, from_end=False).split(b"\n", 1)[0].rstrip(b"\r")
        return re.fullmatch(pattern.encode(), first) is not None
    return recognise


@dataclass(frozen=True)
class OutputKind:
    """What a program writes under one flag, and how it tells a file it wrote before from anyone else's."""

    description: str  # "a CSV table of predict.py"
    recognise: Recogniser | None  # None: the format has no room for a mark
    unmarked_note: str = ""  # with `recognise` None: which of its formats do carry the mark
    scans_pass_over: bool = False  # the folder scans leave such files out (predict.py's marked figures)
    picture: bool = False  # a figure: it may replace a picture (with --overwrite), which nothing else may
    model: bool = False  # an export: it may replace a checkpoint or an export outside a run folder


# ---------------------------------------------------------------------------------------------------------------
# What a run reads


def _everything(relative: str) -> bool:
    return True


@dataclass
class RunInputs:
    """The files a run reads (by identity) and the folders it scans, each with which names in it it reads."""

    files: dict[Identity, tuple[str, str]] = field(default_factory=dict)  # identity -> (what, path)
    folders: dict[Identity, tuple[str, str, Callable[[str], bool]]] = field(default_factory=dict)
    own_outputs: set[str] = field(default_factory=set)  # real paths of the run files this program writes

    def add_own_output(self, path: str | os.PathLike) -> None:
        """A file of a run folder that this program writes for that run (export.py's export of the checkpoint
        beside it), which it may replace where other outputs may not."""
        self.own_outputs.add(os.path.realpath(path))

    def writes_for_run(self, path: str | os.PathLike) -> bool:
        return os.path.realpath(path) in self.own_outputs

    def add_file(self, path: str | os.PathLike | None, what: str) -> None:
        """`what` names the kind of input, as in 'the photo'; a path that does not exist is left out."""
        identity = file_identity(path) if path else None
        if identity is not None and os.path.isfile(path):
            self.files.setdefault(identity, (what, os.fspath(path)))

    def add_folder(self, path: str | os.PathLike, what: str, reads: Callable[[str], bool] = _everything) -> None:
        """A folder the run scans; `reads` says whether a path inside it (relative to it) would be read."""
        identity = file_identity(path)
        if identity is not None and os.path.isdir(path):
            self.folders.setdefault(identity, (what, os.fspath(path), reads))

    def input_at(self, path: str) -> str | None:
        """The input file that `path` names, in words ('the photo a.jpg (b.jpg is another name of it)'), or None."""
        identity = file_identity(path)
        if identity not in self.files or not os.path.isfile(path):
            return None
        what, name = self.files[identity]
        return f"{what} {name}" + (f" ({path} is another name of it)" if name != path else "")

    def scanned_folder_at(self, path: str) -> str | None:
        """Where `path` is among the scanned folders, in words ('lies in the data folder photos'), when it is one
        of them or lies in one where the scan would read it; else None."""
        real = Path(os.path.realpath(path))
        for folder in (real, *real.parents):
            found = self.folders.get(file_identity(folder)) if folder.is_dir() else None
            if found and found[2](os.path.relpath(real, folder)):
                what, name, _ = found
                return f"{'is' if folder == real else 'lies in'} {what} {name}"
        return None


# ---------------------------------------------------------------------------------------------------------------
# The checks


def _check_place(flag: str, path: str) -> None:
    """The nearest existing folder above `path` must be a folder, not a file."""
    above = Path(os.path.abspath(path)).parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise UsageError(f"{flag} {path}: {above} is a file, not a folder; choose another {flag}")


def _check_outside_scans(flag: str, path: str, inputs: RunInputs) -> None:
    scanned = inputs.scanned_folder_at(path)
    if scanned:
        raise UsageError(f"{flag} {path} {scanned}, which this run reads its inputs from (and the next run would "
                         f"read what is written there); choose a place outside it")


def run_folder_of(path: str) -> str | None:
    """The run folder `path` lies in (as spelled, or where a link leads), or None."""
    folders = dict.fromkeys(os.path.dirname(os.path.abspath(name)) for name in (path, os.path.realpath(path)))
    return next((folder for folder in folders if is_run_folder(folder)), None)


def _check_run_files(flag: str, path: str, inputs: RunInputs, kind: OutputKind) -> None:
    """What a run or a program reads back, and any file already in a run folder, is never replaced (rule 1)."""
    if inputs.writes_for_run(path):
        return
    run, name = run_folder_of(path), os.path.basename(path)
    never = f"never replaced by another output, not even with --overwrite: choose another {flag}"
    if run is not None and is_read_back(name):
        raise UsageError(f"{flag} {path}: {name} is a file of the run folder {run}, which its run and the "
                         f"programs read back (train.py --resume, evaluate.py, export.py, predict.py); it is {never}")
    if run is not None and os.path.lexists(path):
        raise UsageError(f"{flag} {path} belongs to the run in {run} (a folder holding split.json is a run folder "
                         f"of train.py, and every file in it is that run's); it is {never}")
    if run is not None:  # a new file there would be the run's too, and could then not be written again
        raise UsageError(f"{flag} {path} lies in the run folder {run} (it holds split.json), and every file in it "
                         f"belongs to that run; choose a place outside it for {flag}")
    if run is None and not kind.model and os.path.lexists(path) and name.lower().endswith(MODEL_SUFFIXES):
        raise UsageError(f"{flag} {path} is a model file (a checkpoint or an export), which the programs read; "
                         f"it is {never}")


_IMAGE_STARTS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\0", b"MM\0*")
_BITMAP_HEADER_SIZES = (12, 40, 52, 56, 64, 108, 124)  # what follows "BM" in a .bmp: the size of its header


def looks_like_image(path: str) -> bool:
    """Whether the first bytes of the file at `path` are those of a JPEG, PNG, GIF, TIFF, WebP or BMP image."""
    start = _read_end(path, 32, from_end=False)
    if start.startswith(_IMAGE_STARTS) or (start[:4] == b"RIFF" and start[8:12] == b"WEBP"):
        return True
    return start[:2] == b"BM" and len(start) >= 18 and int.from_bytes(start[14:18], "little") in _BITMAP_HEADER_SIZES


def _check_not_a_picture(flag: str, path: str, kind: OutputKind) -> None:
    """A picture (a photo that is not among the inputs, most likely) is replaced by nothing but a figure."""
    if kind.picture or (kind.recognise is not None and kind.recognise(path)):  # a figure, or an earlier output
        return
    by = "name" if is_image_name(os.path.basename(path)) else "content" if looks_like_image(path) else None
    if by:
        raise UsageError(f"{path} exists and is not {kind.description}: it is a picture (its {by} says so), which "
                         f"{flag} never replaces, not even with --overwrite: choose another {flag}")


def check_file_target(flag: str, path: str, inputs: RunInputs, kind: OutputKind, overwrite: bool) -> None:
    """UsageError unless the file `path`, named by `flag` (or made from what it names), may be written."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    _check_place(flag, path)
    read = inputs.input_at(path)
    if read:
        raise UsageError(f"{flag} {path} would overwrite {read}; an input is never replaced, not even with "
                         f"--overwrite: choose another {flag}")
    _check_run_files(flag, path, inputs, kind)
    if not kind.scans_pass_over:
        _check_outside_scans(flag, path, inputs)
    if not os.path.lexists(path):
        return
    _check_not_a_picture(flag, path, kind)
    if overwrite:
        return
    if kind.recognise is None:
        note = f" {kind.unmarked_note}" if kind.unmarked_note else ""
        raise UsageError(f"{path} exists and may not be {kind.description}{note}; pass --overwrite to replace it, "
                         f"or choose another {flag}")
    if not kind.recognise(path):
        raise UsageError(f"{path} exists and is not {kind.description}; pass --overwrite to replace it, or "
                         f"choose another {flag}")


def check_folder_target(flag: str, path: str, inputs: RunInputs, contents: Mapping[str, OutputKind],
                        overwrite: bool) -> None:
    """UsageError unless the folder `path` (created if missing) may receive the files named in `contents`."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a file; give a folder (it is created if missing)")
    _check_place(flag, path)
    if is_run_folder(path):
        raise UsageError(f"{flag} {path} is a run folder of train.py (it holds split.json), and its files belong to "
                         f"that run; choose another {flag}")
    _check_outside_scans(flag, path, inputs)
    for name, kind in contents.items():
        check_file_target(flag, os.path.join(path, name), inputs, kind, overwrite)


def check_distinct(targets: Iterable[tuple[str, str]]) -> None:
    """UsageError when two output flags name the same file: the second would replace the first."""
    seen: dict[str, str] = {}
    for flag, path in targets:
        key = os.path.realpath(path)
        if key in seen:
            raise UsageError(f"{flag} {path} is the file {seen[key]} names too; give each output its own name")
        seen[key] = flag
