"""Perceptual hashes, imagehash's, packed into one binary vector per image.

pHash, dHash and wHash (64 bits each) plus a colour hash are concatenated, so one
Hamming distance in FAISS's binary index sums the four distances: each hash is
fooled by different edits, the sum by fewer.

They are computed here rather than by calling imagehash because a scan hashes all 8
flips and quarter turns of every file, in batches: the same reductions serve every
turn, and one set of numpy calls serves a batch. imagehash stays the definition:
tests/test_hashes.py holds these bits to its functions (and the resizes to Pillow's).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import cv2
import numpy as np
import scipy.fft
from PIL import Image

from detector import colour_tables, resample

HASH_BITS = 64 * 3 + 48  # phash, dhash, whash, colorhash (42 bits, padded to 48)


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode in ("RGB", "L") else img.convert("RGB")


TOL = 12  # how far (per channel) a pixel may be from a border's colour and still be border


def content_box(img: Image.Image, tol: int = TOL) -> tuple[int, int, int, int]:
    """The box inside uniform borders (padding, letterboxing); the whole image if it is mostly border."""
    return _content_box(np.asarray(_rgb(img)), tol)


PAGE = 0.5  # a picture filling at most this share of its image, inside a uniform border, lies on a page


MIN_PICTURE = 16  # pixels on a side a picture on a page needs to be compared on its own...
PAGE_SCALE = 2.0  # ...and how many times longer the page's longer side must be than the picture's


class Picture(NamedTuple):
    """What of an image is compared (`picture`), with its borders (`_outer`): found in the one border
    search of the image that picks the picture, which hashing and scoring then reuse."""

    image: Image.Image  # the whole image, or a picture cut out of its page
    frame: tuple[int, int, int, int]  # where `image` lies in the image
    trimmed: tuple[int, int, int, int]  # `image`'s `content_box`...
    page: tuple[int, int, int, int] | None  # ...and the picture it holds on a uniform page, if any


def picture(img: Image.Image, cut: bool = True) -> Picture:
    """What of an image is compared: a picture small on a uniform page (`_outer`, its longer side at
    most 1 / PAGE_SCALE of the page's) on its own, else (or without `cut`) the whole image.

    Every comparison runs on a canvas of fixed size (`local.VERIFY`, `local.CANVAS`). Scored with its
    page, a 64 px icon on a 512 px page had an eighth of that canvas: too few pixels of detail to tell
    one face from another (an unregistered face on a page was called a copy of any registered one at
    0.99), and on larger pages none at all (a registered work pasted on a 1024 px page was missed). A
    picture nearly filling its image is not cut out: an icon's drawing inside its own white margin
    would then be compared at another scale than its registered siblings, drawn with that margin, and
    the pieces of a collage of them would no longer match exactly."""
    raw = _rgbx(img)
    trimmed, page = _outer(raw)
    whole = Picture(img, (0, 0, img.width, img.height), trimmed, page)
    if page is None or not cut:
        return whole
    x0, y0, x1, y1 = page
    if min(x1 - x0, y1 - y0) < MIN_PICTURE or max(img.size) < PAGE_SCALE * max(x1 - x0, y1 - y0):
        return whole
    return Picture(img.crop(page), page, *_outer(raw[y0:y1, x0:x1]))  # a crop's RGBX is the slice


def _outer(raw: np.ndarray) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int] | None]:
    """(`content_box`, the box of a picture pasted on a uniform page: `_page`) of an `_rgbx` copy."""
    height, width = raw.shape[:2]
    far = _far(raw, raw[0, 0].tolist(), TOL, 3)
    box = _bounds(far, 4)
    trimmed = box if box and (box[2] - box[0]) * (box[3] - box[1]) >= 0.2 * width * height else (0, 0, width, height)
    return trimmed, _page(raw, far, box)


SPECK = 32  # a mark of at most this many pixels beyond the picture (one changed pixel, saved as JPEG, was
# up to 14 at quality 85, 29 at 75 and 37 at 40: 576 cases), with at least...
GAP = 8  # ...this many clean rows or columns between them, does not make the page's picture larger
RING = 256  # pixels of the image's outermost ring that vote on the page's colour, at most


def _page(raw: np.ndarray, far: np.ndarray, box: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
    """The box of a picture pasted on a uniform page, when it fills at most PAGE of the image, however
    little; None otherwise. `far` is `_far` of the `_rgbx` copy `raw` from its top-left pixel, `box`
    the bounding box of what is off that colour (None: nothing is).

    The page's colour is one that at least half of the image's outermost ring of pixels shares
    (`_page_colour`): the top-left pixel's if it is, else the ring's own, when the patch off it that
    holds the top-left pixel is a speck (then cleared, however near the picture). A speck on the
    page far from the picture (`_span`) is no part of it. Read from one pixel and boxed with every
    pixel off it, one changed pixel hid the page: a copy pasted on a black page with a grey top-left
    pixel was scored as the whole page, and found by nothing. A picture that itself reaches the
    top-left corner keeps the page its own pixel gives, as registration trims it (`content_box`): a
    work registered as its whole sheet is still compared whole."""
    height, width = raw.shape[:2]
    colour = _page_colour(raw, far)
    if colour is None:
        return None
    if colour is not _TOP_LEFT:
        off = _off(_far(raw, colour + [0], TOL, 3))
        # the top-left pixel on that page (a grained or shaded one), or its own patch off it a speck,
        # cleared; then what is left may still reach the corner: a drawing's own dot there
        if not off[0, 0] or cv2.floodFill(off, None, (0, 0), 0, flags=8)[0] <= SPECK:
            page = _spans(off)
            if page is None or page[:2] != (0, 0):
                return _on_page(page, width, height)
    if box is None:
        return None
    x0, y0, x1, y1 = box  # each edge of the box with more than SPECK pixels off the page within GAP of it is
    bands = (far[y0:y0 + GAP + 1], far[max(0, y1 - GAP - 1):y1],  # the picture's (a box under GAP wide: whole)
             far[:, 4 * x0:4 * (x0 + GAP + 1)], far[:, 4 * max(0, x1 - GAP - 1):4 * x1])
    if all(np.count_nonzero(band.view("<u4")) > SPECK for band in bands):
        return _on_page(box, width, height)
    return _on_page(_spans(_off(far)), width, height)


_TOP_LEFT: list[int] = []  # `_page_colour`'s answer when the top-left pixel's colour is the page's


def _page_colour(raw: np.ndarray, far: np.ndarray) -> list[int] | None:
    """The colour of the page an `_rgbx` copy lies on (`far`: `_far` of it from its top-left pixel):
    `_TOP_LEFT` when at least half of the pixels of its outermost ring (RING of them, evenly spaced)
    are within TOL of the top-left pixel's; else the ring's median colour if that holds of it; None
    otherwise (no uniform page). A vote of the whole ring for a colour of its own: two changed corner
    pixels outvoted two on the page, and four left no corner to vote for."""
    step = max(1, (2 * (raw.shape[0] + raw.shape[1])) // RING)
    votes = _ring(far.view("<u4"), step)  # the top-left pixel's vote is read from `far`: nothing more to compute
    if 2 * np.count_nonzero(votes == 0) >= len(votes):
        return _TOP_LEFT
    ring = _ring(raw[..., :3], step).astype(np.int16)
    colour = np.sort(ring, axis=0)[len(ring) // 2]  # each channel's median (the upper one): np.median costs 5x
    if 2 * np.count_nonzero((np.abs(ring - colour) <= TOL).all(axis=1)) >= len(ring):
        return colour.tolist()
    return None


def _ring(a: np.ndarray, step: int) -> np.ndarray:
    """Every `step`-th element of the outermost rows and columns of `a` (h, w, ...): top, bottom, left, right."""
    return np.concatenate([a[0, ::step], a[-1, ::step], a[::step, 0], a[::step, -1]])


def _on_page(box: tuple[int, int, int, int] | None, width: int, height: int) -> tuple[int, int, int, int] | None:
    """`box` when it fills at most PAGE of a width x height image (a picture on a page), else None."""
    return box if box is not None and (box[2] - box[0]) * (box[3] - box[1]) <= PAGE * width * height else None


def _off(far: np.ndarray) -> np.ndarray:
    """(h, w) uint8 of `far` (`_far` of an `_rgbx` copy): 1 where a pixel is past tol in a counted channel."""
    return (far.view("<u4") != 0).view(np.uint8)


def _spans(off: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box of what `off` (`_off`) has off the page, less specks (`_span`); None when nothing is."""
    rows = cv2.reduce(off, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel().tolist()
    if not any(rows):
        return None
    (y0, y1), (x0, x1) = _span(rows), _span(cv2.reduce(off, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel().tolist())
    return x0, y0, x1, y1


def _span(counts: list[int]) -> tuple[int, int]:
    """[start, end) of the non-zero `counts` (pixels off the page per row or column), less any run at
    either end holding at most SPECK of them and parted from the rest by GAP zeros or more. (A plain
    loop: at icon sizes numpy's per-call overhead cost several times as much.)"""
    runs: list[list[int]] = []  # [start, end, pixels]
    for i, n in enumerate(counts):
        if n and runs and i - runs[-1][1] < GAP:
            runs[-1][1:] = [i + 1, runs[-1][2] + n]
        elif n:
            runs.append([i, i + 1, n])
    i, j = 0, len(runs) - 1
    while i < j and runs[i][2] <= SPECK:
        i += 1
    while j > i and runs[j][2] <= SPECK:
        j -= 1
    return runs[i][0], runs[j][1]


def _nested(raw: np.ndarray, trimmed: tuple[int, int, int, int],
            page: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
    """The picture on the page (`_page`) of an `_rgbx` copy inside a second border of its own (an icon
    drawn on white, pasted on a coloured page), when that is not `trimmed` (its `content_box`): hashed
    as `content_box` trims it, such a copy is the whole page (the icon fills under a fifth of it) or the
    icon with its white margin, while its registered source was hashed without. None otherwise."""
    if page is None:
        return None
    x0, y0, x1, y1 = page
    u0, v0, u1, v1 = _content_box(raw[y0:y1, x0:x1], channels=3)
    box = (x0 + u0, y0 + v0, x0 + u1, y0 + v1)
    return None if min(u1 - u0, v1 - v0) < 8 or box == trimmed else box


def _content_box(arr: np.ndarray, tol: int = TOL, channels: int | None = None,
                 least: float = 0.2) -> tuple[int, int, int, int]:
    """`content_box` of an image's pixels: (h, w) or (h, w, depth <= 4) uint8, of whose channels the
    first `channels` (all by default) count: an RGBX copy's padding byte X is whatever Pillow was
    given (a TIFF's extra samples, 0 in `Image.new`), so it must not decide what is border.

    A pixel is border when every channel is within tol of the corner's. Each byte's distance from
    its channel's corner value, less tol (less 255 for a channel that does not count; OpenCV
    saturates at 0), is non-zero exactly where a channel is past tol; read as rows of width x depth
    bytes, their bounding rectangle divided by the depth is the content's. Two vectorised passes: a
    per-pixel range test cost 3x as much. Content under `least` of the area is taken for no border."""
    height, width = arr.shape[:2]
    depth = 1 if arr.ndim == 2 else arr.shape[2]
    box = _bounds(_far(arr, np.atleast_1d(arr[0, 0]).tolist(), tol, depth if channels is None else channels), depth)
    if box is None or (box[2] - box[0]) * (box[3] - box[1]) < least * width * height:
        return (0, 0, width, height)  # mostly border (or all of it): the "border" is the picture
    return box


def _bounds(far: np.ndarray, depth: int) -> tuple[int, int, int, int] | None:
    """The box of the pixels `far` (`_far`, rows of width x depth bytes) has past tol: the bounding
    rectangle of its non-zero bytes, divided by the depth; None when there are none."""
    x, y, w, h = cv2.boundingRect(far)
    return (x // depth, y, -(-(x + w) // depth), y + h) if w else None


def _far(arr: np.ndarray, corner: list[int], tol: int, counted: int) -> np.ndarray:
    """(h, w x depth) bytes of `arr`, (h, w) or (h, w, depth <= 4) uint8, non-zero exactly where one
    of its first `counted` channels is more than `tol` off `corner`'s (`_content_box`)."""
    height = arr.shape[0]
    if arr.ndim == 2 or arr.shape[2] == 1:  # as one row: OpenCV reads a 4x1 image beside a number as two scalars
        return cv2.subtract(cv2.absdiff(arr.reshape(1, -1), float(corner[0])), float(tol)).reshape(height, -1)
    depth = arr.shape[2]
    far = cv2.subtract(cv2.absdiff(arr, tuple(corner) + (0,) * (4 - depth)),
                       tuple(tol if c < counted else 255 for c in range(4)))
    return far.reshape(height, -1)


def hash_bits(img: Image.Image) -> np.ndarray:
    """Packed uint8 vector of HASH_BITS bits."""
    return dihedral_bits(img, variants=1)[0]


def _turn(a: np.ndarray, k: int) -> np.ndarray:
    """The array of dihedral variant k (see `dihedral`): flipped left-right for k >= 4, then k % 4
    counter-clockwise quarter turns, as np.rot90 makes them."""
    return np.rot90(a[:, ::-1] if k >= 4 else a, k % 4)


def _dct_turns() -> tuple[np.ndarray, np.ndarray]:
    """Where each variant's 8x8 low-frequency DCT block takes its coefficients from, and their signs.

    Reversing a DCT-II input negates its odd frequencies, and transposing the input transposes the
    coefficients, so every flip and quarter turn of the image permutes and re-signs the block.
    np.rot90 is a flip of the column axis followed by a transpose.
    """
    order, signs = [], []
    odd = (-1.0) ** np.arange(8)
    for k in range(8):
        idx, sgn = np.arange(64).reshape(8, 8), np.ones((8, 8))
        if k >= 4:
            sgn = sgn * odd[None, :]
        for _ in range(k % 4):
            idx, sgn = idx.T, (sgn * odd[None, :]).T
        order.append(idx.ravel())
        signs.append(sgn.ravel())
    return np.array(order), np.array(signs)


_DCT_ORDER, _DCT_SIGN = _dct_turns()
_BLOCK_ORDER = np.array([_turn(np.arange(64).reshape(8, 8), k).ravel() for k in range(8)])
_WIDE, _TALL = np.arange(72).reshape(8, 9), 72 + np.arange(72).reshape(9, 8)  # into [9x8 reduction, 8x9]
_DH = [_turn(_WIDE if k % 2 == 0 else _TALL, k) for k in range(8)]
_DH_RIGHT = np.array([d[:, 1:].ravel() for d in _DH])
_DH_LEFT = np.array([d[:, :-1].ravel() for d in _DH])


def _median(rows: np.ndarray) -> np.ndarray:
    """Median of each row of 64 along the last axis (np.median's overhead is 20x the work here)."""
    return np.sort(rows, axis=-1)[..., 31:33].mean(axis=-1, keepdims=True)


_LEVEL_BITS = np.array([[v // 2 ** (2 - i) % 2 ** (3 - i) > 0 for i in range(3)] for v in range(8)])


def _rgbx(img: Image.Image) -> np.ndarray:
    """(h, w, 4) uint8 copy of the image's pixels as RGB and a padding byte, Pillow's raw layout for RGB."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return np.frombuffer(rgb.tobytes("raw", "RGBX"), np.uint8).reshape(rgb.height, rgb.width, 4)


def _colours(raw: np.ndarray, trim: bool) -> np.ndarray:
    """(h, w) array of intp (numpy's index type, so the two lookups convert nothing): each pixel's
    colour as `colour_tables` indexes it, of an `_rgbx` copy, inside its `content_box` when `trim`.
    Pillow keeps RGB pixels as 4 bytes, so RGBX is its raw layout: one copy serves the border
    search, the grey levels and the colour counts."""
    if trim:
        x0, y0, x1, y1 = _content_box(raw, channels=3)
        raw = raw[y0:y1, x0:x1]
    return (raw.view("<u4")[..., 0] & 0xFFFFFF).astype(np.intp)


@functools.cache
def _averager(s: int) -> np.ndarray:
    """(s, 8): right-multiplied, the means of each run of s / 8 columns."""
    return np.kron(np.eye(8), np.full((s // 8, 1), 8 / s))


def _block_means(squares: np.ndarray) -> np.ndarray:
    """(n, s, s) squares, s = 8 * 2^k -> (n, 64) means of their 8x8 grids of blocks. Two products with
    power-of-two weights: each is exact, so these are the exact means, as a 5-D mean gives them at
    five times the cost."""
    a = _averager(squares.shape[-1])
    return (a.T @ squares @ a).reshape(len(squares), 64)


def _colour_bits(counts: np.ndarray) -> np.ndarray:
    """imagehash.colorhash(img, binbits=3), bit for bit, from the class counts of each image
    (rows, one column per `colour_tables` class): the fractions of black, grey, and faint and
    bright colours in 6 hue bins, each quantised to 3 bits by imagehash's own coding; 42 bools per row.

    imagehash builds these from an HSV conversion, a dozen masks, two np.histogram calls and a
    Python loop; a lookup of each pixel's class and a bincount per image (`dihedral_bits_many`) give
    the same counts at a fraction of the cost, which matters at bulk-scan rates. The divisions are
    imagehash's, operation for operation, so the quantised values agree exactly.
    """
    black = colour_tables.BLACK
    total = counts.sum(axis=1, keepdims=True)
    colours = np.maximum(1, total - counts[:, [black]] - counts[:, [0]])
    fracs = np.concatenate([counts[:, [black, 0]] / total * 8, counts[:, 1:13] * 8 * 1.0 / colours], axis=1)
    return _LEVEL_BITS[np.minimum(7, fracs.astype(int))].reshape(len(counts), 42)


def dihedral_bits(img: Image.Image, variants: int = 8, trim: bool = False) -> list[np.ndarray]:
    """`hash_bits` of the first `variants` images of `dihedral(img)`, from one set of reductions."""
    return dihedral_bits_many([img], variants, trim)[0]


def dihedral_bits_many(images: list[Image.Image], variants: int = 8, trim: bool = False) -> list[list[np.ndarray]]:
    """For each image, `hash_bits` of the first `variants` images of `dihedral(img)`; with `trim`,
    of the image inside its `content_box`, so a padded copy hashes like its source.

    Reducing an image (grey, resized to a square or to its transpose's shape) commutes
    with flips and quarter turns, so each variant's hash is a fixed re-indexing of the
    same few tiny arrays instead of a new full-size image: pHash (the low-frequency DCT
    block of a 32x32 reduction, re-signed: `_dct_turns`) and dHash (9x8 and 8x9
    reductions) exactly as imagehash computes them; the colour hash is a histogram, the
    same for every variant; wHash is imagehash's Haar LL hash, computed as its equal:
    with the largest LL removed and thresholded at the median, the level-k Haar LL of a
    2^n square is its 8x8 block means (up to a scale and a shift), with ties broken
    exactly rather than by rounding.

    Each image is copied out of Pillow once (`_colours`); its grey levels and colour classes are
    table lookups (`colour_tables`). The resizes run as one batch (`resample.resize_batch`); the
    colour counts are per image (large images would make a batched lookup costly in memory); the
    DCTs, medians, comparisons and packing run once for the whole list, because at icon sizes
    numpy's per-call overhead, not arithmetic, is the cost (the batched DCT is bit-identical to
    one image at a time).
    """
    return _bits([_colours(_rgbx(img), trim) for img in images], variants)


def query_bits(pictures: list[Picture]) -> list[tuple[list[np.ndarray], tuple[int, int, int, int] | None,
                                                        list[np.ndarray]]]:
    """For each picture to score: `dihedral_bits_many(..., trim=True)`'s 8 hashes, its `_nested` box and
    that picture's 8 hashes (none without one). The borders are the ones `picture` found; one copy of
    each picture's pixels serves both hashes, and both are one batch: a scan asks this of every file."""
    outer, inner, nests = [], [], []
    for p in pictures:  # one picture's copy at a time: at 64 Mpx a batch of copies is gigabytes
        raw = _rgbx(p.image)
        x0, y0, x1, y1 = p.trimmed
        nest = _nested(raw, p.trimmed, p.page)
        outer.append(_colours(raw[y0:y1, x0:x1], False))
        if nest:
            inner.append(_colours(raw[nest[1]:nest[3], nest[0]:nest[2]], False))
        nests.append(nest)
    bits = _bits(outer + inner, 8)
    found = iter(bits[len(pictures):])
    return [(b, box, next(found) if box else []) for b, box in zip(bits, nests)]


def _bits(colours: list[np.ndarray], variants: int) -> list[list[np.ndarray]]:
    """`dihedral_bits_many` of images given as `_colours` arrays."""
    n = len(colours)
    if n == 0:
        return []
    classes, grey_of = colour_tables.tables()
    greys = [grey_of.take(c) for c in colours]
    reduced = resample.resize_batch(greys, [(32, 32), (9, 8), (8, 9)])
    small = np.stack([r[0] for r in reduced])
    dh = np.stack([np.concatenate([r[1].ravel(), r[2].ravel()]) for r in reduced])
    scales = np.array([max(1 << (min(g.shape).bit_length() - 1), 8) for g in greys])  # the largest 2^k square
    blocks = np.empty((n, 64))
    at32 = scales == 32  # icons cropped to 32-63 px: the square is the pHash reduction itself
    blocks[at32] = _block_means(small[at32])
    for s in np.unique(scales[~at32]):  # one batched resize per square size
        idx = np.flatnonzero(scales == s)
        resize = [i for i in idx if greys[i].shape != (s, s)]  # Pillow returns an s x s image as it is
        squares = dict(zip(resize, (r[0] for r in resample.resize_batch([greys[i] for i in resize], [(s, s)]))))
        blocks[idx] = _block_means(np.stack([squares.get(i, greys[i]) for i in idx]))
    counts = np.stack([np.bincount(classes.take(c).ravel(), minlength=colour_tables.BLACK + 1) for c in colours])
    # each row's DCT is its own: the 8 lowest rows' row DCTs are the whole array's, in a quarter of the work
    low = scipy.fft.dct(scipy.fft.dct(small, axis=1)[:, :8], axis=2)[:, :, :8].reshape(n, 64)  # (a matmul differs in ties)
    p = low[:, _DCT_ORDER[:variants]] * _DCT_SIGN[:variants]
    grey_bits = np.concatenate([p > _median(p), dh[:, _DH_RIGHT[:variants]] > dh[:, _DH_LEFT[:variants]],
                                # a turn permutes the blocks, which leaves their median alone: threshold once
                                (blocks > _median(blocks))[:, _BLOCK_ORDER[:variants]]], axis=2)
    colour = np.packbits(_colour_bits(counts), axis=1)  # 42 bits, padded with zeros to 6 bytes; every turn's
    packed = np.concatenate([np.packbits(grey_bits, axis=2), np.broadcast_to(colour[:, None], (n, variants, 6))],
                            axis=2)
    return [list(v) for v in packed]


def dihedral(img: Image.Image) -> list[Image.Image]:
    """The 8 flips/rotations by 90 degrees, so a flipped or rotated copy is still found.

    Order: (no flip, flip left-right) x (0, 90, 180, 270 degrees counter-clockwise);
    `dihedral_point` maps coordinates the same way.
    """
    out = []
    for flip in (False, True):
        base = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img
        out += [base, base.transpose(Image.Transpose.ROTATE_90), base.transpose(Image.Transpose.ROTATE_180),
                base.transpose(Image.Transpose.ROTATE_270)]
    return out


def dihedral_point(k: int, u: float, v: float) -> tuple[float, float]:
    """Where normalised point (u, v) of an image lands in its k-th dihedral variant."""
    if k >= 4:
        u = 1 - u
    for _ in range(k % 4):
        u, v = v, 1 - u  # one counter-clockwise quarter turn
    return u, v
