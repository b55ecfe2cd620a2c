"""The speed benchmark still runs as the code underneath moves: its agreement section, on the trained test run,
as a maintainer runs it (`python -m benchmarks.speed`; no test imports a benchmark)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_agreement_section_compares_bfloat16_with_float32_on_the_torch_backend(trained_run: Path):
    # the run has a best.onnx beside best.pth, which predict.py's default would pick: the section must not
    assert (trained_run / "best.onnx").is_file()
    data = Path(json.loads((trained_run / "split.json").read_text())["root"])  # photos the model answers clearly
    result = subprocess.run([sys.executable, "-m", "benchmarks.speed", "--sections", "agreement", "--rounds", "1",
                             "--agreement-weights", str(trained_run / "best.pth"), "--photos", str(data)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r"bfloat16 vs float32 top-1 agreement with (\S+): ([\d.]+)% of (\d+) photos", result.stdout)
    assert found, result.stdout
    weights, share, count = found.group(1), float(found.group(2)) / 100, int(found.group(3))
    assert weights == str(trained_run / "best.pth") and count == len(list(data.glob("*/*.jpg")))
    assert share >= 0.75  # bfloat16 rarely changes a clear answer
