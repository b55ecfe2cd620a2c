"""The flower photos: download the archive (sha256-checked) and extract it without path escapes."""
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from effnet.command_line import UsageError
from effnet.download import download_file

FLOWER_PHOTOS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
FLOWER_PHOTOS_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"
FLOWER_PHOTOS_BYTES = 228_813_984
FLOWER_PHOTOS_URL_ENV = "FLOWER_PHOTOS_URL"  # a mirror of the archive (same bytes) for users who need one
# 150 of the photos (30 per class, CC-BY 2.0, credits in its ATTRIBUTION.txt) ship with the project: for a first
# try without any download, and for the tests and benchmarks
FLOWER_SAMPLE = Path(__file__).resolve().parents[2] / "data" / "flower_sample"  # ships in the repository
QUICK_TRY = "python train.py --data-path data/flower_sample --weights none --image-size 96 --epochs 30 --recipe modern"

def _check_archive_member(member: tarfile.TarInfo, target: Path) -> None:
    """Refuse members that would land outside `target` or are not plain files / folders."""
    destination = (target / member.name).resolve()
    if not destination.is_relative_to(target.resolve()) or os.path.isabs(member.name):
        raise UsageError(f"archive member {member.name!r} would be written outside {target}; refusing the archive")
    if not (member.isfile() or member.isdir()):
        raise UsageError(f"archive member {member.name!r} is a link or device; refusing the archive")


def extract_tar_safely(archive: str | os.PathLike, target: str | os.PathLike) -> None:
    """Extract a .tgz into `target`, refusing path traversal, links and devices.

    Extraction happens in a temporary folder beside `target` that is renamed into place at the end, so an
    interrupted extraction never leaves a half-filled dataset that looks complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_archive_member(member, staging)
            # Python's own "data" filter, where this Python has it, is a second line of defence
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staging, members=members, **safe)
        staging.rename(target)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise UsageError(f"could not extract {archive} ({error}); delete it and try again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and those above it that do not exist yet, innermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove the `folders` (innermost first) that are empty, up to the first that is not."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (something else is there now), or gone: leave it and those above
            return


def ensure_flower_photos(data_path: str | os.PathLike, url: str | None = None) -> None:
    """Download and unpack the flower photos so that `data_path` (…/flower_photos) exists.

    The archive (228,813,984 bytes) is checked against its sha256 before it is opened.
    """
    data_path = Path(data_path)
    if data_path.is_dir():
        return
    url = url or os.environ.get(FLOWER_PHOTOS_URL_ENV) or FLOWER_PHOTOS_URL
    archive = data_path.parent / "flower_photos.tgz"
    print(f"{data_path} is missing: downloading the flower photos ({FLOWER_PHOTOS_BYTES / 1e6:.0f} MB) "
          f"from {url}", file=sys.stderr)
    created = missing_folders(archive.parent)  # the download makes them: a failed one must not leave them empty
    try:
        download_file(url, archive, FLOWER_PHOTOS_SHA256)
    except Exception as error:
        remove_if_empty(created)
        raise UsageError(f"{error}; then unpack it with 'tar -xzf {archive} -C {data_path.parent}', "
                         f"or point --data-path at your own class-per-folder images (with --weights none where the "
                         f"ImageNet weights cannot be downloaded either); to try the project without any download, "
                         f"train on the photos that ship with it: {QUICK_TRY}") from None
    extracted = data_path.parent / ".flower_photos_extracted"
    extract_tar_safely(archive, extracted)
    inner = extracted / data_path.name  # the archive holds a single flower_photos/ folder
    (inner if inner.is_dir() else extracted).rename(data_path)
    shutil.rmtree(extracted, ignore_errors=True)
    archive.unlink()
