"""Files written atomically: a crash, SIGKILL or Ctrl-C at any moment leaves the old file or the new one.

A write that fails for want of space raises NoSpaceError, which names the folder and how much space the file
needs; the old file is left as it was and no temporary file is left behind.
"""
import contextlib
import csv
import errno
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; done once, at import, before any threads
    os.umask(mask)
    return mask


_UMASK = _current_umask()
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


class NoSpaceError(OSError):
    """A file could not be written for want of space; `filename` is its folder, `strerror` says how much
    it needs and how much is free."""


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def _no_space(error: Exception, path: Path, size: Callable[[], int] | None) -> NoSpaceError | None:
    """The NoSpaceError that explains `error`, or None when the failure has another cause.

    torch.save reports a full disk as a RuntimeError without an errno, so such a failure is put down to
    space when the folder has less free space than the file needs.
    """
    if isinstance(error, OSError) and error.errno not in _OUT_OF_SPACE:
        return None
    try:
        free = shutil.disk_usage(path.parent).free
        needed = size() if size else 0
    except Exception:  # noqa: BLE001 - explaining a failure must not raise a second one
        return None
    if not isinstance(error, OSError) and free >= needed:
        return None
    if free < needed:
        reason = (f"no space left for {path.name}: it needs {_megabytes(needed)} and {_megabytes(free)} "
                  f"are free; free at least {_megabytes(needed - free)} there")
    else:  # the disk has room, so a quota is full
        reason = f"no space left for {path.name} ({_megabytes(needed)}): {os.strerror(error.errno)}"
    return NoSpaceError(errno.ENOSPC, reason, str(path.parent))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, size: Callable[[], int] | None = None) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step, else it is removed.

    `size` gives the number of bytes the file needs; it is asked for only when writing fails, to tell a
    full disk (NoSpaceError) from other failures.
    """
    path = Path(path)
    if path.is_dir():  # os.replace would say so naming the temporary file
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    temporary = None
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(descriptor)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes it private; give it the mode open() would
        yield temporary
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)  # first, so that the free space reported counts its bytes too
        explained = _no_space(error, path, size)
        if explained is not None:
            raise explained from None
        if isinstance(error, OSError) and str(error.filename or "").startswith(str(path.parent / f".{path.name}.")):
            raise type(error)(error.errno, error.strerror, str(path)) from None  # the user's name, not ours
        raise
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files atomic_path left in `folder` when the process writing them was killed (SIGKILL,
    a power cut): hidden .<name>.XXXXXXXX.tmp files, the size of what they were to become, that nothing else
    would ever remove. Only for a folder no other process writes at the same time: a run folder, as its run
    resumes. Returns what was removed."""
    removed = []
    for entry in Path(folder).glob(".*.tmp"):
        if re.fullmatch(r"\..+\.[A-Za-z0-9_]{8}\.tmp", entry.name) and entry.is_file():  # mkstemp's 8 characters
            try:
                entry.unlink()
                removed.append(entry)
            except OSError:  # gone already, or not ours to remove: left as it is
                pass
    return removed


class _ByteCounter(io.RawIOBase):
    """A writable stream that only counts what is written to it."""

    def __init__(self) -> None:
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return len(data)


def serialized_size(value: Any) -> int:
    """How many bytes torch.save writes for `value` (measured without keeping them)."""
    import torch

    counter = _ByteCounter()
    torch.save(value, counter)
    return counter.count


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    import torch  # here, so that evaluate.py's CSV and JSON writes do not load PyTorch

    checkpoint = dict(checkpoint)
    with atomic_path(path, size=lambda: serialized_size(checkpoint)) as temporary:
        # streamed, never held in memory twice; through a Python file so that a failed write closes it at
        # once (torch's own writer keeps the file open, and its space taken, while the error is handled)
        with open(temporary, "wb") as file:
            torch.save(checkpoint, file)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path, size=lambda: len(data)) as temporary:
        Path(temporary).write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = ()) -> None:
    """Rows of dicts; the header is `columns`, else every key of the rows in the order they first appear, and a
    row without a column leaves it empty (a resumed run's history: rows of an older version lack the newer
    columns). With `columns`, a table without rows is its header alone."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns or dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
