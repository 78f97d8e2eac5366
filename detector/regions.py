"""Region-level evidence: windows of an image described so pieces can be traced.

A collage or chimera is made of pieces of registered works, so we describe each
registered work by overlapping windows at two part-like scales, and a query by a
denser set of windows. A near-identical window pair says "this piece of the query
came from that place of that work", whatever the rest of the image is.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from detector import resample

PATCH = 12  # descriptor side: 12x12 RGB
DIM = PATCH * PATCH * 3
MIN_CONTENT = 10.0  # grey-level std below which a window is flat background: uninformative
# pixels summed at once (a few rows of the image, 12 bytes a pixel as running sums): a large image in
# one piece would hold gigabytes; rows are independent, so the pieces change no value
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


Span = tuple[int, int, int, int]  # a window in pixels: x0, y0, x1, y1


def _spans(size: tuple[int, int], boxes: list[Box]) -> list[Span]:
    w, h = size
    out = []
    for box in boxes:
        x0, y0 = int(box[0] * w), int(box[1] * h)
        out.append((x0, y0, max(int(box[2] * w), x0 + 1), max(int(box[3] * h), y0 + 1)))
    return out


def _varied(rgb: np.ndarray, spans: list[Span]) -> list[bool]:
    """Whether each window's grey levels (the mean of the bands) vary by at least MIN_CONTENT (std).

    The windows' edges fall on a few dozen columns and rows, so the image is summed once into the
    blocks between them (band sums and their squares, a few rows at a time), and each window's sums
    add up from those blocks; the variance is then compared in exact integers.
    """
    h, w, _ = rgb.shape
    xs = sorted({x for s in spans for x in (s[0], s[2])})
    ys = sorted({y for s in spans for y in (s[1], s[3])})
    cols = np.zeros((2, h, len(xs) - 1), np.int64)  # per row: sums of s = r + g + b and of s^2 between columns
    step = max(1, BATCH_PIXELS // w)
    edges = np.subtract(xs[:-1], xs[0])
    for r0 in range(ys[0], ys[-1], step):
        part = rgb[r0:min(r0 + step, ys[-1]), xs[0]:xs[-1]]
        band = part[..., 0].astype(np.int32)  # three adds: numpy's sum over a 3-long axis is several times slower
        band += part[..., 1]
        band += part[..., 2]
        cols[0, r0:r0 + len(band)] = np.add.reduceat(band, edges, axis=1, dtype=np.int64)
        cols[1, r0:r0 + len(band)] = np.add.reduceat(band * band, edges, axis=1, dtype=np.int64)
    blocks = np.add.reduceat(cols[:, ys[0]:ys[-1]], np.subtract(ys[:-1], ys[0]), axis=1)
    table = np.zeros((2, len(ys), len(xs)), np.int64)  # sums from the first edges to each (row, column) edge
    table[:, 1:, 1:] = blocks.cumsum(axis=1).cumsum(axis=2)
    at_x, at_y = {x: i for i, x in enumerate(xs)}, {y: i for i, y in enumerate(ys)}
    out = []
    for x0, y0, x1, y1 in spans:
        a, b, c, d = at_y[y0], at_y[y1], at_x[x0], at_x[x1]
        total, squares = (int(v) for v in table[:, b, d] - table[:, a, d] - table[:, b, c] + table[:, a, c])
        n = (x1 - x0) * (y1 - y0)
        # var(s / 3) >= MIN_CONTENT^2, i.e. (n * sum(s^2) - sum(s)^2) / n^2 >= 9 * MIN_CONTENT^2
        out.append(n * squares - total * total >= 9 * MIN_CONTENT ** 2 * n * n)
    return out


@functools.lru_cache(maxsize=4096)  # three arrays of PATCH numbers each
def _taps(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's BOX reduction of a length n to PATCH as (first tap, end, weight) per output: each output
    is one weight times the sum of a run of inputs (the filter is 1 inside the box, 0 outside, and the
    weights of an output are normalised alike), so sums of runs are all it needs."""
    k = resample.kernel(n, PATCH, "box")
    used = k != 0
    start, end = used.argmax(axis=1), n - used[:, ::-1].argmax(axis=1)
    weight = k[np.arange(PATCH), start]
    assert all((k[j, start[j]:end[j]] == weight[j]).all() and used[j].sum() == end[j] - start[j] for j in range(PATCH))
    return start, end, weight


