"""How well the data check finds copies of real photos: recall on injected copies, pairs of different photos
taken for copies, and the precision of the check on a set holding both (docs/benchmarks.md, "Data checks").

    python -m benchmarks.duplicate_detection                                   # data/flower_sample (150 photos)
    python -m benchmarks.duplicate_detection --photos ~/flower_photos_mini    # any class-per-folder tree

Every photo gets a copy per transform (resized, re-saved as a low-quality JPEG, cropped by a few percent, and
resized and re-saved together), made in memory. Each method fingerprints the originals and the copies, and
each row of its table takes pictures within LIMIT bits for copies: recall is the share of copies found next to
their original; "other pairs" counts pairs of different originals taken for copies (same class / other
class); precision is over every pair found among the originals and all their copies together, where a pair
is right when both come from one original or from two originals listed in KNOWN_EDITS (pairs of the flower
photos that are edited versions of one picture: looked at, one by one). Methods: the check's (a DCT hash and
a difference hash, both within the limit, JPEGs decoded at reduced scale), each of the two hashes alone (from
a full decode), the average hash, and the imagehash library's phash when it is installed (not a requirement
of the project). Also prints each method's time per photo.
"""
import argparse
import io
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from effnet.data.class_folders import scan_class_folders
from effnet.data.duplicates import NEAR_BITS, close_pairs, dct_hash, difference_hash, fingerprint
from effnet.data.flower_photos import FLOWER_SAMPLE
from effnet.data.images import open_image, to_rgb

LIMITS = (8, 10, 12, 14, 16, 18, 20)
# Pairs of the flower photos (data/flower_sample and the 300-photo sample) that are one picture edited: colours,
# grey, a crop. A person looked at each; the check finds them, and rightly so.
KNOWN_EDITS = {frozenset(pair) for pair in (
    ("10466290366_cc72e33532.jpg", "10994032453_ac7f8d9e2e.jpg"),
    ("10993710036_2033222c91.jpg", "10993818044_4c19b86c82.jpg"),
    ("12406418663_af20dc225f_n.jpg", "12407768513_3440238148_n.jpg"),
    ("13279526615_a3b0059bec.jpg", "13342823005_16d3df58df_n.jpg"),
    ("10163955604_ae0b830975_n.jpg", "10164073235_f29931d91e.jpg"),
    ("12916135413_dafcf3089e_n.jpg", "12916441224_2ed63596f8_n.jpg"))}


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _resized(image: Image.Image, scale: float) -> Image.Image:
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)


