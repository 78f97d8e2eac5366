"""Signature-like marks: find small handwritten-stroke regions, describe them for matching.

A signature is thin ink, wider than tall, small against the picture, detached from
the main subject, usually near a corner or an edge. We find such connected stroke
groups and describe each by its normalised ink shape, so a mark can be matched
against an artist's registered signature samples (jitter-tolerant: blurred shape).
"""

from __future__ import annotations

import cv2
import numpy as np

SHAPE = (16, 48)  # (h, w) of the normalised ink image
DIM = SHAPE[0] * SHAPE[1]


def ink_mask(rgb: np.ndarray, tol: int = 40) -> np.ndarray:
    """Pixels that differ clearly from the image's border colour (white paper, transparent)."""
    rgb = np.asarray(rgb)[..., :3]
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    bg = np.median(border, axis=0)
    return np.abs(rgb.astype(np.int16) - bg).max(axis=2) > tol


def descriptor(mask: np.ndarray) -> np.ndarray:
    """Scale- and position-free shape of the ink: cropped, letterboxed to 1:3, blurred, centred."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros(DIM, np.float32)
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)
    h, w = crop.shape
    target = SHAPE[1] / SHAPE[0]
    if w / h < target:
        pad = int(round(h * target - w))
        crop = np.pad(crop, ((0, 0), (pad // 2, pad - pad // 2)))
    else:
        pad = int(round(w / target - h))
        crop = np.pad(crop, ((pad // 2, pad - pad // 2), (0, 0)))
    small = cv2.resize(crop, (SHAPE[1], SHAPE[0]), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (5, 5), 1.2).ravel()
    small -= small.mean()
    return (small / max(float(np.linalg.norm(small)), 1e-6)).astype(np.float32)


def _stroke_width(component: np.ndarray) -> float:
    dist = cv2.distanceTransform(component.astype(np.uint8), cv2.DIST_L2, 3)
    return 2.0 * float(dist[component].mean()) if component.any() else 0.0


def find_marks(rgb: np.ndarray, max_marks: int = 4) -> list[tuple[tuple[int, int, int, int], float, np.ndarray]]:
    """Candidate signature regions as (pixel box, signature-likeness in [0,1], ink mask crop).

    Strokes are grouped by a small dilation (letters of one name join), the largest
    group is taken as the subject and never reported.
    """
    h, w = rgb.shape[:2]
    ink = ink_mask(rgb)
    if not ink.any():
        return []
    k = max(1, round(min(h, w) / 48))
    grouped = cv2.dilate(ink.astype(np.uint8), np.ones((2 * k + 1, 2 * k + 1), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(grouped, connectivity=8)
    if n <= 2:
        return []
    subject = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    out = []
    for i in range(1, n):
        if i == subject:
            continue
        x, y, bw, bh, _ = stats[i]
        comp = (labels == i) & ink
        npx = int(comp.sum())
        if npx < max(6, h * w // 4000) or bw > 0.6 * w or bh > 0.35 * h or bw < 0.06 * w:
            continue
        aspect = bw / max(bh, 1)
        density = npx / float(bw * bh)
        width = _stroke_width(comp) / min(h, w)
        cx, cy = (x + bw / 2) / w, (y + bh / 2) / h
        edge = min(cx, 1 - cx, cy, 1 - cy)  # 0 at the border, 0.5 in the centre
        score = (_ramp(aspect, 1.0, 2.2) * 0.35 + (1 - _ramp(density, 0.35, 0.7)) * 0.25
                 + (1 - _ramp(width, 0.025, 0.06)) * 0.2 + (1 - _ramp(edge, 0.12, 0.35)) * 0.2)
        out.append(((int(x), int(y), int(x + bw), int(y + bh)), float(score), comp[y:y + bh, x:x + bw]))
    out.sort(key=lambda m: -m[1])
    return out[:max_marks]


def _ramp(v: float, lo: float, hi: float) -> float:
    return float(np.clip((v - lo) / (hi - lo), 0.0, 1.0))
