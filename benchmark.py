"""Speed and memory of this project against torchvision's EfficientNet, side by side in one run."""
import random
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


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