def _cropped(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    """Cut the given fractions off each side."""
    width, height = image.size
    return image.crop((round(width * left), round(height * top), round(width * (1 - right)),
                       round(height * (1 - bottom))))


# name -> the copy's JPEG bytes, from the original picture
TRANSFORMS: dict[str, Callable[[Image.Image], bytes]] = {
    "resized to 50%": lambda image: _jpeg(_resized(image, 0.5)),
    "resized to 75%": lambda image: _jpeg(_resized(image, 0.75)),
    "JPEG quality 50": lambda image: _jpeg(image, 50),
    "JPEG quality 70": lambda image: _jpeg(image, 70),
    "cropped 3% each side": lambda image: _jpeg(_cropped(image, 0.03, 0.03, 0.03, 0.03)),
    "cropped 5% off two sides": lambda image: _jpeg(_cropped(image, 0.05, 0.05, 0, 0)),
    "cropped 5% each side": lambda image: _jpeg(_cropped(image, 0.05, 0.05, 0.05, 0.05)),
    "resized to 75%, JPEG quality 60": lambda image: _jpeg(_resized(image, 0.75), 60),
}


def _picture(source: str | bytes) -> Image.Image:
    with open_image(io.BytesIO(source) if isinstance(source, bytes) else source) as opened:
        return to_rgb(opened)


def _average_hash(image: Image.Image) -> int:
    grey = np.asarray(image.convert("L").resize((8, 8), Image.LANCZOS), dtype=np.float64)
    return int.from_bytes(np.packbits((grey > grey.mean()).ravel()).tobytes(), "big")


def _imagehash_phash() -> Callable[[str | bytes], int] | None:
    try:
        import imagehash
    except ImportError:
        return None

    def phash(source: str | bytes) -> int:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return int(str(imagehash.phash(image)), 16) << 64
    return phash


def methods() -> dict[str, Callable[[str | bytes], int]]:
    """name -> a function from a file's path or bytes to a 128-bit hash; a 64-bit hash is the first half, the
    second left 0, so that close_pairs compares it alone."""
    found = {
        "the check's (DCT and difference hash)": lambda source: fingerprint(source)[1],
        "DCT hash alone": lambda source: dct_hash(_picture(source).convert("L")) << 64,
        "difference hash alone": lambda source: difference_hash(_picture(source).convert("L")) << 64,
        "average hash alone": lambda source: _average_hash(_picture(source)) << 64,
    }
    library = _imagehash_phash()
    if library:
        found["imagehash.phash"] = library
    return found


def _fingerprint_bytes(method: Callable[[str | bytes], int], data: bytes, scratch: Path) -> int:
    """The check's own fingerprint reads a file: give it one."""
    scratch.write_bytes(data)
    return method(str(scratch))


def hash_everything(photos: list[str], copies: dict[str, list[bytes]], method: Callable, scratch: Path
                    ) -> tuple[list[int], dict[str, list[int]], float]:
    """(hashes of the originals, transform -> hashes of the copies, seconds per original)."""
    started = time.perf_counter()
    originals = [method(path) for path in photos]
    per_photo = (time.perf_counter() - started) / len(photos)
    copied = {name: [_fingerprint_bytes(method, data, scratch) for data in datas] for name, datas in copies.items()}
    return originals, copied, per_photo


def recall(originals: list[int], copies: list[int], limit: int) -> float:
    """Share of the copies found next to their original."""
    return float(np.mean([any(close_pairs([original], limit, [copy])) for original, copy in zip(originals, copies)]))


def _same_picture(photos: list[str], i: int, j: int) -> bool:
    return i == j or frozenset((os.path.basename(photos[i]), os.path.basename(photos[j]))) in KNOWN_EDITS


def precision(photos: list[str], originals: list[int], copied: dict[str, list[int]], limit: int) -> float:
    """Share of the pairs found among the originals and every copy that are one picture."""
    hashes = originals + [value for values in copied.values() for value in values]
    pairs = [(i % len(photos), j % len(photos)) for i, j, _ in close_pairs(hashes, limit)]
    return sum(_same_picture(photos, i, j) for i, j in pairs) / max(len(pairs), 1)


def method_table(name: str, originals: list[int], copied: dict[str, list[int]], photos: list[str]) -> str:
    lines = [f"\n### {name}\n", "| limit | " + " | ".join(f"recall: {t}" for t in copied)
             + " | other pairs (same class / other class) | precision |", "|---" * (len(copied) + 3) + "|"]
    classes = [os.path.basename(os.path.dirname(path)) for path in photos]
    for limit in LIMITS:
        recalls = " | ".join(f"{recall(originals, hashes, limit):.3f}" for hashes in copied.values())
        other = [(i, j) for i, j, _ in close_pairs(originals, limit) if not _same_picture(photos, i, j)]
        same = sum(classes[i] == classes[j] for i, j in other)
        lines.append(f"| {limit}{' (the check)' if limit == NEAR_BITS else ''} | {recalls} | {same} / "
                     f"{len(other) - same} | {precision(photos, originals, copied, limit):.3f} |")
    edits = [(photos[i], photos[j]) for i, j, _ in close_pairs(originals, NEAR_BITS) if _same_picture(photos, i, j)]
    lines.append(f"\nKNOWN_EDITS found at limit {NEAR_BITS}: {len(edits)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(FLOWER_SAMPLE), help="a class-per-folder tree of real photos "
                                                                   "(default data/flower_sample)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photos (a quick try)")
    args = parser.parse_args(argv)
    found = scan_class_folders(args.photos)
    entries = [(path, name) for name, paths in found.images.items() for path in paths][:args.limit]
    photos = [path for path, _ in entries]
    copies: dict[str, list[bytes]] = {name: [] for name in TRANSFORMS}
    for path in photos:
        with open_image(path) as opened:
            picture = to_rgb(opened)
        for name, transform in TRANSFORMS.items():
            copies[name].append(transform(picture))
    print(f"{len(photos)} photos of {args.photos}, {len(TRANSFORMS)} copies of each")
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"duplicate-detection-{os.getpid()}.jpg"
    speeds = []
    try:
        for name, method in methods().items():
            originals, copied, seconds = hash_everything(photos, copies, method, scratch)
            speeds.append(f"| {name} | {seconds * 1000:.2f} ms |")
            print(method_table(name, originals, copied, photos))
    finally:
        scratch.unlink(missing_ok=True)
    print("\n| method | time per original photo (one thread) |\n|---|---|\n" + "\n".join(speeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
