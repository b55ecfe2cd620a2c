"""quickstart.ipynb: kept without outputs, and its code cells run in order, headless on the CPU, from a folder that
is not the repository's (as a notebook started elsewhere with the repository on its path)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "quickstart.ipynb"

# What a kernel does with the notebook, without Jupyter: every code cell in order, in one namespace; a failing
# cell is named. The notebook holds plain Python (no magics), so exec runs it as Jupyter would.
RUN_CELLS = """
import json, sys, traceback
cells = [cell for cell in json.load(open(sys.argv[1], encoding="utf-8"))["cells"] if cell["cell_type"] == "code"]
namespace = {"__name__": "__main__"}
for number, cell in enumerate(cells, start=1):
    try:
        exec(compile("".join(cell["source"]), f"<code cell {number}>", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"code cell {number} of {len(cells)} failed")
print(f"ran {len(cells)} code cells")
"""


def cells() -> list[dict]:
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]


def test_the_notebook_is_kept_without_outputs():
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert notebook["nbformat"] == 4 and notebook["metadata"]["kernelspec"]["language"] == "python"
    code = [cell for cell in cells() if cell["cell_type"] == "code"]
    assert len(code) >= 6
    assert all(cell["execution_count"] is None and cell["outputs"] == [] for cell in code)
    assert len({cell["id"] for cell in cells()}) == len(cells())  # nbformat 4.5 wants an id per cell


def test_the_notebook_uses_what_the_readme_shows():
    source = "".join("".join(cell["source"]) for cell in cells())
    for call in ("from model import efficientnet_b0", "model_from_checkpoint(best)",
                 ".load_state_dict(torch.load(best))", "classify(", "plot_data_loader_image(", "grad_cam(",
                 "prediction_figure("):
        assert call in source, call
    assert "%" not in "".join(line[:1] for cell in cells() for line in cell["source"])  # no magics: plain Python


@pytest.mark.slow
def test_the_notebook_runs_headless_on_the_cpu(tmp_path):
    folder, temporary = tmp_path / "elsewhere", tmp_path / "tmp"
    folder.mkdir()
    temporary.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg", "TMPDIR": str(temporary),
           "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", RUN_CELLS, str(NOTEBOOK)], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "ran " in out and "the same network: True" in out and "top class" in out
    for name in ("daisy", "dandelion", "roses", "sunflowers", "tulips"):  # a ranking of one photo of each class
        assert re.search(rf"^ *{name}: [a-z]+ \d\.\d\d, ", out, re.MULTILINE), name
    assert list(folder.iterdir()) == []  # the run went to a temporary folder, and nothing else was written here
    assert (next(temporary.glob("quickstart-*")) / "notebook" / "best.pth").is_file()
