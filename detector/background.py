"""A procedural background set: images in nobody's hand, for calibrating style scores.

Leave-one-out calibration only sees registered works, so a blank page or a photo
of noise (far from everything, but a little less far from one artist) could look
"most like" someone. These images teach the calibration what "nobody" looks like:
flat colours, gradients, noise at several scales, random geometric shapes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def images(n: int = 48, size: int = 64, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # flat colour, sometimes white or black
            colour = tuple(int(c) for c in rng.integers(0, 256, 3)) if i % 8 else (255, 255, 255)
            img = Image.new("RGB", (size, size), colour)
        elif kind == 1:  # linear gradient between two colours
            a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            t = np.linspace(0, 1, size)[None, :, None] if i % 2 else np.linspace(0, 1, size)[:, None, None]
            arr = a * (1 - t) + b * t
            img = Image.fromarray(np.broadcast_to(arr, (size, size, 3)).astype(np.uint8))
        elif kind == 2:  # noise, smoothed to a random scale
            img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 4))))
        else:  # random shapes on a random paper
            img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(120, 256, 3)))
            draw = ImageDraw.Draw(img)
            for _ in range(int(rng.integers(2, 8))):
                x0, y0 = rng.integers(0, size, 2)
                w, h = rng.integers(4, size // 2, 2)
                x1, y1 = x0 + w, y0 + h
                fill = tuple(int(c) for c in rng.integers(0, 256, 3))
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([int(x0), int(y0), int(x1), int(y1)],
                                                                        fill=fill)
        out.append(img)
    return out
