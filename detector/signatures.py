"""Signature-like marks: find small handwritten-stroke regions, describe them for matching.

A signature is thin ink, wider than tall, small against the picture, detached from
the main subject, usually near a corner or an edge. We find such connected stroke
groups and describe each by its normalised ink shape, so a mark can be matched
against an artist's registered signature samples (jitter-tolerant: blurred shape).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

SHAPE = (16, 48)  # (h, w) of the normalised ink image
DIM = SHAPE[0] * SHAPE[1]


WORK = 128  # marks are looked for with the image's longer side at this many pixels
INK = 40  # black-hat response (grey levels) of a pen stroke
FAINT_INK = 30  # ...of its faint stretches, kept when joined to ink above INK (picked on train_marks' pictures)
# ...and of dark ink alone: a name touching lighter artwork (a face's outline, a cloud) joins it at INK,
# and separates from it here (picked on held-out train_marks pictures, of 50, 60 and 80)
DARK_INK = 80
# the ink masks candidates are grouped from, as (faint, strong) for `_ink`: with its faint stretches,
# without them, and the darkest ink alone
INK_LEVELS = ((FAINT_INK, INK), (INK, INK), (DARK_INK, DARK_INK))


def ink_mask(rgb: np.ndarray) -> np.ndarray:
    """Thin strokes darker than their surroundings (morphological black-hat).

    Pen strokes survive, filled shapes and flat colour do not, so a signature written
    over the artwork separates from it; for a sample on white paper it is the ink.
    """
    return _ink(_blackhat(rgb), FAINT_INK)


def _blackhat(rgb: np.ndarray) -> np.ndarray:
    """Black-hat response of the image on the WORK canvas: how much darker than its surroundings each pixel is."""
    rgb = np.asarray(rgb)[..., :3]
    scale = WORK / max(rgb.shape[:2])
    if abs(scale - 1) > 1e-3:
        rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))),
                         interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    g = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return cv2.morphologyEx(g, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))


def _ink(bh: np.ndarray, faint: int, strong: int = INK) -> np.ndarray:
    """Ink above `strong`, with its stretches above `faint` joined to it (no hysteresis when faint >= strong)."""
    if faint >= strong:
        return bh > strong
    # hysteresis: faint stretches of a stroke (thin ink shrunk to a few pixels turns grey) are kept
    # when they connect to clearly dark ink
    n, labels = cv2.connectedComponents((bh > faint).astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[labels[bh > strong]] = True
    keep[0] = False
    return keep[labels]


PAPER_INK = 40  # grey levels from the paper's colour at which a sample's pixel is ink


def paper_ink(rgb: np.ndarray, tol: int = PAPER_INK) -> np.ndarray:
    """Ink of a signature *sample* on paper: whatever differs clearly from the border colour.

    Samples may be written with a thick pen, which the black-hat (made for thin strokes
    over artwork) would hollow out.
    """
    return _from_paper(rgb) > tol


def _from_paper(rgb: np.ndarray) -> np.ndarray:
    """How far each pixel's colour is from the paper's (the median border colour), in grey levels."""
    rgb = np.asarray(rgb)[..., :3].astype(np.int16)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return np.abs(rgb - np.median(border, axis=0)).max(axis=2)


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


VIEWS = (0.15, 0.22, 0.3, 0.4, 0.55)  # widths (share of the WORK canvas) a registered sample is seen at
# slants (degrees) a registered sample is seen at: names are signed at a slight angle, samples scanned level.
# Picked on an independent dev set (`benchmarks/signer_dev.py`: procedural hands and DejaVu names on procedural
# icons, 6 registered signers and 2 unknown): signer accuracy 0.757 level only, 0.830 with +-4, 0.828 with +-3
# and +-6, which also named unknown hands more often (0.385 against 0.333)
ROTATIONS = (0.0, -4.0, 4.0)


def sample_descriptors(rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], np.ndarray]]:
    """(box, descriptor) of a signature sample on paper as marks on pictures are seen: its ink drawn at a
    few widths and slants on a blank picture and found again by `ink_mask`; box is where it was drawn
    (normalised), so a mark is compared with the views of its own size (`same_size`).

    A mark on a picture is small, so the black-hat sees its strokes thick relative to the letters,
    while the sample on paper is large and thin-stroked: described as it lies on paper, a signer's own
    marks often fell below the match threshold. The views are drawn on pictures of two sizes, WORK and
    half of it, because a mark on a small picture is enlarged to WORK before its ink is found, which
    thickens and softens its strokes further. A slant of a few degrees moves the ends of a wide mark
    by rows of the 16-row descriptor, so each width is also drawn slanted (ROTATIONS).
    """
    away = _from_paper(rgb)
    ink = away > PAPER_INK  # as paper_ink
    ys, xs = np.nonzero(ink)
    if len(xs) == 0:
        return [((0.0, 0.0, 1.0, 1.0), descriptor(ink))]
    # ink coverage (anti-aliasing kept) as the alpha of dark ink laid on a blank picture
    level = np.clip(away[ys.min():ys.max() + 1, xs.min():xs.max() + 1] * 2, 0, 255).astype(np.uint8)
    out = []
    for alpha in (_slanted(level, angle) for angle in ROTATIONS):
        for side in (WORK // 2, WORK):
            for share in VIEWS:
                w = max(4, int(side * share))
                h = max(2, min(side - 4, round(alpha.shape[0] * w / alpha.shape[1])))
                a = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
                picture = np.full((side, side), 255.0, np.float32)
                picture[2:2 + h, 2:2 + w] -= a * (255 - 30)  # dark ink over white paper
                box = (2 / side, 2 / side, (2 + w) / side, (2 + h) / side)
                out.append((box, descriptor(ink_mask(np.repeat(picture.astype(np.uint8)[..., None], 3, axis=2)))))
    return out


def _slanted(alpha: np.ndarray, angle: float) -> np.ndarray:
    """`alpha` turned by `angle` degrees (counter-clockwise) about its centre, on a canvas grown to hold all of it."""
    if not angle:
        return alpha
    h, w = alpha.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * sin + w * cos) + 1, int(h * cos + w * sin) + 1
    m[0, 2] += (nw - w) / 2
    m[1, 2] += (nh - h) / 2
    return cv2.warpAffine(alpha, m, (nw, nh), flags=cv2.INTER_LINEAR)


VIEW_RATIO = 1.6  # a mark is compared with the views whose width is within this factor of its own


def same_size(mark_box: tuple[int, int, int, int], image_size: tuple[int, int],
              view_box: tuple[float, float, float, float]) -> bool:
    """Whether a sample's view is drawn at about the mark's width (both as shares of the WORK canvas,
    whose side is the picture's longer side). Tiny views blur into blobs that resemble every hand,
    so comparing across sizes lets the wrong signer come close."""
    mark = (mark_box[2] - mark_box[0]) / max(image_size)
    view = view_box[2] - view_box[0]
    return view >= 0.99 or 1 / VIEW_RATIO <= view / max(mark, 1e-6) <= VIEW_RATIO


FEATURES = ("aspect", "strokes", "density", "width", "path", "edge", "bw", "bh", "dark", "isolation")
MODEL_PATH = Path(__file__).with_name("marks_model.json")


@dataclass(frozen=True)
class Candidate:
    box: tuple[int, int, int, int]  # pixels of the input image
    ink: np.ndarray  # bool crop of the stroke mask
    features: np.ndarray  # FEATURES, in order
    beyond_body: bool = False  # grouped from the ink beyond the picture's filled shapes (`_body`)
    carved: bool = False  # carved out of a grouping too large to be a mark (`CARVE`): trusted only when it matches


def candidates(rgb: np.ndarray) -> list[Candidate]:
    """Groups of thin strokes that could be a signature, with the features that say how much.

    Letters of one name are joined by a short horizontal dilation, after strokes too large to be
    part of a mark are set aside (else a name written close to an outline merges with it); groups
    that touch the picture's edge are dropped, because a mark is written on the picture, and a
    stroke cut by the edge belongs to a shape that goes on beyond it. Groups come from the ink with
    and without its faint stretches, and from its darkest ink alone: faint ink completes a thin name
    but can also join it to nearby artwork, as can lighter artwork the name touches, so every grouping
    is offered and the likeness model judges. A name a letter's gap from artwork joins it when letters
    are joined; the groupings set aside as too large are joined again, tighter (`CARVE`), and what
    that carves out is offered as `carved`. A name touching dark artwork joins it at every level;
    the ink beyond the picture's filled shapes (`_body`) is offered last, for `find_marks` to use
    where nothing else is. Features: shape
    (wide, short), stroke count, ink density, stroke width, ink path length per box
    diagonal (writing folds a long path into a small box; an outline does not),
    distance to the nearest edge, size, darkness of the ink and how isolated it is.
    """
    bh = _blackhat(rgb)
    H, W = bh.shape
    small = cv2.resize(np.ascontiguousarray(rgb[..., :3]), (W, H), interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    out: list[Candidate] = []
    seen: set[tuple[int, ...]] = set()
    for faint, strong in INK_LEVELS:
        found, too_large = _groups(rgb.shape[:2], gray, _ink(bh, faint, strong), seen)
        out += found
        if too_large.any():
            out += _groups(rgb.shape[:2], gray, too_large, seen, join=CARVE)[0]
    out += _groups(rgb.shape[:2], gray, _ink(bh, FAINT_INK, INK) & ~_body(small), seen, beyond_body=True)[0]
    return out


JOIN = (7, 3)  # (width, height) of the dilation that joins the letters of a name
# ...and of the tighter one that carves a name out of a grouping set aside as too large: a name written
# close to artwork (a mouth, a robot's teeth, a cloud's outline) joins it at JOIN, a letter's gap away.
# Carved groupings are fragments of artwork as often as names, so they count only when they match a
# registered hand clearly (score.CARVED_MATCH)
CARVE = (4, 3)
BODY_OPEN = 7  # side (WORK pixels) of the opening that leaves a picture's filled shapes and drops pen strokes


def _body(small: np.ndarray) -> np.ndarray:
    """The picture's filled shapes (`small`: the picture on the WORK canvas): what differs from the
    background colour, opened so that pen strokes drop out, then grown by a pixel. A name that
    touches dark artwork (hair, an outline) joins it in every ink mask and is set aside with it as
    too large; its ink beyond the body is the name alone. Empty for a picture without a background
    (`_from_paper` then finds everything different)."""
    shapes = (_from_paper(small) > PAPER_INK).astype(np.uint8)
    body = cv2.morphologyEx(shapes, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (BODY_OPEN,) * 2))
    return cv2.dilate(body, np.ones((3, 3), np.uint8)) > 0


def _groups(size: tuple[int, int], gray: np.ndarray, ink: np.ndarray, seen: set,
            beyond_body: bool = False, join: tuple[int, int] = JOIN) -> tuple[list[Candidate], np.ndarray]:
    """The candidates of one ink mask (on the WORK canvas, as `gray`) whose (x, y, w, h) is not in `seen`
    yet, and the strokes of the groupings set aside as too large or cut by the picture's edge (for
    `CARVE`); boxes are returned in the pixels of the picture, whose (height, width) is `size`.
    Candidates grouped with a join other than JOIN are `carved`."""
    h, w = size
    H, W = ink.shape
    # strokes too large to belong to a mark (outlines, long contours) are left out before letters are
    # joined, so a name written close to an outline is not swallowed by it
    n, labels, stats, _ = cv2.connectedComponentsWithStats(ink.astype(np.uint8), connectivity=8)
    large = (stats[:, 2] > 0.6 * W) | (stats[:, 3] > 0.3 * H)
    large[0] = False
    strokes_ink = ink & ~large[labels]
    grouped = cv2.dilate(strokes_ink.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_RECT, join))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(grouped, connectivity=8)
    out = []
    rejected = np.zeros(n, bool)
    for i in range(1, n):
        x, y, bw, bh, _ = stats[i]
        if bw < 0.08 * W or bh < 3:
            continue
        if bw > 0.6 * W or bh > 0.3 * H or x <= 1 or y <= 1 or x + bw >= W - 1 or y + bh >= H - 1:
            rejected[i] = True
            continue  # too large, or cut by the picture's edge
        if (x, y, bw, bh) in seen:
            continue
        seen.add((x, y, bw, bh))
        comp = (labels[y:y + bh, x:x + bw] == i) & strokes_ink[y:y + bh, x:x + bw]
        strokes = cv2.connectedComponents(comp.astype(np.uint8), connectivity=8)[0] - 1
        padded = np.pad(comp, 1).astype(np.uint8)
        width = 2 * float(cv2.distanceTransform(padded, cv2.DIST_L2, 3)[padded > 0].mean())
        cx, cy = (x + bw / 2) / W, (y + bh / 2) / H
        x0, y0, x1, y1 = max(0, x - 6), max(0, y - 6), min(W, x + bw + 6), min(H, y + bh + 6)
        ring = ink[y0:y1, x0:x1].sum() - comp.sum()
        ring_area = (x1 - x0) * (y1 - y0) - bw * bh
        feats = [bw / max(bh, 1), strokes, comp.sum() / float(bw * bh), width,
                 comp.sum() / max(width, 1) / np.hypot(bw, bh), min(cx, 1 - cx, cy, 1 - cy), bw / W, bh / H,
                 1 - gray[y:y + bh, x:x + bw][comp].mean() / 255, ring / max(ring_area, 1)]
        box = (int(x * w / W), int(y * h / H), int(np.ceil((x + bw) * w / W)), int(np.ceil((y + bh) * h / H)))
        out.append(Candidate(box, comp, np.array(feats, np.float32), beyond_body, join != JOIN))
    return out, rejected[labels] & strokes_ink


Trees = tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]


def trees(m: dict) -> Trees:
    """A model as written by train_marks, as padded arrays with one row per tree: (bias, feature,
    threshold, left, right, value scaled by the learning rate, depth). A leaf's left child is -1."""
    width = max(len(t["feature"]) for t in m["trees"])
    pad = lambda key, fill: np.array([t[key] + [fill] * (width - len(t[key])) for t in m["trees"]])  # noqa: E731
    return (float(m["bias"]), pad("feature", 0), pad("threshold", 0.0), pad("left", -1), pad("right", -1),
            pad("value", 0.0) * m["learning_rate"], int(m["depth"]))


