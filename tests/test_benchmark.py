"""benchmark.py's own logic, on a tiny run: what it measures must still run as the code underneath moves."""
import json
import os
from pathlib import Path

import torch

import benchmark


def test_agreement_row_compares_bfloat16_with_float32_on_the_torch_backend(trained_run: Path):
    # the run has a best.onnx beside best.pth, which predict.py's default would pick: the row must not
    split = json.loads((trained_run / "split.json").read_text())
    photos = [os.path.join(split["root"], path) for path, _ in split["val"][:12]]
    assert (trained_run / "best.onnx").is_file()
    weights, share, count = benchmark.agreement_row(str(trained_run / "best.pth"), photos, torch.device("cpu"))
    assert weights == str(trained_run / "best.pth") and count == len(photos) == 12
    assert share * count == round(share * count) and share >= 0.75  # bfloat16 rarely changes a clear answer
