"""Fetch a file over HTTP(S) or file:// with a progress bar on a terminal, checking its sha256, writing it
atomically."""
import hashlib
import os
import sys
from pathlib import Path


class DownloadError(RuntimeError):
    """A download failed; the message says what to fetch by hand and where to put it."""


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, dst: str | os.PathLike, sha256_prefix: str, progress: bool | None = None) -> Path:
    """Download ``url`` to ``dst`` unless it is already there (and intact); return ``dst``. A progress bar is drawn
    on stderr when ``progress`` says so (default: when stderr is a terminal; in a log file it would be a line of
    redrawn bars).

    The bytes go to a temporary file beside ``dst`` and are moved into place only after the sha256 of the
    whole file starts with ``sha256_prefix``, so an interrupted or tampered download never leaves a file
    that looks complete.
    """
    dst = Path(dst)
    if dst.is_file():
        if not sha256_of(dst).startswith(sha256_prefix):
            raise DownloadError(f"{dst} is there but is not the expected file (its sha256 does not start with "
                                f"{sha256_prefix}); delete it and try again, or fetch {url} by hand")
        return dst
    # here, not at the top: sha256_of serves the ONNX path of predict.py, which must start fast
    import http.client
    import urllib.error

    import torch.hub

    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        # torch.hub's downloader streams to '<dst>.<uuid>.partial', hashes as it goes and renames at the end.
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=sha256_prefix,
                                       progress=sys.stderr.isatty() if progress is None else progress)
    except RuntimeError as error:  # raised for a hash mismatch; the partial file is already removed
        raise DownloadError(
            f"{url} arrived corrupted or altered ({error}); nothing was saved. Try again, or fetch it by hand "
            f"and save it as {dst}"
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise DownloadError(f"could not download {url} ({reason}). Fetch it by hand and save it as {dst}") from None
    return dst
