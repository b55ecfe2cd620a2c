"""What can run a trained model, and in which number format: the backends (--backend), the precisions
(--precision), and whether a runtime is installed. No PyTorch here."""
import importlib.util
import os
import sys
from types import ModuleType

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")  # what runs the model (--backend)
TORCH_PRECISIONS = ("float32", "bfloat16")  # the PyTorch backend's number formats
PRECISIONS = (*TORCH_PRECISIONS, "int8")  # --precision; int8: an INT8 export (export.py --int8) in ONNX Runtime
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}  # an exported model's backend -> pip package


def is_installed(backend: str) -> bool:
    """Whether the runtime of `backend` can be imported, without importing it."""
    return importlib.util.find_spec(PACKAGES[backend]) is not None


# What ONNX Runtime's import prints on stderr, in colour, when it cannot keep its telemetry device ID in the user's
# cache folder (a read-only one): nothing the user can act on, and nothing about their model.
ONNXRUNTIME_NOISE = (b"Failed to persist telemetry device ID",)


def import_onnxruntime() -> ModuleType:
    """onnxruntime, imported without the warnings of ONNXRUNTIME_NOISE. Its import sets up the process's
    environment, which logs at warning level before any session option can lower it, from native code that
    writes to file descriptor 2; so the first import runs with that descriptor on a temporary file, and what
    was written there, but for those lines, goes to stderr afterwards."""
    if "onnxruntime" in sys.modules:
        return sys.modules["onnxruntime"]
    import tempfile

    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing would be seen anyway
        import onnxruntime

        return onnxruntime
    with tempfile.TemporaryFile() as captured:
        _flush_stderr()  # what Python wrote before goes out first
        os.dup2(captured.fileno(), 2)
        try:
            import onnxruntime
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True)
                    if not any(noise in line for noise in ONNXRUNTIME_NOISE)]
            if kept:
                os.write(2, b"".join(kept))
    return onnxruntime


def _flush_stderr() -> None:
    if sys.stderr is not None:
        sys.stderr.flush()
