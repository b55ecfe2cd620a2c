"""Small generated image folders for tests: classes that differ visibly, and every kind of awkward file."""
import io
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASS_COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 60, 200)}


def class_image(colour: tuple[int, int, int], rng: random.Random, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A noisy field of the class colour (so every crop shows it) with a few shapes in random colours."""
    generator = np.random.default_rng(rng.randrange(2**32))
    pixels = np.array(colour, dtype=np.int16) + generator.integers(-45, 45, (size[1], size[0], 3))
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(2):
        x0, y0 = rng.randrange(0, size[0] // 2), rng.randrange(0, size[1] // 2)
        x1, y1 = x0 + rng.randrange(8, size[0] // 3), y0 + rng.randrange(8, size[1] // 3)
        shade = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=shade)
    return image


def make_class_folders(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    """root/<red|green|blue>/NNN.jpg (and some .png / upper-case .JPEG) with visibly different classes."""
    rng = random.Random(seed)
    for name, colour in CLASS_COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = class_image(colour, rng, (rng.randrange(72, 130), rng.randrange(64, 120)))
            suffix = (".jpg", ".png", ".JPEG")[i % 3]
            image.save(folder / f"{i:03d}{suffix}", quality=92)
    return root


def jpeg_bytes(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()
