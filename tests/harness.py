"""What the tests and the benchmarks both set up: app.py running in its own process, camera-sized photos, and a
run folder holding a randomly initialised model. Test support, kept with the tests; the benchmarks import it as
tests.harness (run from the repository root, as docs/benchmarks.md says)."""
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

APP = Path(__file__).resolve().parents[1] / "app.py"


class AppServer:
    """`python app.py ARGUMENTS` on a free port of 127.0.0.1 in its own process, for as long as the with-block
    lasts; `url` is where it answers, `log` holds its output. Entering waits until /health answers."""

    def __init__(self, *arguments: str, log: Path, threads: int | None = None, timeout: float = 300) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.command = [sys.executable, str(APP), *arguments, "--port", str(port)]
        self.environment = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        self.log, self.timeout = log, timeout
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "AppServer":
        with open(self.log, "w") as output:
            self.process = subprocess.Popen(self.command, stdout=output, stderr=subprocess.STDOUT, env=self.environment)
        try:
            self._wait_until_healthy()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exception: object) -> None:
        self.process.terminate()  # uvicorn shuts down gracefully on SIGTERM
        self.process.wait(60)

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"app.py did not answer within {self.timeout} s:\n{self.log.read_text()}")


def make_large_jpeg(path: str | Path, size: tuple[int, int] = (4032, 3024), sources: Sequence[str] = (),
                    seed: int = 0) -> Path:
    """A camera-sized JPEG (12 MP by default) that compresses like a photo: a mosaic of real photos when
    `sources` are given, else of drawn shapes, with mild sensor-like noise, saved at quality 90."""
    rng = random.Random(seed)
    canvas = Image.new("RGB", size)
    tile = max(size) // 4
    for top in range(0, size[1], tile):
        for left in range(0, size[0], tile):
            if sources:
                with Image.open(rng.choice(list(sources))) as source:
                    piece = source.convert("RGB").resize((tile, tile), Image.BICUBIC)
            else:
                piece = Image.new("RGB", (tile, tile), tuple(rng.randrange(256) for _ in range(3)))
                draw = ImageDraw.Draw(piece)
                for _ in range(12):
                    x, y, r = rng.randrange(tile), rng.randrange(tile), rng.randrange(tile // 16, tile // 3)
                    draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
            canvas.paste(piece, (left, top))
    noise = np.random.default_rng(seed).normal(0, 4, (size[1], size[0], 3))
    pixels = np.clip(np.asarray(canvas, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return Path(path)


FLOWER_CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def write_random_run(folder: Path, variant: str = "b0", photos: Sequence[str] = (),
                     class_names: Sequence[str] = FLOWER_CLASSES) -> Path:
    """folder/best.pth shaped like a run's (optimizer state for every layer) with best.onnx beside it, for a
    randomly initialised `variant`: speed does not depend on what the weights learned. The BatchNorm statistics
    are measured on up to 64 `photos` when given; freshly initialised ones leave the activations so small that
    they turn into denormal floats, which slow every CPU backend down by large, different factors."""
    import torch

    import model as M
    from effnet.atomic_files import save_checkpoint
    from effnet.checkpoints import checkpoint_fields
    from effnet.data.images import Preprocessing
    from effnet.inference.onnx_conversion import export_checkpoint
    from effnet.run_files import BEST_CHECKPOINT
    from effnet.variants import image_settings

    torch.manual_seed(0)
    network = M.create_model(variant, len(class_names)).train()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = the average over every batch seen
    preprocessing = Preprocessing.from_settings(image_settings(variant))
    with torch.no_grad():
        for start in range(0, min(len(photos), 64), 16):
            network(torch.from_numpy(np.stack([preprocessing.load(p) for p in photos[start:start + 16]])))
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    for parameter in network.parameters():
        optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)
    path = folder / BEST_CHECKPOINT
    save_checkpoint({**checkpoint_fields(network.eval()), "class_names": list(class_names),
                     "image": image_settings(variant), "optimizer": optimizer.state_dict(), "epoch": 1}, path)
    export_checkpoint(path, photos=photos[:8])
    return path
