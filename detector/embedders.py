"""The set of embedders one run uses, and what each makes of an image.

Kinds written to the store (all boxes are normalised [x0, y0, x1, y1]):
  hash   binary  perceptual hashes of the whole (border-trimmed) image
  style  float   hand-crafted style features of the whole image
  patch  float   descriptors of part-sized windows (region evidence)
  kp     float   RootSIFT keypoint descriptors on the working canvas (box = the point)
  clip   float   CLIP embedding of the whole image, when weights are available
  sig    float   signature samples (owned by signatures, not works)
"""

from __future__ import annotations

import sys

import cv2
import imagehash
import numpy as np
from PIL import Image

from detector import hashes, local, regions, signatures, style
from detector.clip import ClipEmbedder, ClipUnavailable
from index.store import KindSpec

FULL = (0.0, 0.0, 1.0, 1.0)
Vectors = dict[str, list[tuple[tuple[float, float, float, float], np.ndarray]]]

BASE_SPECS = (
    KindSpec("hash", {"embedder": "imagehash", "version": imagehash.__version__,
                      "recipe": "phash64+dhash64+whash64 (Haar LL as block means)+colorhash3, border-trimmed"}, hashes.HASH_BITS, True),
    KindSpec("style", {"embedder": "style", "version": 1, "size": style.SIZE}, style.DIM),
    KindSpec("patch", {"embedder": "patch", "version": 1, "patch": regions.PATCH,
                       "windows": "0.5/0.25+0.333/0.167"}, regions.DIM, factory="HNSW32"),
    # a scored image searches ~500 keypoints: exact search costs more than all else past ~150 works
    KindSpec("kp", {"embedder": "rootsift", "version": 1, "canvas": local.CANVAS, "features": local.N_FEATURES,
                    "opencv": cv2.__version__}, 128, factory="IVF{nlist},Flat", approximate_from=20_000),
    KindSpec("sig", {"embedder": "signature", "version": 5, "shape": list(signatures.SHAPE),
                    "views": list(signatures.VIEWS), "rotations": list(signatures.ROTATIONS),
                    "view_sides": [signatures.WORK // 2, signatures.WORK], "view_ratio": signatures.VIEW_RATIO},
             signatures.DIM, owner="signature"),
)


class Embedders:
    """Build with `Embedders.load()`; `status` is what every result reports under `embedders`."""

    def __init__(self, clip: ClipEmbedder | None, clip_status: str):
        self.clip = clip
        self.status: dict[str, str] = {
            "imagehash": BASE_SPECS[0].descriptor["recipe"] + f" (imagehash {imagehash.__version__})",
            "style": "style v1", "patch": "patch v1", "signature": "signature v5", "clip": clip_status}

    @classmethod
    def load(cls, clip_model: str | None = None, clip_weights: str | None = None,
             use_clip: bool = True, quiet: bool = False) -> "Embedders":
        """Load what is available; say once, plainly, when CLIP is not."""
        if not use_clip:
            return cls(None, "unavailable: disabled (--no-clip)")
        try:
            clip = ClipEmbedder.load(clip_model, clip_weights)
            return cls(clip, clip.label)
        except ClipUnavailable as e:
            if not quiet:
                print(f"chimera: CLIP unavailable: {e}; scoring with hashes, style and region features only",
                      file=sys.stderr)
            return cls(None, f"unavailable: {e}")

    def specs(self) -> list[KindSpec]:
        extra = [KindSpec("clip", self.clip.descriptor, self.clip.dim)] if self.clip else []
        return list(BASE_SPECS) + extra

    def describe_works(self, images: list[Image.Image]) -> list[tuple[Vectors, bytes]]:
        """(vectors, thumbnail PNG) to store for registered works (or generated outputs)."""
        bits = hashes.dihedral_bits_many(images, variants=1, trim=True)
        out = [{"hash": [(FULL, b[0])],
                "style": [(FULL, style.style_vector(im))],
                "patch": regions.describe(im, regions.WORK_WINDOWS),
                "kp": _keypoints(im)} for im, b in zip(images, bits)]
        self._add_clip(images, out)
        return [(vecs, thumbnail(im)) for vecs, im in zip(out, images)]

    def describe_queries(self, pictures: list[hashes.Picture]) -> list[Vectors]:
        """Vectors of pictures to score (`hashes.picture`): hashes of all 8 flips/rotations (and of the
        picture inside a second border, when there is one), denser windows,
        keypoints of the image and of its mirror (SIFT is not mirror-invariant; the mirror's
        are the image's own, moved by `local.mirrored`, not a second SIFT run).
        CLIP, when loaded, embeds the whole list in one forward pass."""
        out: list[Vectors] = []
        images = [p.image for p in pictures]
        for img, rows in zip(images, query_hashes(pictures)):
            can = local.canvas(img)
            pts, desc = local.keypoints(can)
            out.append({"hash": rows,
                        "style": [(FULL, style.style_vector(img))],
                        "patch": regions.describe(img, regions.QUERY_WINDOWS),
                        "kp": _points(pts, desc, can.shape),
                        "kp_flip": _points(*local.mirrored(pts, desc, can.shape[1]), can.shape)})
        self._add_clip(images, out)
        return out

    def describe_signatures(self, images: list[Image.Image]) -> list[Vectors]:
        return [{"sig": signatures.sample_descriptors(np.asarray(im))} for im in images]

    def _add_clip(self, images: list[Image.Image], out: list[Vectors]) -> None:
        if self.clip is None:
            return
        for vecs, emb in zip(out, self.clip.embed(images)):
            vecs["clip"] = [(FULL, emb)]



def query_hashes(pictures: list[hashes.Picture]) -> list[list[tuple[tuple[float, float, float, float], np.ndarray]]]:
    """The hash rows of pictures to score: the border-trimmed picture's 8 flips and rotations, and those
    of the picture inside a second border of its own (`hashes._nested`), boxed where it lies.
    (Also what benchmarks/scan_bench.py times as a scan's hash stage.)"""
    out = []
    for p, (bits, nest, inner) in zip(pictures, hashes.query_bits(pictures)):
        w, h = p.image.size
        box = nest and (nest[0] / w, nest[1] / h, nest[2] / w, nest[3] / h)
        out.append([(FULL, b) for b in bits] + [(box, b) for b in inner])
    return out


THUMB = 256


def thumbnail(img: Image.Image) -> bytes:
    """The work as kept in the store: PNG, longer side at most THUMB (icons stay full size)."""
    import io
    if max(img.size) > THUMB:
        s = THUMB / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _keypoints(img: Image.Image) -> list:
    can = local.canvas(img)
    return _points(*local.keypoints(can), can.shape)


def _points(pts: np.ndarray, desc: np.ndarray, shape: tuple[int, ...]) -> list:
    """Keypoints as (normalised point-box, descriptor) pairs."""
    h, w = shape[:2]
    return [((float(x) / w, float(y) / h, float(x) / w, float(y) / h), d) for (x, y), d in zip(pts, desc)]
