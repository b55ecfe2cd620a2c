"""Helpers shared by the tests."""
import errno
import functools
import http.server
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

# Before PyTorch loads its OpenMP runtime (this process's, and the train.py and predict.py processes the tests
# start, which inherit it): a thread that waits for work sleeps instead of spinning. With spinning threads, every
# test process and subprocess keeps each core busy, and on a machine running other jobs they slow each other
# several-fold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The suite runs in several processes (pytest-xdist, `-n auto` in pyproject.toml): each gets its share of the
# CPUs as PyTorch threads, so that N workers do not start N x cores threads (OMP_NUM_THREADS given wins).
# (effnet.hardware.usable_cpus says the same, but importing it would import PyTorch before this is set)
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # Linux, or not
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _CPUS // _WORKERS)))

import pytest  # noqa: E402  (after the environment is set)
import torch  # noqa: E402
from torch import nn  # noqa: E402

from effnet.data.flower_photos import FLOWER_SAMPLE  # noqa: E402


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one test process per usable CPU, at most 4 (each holds its own trained runs and models), unless
    PYTEST_XDIST_AUTO_NUM_WORKERS says how many."""
    given = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    return int(given) if given else max(1, min(4, _CPUS))


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every weight and BatchNorm statistic a random value of a sensible scale.

    Freshly initialised EfficientNets output logits of ~1e-14, where any two networks agree; random running
    statistics and affine parameters make a wrong key mapping or a wrong eps show up in the outputs.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            shape = tensor.shape
            if name.endswith("running_var"):
                value = torch.rand(shape, generator=generator) * 1.5 + 0.5
            elif name.endswith("running_mean"):
                value = torch.randn(shape, generator=generator) * 0.2
            elif tensor.dim() == 1 and ".fc" not in name and "classifier" not in name:  # BatchNorm affine
                if name.endswith("weight"):
                    value = torch.rand(shape, generator=generator) * 0.5 + 0.75
                else:
                    value = torch.randn(shape, generator=generator) * 0.2
            elif tensor.dim() == 1:  # biases of SE convs and the classifier
                value = torch.randn(shape, generator=generator) * 0.2
            else:  # conv and linear weights, scaled by fan-in to keep activations of order one
                value = torch.randn(shape, generator=generator) * tensor[0].numel() ** -0.5
            tensor.copy_(value)
    return module


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_reaches_the_programs() -> Iterator[None]:
    """Several tests press Ctrl-C (SIGINT) in a program they start. A shell starts a background job (`cmd &`)
    with SIGINT ignored, and an ignored signal stays ignored in every child, so those programs would never see
    it; Python's own handler here is reset to the default in each child instead."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        yield
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        yield


@pytest.fixture(scope="session", autouse=True)
def private_cache_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The optimised ONNX Runtime models the tests make (effnet/inference/session_cache.py) go to a temporary
    cache folder, also in the programs the tests start, not to the user's."""
    import os

    folder, before = tmp_path_factory.mktemp("cache"), os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    yield folder
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture
def flower_sample() -> Path:
    """The 150 real flower photos that ship with the project (data/flower_sample: 30 per class)."""
    return FLOWER_SAMPLE


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A web server on 127.0.0.1 serving a temporary folder: yields (base URL, folder)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens, standing in for 'no network'."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def train_args(data: Path, runs: Path, *extra: str) -> list[str]:
    """train.py arguments for a fast CPU run from scratch on generated images (48 px, batch 8)."""
    return ["--data-path", str(data), "--output-dir", str(runs), "--weights", "none", "--freeze-layers", "false",
            "--image-size", "48", "--batch-size", "8", "--lr", "0.01", "--workers", "0", "--progress", "false",
            *extra]


# A budget in which train.py learns the three colour classes far above chance (1/3) on any CPU: batches of 16 (so
# that BatchNorm's running statistics settle within a few epochs: with batches of 4 they lag the weights, and
# validation answers one class for epochs on end) at 48 px. Measured with 1 and 2 threads on several seeds: the
# best validation accuracy came out at 0.94 to 1.0 every time.
TRAINED_RUN_ARGS = ("--epochs", "8", "--image-size", "48", "--batch-size", "16", "--lr", "0.03")
TRAINED_RUN_IMAGES_PER_CLASS = 60


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of train.py that has learned: 8 epochs from scratch on three visibly different classes."""
    from imagegen import make_class_folders

    import train

    root = tmp_path_factory.mktemp("trained")
    data = make_class_folders(root / "data", per_class=TRAINED_RUN_IMAGES_PER_CLASS)
    assert train.main(train_args(data, root / "runs", *TRAINED_RUN_ARGS, "--name", "colours")) == 0
    return root / "runs" / "colours"


def training_only_args(data: Path, runs: Path, *extra: str) -> list[str]:
    """train_args for a test of the training itself (its checkpoints, resume, recipe, failures): the run leaves out
    best.onnx and report.html when it ends (--onnx false --report false), about 2 s of each tiny run. Runs in
    every other test write them, and test_export, test_evaluate, test_duplicates and test_label_issues test them."""
    return train_args(data, runs, "--onnx", "false", "--report", "false", *extra)


CHROMIUM = "/usr/bin/chromium"  # Debian's package, which .ci/run installs
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]  # no calls to the outside


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """A headless Chromium driven by Playwright; skips where Chromium or Playwright is absent."""
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (Debian's chromium package; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -r requirements.txt)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: object) -> Iterator[object]:
    """A fresh browser page (1280 x 900) that fails the test on any JavaScript error."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def load(path: Path) -> dict:
    """A checkpoint, read as the programs read it."""
    return torch.load(path, map_location="cpu", weights_only=True)


def one_error_line(err: str) -> str:
    """The one `error:` line of a program's stderr, which must hold no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def fails_with(main: object, argv: list[str], capsys: pytest.CaptureFixture, *fragments: str,
               status: int = 2) -> str:
    """`main(argv)` exits with `status` (2: a usage error) and one `error:` line holding every fragment."""
    assert main(argv) == status
    line = one_error_line(capsys.readouterr().err)
    for fragment in fragments:
        assert fragment in line, line
    return line


def assert_usage_error(main: object, argv: list[str], capsys: pytest.CaptureFixture, *fragments: str) -> None:
    fails_with(main, argv, capsys, *fragments)


@pytest.fixture
def disk_full_at_fsync(monkeypatch):
    """Simulate a full disk: fsync reports ENOSPC (as file systems with delayed allocation do) and the disk
    reports 1 kB free. Call the returned function to start failing; undo with the returned `stop`."""
    real_fsync, real_usage = os.fsync, shutil.disk_usage
    state = {"full": False}

    def fsync(descriptor):
        if state["full"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(descriptor)

    def disk_usage(path):
        usage = real_usage(path)
        return usage._replace(free=1000) if state["full"] else usage

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    return state
