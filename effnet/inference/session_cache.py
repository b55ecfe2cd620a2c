"""ONNX Runtime sessions that start from a cached, already optimised copy of the model.

Opening an .onnx, ONNX Runtime spends most of the time in its graph optimiser (SiLU fusions, convolutions
rewritten into the blocked layout of the CPU's vector width): about 75 ms of a one-photo prediction's 0.3 s
for B0. It can save the optimised graph (SessionOptions.optimized_model_filepath), and a session opened on
that file starts at once; but the saved graph is only valid for the ONNX Runtime version and the CPU that
made it. So each cached copy is named by a key made of everything it depends on: the ONNX Runtime version,
the CPU (vendor, model and instruction-set flags), the export's sha256 (its content, not its name) and the
optimisation settings. A changed export, another CPU or another ONNX Runtime simply finds no copy, and makes
its own. A name alone is not trusted: each copy has a record (records/<key>) of the key and of the copy's own
sha256, and a copy is used only when it matches its record, so a copy swapped for another (another model's)
is made again from the export. The copy is hashed again only when its file identity has changed since it was
recorded (a swap, by rename or by rewrite, always changes it).

The cache lives in the user's cache folder ($XDG_CACHE_HOME/effnet/onnxruntime, by default and when $XDG_CACHE_HOME
is not an absolute path ~/.cache/effnet/onnxruntime), keeps the MAX_MODELS most recently written copies, and is
written atomically (a temporary file renamed into place). Hashing a 16 MB export costs about as much as the
optimisation saves, so an export's sha256 is computed once and remembered under its file identity (device, inode,
size, modification and change times, which any rewrite of the file changes). Whatever goes wrong with the cache (no
home folder, a read-only disk, a corrupt copy) is passed over: the session is then built from the export as it would
be without the cache, and a corrupt copy is replaced.
"""
import hashlib
import os
from pathlib import Path
from typing import Any

from effnet.download import sha256_of
from effnet.inference.runtimes import import_onnxruntime

MAX_MODELS = 16  # optimised copies kept (each about the size of its export); the oldest go first
MAX_CHECKSUMS = 256  # remembered export checksums (a few bytes each)
PROVIDERS = ["CPUExecutionProvider"]
KEY_VERSION = "1"  # part of every key: a change of what a copy holds makes the old copies unreachable


def cache_folder() -> Path:
    """Where optimised copies are kept: $XDG_CACHE_HOME/effnet/onnxruntime, else ~/.cache/effnet/onnxruntime.
    A relative $XDG_CACHE_HOME is ignored, as the XDG base directory rules say: it would put a cache in
    whatever folder the program was started from."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "effnet" / "onnxruntime"


def cpu_identity() -> str:
    """The CPU as far as an optimised graph depends on it: vendor, family, model and instruction-set flags
    (Linux: the first processor's entry of /proc/cpuinfo), else what the platform module knows."""
    wanted = ("vendor_id", "cpu family", "model", "model name", "flags", "Features", "CPU implementer", "CPU part")
    lines = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break  # the first processor's entry is enough: they are alike
                if line.split(":")[0].strip() in wanted:
                    lines.append(" ".join(line.split()))
    except OSError:
        pass
    if lines:
        return "\n".join(lines)
    import platform  # elsewhere than Linux: what it knows (imported here: a one-photo run counts milliseconds)

    return f"{platform.machine()} {platform.processor()}"


def _file_identity(path: Path) -> str:
    status = path.stat()
    return f"{status.st_dev}:{status.st_ino}:{status.st_size}:{status.st_mtime_ns}:{status.st_ctime_ns}"


def export_checksum(path: Path, folder: Path) -> str:
    """The sha256 of `path`, remembered in `folder` under the file's identity so that it is hashed once."""
    identity = _file_identity(path)
    memo = folder / "checksums" / hashlib.sha256(identity.encode()).hexdigest()[:32]
    try:
        recorded = memo.read_text(encoding="ascii").strip()
        if len(recorded) == 64 and all(c in "0123456789abcdef" for c in recorded):
            return recorded
    except (OSError, ValueError):
        pass  # not remembered yet, or damaged: hash it again
    checksum = sha256_of(path)
    if _file_identity(path) == identity:  # not rewritten while it was read
        try:
            _write_atomically(memo, checksum.encode("ascii"), MAX_CHECKSUMS)
        except OSError:
            pass  # not remembered: hashed again next time
    return checksum


def cache_key(path: Path, folder: Path, settings: str) -> str:
    """The name of the optimised copy of `path` for this ONNX Runtime, this CPU and these `settings`."""
    onnxruntime = import_onnxruntime()
    parts = [KEY_VERSION, onnxruntime.__version__, cpu_identity(), export_checksum(path, folder), settings]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]


