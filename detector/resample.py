"""Pillow's LANCZOS resize of an 8-bit grey array, pixel for pixel, with the kernels cached
(and the BOX weights and rounding that detector/regions.py makes window thumbnails with).

Hashing resizes every image three times to tiny sizes (32x32, 9x8, 8x9). Pillow spends
most of such a call building the filter weights (two sines per tap), which are the same
for every image of the same size. Here the weights are built once per (input, output)
length exactly as Pillow builds them (Resample.c: `precompute_coeffs`, then
`normalize_coeffs_8bpc` to 22-bit fixed point) and a batch of small images is resized by a
few batched matrix products. Every weight is an integer times 2^-22 and every sum a
multiple of 2^-22 below 2^10, so float64 arithmetic is exact in any order; rounding,
clipping and the order of the two passes follow Pillow 13's, so the pixels are Pillow's
(tests/test_hashes.py checks this against Image.resize). Images with a side over
BATCH_MAX go to Pillow itself: there, its banded loops beat dense products.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images
SUPPORT = 3.0  # LANCZOS (a = 3)
BATCH_MAX = 128  # images with no longer side are resized here, zero-padded to the batch's largest


def _sinc(x: np.ndarray) -> np.ndarray:
    """sin(pi x) / (pi x) with the C library's sine (math.sin), which is what Pillow calls:
    numpy's vectorised sine may differ in the last bit, and a bit can flip a rounded weight."""
    px = x * math.pi
    s = np.array([math.sin(v) for v in px.ravel().tolist()]).reshape(px.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(x == 0.0, 1.0, s / px)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((-SUPPORT <= x) & (x < SUPPORT), _sinc(x) * _sinc(x / 3), 0.0)


def _box(x: np.ndarray) -> np.ndarray:
    return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)


FILTERS = {"lanczos": (_lanczos, SUPPORT), "box": (_box, 0.5)}  # Pillow's filter functions and supports


def kernel(in_size: int, out_size: int, name: str = "lanczos") -> np.ndarray:
    """(out_size, in_size) weights of one axis, Pillow's fixed-point integers times 2^-22,
    for Pillow's filter `name` (FILTERS). Kept for lengths up to BATCH_MAX, which every icon and
    hash reduction uses; a large image's (window thumbnails) take a millisecond to build, and kept
    for every size a scan meets they would grow without bound."""
    return (_kernel if in_size <= BATCH_MAX else _kernel.__wrapped__)(in_size, out_size, name)


@functools.lru_cache(maxsize=1024)  # lengths up to BATCH_MAX, outputs up to 128: at most 1024 x 128 KiB
def _kernel(in_size: int, out_size: int, name: str) -> np.ndarray:
    """`kernel`, built: each step is the same IEEE operation as Pillow's C (Resample.c), and the
    weights of an output are summed left to right (a cumulative sum) as Pillow sums them, so the
    rounding to fixed point is the same.
    """
    if in_size == out_size:  # Pillow skips the pass; unit weights leave 8-bit pixels as they are
        return np.eye(in_size)
    filt, reach = FILTERS[name]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = reach * filterscale
    center = (np.arange(out_size) + 0.5) * scale
    lo = np.maximum((center - support + 0.5).astype(int), 0)  # C's (int) truncates toward zero, as astype does
    n = np.minimum((center + support + 0.5).astype(int), in_size) - lo
    x = np.arange(n.max())
    used = x[None, :] < n[:, None]
    w = np.where(used, filt(((x[None, :] + lo[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    total = np.cumsum(w, axis=1)[:, -1:]
    w = np.where(total != 0.0, w / np.where(total != 0.0, total, 1.0), w)
    fixed = np.trunc(w * (1 << PRECISION_BITS) + np.where(w < 0, -0.5, 0.5))
    k = np.zeros((out_size, in_size))
    rows = np.broadcast_to(np.arange(out_size)[:, None], used.shape)
    k[rows[used], (lo[:, None] + x[None, :])[used]] = fixed[used] / (1 << PRECISION_BITS)
    return k


@functools.lru_cache(maxsize=1024)
def _stacked(in_size: int, outs: tuple[int, ...]) -> np.ndarray:
    """The kernels of several output lengths stacked, so one product makes all their first passes."""
    return np.concatenate([kernel(in_size, n) for n in outs])


def round_pixels(acc: np.ndarray) -> np.ndarray:
    """Pillow's clip8, in place: add half, drop the fraction, clamp to 0..255."""
    acc += 0.5
    np.floor(acc, out=acc)
    np.maximum(acc, 0, out=acc)
    return np.minimum(acc, 255, out=acc)


def down_first(h: int, w: int, size: tuple[int, int]) -> bool:
    """Pillow 13 runs the vertical pass first when the height shrinks more than twice as much as
    the width (the order matters: each pass rounds to 8 bits)."""
    return 0 < h - size[1] and h - size[1] > (w - size[0]) * 2


def resize(grey: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`Image.fromarray(grey).resize(size, LANCZOS)` as a float64 array of its (integer) pixels."""
    return resize_batch([grey], [size])[0][0]


def resize_batch(greys: list[np.ndarray], sizes: list[tuple[int, int]]) -> list[list[np.ndarray]]:
    """Each grey image resized to each size: `out[i][t]` is `resize(greys[i], sizes[t])`.

    Each image's horizontal passes to all sizes are one product with the stacked kernels,
    written into a zero-padded batch; each size's vertical pass is then one batched product
    for all images (a zero row under a zero weight adds nothing, so padding changes no
    pixel). At icon sizes a numpy call's overhead outweighs its arithmetic, so fewer calls
    is the point. An (image, size) for which Pillow runs the vertical pass first is redone
    in that order.
    """
    out: list[list[np.ndarray]] = [[] for _ in greys]
    small = [i for i, g in enumerate(greys) if max(g.shape) <= BATCH_MAX]
    for i in sorted(set(range(len(greys))) - set(small)):
        out[i] = [np.asarray(Image.fromarray(greys[i]).resize(s, Image.Resampling.LANCZOS), dtype=np.float64)
                  for s in sizes]
    if not small:
        return out
    ws, hs = tuple(s[0] for s in sizes), tuple(s[1] for s in sizes)
    col, row = np.cumsum((0,) + ws), np.cumsum((0,) + hs)
    height = max(greys[i].shape[0] for i in small)
    first = np.zeros((len(small), height, col[-1]))
    down = np.zeros((len(small), row[-1], height))
    flat = [greys[i].astype(np.float64) for i in small]
    for j, g in enumerate(flat):
        h, w = g.shape
        np.matmul(g, _stacked(w, ws).T, out=first[j, :h])  # every size's horizontal pass at once
        down[j, :, :h] = _stacked(h, hs)
    round_pixels(first)
    for t, size in enumerate(sizes):
        result = round_pixels(down[:, row[t]:row[t + 1]] @ first[:, :, col[t]:col[t + 1]])
        for j, g in enumerate(flat):
            if down_first(*g.shape, size):
                result[j] = round_pixels(round_pixels(kernel(g.shape[0], size[1]) @ g) @ kernel(g.shape[1], size[0]).T)
        for j, i in enumerate(small):
            out[i].append(result[j])
    return out
