"""Hand-crafted style features: how an artist draws, not what is drawn.

They need no downloaded weights, so attribution works offline; with CLIP present
they are fused with it. Blocks: palette, line (outline colour, weight, edge
density), shading (gradients and flatness), texture (local binary patterns).
Each block is L2-normalised so no block dominates by its length.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

SIZE = 128


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / max(float(np.linalg.norm(v)), 1e-8)


def foreground(rgb: np.ndarray, tol: int = 18) -> np.ndarray:
    """Pixels unlike the border colour: the drawing, without its background."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    bg = np.median(border, axis=0)
    return np.abs(rgb.astype(np.int16) - bg).max(axis=2) > tol


def palette(rgb: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Joint colour histogram (HSV, 12 hues x 3 sat x 3 val) of the drawing, sqrt-scaled."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    px = hsv[fg] if fg.sum() > 16 else hsv.reshape(-1, 3)
    h = (px[:, 0].astype(int) * 12) // 180
    s = np.minimum(px[:, 1].astype(int) * 3 // 256, 2)
    v = np.minimum(px[:, 2].astype(int) * 3 // 256, 2)
    hist = np.bincount(h * 9 + s * 3 + v, minlength=108).astype(np.float32)
    return np.sqrt(hist / max(hist.sum(), 1))


def lines(rgb: np.ndarray, gray: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Outline colour, stroke weight and edge statistics."""
    edges = cv2.Canny(gray, 60, 140) > 0
    density = edges.mean()
    dark = gray < 90
    dist = cv2.distanceTransform(dark.astype(np.uint8), cv2.DIST_L2, 3)
    widths = dist[dark]
    weight_hist = np.histogram(widths, bins=6, range=(0, 6))[0].astype(np.float32)
    weight_hist /= max(weight_hist.sum(), 1)
    ring = cv2.dilate(edges.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    darkest = gray <= np.percentile(gray[ring], 20) if ring.any() else dark
    sel = ring & darkest
    ink = rgb[sel].mean(axis=0) / 255 if sel.any() else np.zeros(3)
    return np.concatenate([[density * 4, dark.mean() * 2, fg.mean()], weight_hist, ink]).astype(np.float32)


def shading(rgb: np.ndarray, gray: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Gradient magnitude and orientation histograms plus flatness (distinct-colour count)."""
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy)
    sel = fg if fg.any() else np.ones_like(fg)
    mag_hist = np.histogram(np.log1p(mag[sel]), bins=8, range=(0, 7))[0].astype(np.float32)
    ang = (np.arctan2(gy, gx)[mag > 20] % np.pi)
    ang_hist = np.histogram(ang, bins=8, range=(0, np.pi), weights=mag[mag > 20])[0].astype(np.float32)
    quant = (rgb[sel] // 16).astype(np.int32)
    codes = np.unique(quant[:, 0] * 256 + quant[:, 1] * 16 + quant[:, 2])
    flat = np.array([np.log1p(len(codes)) / 8], np.float32)
    return np.concatenate([mag_hist / max(mag_hist.sum(), 1), ang_hist / max(ang_hist.sum(), 1), flat])


def texture(gray: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Histogram of 8-neighbour local binary patterns (256 codes folded to 59-ish by rotation)."""
    g = gray.astype(np.int16)
    c = g[1:-1, 1:-1]
    code = np.zeros_like(c, dtype=np.int32)
    offsets = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]
    for bit, (dy, dx) in enumerate(offsets):
        nb = g[1 + dy:g.shape[0] - 1 + dy, 1 + dx:g.shape[1] - 1 + dx]
        code |= ((nb - c) > 4).astype(np.int32) << bit
    hist = np.bincount(code[fg[1:-1, 1:-1]] if fg.any() else code.ravel(), minlength=256).astype(np.float32)
    folded = np.zeros(36, np.float32)  # rotation-invariant classes of 8-bit patterns
    np.add.at(folded, _ROT_CLASS, hist)
    return np.sqrt(folded / max(folded.sum(), 1))


def _rotation_classes() -> np.ndarray:
    def canon(x: int) -> int:
        return min(((x >> r) | (x << (8 - r))) & 0xFF for r in range(8))
    reps = sorted({canon(x) for x in range(256)})
    return np.array([reps.index(canon(x)) for x in range(256)])


_ROT_CLASS = _rotation_classes()
BLOCK_WEIGHTS = (1.0, 0.8, 0.8, 0.7)
DIM = 108 + 12 + 17 + 36


def style_vector(img: Image.Image) -> np.ndarray:
    """One L2-normalised style vector (DIM floats) for an RGB image of any size."""
    rgb = np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    fg = foreground(rgb)
    blocks = (palette(rgb, fg), lines(rgb, gray, fg), shading(rgb, gray, fg), texture(gray, fg))
    return _unit(np.concatenate([w * _unit(b) for w, b in zip(BLOCK_WEIGHTS, blocks)]))
