"""Registration of a part: a piece pasted from a work, found by window matches, is proven exactly."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import draw_icon
from PIL import Image, ImageDraw

from detector import local


def _detailed(seed: int) -> Image.Image:
    """A work with detail everywhere (a crowd of outlined dots), so any piece of it is distinctive."""
    r = random.Random(seed)
    img = Image.new("RGB", (64, 64), "white")
    d = ImageDraw.Draw(img)
    for _ in range(40):
        x, y, s = r.randint(0, 60), r.randint(0, 60), r.randint(3, 10)
        d.ellipse([x, y, x + s, y + s], fill=tuple(r.randint(0, 255) for _ in range(3)), outline=(0, 0, 0))
    return img


@pytest.mark.parametrize("seed,offset", [(0, (2, -2)), (1, (-2, 1)), (2, (2, 2))])
def test_a_moved_piece_registers_on_the_part_that_matched(seed, offset):
    base, donor = draw_icon(1, (230, 180, 40), size=64), _detailed(seed)
    sx, sy, dx, dy, pw, ph = 14, 16, 22, 30, 28, 22  # the piece's place in the donor, and where it was pasted
    query = base.copy()
    query.paste(donor.crop((sx, sy, sx + pw, sy + ph)), (dx, dy))
    q, w = (local.Canvas.of(local.canvas(im, local.VERIFY)) for im in (query, donor))
    s = q.size[0] // 64
    piece = np.zeros(q.detail.shape, bool)
    piece[dy * s:(dy + ph) * s, dx * s:(dx + pw) * s] = True
    piece &= q.detail
    # a window match gives the shift only to 1/16 of the image: here 2 icon pixels off
    off = np.float32([[1, 0, (sx - dx + offset[0]) * s], [0, 1, (sy - dy + offset[1]) * s]])
    focus = (sx * s, sy * s, (sx + pw) * s, (sy + ph) * s)
    exact = lambda a: (a.exact & piece).sum() / piece.sum()  # noqa: E731
    assert exact(local.align(1, q, w, off, 0, focus)) > 0.5  # registered on the piece: proven
    assert exact(local.align(1, q, w, off)) < 0.1  # the whole donor cannot be registered onto a piece of it


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_mirrored_keypoints_are_those_sift_finds_on_the_mirror(seed):
    """kp_flip (flipped copies) comes from moving the image's own keypoints, not a second SIFT run:
    it must be what SIFT sees on the mirrored image."""
    can = local.canvas(draw_icon(seed, (60, 140, 220), size=64))
    pts, desc = local.keypoints(can)
    sift_pts, sift_desc = local.keypoints(np.ascontiguousarray(can[:, ::-1]))

    def found(points: np.ndarray, descs: np.ndarray) -> float:
        """Share of keypoints SIFT also finds on the mirror: within a pixel, descriptor cosine > 0.95."""
        hits = [(near := np.abs(sift_pts - p).max(axis=1) < 1.0).any() and (sift_desc[near] @ d).max() > 0.95
                for p, d in zip(points, descs)]
        return float(np.mean(hits))

    moved_pts, moved_desc = local.mirrored(pts, desc, can.shape[1])
    assert len(pts) >= 20 and found(moved_pts, moved_desc) >= 0.7
    assert found(moved_pts, desc) < 0.5  # the descriptors themselves must change, not only the points


@pytest.mark.parametrize("seed", [6, 7, 8])
def test_a_copy_on_a_larger_blank_canvas_is_registered_on_the_query_detail(seed):
    """ECC runs on the query's detail with a window's margin (`Canvas.detail_box`): an icon's blank
    surround costs as much per pixel as its drawing. A copy pasted onto a canvas four times its area
    is still registered to its true place from a few pixels off, and proven exact (the part of it that
    resampling leaves exact)."""
    icon = draw_icon(seed, (60, 120, 220), size=64)
    query = Image.new("RGB", (128, 128), "white")
    query.paste(icon, (40, 30))
    q, w = (local.Canvas.of(local.canvas(im, local.VERIFY)) for im in (query, icon))
    x0, y0, x1, y1 = q.detail_box
    assert (x1 - x0) * (y1 - y0) < 0.5 * q.size[0] * q.size[1] and x0 <= 40 and y0 <= 30
    truth = np.float32([[2, 0, -79.5], [0, 2, -59.5]])  # query canvas (1 px a pixel) -> the icon's (2 px a pixel)
    start = truth + np.float32([[0, 0, 3], [0, 0, -2]])
    assert np.abs(local.refine(q, w, start) - truth).max() < 0.5  # within resampling's half pixel
    assert local.align(1, q, w, start).exact.sum() >= 0.8 * q.detail.sum()
