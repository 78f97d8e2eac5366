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

import cv2
import numpy as np
import scipy.fft
from PIL import Image

from detector import resample

HASH_BITS = 64 * 3 + 48  # phash, dhash, whash, colorhash (42 bits, padded to 48)


def content_box(img: Image.Image, tol: int = 12) -> tuple[int, int, int, int]:
    """The box inside uniform borders (padding, letterboxing); the whole image if it is mostly border."""
    arr = np.asarray(img)
    corner = np.atleast_1d(arr[0, 0]).astype(int)  # one value per channel, grey images too
    # a pixel is border when every channel is within tol of the corner's; the box bounds the rest
    border = cv2.inRange(arr, np.maximum(corner - tol, 0), np.minimum(corner + tol, 255))
    x, y, w, h = cv2.boundingRect(cv2.bitwise_not(border))
    full = (0, 0, img.width, img.height)
    if w * h < 0.2 * img.width * img.height:
        return full  # mostly border (or all of it): the "border" is the picture
    return (x, y, x + w, y + h)


def autocrop(img: Image.Image) -> Image.Image:
    """Trim uniform borders so a padded copy hashes like its source."""
    box = content_box(img)
    return img if box == (0, 0, img.width, img.height) else img.crop(box)


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


def _colour_labels() -> np.ndarray:
    """Class of each (saturation, hue) pair of a non-black pixel in imagehash's colour hash,
    flattened as [saturation * 256 + hue]: 0 grey (low saturation), 1-6 faint colour by hue bin,
    7-12 bright colour by hue bin, 13 neither (saturation exactly 2/3, which imagehash counts as
    colour but bins nowhere). Black pixels are class 14. Hue bins are np.histogram's over
    linspace(0, 255, 7)."""
    hue_bin = np.minimum(np.searchsorted(np.linspace(0, 255, 7), np.arange(256), side="right") - 1, 5)
    sat = np.arange(256)[:, None]
    return np.where(sat < 256 // 3, 0, np.where(sat < 256 * 2 // 3, 1 + hue_bin[None, :],
                                                 np.where(sat > 256 * 2 // 3, 7 + hue_bin[None, :], 13))
                    ).astype(np.uint8).ravel()


_COLOUR_LABEL = _colour_labels()
_LEVEL_BITS = np.array([[v // 2 ** (2 - i) % 2 ** (3 - i) > 0 for i in range(3)] for v in range(8)])


def _colour_counts(images: list[Image.Image], greys: list[np.ndarray]) -> np.ndarray:
    """Pixels per colour-hash class (`_colour_labels`) of each image: (len(images), 15), by one
    table lookup per image (a byte per pixel besides the HSV bytes, so large images stay cheap)."""
    counts = np.empty((len(images), 15), dtype=np.int64)
    for i, (img, grey) in enumerate(zip(images, greys)):
        hsv = np.frombuffer(img.convert("HSV").tobytes(), np.uint8)
        # the (hue, saturation) bytes of each 3-byte pixel, read as one little-endian uint16: hue + 256 * saturation
        key = np.ndarray((len(hsv) // 3,), dtype="<u2", buffer=hsv, strides=(3,))
        label = _COLOUR_LABEL[key]
        label[grey.ravel() < 256 // 8] = 14
        counts[i] = np.bincount(label, minlength=15)
    return counts


def _colour_bits(counts: np.ndarray) -> np.ndarray:
    """imagehash.colorhash(img, binbits=3), bit for bit, from the class counts of each image
    (rows): the fractions of black, grey, and faint and bright colours in 6 hue bins, each
    quantised to 3 bits by imagehash's own coding; 42 bools per row.

    imagehash builds these with a dozen masks, two np.histogram calls and a Python loop; a
    lookup of each pixel's class and a bincount per image (`_colour_counts`) give the same
    counts at a fraction of the cost, which matters at bulk-scan rates. The divisions are
    imagehash's, operation for operation, so the quantised values agree exactly.
    """
    total = counts.sum(axis=1, keepdims=True)
    colours = np.maximum(1, total - counts[:, [14]] - counts[:, [0]])
    fracs = np.concatenate([counts[:, [14, 0]] / total * 8, counts[:, 1:13] * 8 * 1.0 / colours], axis=1)
    return _LEVEL_BITS[np.minimum(7, fracs.astype(int))].reshape(len(counts), 42)


def dihedral_bits(img: Image.Image, variants: int = 8) -> list[np.ndarray]:
    """`hash_bits` of the first `variants` images of `dihedral(img)`, from one set of reductions."""
    return dihedral_bits_many([img], variants)[0]


def dihedral_bits_many(images: list[Image.Image], variants: int = 8) -> list[list[np.ndarray]]:
    """For each image, `hash_bits` of the first `variants` images of `dihedral(img)`.

    Reducing an image (grey, resized to a square or to its transpose's shape) commutes
    with flips and quarter turns, so each variant's hash is a fixed re-indexing of the
    same few tiny arrays instead of a new full-size image: pHash (the low-frequency DCT
    block of a 32x32 reduction, re-signed: `_dct_turns`) and dHash (9x8 and 8x9
    reductions) exactly as imagehash computes them; the colour hash is a histogram, the
    same for every variant; wHash is imagehash's Haar LL hash, computed as its equal:
    with the largest LL removed and thresholded at the median, the level-k Haar LL of a
    2^n square is its 8x8 block means (up to a scale and a shift), with ties broken
    exactly rather than by rounding.

    The resizes run as one batch (`resample.resize_batch`); the colour counts are per image
    (large images would make a batched lookup costly in memory); the DCTs, medians,
    comparisons and packing run once for the whole list, because at icon sizes numpy's
    per-call overhead, not arithmetic, is the cost (the batched DCT is bit-identical to one
    image at a time).
    """
    n = len(images)
    if n == 0:
        return []
    greys = [np.asarray(img.convert("L")) for img in images]
    reduced = resample.resize_batch(greys, [(32, 32), (9, 8), (8, 9)])
    small = np.stack([r[0] for r in reduced])
    dh = np.stack([np.concatenate([r[1].ravel(), r[2].ravel()]) for r in reduced])
    scales = np.array([max(1 << (min(g.shape).bit_length() - 1), 8) for g in greys])  # the largest 2^k square
    blocks = np.empty((n, 64))
    at32 = scales == 32  # icons cropped to 32-63 px: the square is the pHash reduction itself
    blocks[at32] = small[at32].reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4)).reshape(-1, 64)  # sums of integers: exact
    for s in np.unique(scales[~at32]):  # one batched resize per square size
        idx = np.flatnonzero(scales == s)
        squares = np.stack([sq[0] for sq in resample.resize_batch([greys[i] for i in idx], [(s, s)])])
        blocks[idx] = squares.reshape(-1, 8, s // 8, 8, s // 8).mean(axis=(2, 4)).reshape(-1, 64)
    counts = _colour_counts(images, greys)
    low = scipy.fft.dct(scipy.fft.dct(small, axis=1), axis=2)[:, :8, :8].reshape(n, 64)  # (a matmul differs in ties)
    p = low[:, _DCT_ORDER[:variants]] * _DCT_SIGN[:variants]
    w = blocks[:, _BLOCK_ORDER[:variants]]
    colour = np.zeros((n, variants, 48), dtype=bool)
    colour[:, :, :42] = _colour_bits(counts)[:, None]
    bits = np.concatenate([p > _median(p), dh[:, _DH_RIGHT[:variants]] > dh[:, _DH_LEFT[:variants]],
                           w > _median(w), colour], axis=2)
    return [list(v) for v in np.packbits(bits, axis=2)]


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
