"""What can run a trained model, and in which number format: the backends (--backend), the precisions
(--precision), and whether a runtime is installed. No PyTorch here."""
import importlib.util

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")  # what runs the model (--backend)
TORCH_PRECISIONS = ("float32", "bfloat16")  # the PyTorch backend's number formats
PRECISIONS = (*TORCH_PRECISIONS, "int8")  # --precision; int8: an INT8 export (export.py --int8) in ONNX Runtime
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}  # an exported model's backend -> pip package


def is_installed(backend: str) -> bool:
    """Whether the runtime of `backend` can be imported, without importing it."""
    return importlib.util.find_spec(PACKAGES[backend]) is not None
