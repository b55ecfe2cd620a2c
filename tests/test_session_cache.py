"""The cache of ONNX Runtime's optimised models (effnet/inference/session_cache.py): a second session starts
from the cached copy, anything the copy depends on makes a new one, and a damaged cache is never an error."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from test_predict import val_images

from effnet.inference import exported_backends, session_cache

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder of this test's own; yields where the optimised copies go."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "effnet" / "onnxruntime" / "models"


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files ONNX Runtime sessions are created from, in order."""
    paths: list[str] = []
    real = onnxruntime.InferenceSession

    def recording(path, *args, **kwargs):
        paths.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    return paths


def answers(exported: Path, photos: np.ndarray) -> np.ndarray:
    return exported_backends.OnnxRuntimeBackend(exported).probabilities(photos)


@pytest.fixture
def photos() -> np.ndarray:
    """Two preprocessed images of the trained run's size."""
    return np.random.default_rng(0).standard_normal((2, 3, 48, 48), dtype=np.float32)


def test_a_second_session_starts_from_the_cached_copy_and_answers_the_same(trained_run, cache, opened, photos):
    first = answers(trained_run / "best.onnx", photos)
    [copy] = cache.iterdir()
    assert opened == [str(trained_run / "best.onnx")]  # optimised from the export, the copy saved on the way
    second = answers(trained_run / "best.onnx", photos)
    assert opened[1:] == [str(copy)] and list(cache.iterdir()) == [copy]
    assert np.array_equal(first, second)
    # ONNX Runtime's own fused operators (its SiLU at least, on every CPU): the optimised graph, not a copy
    assert any(node.domain.startswith("com.microsoft") for node in onnx.load(copy).graph.node)


def test_a_changed_export_another_onnxruntime_or_another_cpu_gets_a_copy_of_its_own(trained_run, tmp_path, cache,
                                                                                    opened, photos, monkeypatch):
    exported = tmp_path / "best.onnx"
    shutil.copy(trained_run / "best.onnx", exported)
    answers(exported, photos)
    changed = onnx.load(exported)
    changed.doc_string += " (exported again)"
    onnx.save(changed, exported)  # the same network, another file
    answers(exported, photos)
    assert len(list(cache.iterdir())) == 2 and opened == [str(exported)] * 2
    monkeypatch.setattr(onnxruntime, "__version__", onnxruntime.__version__ + ".other")
    answers(exported, photos)
    monkeypatch.setattr(session_cache, "cpu_identity", lambda: "another CPU")
    answers(exported, photos)
    assert len(list(cache.iterdir())) == 4 and opened == [str(exported)] * 4