def _write_atomically(path: Path, data: bytes, keep: int) -> None:
    """`data` into `path`, atomically; then only the `keep` newest files of its folder stay."""
    from effnet.atomic_files import write_bytes  # only to write: a run that finds its copy does without it

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_bytes(path, data)
    _prune(path.parent, keep)


def _prune(folder: Path, keep: int) -> None:
    """Remove all but the `keep` most recently written files of `folder` (and temporary files left by a
    killed process over an hour ago)."""
    try:
        entries = sorted((entry.stat().st_mtime, entry) for entry in folder.iterdir() if entry.is_file())
    except OSError:
        return
    kept = [entry for entry in entries if not entry[1].name.endswith(".tmp")]
    stale = [entry for entry in entries if entry[1].name.endswith(".tmp") and entry[0] < entries[-1][0] - 3600]
    for _, entry in kept[:-keep] + stale:
        _remove(entry)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def create_session(path: str | os.PathLike, options: Any) -> Any:
    """An InferenceSession of the .onnx at `path` with `options`, started from its cached optimised copy when
    there is one, and saving that copy when there is not. Errors about the export itself are ONNX Runtime's,
    as without the cache."""
    onnxruntime = import_onnxruntime()
    path, folder = Path(path), cache_folder()
    settings = f"level={options.graph_optimization_level} providers={','.join(PROVIDERS)}"
    try:
        copy = folder / "models" / f"{cache_key(path, folder, settings)}.onnx"
    except (OSError, ValueError):  # an unreadable export is reported by ONNX Runtime below; no cache is no error
        return onnxruntime.InferenceSession(str(path), options, providers=PROVIDERS)
    if copy.is_file() and _matches_record(copy):
        try:
            return onnxruntime.InferenceSession(str(copy), options, providers=PROVIDERS)
        except Exception:  # a damaged copy (ONNX Runtime has its own exception types): made again below
            pass
    _remove(copy)  # none, damaged, or not the copy its record names (another model's, swapped in)
    return _session_saving_copy(path, options, copy)


def _record_of(copy: Path) -> Path:
    return copy.parent.parent / "records" / copy.stem


def _write_record(copy: Path, checksum: str | None = None) -> None:
    """records/<key>: the key, the sha256 of the copy now named by it (`checksum` when known), and the copy's file
    identity then."""
    try:
        record = f"{copy.stem} {checksum or sha256_of(copy)} {_file_identity(copy)}"
        _write_atomically(_record_of(copy), record.encode("ascii"), MAX_CHECKSUMS)
    except OSError:
        pass  # no record: the copy is not used, and made again next time


def _matches_record(copy: Path) -> bool:
    """Whether `copy` is the copy its record names: the record is the key's (not another entry's, copied over it),
    and the copy's sha256 is the recorded one. An unchanged file identity spares hashing the copy again; a copy
    found the same under a new identity (a cache folder copied elsewhere) gets its record renewed."""
    try:
        key, checksum, identity = _record_of(copy).read_text(encoding="ascii").split(" ", 2)
        if key != copy.stem:
            return False
        if identity == _file_identity(copy):
            return True
        if sha256_of(copy) != checksum:
            return False
    except (OSError, ValueError):  # no record, a damaged one, or no copy
        return False
    _write_record(copy, checksum)
    return True


def _session_saving_copy(path: Path, options: Any, copy: Path) -> Any:
    """A session of `path` that also saves its optimised graph as `copy`; without the copy if it cannot be
    saved. Written to a temporary file renamed into place, but not synced to the disk as atomic_files does:
    the sync of a 16 MB copy costs a first prediction about 60 ms, and a copy lost or damaged in a power cut
    is only a cache entry, which create_session then removes and makes again."""
    import tempfile

    onnxruntime = import_onnxruntime()
    try:
        copy.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor, temporary = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=copy.parent)
        os.close(descriptor)
    except OSError:
        return onnxruntime.InferenceSession(str(path), options, providers=PROVIDERS)
    try:
        options.optimized_model_filepath = temporary
        session = onnxruntime.InferenceSession(str(path), options, providers=PROVIDERS)
        os.replace(temporary, copy)
        _write_record(copy)
    except Exception:  # the export itself is bad (reported as without the cache), or the copy could not be written
        options.optimized_model_filepath = ""
        session = onnxruntime.InferenceSession(str(path), options, providers=PROVIDERS)
    finally:
        _remove(Path(temporary))
    _prune(copy.parent, MAX_MODELS)
    return session
