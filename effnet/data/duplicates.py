"""Copies among a data set's photos: byte-identical files, near-duplicates (a copy resized, recompressed or
cropped by a few percent), copies in two classes (a label conflict) and copies on both sides of the
train/validation/test split (leakage, which flatters the validation score).

Each photo gets two fingerprints from one read of its file: the sha256 of its bytes (exact copies) and a
128-bit picture hash (near copies), two 64-bit hashes of its grey thumbnail: a DCT hash (the signs of the
8 x 8 lowest frequencies of the 32 x 32 thumbnail's discrete cosine transform against their median, the
classic "pHash") and a difference hash (whether each pixel of a 9 x 8 thumbnail is brighter than its left-hand
neighbour). Two photos are near-duplicates when both halves differ in at most NEAR_BITS bits: either hash
alone, loose enough to catch a copy cropped by a few percent, pairs different photos of one kind of flower;
together they do not (docs/benchmarks.md, "Data checks", has the measurements). A JPEG is decoded at 1/2 to 1/8
scale inside the decoder, as the thumbnail needs no more. Hashes are compared a block of photos at a time
against the whole set, so memory stays bounded whatever the number of photos (no matrix of all pairs).
No PyTorch here: evaluate.py uses it too.
"""
import hashlib
import io
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from effnet.atomic_files import write_csv
from effnet.data.images import open_image, reduce_jpeg_decode, to_rgb
from effnet.output_paths import generator_field

METHOD = "sha256 + dct hash 64 + difference hash 64, v1"  # fingerprints of another method are not reused
NEAR_BITS = 14  # the most bits of 64 in which each of the two hashes may differ; docs/benchmarks.md ("Data checks")
HASH_SIDE, FREQUENCIES = 32, 8
PAIR_BLOCK = 1 << 21  # picture hashes compared at once (32 MiB of 64-bit words), whatever the size of the set
KEEP_FIRST = ("test", "val", "train")  # the copy --drop-duplicates keeps: a held-out one, so test sets stay as given
DUPLICATE_COLUMNS = ("kind", "distance", "images", "paths", "classes", "splits", "label_conflict", "leakage")
SEPARATOR = " | "  # between the members of a group in one CSV cell
MEMBERS_SHOWN = 5  # photos named per group in the printout (a group may hold thousands); the CSV has them all
DATA_CHECK = "data_check.json"  # a run's fingerprints of its images: --resume and evaluate.py reuse them

# The cosine basis of the lowest FREQUENCIES of a HASH_SIDE-point DCT-II: low = basis @ pixels @ basis.T
_BASIS = np.cos(np.pi * np.outer(np.arange(FREQUENCIES), 2 * np.arange(HASH_SIDE) + 1) / (2 * HASH_SIDE))
_BYTE_BITS = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Fingerprints


def _bits(values: np.ndarray) -> int:
    return int.from_bytes(np.packbits(values.ravel()).tobytes(), "big")


def dct_hash(grey: Image.Image) -> int:
    """64 bits: which of the 8 x 8 lowest DCT frequencies of the 32 x 32 thumbnail lie above their median."""
    pixels = np.asarray(grey.resize((HASH_SIDE, HASH_SIDE), Image.LANCZOS), dtype=np.float64)
    low = _BASIS @ pixels @ _BASIS.T
    return _bits(low > np.median(low))


def difference_hash(grey: Image.Image) -> int:
    """64 bits: whether each pixel of the 9 x 8 thumbnail is brighter than the one to its left."""
    return _bits(np.diff(np.asarray(grey.resize((9, 8), Image.LANCZOS), dtype=np.int16), axis=1) > 0)


def picture_hash(image: Image.Image) -> int:
    """128 bits: the DCT hash, then the difference hash, of the picture in grey."""
    grey = image.convert("L")
    return dct_hash(grey) << 64 | difference_hash(grey)


def _halves(hashes: Sequence[int]) -> np.ndarray:
    """(N, 2) 64-bit words: the two hashes of each 128-bit picture hash."""
    return np.array([(value >> 64, value & (2**64 - 1)) for value in hashes], dtype=np.uint64).reshape(-1, 2)