@lru_cache(maxsize=1)
def _model() -> Trees:
    m = json.loads(MODEL_PATH.read_text())
    assert tuple(m["features"]) == FEATURES, "marks_model.json was fitted on other features"
    return trees(m)


def likeness(features: np.ndarray, model: Trees | None = None) -> float:
    """Signature-likeness in [0, 1]: the boosted trees of marks_model.json (detector/train_marks.py).

    Trees rather than a linear model because the marks met in real art lie outside what the
    synthetic training pictures hold, and a linear score grows without bound there, where a
    tree's answer stays that of the nearest region it saw (false marks on emoji fell from 8% to 2%).
    Features are compared as float32, as scikit-learn's trees compare them.
    """
    bias, feature, threshold, left, right, value, depth = model or _model()
    x = np.asarray(features, np.float32).astype(np.float64)
    rows, node = np.arange(len(feature)), np.zeros(len(feature), dtype=int)
    for _ in range(depth):
        child = np.where(x[feature[rows, node]] <= threshold[rows, node], left[rows, node], right[rows, node])
        node = np.where(child >= 0, child, node)
    return float(1 / (1 + np.exp(-(bias + value[rows, node].sum()))))


Mark = tuple[tuple[int, int, int, int], float, np.ndarray, bool]  # (pixel box, signature-likeness, ink crop, carved)


