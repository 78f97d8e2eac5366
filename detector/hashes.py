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


def autocrop(img: Image.Image, tol: int = 12) -> Image.Image:
    """Trim uniform borders (padding, letterboxing) so a padded copy hashes like its source."""
    arr = np.asarray(img, dtype=np.int16)
    corner = arr[0, 0]
    diff = np.abs(arr - corner).max(axis=2) > tol
    rows, cols = np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.any(axis=0))
    if len(rows) == 0 or len(cols) == 0:
        return img
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    if (box[2] - box[0]) * (box[3] - box[1]) < 0.2 * img.width * img.height:
        return img  # mostly border: the "border" is the picture
    return img.crop(box)


def hash_bits(img: Image.Image) -> np.ndarray:
    """Packed uint8 vector of HASH_BITS bits."""
    bits = [imagehash.phash(img).hash.ravel(), imagehash.dhash(img).hash.ravel(),
            imagehash.whash(img).hash.ravel()]
    colour = imagehash.colorhash(img, binbits=3).hash
    colour = np.concatenate([np.ravel(h) for h in colour])
    bits.append(np.pad(colour, (0, 48 - len(colour))))
    return np.packbits(np.concatenate(bits).astype(bool))


def dihedral(img: Image.Image) -> list[Image.Image]:
    """The 8 flips/rotations by 90 degrees, so a flipped or rotated copy is still found."""
    out = []
    for flip in (False, True):
        base = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img
        out += [base, base.transpose(Image.Transpose.ROTATE_90), base.transpose(Image.Transpose.ROTATE_180),
                base.transpose(Image.Transpose.ROTATE_270)]
    return out
