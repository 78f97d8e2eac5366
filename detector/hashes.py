"""Perceptual hashes (imagehash) packed into one binary vector per image.

pHash, dHash and wHash (64 bits each) plus a colour hash are concatenated, so one
Hamming distance in FAISS's binary index sums the four distances: each hash is
fooled by different edits, the sum by fewer.
"""

from __future__ import annotations

import cv2
import imagehash
import numpy as np
import scipy.fft
from PIL import Image

HASH_BITS = 64 * 3 + 48  # phash, dhash, whash, colorhash (42 bits, padded to 48)


def content_box(img: Image.Image, tol: int = 12) -> tuple[int, int, int, int]:
    """The box inside uniform borders (padding, letterboxing); the whole image if it is mostly border."""
    arr = np.asarray(img)
    d = cv2.absdiff(arr, np.broadcast_to(arr[0, 0], arr.shape).copy())
    diff = np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2]) > tol  # (numpy's max over a last axis of 3 is slow)
    rows, cols = np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.any(axis=0))
    full = (0, 0, img.width, img.height)
    if len(rows) == 0 or len(cols) == 0:
        return full
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    if (box[2] - box[0]) * (box[3] - box[1]) < 0.2 * img.width * img.height:
        return full  # mostly border: the "border" is the picture
    return box


def autocrop(img: Image.Image) -> Image.Image:
    """Trim uniform borders so a padded copy hashes like its source."""
    return img.crop(content_box(img))


def hash_bits(img: Image.Image) -> np.ndarray:
    """Packed uint8 vector of HASH_BITS bits."""
    return dihedral_bits(img, variants=1)[0]


def dihedral_bits(img: Image.Image, variants: int = 8) -> list[np.ndarray]:
    """`hash_bits` of the first `variants` images of `dihedral(img)`, from one set of reductions.

    Reducing an image (grey, resized to a square or to its transpose's shape) commutes
    with flips and quarter turns, so each variant's hash is computed from a flipped or
    turned copy of a few tiny arrays instead of from a new full-size image: pHash (the
    DCT of a 32x32 reduction) and dHash (9x8 and 8x9 reductions) exactly as imagehash
    computes them; the colour hash is a histogram, the same for every variant; wHash is
    imagehash's Haar LL hash, computed as its equal: with the largest LL removed and
    thresholded at the median, the level-k Haar LL of a 2^n square is its 8x8 block
    means (up to a scale and a shift), with ties broken exactly rather than by rounding.
    """
    grey = img.convert("L")
    small = np.asarray(grey.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    wide = np.asarray(grey.resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    tall = np.asarray(grey.resize((8, 9), Image.Resampling.LANCZOS), dtype=np.int16)
    scale = max(2 ** int(np.log2(min(img.size))), 8)
    square = np.asarray(grey.resize((scale, scale), Image.Resampling.LANCZOS), dtype=np.float64)
    blocks = square.reshape(8, scale // 8, 8, scale // 8).mean(axis=(1, 3))
    colour = np.concatenate([np.ravel(h) for h in imagehash.colorhash(img, binbits=3).hash])
    colour = np.pad(colour, (0, 48 - len(colour))).astype(bool)
    ks = range(variants)
    turn = lambda a, k: np.rot90(a[:, ::-1] if k >= 4 else a, k % 4)  # noqa: E731 - the array of variant k
    low = scipy.fft.dct(scipy.fft.dct(np.stack([turn(small, k) for k in ks]), axis=1), axis=2)[:, :8, :8]
    d = np.stack([turn(wide if k % 2 == 0 else tall, k) for k in ks])
    w = np.stack([turn(blocks, k) for k in ks])
    median = lambda a: np.median(a.reshape(len(a), -1), axis=1)[:, None, None]  # noqa: E731
    bits = np.concatenate([(low > median(low)).reshape(len(ks), -1), (d[:, :, 1:] > d[:, :, :-1]).reshape(len(ks), -1),
                           (w > median(w)).reshape(len(ks), -1), np.repeat(colour[None], len(ks), axis=0)], axis=1)
    return list(np.packbits(bits, axis=1))


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