def find_marks(rgb: np.ndarray, min_likeness: float = 0.0, max_marks: int = 3) -> list[list[Mark]]:
    """Candidate signature regions at least `min_likeness` signature-like, likeliest first, each as
    the groupings its ink was offered in (with its faint ink, without, its darkest ink alone, or
    joined to artwork it touches, or carved out of it), the likeliest first (the larger on a tie).
    A grouping belongs to the first mark whose likeliest grouping it mostly overlaps. Groupings of
    the ink beyond the picture's body are offered only where no other grouping at least
    `min_likeness` lies, carved ones aside (they may yet match no hand, see score.CARVED_MATCH)."""
    found = [(c, likeness(c.features)) for c in candidates(rgb)]
    # ink beyond the body only adds marks where the ink masks offered nothing signature-like: cut at
    # the body's edge, a name partly over artwork would also be offered as its loose fragments
    plain = [c.box for c, p in found if not c.beyond_body and not c.carved and p >= min_likeness]
    offered = sorted(((c.box, p, c.ink, c.carved) for c, p in found
                      if not c.beyond_body or all(_overlap(c.box, b) < 0.5 for b in plain)),
                     key=lambda m: (-m[1], -_area(m[0])))
    marks: list[list[Mark]] = []
    for m in offered:
        if m[1] < min_likeness:
            break
        mark = next((g for g in marks if _overlap(m[0], g[0][0]) >= 0.5), None)
        if mark is not None:
            mark.append(m)
        elif len(marks) < max_marks:
            marks.append([m])
    return marks


def _area(box: tuple[int, int, int, int]) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller box: 1 when one box lies inside the other."""
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    return inter / max(min(_area(a), _area(b)), 1)


