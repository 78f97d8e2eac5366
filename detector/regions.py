"""Region-level evidence: windows of an image described so pieces can be traced.

A collage or chimera is made of pieces of registered works, so we describe each
registered work by overlapping windows at two part-like scales, and a query by a
denser set of windows. A near-identical window pair says "this piece of the query
came from that place of that work", whatever the rest of the image is.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from detector import resample

PATCH = 12  # descriptor side: 12x12 RGB
DIM = PATCH * PATCH * 3
MIN_CONTENT = 10.0  # grey-level std below which a window is flat background: uninformative
# window pixels reduced in one batch: each RGB pixel becomes 24 bytes of float64 on the way, so a 4096 px
# query's 25 half-size windows in one batch took 3 GB; windows are independent, so batches change no value
BATCH_PIXELS = 1 << 22
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
    """(box, descriptor) for each informative window: mean-centred, L2-normalised RGB thumbnail
    (Pillow's BOX reduction to PATCH x PATCH, pixel for pixel: `resample.resize_colour` makes the
    thumbnails of all windows of one size in one batch)."""
    w, h = img.size
    rgb = np.asarray(img)
    by_shape: dict[tuple[int, int], list[tuple[int, int, int]]] = {}  # crop (h, w) -> (window, x0, y0)
    for i, box in enumerate(boxes):
        x0, y0 = int(box[0] * w), int(box[1] * h)
        x1, y1 = max(int(box[2] * w), x0 + 1), max(int(box[3] * h), y0 + 1)
        by_shape.setdefault((y1 - y0, x1 - x0), []).append((i, x0, y0))
    thumbs: dict[int, np.ndarray] = {}
    for (ch, cw), windows_of_shape in by_shape.items():
        per_batch = max(1, BATCH_PIXELS // (ch * cw))  # a large image's windows a few at a time
        for start in range(0, len(windows_of_shape), per_batch):
            group = windows_of_shape[start:start + per_batch]
            crops = np.stack([rgb[y0:y0 + ch, x0:x0 + cw] for _, x0, y0 in group])
            informative = crops.mean(axis=3).std(axis=(1, 2)) >= MIN_CONTENT
            if informative.any():
                small = np.ascontiguousarray(resample.resize_colour(crops[informative], (PATCH, PATCH)), np.float32)
                thumbs.update(zip([i for (i, _, _), keep in zip(group, informative) if keep], small))
    out = []
    for i in sorted(thumbs):
        vec = (thumbs[i] - thumbs[i].mean()).ravel()
        out.append((boxes[i], vec / max(float(np.linalg.norm(vec)), 1e-6)))
    return out
