"""Region-level evidence: windows of an image described so pieces can be traced.

A collage or chimera is made of pieces of registered works, so we describe each
registered work by overlapping windows at two part-like scales, and a query by a
denser set of windows. A near-identical window pair says "this piece of the query
came from that place of that work", whatever the rest of the image is.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

PATCH = 12  # descriptor side: 12x12 RGB
DIM = PATCH * PATCH * 3
MIN_CONTENT = 10.0  # grey-level std below which a window is flat background: uninformative
Box = tuple[float, float, float, float]


def windows(scales: tuple[tuple[float, float], ...]) -> list[Box]:
    """Normalised boxes for (size, stride) pairs, covering [0,1]^2."""
    out = []
    for size, stride in scales:
        n = int(round((1 - size) / stride)) + 1
        for i in range(n):
            for j in range(n):
                x0, y0 = j * stride, i * stride
                out.append((x0, y0, min(x0 + size, 1.0), min(y0 + size, 1.0)))
    return out


WORK_WINDOWS = windows(((0.5, 0.25), (1 / 3, 1 / 6)))
QUERY_WINDOWS = windows(((0.5, 0.125), (1 / 3, 1 / 12)))


def describe(img: Image.Image, boxes: list[Box]) -> list[tuple[Box, np.ndarray]]:
    """(box, descriptor) for each informative window: mean-centred, L2-normalised RGB thumbnail."""
    w, h = img.size
    arr = np.asarray(img, np.float32)
    out = []
    for box in boxes:
        x0, y0 = int(box[0] * w), int(box[1] * h)
        x1, y1 = max(int(box[2] * w), x0 + 1), max(int(box[3] * h), y0 + 1)
        crop = arr[y0:y1, x0:x1]
        if crop.mean(axis=2).std() < MIN_CONTENT:
            continue
        thumb = np.asarray(Image.fromarray(crop.astype(np.uint8)).resize((PATCH, PATCH), Image.Resampling.BOX),
                           np.float32)
        vec = (thumb - thumb.mean()).ravel()
        out.append((box, vec / max(float(np.linalg.norm(vec)), 1e-6)))
    return out
