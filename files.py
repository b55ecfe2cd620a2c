"""Files written atomically: a crash, SIGKILL or Ctrl-C at any moment leaves the old file or the new one."""
import contextlib
import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence


def _current_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; done once, at import, before any threads
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step, else it is removed."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes it private; give it the mode open() would
    try:
        yield temporary
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> None:
    import torch  # here, so that evaluate.py's CSV and JSON writes do not load PyTorch

    with atomic_path(path) as temporary:
        torch.save(dict(checkpoint), temporary)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        Path(temporary).write_text(text)


def write_json(path: str | os.PathLike, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows of dicts with the same keys, the first row's keys as the header."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
