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
    """Median of each row of 64 (np.median's overhead is 20x the work at this size)."""
    middle = np.sort(rows, axis=1)[:, 31:33]
    return middle.mean(axis=1, keepdims=True)


def dihedral_bits(img: Image.Image, variants: int = 8) -> list[np.ndarray]:
    """`hash_bits` of the first `variants` images of `dihedral(img)`, from one set of reductions.

    Reducing an image (grey, resized to a square or to its transpose's shape) commutes
    with flips and quarter turns, so each variant's hash is a fixed re-indexing of the
    same few tiny arrays instead of a new full-size image: pHash (the low-frequency DCT
    block of a 32x32 reduction, re-signed: `_dct_turns`) and dHash (9x8 and 8x9
    reductions) exactly as imagehash computes them; the colour hash is a histogram, the
    same for every variant; wHash is imagehash's Haar LL hash, computed as its equal:
    with the largest LL removed and thresholded at the median, the level-k Haar LL of a
    2^n square is its 8x8 block means (up to a scale and a shift), with ties broken
    exactly rather than by rounding.
    """
    grey = img.convert("L")
    small = np.asarray(grey.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = scipy.fft.dct(scipy.fft.dct(small, axis=0), axis=1)[:8, :8].ravel()
    dh = np.concatenate([np.asarray(grey.resize(size, Image.Resampling.LANCZOS), dtype=np.int16).ravel()
                         for size in ((9, 8), (8, 9))])
    scale = max(2 ** int(np.log2(min(img.size))), 8)
    square = np.asarray(grey.resize((scale, scale), Image.Resampling.LANCZOS), dtype=np.float64)
    blocks = square.reshape(8, scale // 8, 8, scale // 8).mean(axis=(1, 3)).ravel()
    colour = np.concatenate([np.ravel(h) for h in imagehash.colorhash(img, binbits=3).hash])
    colour = np.pad(colour, (0, 48 - len(colour))).astype(bool)
    p = low[_DCT_ORDER[:variants]] * _DCT_SIGN[:variants]
    w = blocks[_BLOCK_ORDER[:variants]]
    bits = np.concatenate([p > _median(p), dh[_DH_RIGHT[:variants]] > dh[_DH_LEFT[:variants]],
                           w > _median(w), np.repeat(colour[None], variants, axis=0)], axis=1)
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