def _thumbnails(rgb: np.ndarray, shapes: dict[tuple[int, int], list[tuple[int, int, int]]]) -> dict[int, np.ndarray]:
    """12x12 BOX thumbnails of windows, grouped by shape ((h, w) -> [(index, x0, y0)]), as Pillow makes
    them: the horizontal pass, then the vertical, each rounded to 8 bits.

    A BOX output is a weight times the sum of a run of pixels (`_taps`), so both passes are differences
    of running sums: along the rows, one pass over the image serves every window (a few rows at a
    time), then down the horizontal results of each column strip that windows share. Sums are integers
    and weights integers times 2^-22, so float64 products are exact and the pixels are Pillow's;
    reducing each window's pixels anew read a large image's pixels about eight times over.
    """
    every = [w for ws in shapes.values() for w in ws]
    left, right = min(x0 for _, x0, _ in every), max(x0 + cw for (_, cw), ws in shapes.items() for _, x0, _ in ws)
    top, bottom = min(y0 for _, _, y0 in every), max(y0 + ch for (ch, _), ws in shapes.items() for _, _, y0 in ws)
    plans = []  # per shape: its taps, its column strips, and the strips' horizontal passes' running sums down
    for (ch, cw), ws in shapes.items():
        strips = sorted({x0 for _, x0, _ in ws})
        plans.append((_taps(cw), _taps(ch), strips, ws, np.zeros((len(strips), bottom - top + 1, PATCH, 3), np.int32)))
    step = max(1, BATCH_PIXELS // (right - left))
    for r in range(top, bottom, step):
        run = np.zeros((min(step, bottom - r), right - left + 1, 3), np.int32)
        np.cumsum(rgb[r:r + len(run), left:right], axis=1, out=run[:, 1:])
        for (xs, xe, xw), _, strips, _, first in plans:
            for k, x0 in enumerate(strips):
                sums = run[:, x0 - left + xe] - run[:, x0 - left + xs]
                first[k, r - top + 1:r - top + 1 + len(run)] = resample.round_pixels(sums * xw[None, :, None])
    out = {}
    for _, (ys, ye, yw), strips, ws, first in plans:
        np.cumsum(first, axis=1, out=first)
        for k, x0 in enumerate(strips):
            members = [(i, y0 - top) for i, wx, y0 in ws if wx == x0]
            at = np.array([y for _, y in members])[:, None]
            sums = first[k, at + ye] - first[k, at + ys]  # (windows, 12 rows, 12 columns, 3 bands)
            out.update(zip([i for i, _ in members], resample.round_pixels(sums * yw[None, :, None, None])))
    return out


def describe(img: Image.Image, boxes: list[Box]) -> list[tuple[Box, np.ndarray]]:
    """(box, descriptor) for each informative window: mean-centred, L2-normalised RGB thumbnail
    (Pillow's BOX reduction to PATCH x PATCH, pixel for pixel; tests/test_hashes.py holds these
    to Image.resize)."""
    if not boxes:
        return []
    rgb = np.asarray(img)
    spans = _spans(img.size, boxes)
    by_shape: dict[tuple[int, int], list[tuple[int, int, int]]] = {}  # window (h, w) -> (index, x0, y0)
    for i, ((x0, y0, x1, y1), keep) in enumerate(zip(spans, _varied(rgb, spans))):
        if keep:
            by_shape.setdefault((y1 - y0, x1 - x0), []).append((i, x0, y0))
    # Pillow runs the vertical pass first for windows whose height shrinks far more than their width:
    # those are the horizontal-first thumbnails of the image turned on its diagonal, turned back
    turned = {(cw, ch): [(i, y0, x0) for i, x0, y0 in ws] for (ch, cw), ws in by_shape.items()
              if resample.down_first(ch, cw, (PATCH, PATCH))}
    upright = {shape: ws for shape, ws in by_shape.items() if not resample.down_first(*shape, (PATCH, PATCH))}
    thumbs = _thumbnails(rgb, upright) if upright else {}
    if turned:
        thumbs.update((i, t.transpose(1, 0, 2)) for i, t in _thumbnails(rgb.transpose(1, 0, 2), turned).items())
    out = []
    for i in sorted(thumbs):
        thumb = np.ascontiguousarray(thumbs[i], np.float32)
        vec = (thumb - thumb.mean()).ravel()
        out.append((boxes[i], vec / max(float(np.linalg.norm(vec)), 1e-6)))
    return out
