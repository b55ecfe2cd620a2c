"""effnet/atomic_files.py: every write is atomic, a full disk is one clear error naming the user's file, and the
old file survives."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load

from effnet import atomic_files
from effnet.reports import figures

REPO = Path(__file__).resolve().parents[1]

WRITERS = {
    "checkpoint": (lambda path: atomic_files.save_checkpoint({"w": torch.ones(50_000)}, path), "last.pth"),
    "json": (lambda path: atomic_files.write_json(path, {"classes": ["a"] * 30_000}), "split.json"),
    "csv": (lambda path: atomic_files.write_csv(path, [{"epoch": i, "val_acc": 0.5} for i in range(10_000)]),
            "metrics.csv"),
    "figure": (lambda path: figures.plot_curves([{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "train_acc": 0.5,
                                                  "val_acc": 0.5, "lr": 0.01}], path), "curves.png"),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_every_file_write_reports_a_full_disk_and_keeps_the_old_file(kind, tmp_path, disk_full_at_fsync):
    write, name = WRITERS[kind]
    target = tmp_path / name
    target.write_bytes(b"the previous version")
    disk_full_at_fsync["full"] = True
    with pytest.raises(atomic_files.NoSpaceError) as caught:
        write(target)
    assert caught.value.filename == str(tmp_path)
    assert caught.value.strerror.startswith(f"no space left for {name}: it needs ")
    assert "and 1.0 kB are free; free at least" in caught.value.strerror
    assert target.read_bytes() == b"the previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left


def test_torch_save_failing_for_space_is_told_apart_from_other_failures(tmp_path, monkeypatch):
    # torch.save reports a full disk as a RuntimeError without errno: the free space decides
    def failing_save(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 part of a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", failing_save)  # atomic_files.py imports torch where it saves
    with pytest.raises(RuntimeError, match="unexpected pos") as caught:  # plenty of space: not a full disk
        atomic_files.save_checkpoint({"w": torch.ones(10)}, tmp_path / "last.pth")
    assert not isinstance(caught.value, atomic_files.NoSpaceError)
    monkeypatch.setattr(atomic_files, "serialized_size", lambda value: shutil.disk_usage(tmp_path).free + 10**6)
    with pytest.raises(atomic_files.NoSpaceError, match="no space left for last.pth"):
        atomic_files.save_checkpoint({"w": torch.ones(10)}, tmp_path / "last.pth")
    assert not list(tmp_path.iterdir())


def test_failed_atomic_writes_name_the_users_file_not_the_temporary_one(tmp_path, monkeypatch):
    (tmp_path / "taken").mkdir()
    with pytest.raises(IsADirectoryError) as raised:
        atomic_files.write_text(tmp_path / "taken", "x")
    assert raised.value.filename == str(tmp_path / "taken")

    def refused(*args, dir=None, prefix="", suffix="", **kwargs):  # as in a folder that takes no new files
        raise FileNotFoundError(2, "No such file or directory", os.path.join(dir, prefix + "abc123" + suffix))

    monkeypatch.setattr(atomic_files.tempfile, "mkstemp", refused)
    with pytest.raises(FileNotFoundError) as raised:
        atomic_files.write_text(tmp_path / "report.html", "x")
    assert raised.value.filename == str(tmp_path / "report.html")


def test_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path):
    target = tmp_path / "last.pth"
    atomic_files.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, target)
    script = f"""
import os, signal, torch
from effnet import atomic_files
def dying_save(obj, f, *a, **k):
    f.write(b"PK\\x03\\x04 half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
atomic_files.save_checkpoint({{"epoch": 2}}, {str(target)!r})
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == -signal.SIGKILL
    assert load(target)["epoch"] == 1


def test_atomically_written_files_get_the_usual_permissions(tmp_path):
    atomic_files.write_text(tmp_path / "metrics.csv", "epoch\n")  # mkstemp alone would leave it private (0o600)
    assert (tmp_path / "metrics.csv").stat().st_mode & 0o777 == 0o666 & ~atomic_files._UMASK
