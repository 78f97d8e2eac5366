"""Local evidence: keypoints matched with geometric verification, then pixel-level proof.

Hashes and colour statistics say "looks alike"; they cannot tell a copy from a
sibling icon that shares its outline. Here a query is matched to a registered
work by SIFT keypoints, a similarity transform is fitted with RANSAC (so crops,
rescales, rotations and flips are undone), and the work is warped onto the query
to measure which of the query's edges it actually explains. Explained edges, not
similar-looking statistics, are the evidence for copies and for the pieces of a
collage or chimera.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

CANVAS = 256  # keypoint scale: the longer side of every image, so 64 px icons have room for keypoints
N_FEATURES = 250
# Verification scale: works are warped onto the query and compared here. Twice a 64 px icon's side
# holds all its detail; at CANVAS every ECC iteration and window statistic cost four times as much,
# for the same verdicts (benchmarks: docs/benchmarks.md, "Verification on a 128 px canvas").
VERIFY = 128


def canvas(img: Image.Image, side: int = CANVAS) -> np.ndarray:
    """RGB array with the longer side `side` (icons upscaled smoothly, large images reduced)."""
    s = side / max(img.size)
    size = (max(8, round(img.width * s)), max(8, round(img.height * s)))
    return np.asarray(img.convert("RGB").resize(size, Image.Resampling.BICUBIC))


def gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


_SIFT = None


def keypoints(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(points Nx2 in canvas pixels, RootSIFT descriptors Nx128, L2-normalised)."""
    global _SIFT
    if _SIFT is None:
        _SIFT = cv2.SIFT_create(nfeatures=N_FEATURES, contrastThreshold=0.02)
    kps, desc = _SIFT.detectAndCompute(gray(rgb), None)
    if desc is None or not kps:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    desc = desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-7)  # RootSIFT: L1, sqrt, then unit L2
    desc = np.sqrt(desc)
    desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-7)
    pts = np.array([k.pt for k in kps], np.float32)
    return pts, desc.astype(np.float32)


def _mirror_order() -> np.ndarray:
    """Where each SIFT descriptor entry goes when the image is mirrored left to right.

    A descriptor is 4x4 spatial cells x 8 gradient orientations in the keypoint's own frame,
    whose angle a mirror turns from t to 180 - t: the cells' rows swap ends and every
    orientation o becomes -o. (Checked on 365 keypoints found in both an icon and its mirror:
    cosine 0.999 between the moved descriptor and the one SIFT computes on the mirror.)"""
    order = np.empty(128, np.int64)
    for r in range(4):
        for c in range(4):
            for o in range(8):
                order[((3 - r) * 4 + c) * 8 + (-o) % 8] = (r * 4 + c) * 8 + o
    return order


_MIRROR = _mirror_order()


MIRROR_X = 0.5  # SIFT on a mirrored canvas of width W puts the keypoint found at x at W - 0.5 - x