def test_a_damaged_cache_is_passed_over_and_mended(trained_run, cache, opened, photos):
    expected = answers(trained_run / "best.onnx", photos)
    [copy] = cache.iterdir()
    good = copy.read_bytes()
    for damage in (good[:len(good) // 2], b"not an ONNX model", b""):
        copy.write_bytes(damage)
        assert np.array_equal(answers(trained_run / "best.onnx", photos), expected)
        assert copy.read_bytes() != damage  # made again from the export
    [memo] = (cache.parent / "checksums").iterdir()
    memo.write_text("garbage")  # a remembered checksum that is not one: the export is hashed again
    assert np.array_equal(answers(trained_run / "best.onnx", photos), expected)
    assert len(memo.read_text()) == 64 and list(cache.iterdir()) == [copy]


def test_no_usable_cache_folder_is_no_error(trained_run, tmp_path, monkeypatch, photos):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    expected = answers(trained_run / "best.onnx", photos)
    assert np.array_equal(answers(trained_run / "best.onnx", photos), expected)
    assert blocked.read_text() == "a file where the cache folder would go"


def test_the_cache_keeps_only_the_newest_copies(trained_run, tmp_path, cache, photos, monkeypatch):
    monkeypatch.setattr(session_cache, "MAX_MODELS", 2)
    for cpu in ("a", "b", "c"):
        monkeypatch.setattr(session_cache, "cpu_identity", lambda cpu=cpu: cpu)
        answers(trained_run / "best.onnx", photos)
    assert len(list(cache.iterdir())) == 2


def test_predict_py_fills_the_cache_in_one_process_and_the_next_one_starts_from_it(trained_run, tmp_path):
    """Whole processes, as a user runs them; the second writes nothing (a copy made again would be new)."""
    photo = val_images(trained_run)[0][0]
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    command = [sys.executable, str(REPO / "predict.py"), photo, "--weights", str(trained_run / "best.pth")]
    first = subprocess.run(command, capture_output=True, text=True, env=environment, check=True)
    [copy] = (tmp_path / "cache" / "effnet" / "onnxruntime" / "models").iterdir()
    made = copy.stat().st_mtime_ns
    second = subprocess.run(command, capture_output=True, text=True, env=environment, check=True)
    assert second.stdout == first.stdout and first.stdout.startswith(photo) and len(first.stdout.splitlines()) == 4
    assert list(copy.parent.iterdir()) == [copy] and copy.stat().st_mtime_ns == made


# --- hostile round 3: entries by content, checked when read; where the cache is and is not --------------------


def another_model(exported: Path, target: Path) -> Path:
    """The export with its classifier's weights negated: another model, with other answers."""
    model = onnx.load(exported)
    last = [node for node in model.graph.node if node.op_type in ("Gemm", "MatMul")][-1]
    for initializer in model.graph.initializer:
        if initializer.name == last.input[1]:
            weights = onnx.numpy_helper.to_array(initializer)
            initializer.CopyFrom(onnx.numpy_helper.from_array(-weights, initializer.name))
    onnx.save(model, target)
    return target


def test_a_cached_copy_swapped_for_another_models_is_never_used(trained_run, tmp_path, cache, photos):
    exported, other = tmp_path / "best.onnx", another_model(trained_run / "best.onnx", tmp_path / "other.onnx")
    shutil.copy(trained_run / "best.onnx", exported)
    expected, others = answers(exported, photos), answers(other, photos)
    assert not np.allclose(expected, others)
    copies = {path.stat().st_mtime_ns: path for path in cache.iterdir()}
    mine, theirs = (copies[key] for key in sorted(copies))  # the first copy made is the export's
    records = cache.parent / "records"
    for swap in ("bytes", "rename", "with its record"):
        answers(other, photos)  # the other model's copy is there to swap in
        if swap == "bytes":
            mine.write_bytes(theirs.read_bytes())
        else:
            if swap == "with its record":
                shutil.copy(records / theirs.stem, records / mine.stem)
            shutil.copy(theirs, tmp_path / "theirs.onnx")
            os.replace(tmp_path / "theirs.onnx", mine)
        assert np.allclose(answers(exported, photos), expected), swap
        assert np.allclose(answers(exported, photos), expected), swap  # the copy made again is used


def test_a_relative_xdg_cache_home_is_ignored(trained_run, tmp_path, monkeypatch, photos):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relcache")  # the XDG rule: a relative path is invalid, ignored
    assert session_cache.cache_folder() == tmp_path / "home" / ".cache" / "effnet" / "onnxruntime"
    answers(trained_run / "best.onnx", photos)
    assert not (tmp_path / "relcache").exists() and (session_cache.cache_folder() / "models").is_dir()


def test_an_unwritable_cache_folder_shows_no_onnxruntime_warning(trained_run, tmp_path):
    blocked = tmp_path / "blocked"  # where the cache folder would go, a file: nothing can be written there
    blocked.write_text("a file")
    photo = val_images(trained_run)[0][0]
    result = subprocess.run([sys.executable, str(REPO / "predict.py"), photo, "--weights",
                             str(trained_run / "best.onnx")], capture_output=True, text=True,
                            env={**os.environ, "XDG_CACHE_HOME": str(blocked)})
    assert result.returncode == 0 and result.stdout.startswith(photo)
    assert result.stderr == ""
