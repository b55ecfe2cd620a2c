"""Files written before the support modules moved into effnet/ (issue 23) load as before: a run folder's
checkpoints, split.json and metrics.csv resume, best.pth predicts, and an export's metadata reads. The
fixture was written by the code of the commit before the move (a 1-epoch run on tests/imagegen.py's images,
seed 0): every field and value as it was, the tensors as their shapes and types (refilled here)."""
import json
from pathlib import Path

import numpy as np
import torch
from imagegen import make_class_folders

import train
from effnet.data.images import Preprocessing
from effnet.inference.classifier import Classifier

BEFORE = Path(__file__).parent / "data" / "checkpoints_before_the_package_move.json"


def rebuild(value: object, generator: torch.Generator) -> object:
    """The value the description stands for; tensors refilled (positive floats keep BatchNorm variances valid)."""
    if isinstance(value, dict) and "__tensor__" in value:
        dtype = getattr(torch, value["dtype"])
        if dtype.is_floating_point:
            return (torch.rand(value["__tensor__"], generator=generator) * 0.1 + 0.01).to(dtype)
        return torch.ones(value["__tensor__"], dtype=dtype)
    if isinstance(value, dict) and "__dict__" in value:
        return {rebuild(key, generator): rebuild(item, generator) for key, item in value["__dict__"]}
    if isinstance(value, dict) and ("__list__" in value or "__tuple__" in value):
        items = [rebuild(item, generator) for item in value.get("__list__", value.get("__tuple__"))]
        return items if "__list__" in value else tuple(items)
    return value


def test_a_run_folder_written_before_the_move_predicts_and_resumes(tmp_path, capsys):
    before = json.loads(BEFORE.read_text())
    data = make_class_folders(tmp_path / "data", per_class=6)  # the images the run was trained on
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    best, last = (rebuild(before[name], generator) for name in ("best.pth", "last.pth"))
    last["args"]["epochs"] = 2  # as if it had been stopped after epoch 1 of 2
    torch.save(best, run / "best.pth")
    torch.save(last, run / "last.pth")
    for name in ("split.json", "metrics.csv", "recipe.json", "class_indices.json"):
        (run / name).write_text(before[name])

    classifier = Classifier.from_weights(run / "best.pth")
    probabilities = classifier.probabilities(classifier.preprocess(data / "red" / "000.jpg")[None])
    assert probabilities.shape == (1, 3) and np.isclose(probabilities.sum(), 1, atol=1e-5)

    image = json.loads(before["best.onnx metadata"]["image"])
    assert Preprocessing.from_settings(image).to_settings() == image  # an export's settings read back unchanged

    # the images moved since (split.json names /tmp/olddata): --data-path says where they are now
    assert train.main(["--resume", str(run), "--data-path", str(data), "--progress", "false"]) == 0
    assert "epoch 2/2" in capsys.readouterr().out
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 2