def mirrored(pts: np.ndarray, desc: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The keypoints of the image mirrored left to right, from its own: SIFT without a second run.
    Points go where SIFT itself reports them on the mirror (measured on 2,281 keypoints: W - 0.5 - x)."""
    out = pts.copy()
    out[:, 0] = width - MIRROR_X - out[:, 0]
    return out, np.ascontiguousarray(desc[:, _MIRROR])


WIN = 7  # ZNCC window side, canvas pixels
DETAIL = 60.0  # grey variance inside a window above which it holds detail worth explaining
AGREE = 0.75  # ZNCC above which two windows show the same thing (copies survive blur, JPEG, recolouring)
EXACT = 0.93  # ZNCC above which (with equal tone and contrast) a window is a cut-out of the work


def _box(x: np.ndarray) -> np.ndarray:
    return cv2.boxFilter(x, cv2.CV_32F, (WIN, WIN), borderType=cv2.BORDER_REFLECT)


def _moments(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel window means and variances."""
    m = _box(a)
    return m, np.maximum(_box(a * a) - m * m, 0)


def _local_stats(a: np.ndarray, b: np.ndarray,
                 a_moments: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, ...]:
    """Per-pixel window variances of a and b, their zero-normalised cross-correlation, and means.
    `a_moments`: a's `_moments`, when known (the query's, the same for every work placed on it)."""
    ma, va = a_moments or _moments(a)
    mb, vb = _moments(b)
    cov = _box(a * b) - ma * mb
    return va, vb, cov / np.sqrt(va * vb + 1e-6), ma, mb


@dataclass
class Alignment:
    """A registered work placed on the query: transform, support and what it explains."""

    work_id: int
    matrix: np.ndarray  # 2x3, query canvas -> work canvas
    support: int  # RANSAC inliers (0 for a hash-proposed placement)
    explained: np.ndarray  # bool over the query canvas: query detail this work accounts for
    exact: np.ndarray  # the part of `explained` reproduced as is (same tones, same contrast): a cut-out piece
    conflict: np.ndarray  # query detail inside the footprint that the work does not reproduce exactly
    inside: np.ndarray  # the work's footprint on the query
    forward: float  # share of the query's detail inside the work's footprint that it explains
    backward: float  # share of the work's own detail (on the query) found in the query
    footprint: float  # share of the query's detail that lies inside the work's footprint

    def strength(self, q: "Canvas") -> float:
        """Agreement both ways plus the share of the query's detail reproduced exactly: what makes
        one placement of a work better evidence than another."""
        return self.forward * self.backward + float(self.exact.sum()) / max(int(q.detail.sum()), 1)


def fit(q_pts: np.ndarray, w_pts: np.ndarray, tol: float) -> tuple[np.ndarray | None, np.ndarray]:
    """RANSAC similarity transform query -> work; (matrix or None, inlier mask)."""
    if len(q_pts) < 3:
        return None, np.zeros(len(q_pts), bool)
    m, inl = cv2.estimateAffinePartial2D(q_pts, w_pts, method=cv2.RANSAC, ransacReprojThreshold=tol,
                                         maxIters=2000, confidence=0.995)
    if m is None:
        return None, np.zeros(len(q_pts), bool)
    return m, inl.ravel().astype(bool)


SMOOTH = 1.5  # Gaussian sigma (canvas px) before resemblance is measured: blur and JPEG stop mattering


def smooth(gray_img: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(gray_img.astype(np.float32), (0, 0), SMOOTH)


@dataclass
class Canvas:
    """An image on the working canvas, with what alignment needs precomputed once."""

    gray: np.ndarray  # float32
    smooth: np.ndarray
    coarse: np.ndarray  # `smooth` at half size: registration runs there (a quarter of the pixels)

    @classmethod
    def of(cls, rgb: np.ndarray) -> "Canvas":
        g = gray(rgb).astype(np.float32)
        s = smooth(g)
        half = cv2.resize(s, (max(4, s.shape[1] // 2), max(4, s.shape[0] // 2)), interpolation=cv2.INTER_AREA)
        return cls(g, s, half)

    def on_page(self, box: tuple[float, float, float, float]) -> None:
        """Take as detail only windows wholly inside `box` (canvas pixels): a picture with a border of its
        own (an icon's white margin) pasted on a uniform page of another colour. Its edge against the
        page is no detail of the picture, and counted, it kept a copy on a page from explaining half
        of the detail (`footprint`). (A shape drawn straight on a page has no such border: its edge is
        its detail.)"""
        x0, y0, x1, y1 = box
        r = WIN // 2
        inside = np.zeros_like(self.detail)
        inside[math.ceil(y0) + r:math.floor(y1) - r, math.ceil(x0) + r:math.floor(x1) - r] = True
        self.detail = self.detail & inside

    # What only a query needs, computed on first use and kept for all the works placed on it (a
    # work's canvas, cached by the hundred, never needs these)
    @functools.cached_property
    def detail(self) -> np.ndarray:
        """bool: windows with detail worth explaining."""
        return self.gray_moments[1] > DETAIL

    @functools.cached_property
    def gray_moments(self) -> tuple[np.ndarray, np.ndarray]:
        return _moments(self.gray)

    @functools.cached_property
    def smooth_moments(self) -> tuple[np.ndarray, np.ndarray]:
        return _moments(self.smooth)

    @property
    def size(self) -> tuple[int, int]:
        return self.gray.shape[1], self.gray.shape[0]

    @functools.cached_property
    def detail_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), canvas pixels: the query's detail with a window's margin, the part that
        registration needs (beyond it the query is blank, and each pixel costs ECC as much as any other)."""
        ys, xs = np.nonzero(self.detail)
        if not len(xs):
            return 0, 0, *self.size
        return (max(int(xs.min()) - WIN, 0), max(int(ys.min()) - WIN, 0),
                min(int(xs.max()) + 1 + WIN, self.size[0]), min(int(ys.max()) + 1 + WIN, self.size[1]))

    @property
    def coarse_scale(self) -> tuple[float, float]:
        """(x, y) factors from canvas pixels to `coarse` pixels (about a half; sides are rounded)."""
        return self.coarse.shape[1] / self.size[0], self.coarse.shape[0] / self.size[1]


WANDER = 0.03  # largest shift (share of VERIFY) registration may make before it counts as lost
# Half-size ECC iterations. Placements arrive within a few pixels (keypoints, hashes) or one window
# shift (windows), and the full-size polish follows: 10 iterations with a 1e-3 correlation tolerance
# gave the same verdicts as 30 with 1e-4 on 200 scan images at 5/6 of the scoring time
# (docs/benchmarks.md, detection, "Fewer coarse ECC iterations").
COARSE = 10
POLISH = 3  # full-size ECC iterations after the half-size ones (a full-size call costs as much as the half-size run)


def _mask(w: Canvas, focus: tuple[float, float, float, float] | None, coarse: bool) -> np.ndarray | None:
    """The work's pixels registration may use: all (None), or the focus box (work canvas pixels)."""
    if focus is None:
        return None
    img = w.coarse if coarse else w.smooth
    sx, sy = img.shape[1] / w.size[0], img.shape[0] / w.size[1]
    mask = np.zeros(img.shape, np.uint8)
    mask[int(focus[1] * sy):int(np.ceil(focus[3] * sy)), int(focus[0] * sx):int(np.ceil(focus[2] * sx))] = 1
    return mask


def _ecc(template: np.ndarray, image: np.ndarray, warp: np.ndarray, at: tuple[int, int], end: tuple[int, int],
         criteria: tuple, mask: np.ndarray | None) -> np.ndarray:
    """ECC of `image` onto the part of `template` from `at` to `end` (its detail): the warp between the
    whole images, shifted in and out of the part's frame."""
    shift = warp[:, :2] @ np.float32(at)
    part = np.ascontiguousarray(template[at[1]:end[1], at[0]:end[0]])
    moved = warp.copy()
    moved[:, 2] += shift
    _, moved = cv2.findTransformECC(part, image, moved, cv2.MOTION_AFFINE, criteria, mask, 1)
    moved[:, 2] -= moved[:, :2] @ np.float32(at)
    return moved


def refine(q: Canvas, w: Canvas, matrix: np.ndarray,
           focus: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Sub-pixel registration (ECC on the smoothed images) of a coarse placement.

    Proposals from hashes and keypoints can be a pixel or two off, which is enough
    to make an exact cut-out look inexact; a placement that does not converge is kept.
    ECC runs coarse to fine: to convergence on the half-size smoothed images (a quarter
    of the pixels), then a few polishing steps at full size for full sub-pixel accuracy.
    With a focus (the part of the work that matched), only that part is registered: a piece
    pasted from a work sits among pixels the rest of that work does not explain. The query is
    registered on its detail (`Canvas.detail_box`): an icon's blank surround costs ECC as much per
    pixel as its drawing, and flat, it says nothing of where the work lies (docs/benchmarks.md,
    "Registration on the query's detail").
    """
    sq = np.float32([*q.coarse_scale, 1.0])
    sw = np.float32(w.coarse_scale)
    warp = matrix.astype(np.float32) * sw[:, None] / sq[None, :]  # the same placement between half sizes
    stop, polish = cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, POLISH
    x0, y0, x1, y1 = q.detail_box
    c0, c1 = (int(x0 * sq[0]), int(y0 * sq[1])), (int(np.ceil(x1 * sq[0])), int(np.ceil(y1 * sq[1])))
    try:
        warp = _ecc(q.coarse, w.coarse, warp, c0, c1, (stop, COARSE, 1e-3), _mask(w, focus, coarse=True))
        warp = warp * sq[None, :] / sw[:, None]
    except cv2.error:  # too little structure at half size: all the way at full size
        warp, polish = matrix.astype(np.float32).copy(), 30
    try:
        warp = _ecc(q.smooth, w.smooth, warp, (x0, y0), (x1, y1), (stop, polish, 1e-4), _mask(w, focus, coarse=False))
    except cv2.error:
        return matrix
    step = np.abs(warp - matrix)
    # wandered off: not a refinement. A focused placement comes from window matches, whose shifts
    # are quantised to 1/16 of the image (8 px here), so it may move twice as far.
    if step[:, :2].max() > 0.1 or step[:, 2].max() > WANDER * VERIFY * (1 if focus is None else 2):
        return matrix
    return warp


def align(work_id: int, q: Canvas, w: Canvas, matrix: np.ndarray, support: int = 0,
          focus: tuple[float, float, float, float] | None = None) -> Alignment:
    """Warp the work onto the query and measure, window by window, what it explains.

    Resemblance (copies: survives blur, JPEG, recolouring) is measured on smoothed
    images; exactness (cut-out pieces) on the raw ones. Registration is a least-squares
    fit over the whole work (or its focus), so foreign content in the query (a pasted
    piece) can pull it a pixel off a placement that was already exact: the refined
    placement is kept only when it explains at least as much as the one it came from.

    A placement focused on matching windows (a piece of the work) that already reproduces IN_PLACE of
    the query's detail under it exactly is kept unregistered, unless it looks like a whole copy
    (COPY_LIKE, PIECE_MAX), whose score is worth registration's sub-pixel precision: pieces of
    registered works are pasted on their pixel grid, registration (pulled by the rest of the work) left
    54% of window placements worse and 2% clearly better, and skipping it takes 7-8% off scoring's
    time (docs/benchmarks.md, "Pieces in place are not registered").
    """
    unmoved = _measure(work_id, q, w, matrix, support)
    if focus is not None:
        under, exact = int((q.detail & unmoved.inside).sum()), int(unmoved.exact.sum())
        if under and IN_PLACE * under <= exact < PIECE_MAX * q.detail.sum() and \
                unmoved.forward * unmoved.backward < COPY_LIKE:
            return unmoved
    refined = refine(q, w, matrix, focus)
    if refined is matrix:
        return unmoved
    a = _measure(work_id, q, w, refined, support)
    return unmoved if unmoved.strength(q) > a.strength(q) else a


IN_PLACE = 0.2  # share of the query's detail under a piece that it reproduces exactly, unregistered, to stay so...
COPY_LIKE = 0.6  # ...unless it agrees this well both ways (forward x backward): a copy's score needs sub-pixel precision
PIECE_MAX = 0.7  # ...or reproduces this much of all the query's detail: a piece, not the whole (a JPEG copy on a page
# was exact over 99% of the query at forward x backward 0.52 unregistered; registered, a copy at 0.999)
ONTO_QUERY = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # warp flags taking a work onto the query by its matrix


def _as_smooth_as_query(w: Canvas, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A work's smoothed canvas, warped onto the query, blurred to the query's own smoothing. The work was
    smoothed at SMOOTH on its canvas: shrunk by s onto the query (a copy padded or pasted small) that blur
    is SMOOTH / s there, and a sharp work against a smoothed query read as a different picture (a copy
    filling 40% of its picture scored 0.12). The rest, SMOOTH * sqrt(1 - 1 / s^2), is added, over the
    work's edge pixels repeated outward (not the black beyond it, which would darken its margin); nothing
    where the work is not shrunk past 2% (an enlarged work stays blurrier, which resemblance survives)."""
    shrink = math.sqrt(abs(np.linalg.det(matrix[:, :2])))  # work pixels per query pixel
    extra = SMOOTH * math.sqrt(max(0.0, 1 - 1 / shrink ** 2)) if shrink > 0 else 0.0
    if extra <= 0.3:
        return cv2.warpAffine(w.smooth, matrix, size, flags=ONTO_QUERY, borderValue=0)
    return cv2.GaussianBlur(cv2.warpAffine(w.smooth, matrix, size, flags=ONTO_QUERY, borderMode=cv2.BORDER_REPLICATE),
                            (0, 0), extra)


def _measure(work_id: int, q: Canvas, w: Canvas, matrix: np.ndarray, support: int) -> Alignment:
    size = q.size
    warped = cv2.warpAffine(w.gray, matrix, size, flags=ONTO_QUERY, borderValue=0)
    warped_s = _as_smooth_as_query(w, matrix, size)
    inside = cv2.warpAffine(np.ones(w.gray.shape, np.uint8), matrix, size,
                            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0)
    inside = cv2.erode(inside, np.ones((WIN, WIN), np.uint8)) > 0
    _, _, zs, _, _ = _local_stats(q.smooth, warped_s, q.smooth_moments)
    vq, vw_raw, z, mq, mw = _local_stats(q.gray, warped, q.gray_moments)
    w_detail = (vw_raw > DETAIL) & inside
    q_in = q.detail & inside
    explained = q_in & (zs > AGREE)
    contrast = np.sqrt((vq + 1) / (vw_raw + 1))
    exact = q_in & (z > EXACT) & (np.abs(mq - mw) < 12) & (contrast > 0.8) & (contrast < 1.25)
    forward = explained.sum() / max(q_in.sum(), 1)
    backward = (w_detail & (zs > AGREE)).sum() / max(w_detail.sum(), 1)
    footprint = q_in.sum() / max(q.detail.sum(), 1)
    return Alignment(work_id, matrix, support, explained, exact, q_in & ~exact, inside, float(forward),
                     float(backward), float(footprint))
