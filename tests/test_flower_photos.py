"""The flower photos: the bundled sample the quick try trains on, and the archive's download, checksum and safe
extraction (against a local server: no machine here reaches the real one)."""
import io
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import fails_with
from imagegen import make_class_folders

import train
from effnet import command_line
from effnet import weights as W
from effnet.command_line import UsageError
from effnet.data import flower_photos
from effnet.download import download_file, sha256_of
from effnet.training.flags import build_parser

REPO = Path(__file__).resolve().parents[1]


def _fails_with(argv: list[str], capsys, *fragments: str) -> None:
    fails_with(train.main, argv, capsys, *fragments)


def test_the_quick_try_in_the_readme_trains_on_the_sample_that_ships():
    assert flower_photos.QUICK_TRY in (REPO / "README.md").read_text()
    command = flower_photos.QUICK_TRY.split()
    assert command[:2] == ["python", "train.py"]
    args = build_parser().parse_args(command[2:])
    assert (REPO / args.data_path).resolve() == flower_photos.FLOWER_SAMPLE and args.weights == "none"
    classes = sorted(p.name for p in flower_photos.FLOWER_SAMPLE.iterdir() if p.is_dir())
    assert classes == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert all(len(list((flower_photos.FLOWER_SAMPLE / name).glob("*.jpg"))) == 30 for name in classes)


def test_without_network_the_main_job_points_to_the_quick_try(tmp_path, capsys, monkeypatch, closed_port_url):
    monkeypatch.chdir(tmp_path)  # no flower_data/ here, and the archive's URL does not answer
    monkeypatch.setenv(flower_photos.FLOWER_PHOTOS_URL_ENV, closed_port_url + "/flower_photos.tgz")
    _fails_with(["--num_classes", "5"], capsys, "could not download", flower_photos.QUICK_TRY,
                "your own class-per-folder images (with --weights none")  # offline, ImageNet's weights fail too
    data = make_class_folders(tmp_path / "data", per_class=2)  # photos at hand, but no ImageNet weights
    monkeypatch.setenv(W.WEIGHTS_MIRROR_ENV, closed_port_url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached copy of the weights either
    line = fails_with(train.main, ["--data-path", str(data)], capsys, "could not download", "add --weights none")
    assert flower_photos.QUICK_TRY not in line  # the user's own photos train from scratch; no other folder offered


def test_missing_flower_photos_without_network(tmp_path, capsys, monkeypatch, closed_port_url):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(flower_photos.FLOWER_PHOTOS_URL_ENV, closed_port_url + "/flower_photos.tgz")
    _fails_with(["--num_classes", "5", "--weights", "none"], capsys,
                closed_port_url, "tar -xzf", "--data-path")
    assert not (tmp_path / "flower_data" / "flower_photos").exists()


def test_a_failed_download_leaves_no_empty_folder_behind(tmp_path, closed_port_url):
    (tmp_path / "kept").mkdir()  # a folder that was there before stays, empty or not
    for data_path in (tmp_path / "flower_data" / "flower_photos", tmp_path / "a" / "b" / "flower_photos",
                      tmp_path / "kept" / "flower_photos"):
        with pytest.raises(UsageError, match="could not download"):
            flower_photos.ensure_flower_photos(data_path, url=closed_port_url + "/flower_photos.tgz")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept"] and not list((tmp_path / "kept").iterdir())


def _archive(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    import io

    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def test_flower_archive_downloads_verifies_and_extracts(http_server, tmp_path, monkeypatch):
    base_url, served = http_server
    import random

    from imagegen import class_image, jpeg_bytes

    photo = jpeg_bytes(class_image((200, 40, 40), random.Random(0)))
    archive = _archive(served / "flower_photos.tgz", {"flower_photos/LICENSE.txt": b"CC-BY",
                                                      "flower_photos/roses/1.jpg": photo,
                                                      "flower_photos/tulips/2.jpg": photo})
    monkeypatch.setattr(flower_photos, "FLOWER_PHOTOS_SHA256", sha256_of(archive))
    target = tmp_path / "flower_data" / "flower_photos"
    flower_photos.ensure_flower_photos(target, url=f"{base_url}/flower_photos.tgz")
    assert (target / "roses" / "1.jpg").read_bytes() == photo
    assert not (tmp_path / "flower_data" / "flower_photos.tgz").exists()  # the archive is removed after use


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stderr, bar", [(io.StringIO(), False), (Terminal(), True)])
def test_a_download_draws_its_progress_bar_on_a_terminal_only(http_server, tmp_path, monkeypatch, stderr, bar):
    base_url, served = http_server
    (served / "file.bin").write_bytes(b"x" * 100_000)
    monkeypatch.setattr(sys, "stderr", stderr)
    download_file(f"{base_url}/file.bin", tmp_path / "file.bin", sha256_of(served / "file.bin"))
    assert (tmp_path / "file.bin").stat().st_size == 100_000
    assert ("100%" in stderr.getvalue()) == bar  # a log file gets no redrawn bars


def test_flower_archive_with_a_wrong_checksum_is_rejected(http_server, tmp_path, monkeypatch):
    base_url, served = http_server
    _archive(served / "flower_photos.tgz", {"flower_photos/roses/1.jpg": b"x"})
    target = tmp_path / "flower_data" / "flower_photos"
    with pytest.raises(command_line.UsageError, match="corrupted or altered"):
        flower_photos.ensure_flower_photos(target, url=f"{base_url}/flower_photos.tgz")
    assert not target.exists() and not (tmp_path / "flower_data").exists()  # nothing left, no empty folder


@pytest.mark.parametrize("members, links", [({"flower_photos/../../escaped.txt": b"x"}, None),
                                            ({"/tmp/absolute.txt": b"x"}, None),
                                            ({"flower_photos/a.txt": b"x"}, {"flower_photos/link": "/etc/passwd"})])
def test_archives_that_escape_the_target_are_refused(tmp_path, members, links):
    archive = _archive(tmp_path / "evil.tgz", members, links)
    with pytest.raises(command_line.UsageError, match="refusing the archive"):
        flower_photos.extract_tar_safely(archive, tmp_path / "out" / "data")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out" / "data").exists()
