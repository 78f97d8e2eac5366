"""Perceptual hashes (imagehash) packed into one binary vector per image.

pHash, dHash and wHash (64 bits each) plus a colour hash are concatenated, so one
Hamming distance in FAISS's binary index sums the four distances: each hash is
fooled by different edits, the sum by fewer.
"""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image

HASH_BITS = 64 * 3 + 48  # phash, dhash, whash, colorhash (42 bits, padded to 48)


def content_box(img: Image.Image, tol: int = 12) -> tuple[int, int, int, int]:
    """The box inside uniform borders (padding, letterboxing); the whole image if it is mostly border."""
    arr = np.asarray(img, dtype=np.int16)
    diff = np.abs(arr - arr[0, 0]).max(axis=2) > tol
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
    bits = [imagehash.phash(img).hash.ravel(), imagehash.dhash(img).hash.ravel(),
            imagehash.whash(img).hash.ravel()]
    colour = imagehash.colorhash(img, binbits=3).hash
    colour = np.concatenate([np.ravel(h) for h in colour])
    bits.append(np.pad(colour, (0, 48 - len(colour))))
    return np.packbits(np.concatenate(bits).astype(bool))


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