def fingerprint(path: str) -> tuple[str, int]:
    """(sha256 of the file's bytes, picture_hash of its picture), from one read of the file."""
    with open(path, "rb") as file:
        data = file.read()
    with open_image(io.BytesIO(data)) as opened:
        reduce_jpeg_decode(opened, min(opened.size) / HASH_SIDE)  # the thumbnail needs no more pixels
        image = to_rgb(opened)
    return hashlib.sha256(data).hexdigest(), picture_hash(image)


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each 64-bit word (numpy 2's bitwise_count, or a byte table where numpy is older)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    return _BYTE_BITS[np.ascontiguousarray(values).view(np.uint8)].reshape(values.shape + (8,)).sum(-1, np.uint8)


def close_pairs(hashes: Sequence[int], limit: int = NEAR_BITS,
                others: Sequence[int] | None = None) -> Iterator[tuple[int, int, int]]:
    """(i, j, bits) for the pairs of 128-bit picture hashes whose two halves each differ in at most `limit`
    bits (`bits`: how many differ in all): i < j within `hashes`, or i in `hashes` and j in `others`. A block
    of rows at a time against all columns, PAIR_BLOCK comparisons at most."""
    rows_all = _halves(hashes)
    columns = rows_all if others is None else _halves(others)
    step = max(1, PAIR_BLOCK // max(len(columns), 1))
    for start in range(0, len(rows_all), step):
        block = rows_all[start:start + step]
        first = start if others is None else 0  # within one set: only the pairs to the right of the diagonal
        distances = _popcount(block[:, None, :] ^ columns[None, first:, :])
        close = (distances <= limit).all(axis=2)
        if others is None:
            close &= np.arange(distances.shape[1])[None, :] > np.arange(len(block))[:, None]
        for row, column in zip(*np.nonzero(close)):
            yield start + int(row), first + int(column), int(distances[row, column].sum())


# ---------------------------------------------------------------------------------------------------------------
# The check


@dataclass
class CheckedImage:
    """One photo of the data set: where it sits in the split, and its fingerprints."""

    path: str
    class_name: str
    part: str  # "train", "val" or "test"
    size: int = -1
    mtime_ns: int = -1
    content: str = ""  # sha256 of the file
    phash: int | None = None  # picture_hash
    error: str | None = None  # why it could not be read


@dataclass
class CopyGroup:
    """Photos that are copies of one another: identical files, or pictures whose hashes are close (directly or
    through another member)."""

    members: list[CheckedImage]
    distance: int  # the most bits of the picture hashes in which two members differ; 0: the same picture

    @property
    def kind(self) -> str:
        return "exact" if len({member.content for member in self.members}) == 1 else "near"

    @property
    def classes(self) -> list[str]:
        return sorted({member.class_name for member in self.members})

    @property
    def parts(self) -> list[str]:
        return [part for part in KEEP_FIRST[::-1] if any(member.part == part for member in self.members)]


@dataclass
class DataCheck:
    """The photos checked, the groups of copies among them, and what the check cost."""

    images: list[CheckedImage]
    groups: list[CopyGroup]
    seconds: float = 0.0
    reused: int = 0  # fingerprints taken from an earlier check of the same files
    skipped: int = 0  # files the scan of the class folders left out as unreadable (each with its warning)
    dropped: dict[str, str] = field(default_factory=dict)  # path -> why, for the photos the run left out

    @property
    def unreadable(self) -> list[CheckedImage]:
        return [image for image in self.images if image.error is not None]

    def worst_first(self) -> list[CopyGroup]:
        """The groups, those across classes first, then those across train/val/test, then by path."""
        return sorted(self.groups, key=lambda group: (-len(group.classes), -len(group.parts), group.members[0].path))

    def summary(self) -> str:
        """One line: the groups of each kind of copy and the photos in them (a group of 2,000 copies is one
        group of 2,000 photos), and every unreadable file, warned about by the scan or by the check."""
        def kind(name: str, groups: list[CopyGroup]) -> str:
            photos = sum(len(group.members) for group in groups)
            return f"{_count(len(groups), 'group')} of {name} ({_count(photos, 'image')})"

        exact = [group for group in self.groups if group.kind == "exact"]
        near = [group for group in self.groups if group.kind != "exact"]
        conflicts = sum(len(group.classes) > 1 for group in self.groups)
        leaks = sum(len(group.parts) > 1 for group in self.groups)
        reused = f", fingerprints of {self.reused} kept from data_check.json" if self.reused else ""
        unreadable = len(self.unreadable) + self.skipped
        return (f"data check of {len(self.images) + self.skipped} images ({self.seconds:.1f} s{reused}): "
                f"{kind('exact copies', exact)}, {kind('near-duplicates', near)}; of these, {conflicts} across "
                f"classes, {leaks} across train/val/test{f'; {unreadable} could not be read' if unreadable else ''}")

    def rows(self) -> list[dict[str, Any]]:
        """duplicates.csv: one row per group of copies."""
        return [dict(zip(DUPLICATE_COLUMNS, (
            group.kind, group.distance, len(group.members), SEPARATOR.join(m.path for m in group.members),
            SEPARATOR.join(m.class_name for m in group.members), SEPARATOR.join(m.part for m in group.members),
            "yes" if len(group.classes) > 1 else "no", "yes" if len(group.parts) > 1 else "no")))
            for group in self.groups]

    def left_out(self, root: str) -> dict[str, str]:
        """What --drop-duplicates leaves out, path -> why: every photo of a group that spans classes (its label
        is in doubt), and all but one of any other group (a held-out copy stays before a training one)."""
        reasons = {}
        for group in self.groups:
            if len(group.classes) > 1:
                for member in group.members:
                    reasons[member.path] = (f"{group.kind} copies in classes {', '.join(group.classes)}: the "
                                            f"label is in doubt")
                continue
            kept = min(group.members, key=lambda member: (KEEP_FIRST.index(member.part), member.path))
            for member in group.members:
                if member is not kept:
                    kind = "exact" if member.content == kept.content else "near"
                    reasons[member.path] = f"{kind} copy of {os.path.relpath(kept.path, root)} ({kept.part}), kept"
        return reasons

    def to_json(self, root: str) -> dict[str, Any]:
        """data_check.json: every photo's fingerprints, with what tells whether its file has changed since."""
        return {**generator_field("train.py"), "method": METHOD, "root": os.path.abspath(root),
                "images": [[os.path.relpath(image.path, root), image.size, image.mtime_ns, image.content,
                            None if image.phash is None else f"{image.phash:032x}", image.error]
                           for image in self.images]}


Fingerprints = dict[tuple[str, int, int], tuple[str, int | None, str | None]]


def saved_fingerprints(saved: Any) -> Fingerprints:
    """(relative path, size, mtime) -> (sha256, hash, error) from a data_check.json; {} when it is of another
    method, damaged or hand-edited wrongly (the photos are then fingerprinted again)."""
    if not isinstance(saved, dict) or saved.get("method") != METHOD or not isinstance(saved.get("images"), list):
        return {}
    known: Fingerprints = {}
    try:
        for relative, size, mtime_ns, content, phash, error in saved["images"]:
            known[(str(relative), int(size), int(mtime_ns))] = (
                str(content), None if phash is None else int(phash, 16), None if error is None else str(error))
    except (TypeError, ValueError):
        return {}
    return known


def read_saved_fingerprints(path: str | os.PathLike) -> Fingerprints:
    """saved_fingerprints of the data_check.json at `path`; {} when there is none or it cannot be read."""
    try:
        with open(path, "rb") as file:
            return saved_fingerprints(json.load(file))
    except (OSError, ValueError):
        return {}


def _fingerprint_or_error(path: str) -> tuple[str, int | None, str | None]:
    try:
        return (*fingerprint(path), None)
    except Exception as error:  # a broken file is reported and left out of the check, never a traceback
        return "", None, f"{type(error).__name__}: {error}"


def _stat(image: CheckedImage) -> CheckedImage:
    try:
        status = os.stat(image.path)
        image.size, image.mtime_ns = status.st_size, status.st_mtime_ns
    except OSError as error:
        image.error = error.strerror or str(error)
    return image


def fingerprint_images(entries: Iterable[tuple[str, str, str]], root: str,
                       known: Fingerprints | None = None) -> tuple[list[CheckedImage], int]:
    """(the (path, class name, part) photos with their fingerprints, how many were `known`). Known
    fingerprints (from an earlier check, by path relative to `root`, size and mtime) are reused for the files
    that have not changed since; the others are computed in a few threads."""
    known = known or {}
    images = [_stat(CheckedImage(path, class_name, part)) for path, class_name, part in entries]
    todo, reused = [], 0
    for image in images:
        found = known.get((os.path.relpath(image.path, root), image.size, image.mtime_ns))
        if image.error is None and found is not None:
            (image.content, image.phash, image.error), reused = found, reused + 1
        elif image.error is None:
            todo.append(image)
    pool = ThreadPoolExecutor(min(4, os.cpu_count() or 1))  # decoding releases the GIL: threads use every core
    try:
        for image, (content, phash, error) in zip(todo, pool.map(_fingerprint_or_error, [i.path for i in todo])):
            image.content, image.phash, image.error = content, phash, error
    finally:  # on Ctrl-C, the photos not yet begun are not fingerprinted first
        pool.shutdown(cancel_futures=True)
    return images, reused


def check_images(entries: Iterable[tuple[str, str, str]], root: str, known: Fingerprints | None = None,
                 limit: int = NEAR_BITS) -> DataCheck:
    """Fingerprint (path, class name, part) photos (fingerprint_images) and group their copies."""
    started = time.perf_counter()
    images, reused = fingerprint_images(entries, root, known)
    return DataCheck(images, find_groups(images, limit), time.perf_counter() - started, reused)


def find_groups(images: Sequence[CheckedImage], limit: int = NEAR_BITS) -> list[CopyGroup]:
    """Groups of copies: identical files, joined with the photos whose picture hashes are close (close_pairs)."""
    parent = list(range(len(images)))

    def root_of(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    first_of_content: dict[str, int] = {}
    distinct = []  # one photo per distinct file content: only those need comparing
    for index, image in enumerate(images):
        if image.error is None:
            first = first_of_content.setdefault(image.content, index)
            if first == index:
                distinct.append(index)
            else:
                parent[root_of(index)] = root_of(first)
    for i, j, _ in close_pairs([images[index].phash for index in distinct], limit):
        parent[root_of(distinct[i])] = root_of(distinct[j])
    members: dict[int, list[CheckedImage]] = {}
    for index, image in enumerate(images):
        if image.error is None:
            members.setdefault(root_of(index), []).append(image)
    return [CopyGroup(group, max((a.phash ^ b.phash).bit_count() for a in group for b in group))
            for group in members.values() if len(group) > 1]


def write_duplicates_csv(check: DataCheck, path: str | os.PathLike) -> None:
    """duplicates.csv: the header even when there are no copies, so that an empty table says so."""
    write_csv(path, check.rows(), DUPLICATE_COLUMNS)


def describe_groups(check: DataCheck, limit: int = 20, where: str = "") -> list[str]:
    """Lines naming the copies, largest conflicts first, at most `limit` groups (and how many more there are) and
    MEMBERS_SHOWN photos of each: a line per group that a terminal can show. `where`: the CSV that lists them
    all, if one is written."""
    listed = f"all in {where}" if where else "--check-data FILE.csv lists them all"
    lines = []
    for group in check.worst_first()[:limit]:
        members = SEPARATOR.join(f"{m.path} ({m.class_name}, {m.part})" for m in group.members[:MEMBERS_SHOWN])
        more = len(group.members) - MEMBERS_SHOWN
        lines.append(f"{group.kind} (distance {group.distance}), {len(group.members)} images: {members}"
                     + (f" ... and {more} more ({listed})" if more > 0 else ""))
    if len(check.groups) > limit:
        lines.append(f"... and {len(check.groups) - limit} more groups ({listed})")
    return lines


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def copies_of_training_photos(run_dir: str | os.PathLike, photos: Sequence[str]) -> list[tuple[str, str, int]]:
    """(photo, training photo, bits) for each of `photos` that is a copy of a photo the run in `run_dir` trained
    on (its split.json lists them; the fingerprints of its data_check.json are reused where the files are
    unchanged); [] when `run_dir` is not a run folder. `bits` is 0 for the same picture."""
    try:
        with open(os.path.join(run_dir, "split.json"), "rb") as file:
            split = json.load(file)
        root = split["root"]
        training = [(os.path.join(root, relative), "", "train") for relative, _ in split["train"]]
    except (OSError, ValueError, KeyError, TypeError):  # no run folder, or a damaged one: nothing to compare with
        return []
    trained, _ = fingerprint_images(training, root, read_saved_fingerprints(os.path.join(run_dir, DATA_CHECK)))
    checked, _ = fingerprint_images(((photo, "", "") for photo in photos), os.sep)
    trained = [image for image in trained if image.error is None]
    checked = [image for image in checked if image.error is None]
    found: dict[str, tuple[str, str, int]] = {}
    for i, j, bits in close_pairs([image.phash for image in checked], NEAR_BITS, [image.phash for image in trained]):
        if checked[i].path not in found or bits < found[checked[i].path][2]:
            found[checked[i].path] = (checked[i].path, trained[j].path, bits)
    return list(found.values())
