"""Score one image against the store: the single function behind CLI, scans and the API.

The result object is a public contract (RESULT_VERSION, documented in docs/result.md).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from detector import hashes, regions, signatures
from detector.calibrate import StyleCalibration
from detector.embedders import Embedders
from detector.images import ImageError, LoadedImage, load
from index import catalogue as cat
from index.store import Store
from index.vectors import normalise

RESULT_VERSION = "1.0"
PATCH_MATCH = 0.93  # window cosine above which two windows show the same piece
SIG_MATCH = 0.80  # signature-shape cosine above which a mark is that artist's signature
MARK_MIN = 0.55  # signature-likeness above which an unmatched mark is still reported
GRID = 32  # coverage is measured on a GRID x GRID raster of the query


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def copy_from_hash(similarity: float) -> float:
    """Hash similarity (1 - Hamming/bits) to copy probability; near-duplicates sit above ~0.85."""
    return _sigmoid((similarity - 0.80) / 0.025)


def coverage_score(coverage: float) -> float:
    return _sigmoid((coverage - 0.60) / 0.07)


def error_result(path: str, message: str) -> dict[str, Any]:
    return {"version": RESULT_VERSION, "path": path, "sha256": None, "width": None, "height": None,
            "artists": [], "matches": [], "signatures": [], "verdict": None, "embedders": {}, "error": message}


class Scorer:
    """Holds the store and embedders; caches calibration per store generation."""

    def __init__(self, store: Store, embedders: Embedders):
        self.store = store
        self.embedders = embedders
        self._calibration: tuple[tuple, StyleCalibration, list[str], list[np.ndarray]] | None = None

    # ------------------------------------------------------------ calibration
    def _style_model(self) -> tuple[StyleCalibration, list[str], list[str]]:
        kinds = ["style"] + (["clip"] if self.embedders.clip and "clip" in self.store.specs() else [])
        key = tuple(cat.generation(self.store.conn, k) for k in kinds)
        if self._calibration is None or self._calibration[0] != key:
            blocks, names = [], []
            for kind in kinds:
                ids, owner, names = self.store.owners(kind)
                _, vecs = self.store.vectors(kind)
                keep = owner >= 0  # generated outputs carry no artist: not style references
                blocks.append((normalise(vecs[keep]), owner[keep]))
            self._calibration = (key, StyleCalibration(blocks, len(names)), names, kinds)
        return self._calibration[1], self._calibration[2], self._calibration[3]

    # ---------------------------------------------------------------- scoring
    def score_path(self, path: Path | str, artist: str | None = None) -> dict[str, Any]:
        """Like `score`, but a file that cannot be read becomes a result with `error` set."""
        try:
            return self.score(load(path), artist)
        except ImageError as e:
            return error_result(str(path), str(e))

    def score(self, img: LoadedImage, artist: str | None = None) -> dict[str, Any]:
        names_all = [a["name"] for a in self.store.artists()]
        if artist is not None and artist not in names_all:
            raise ValueError(f"no artist named {artist!r} in the store")
        q = self.embedders.describe_query(img.image)
        w, h = img.width, img.height

        work_copy: dict[int, float] = defaultdict(float)
        for hits in self.store.search("hash", np.stack([v for _, v in q["hash"]]), 10):
            for hit in hits:
                sim = 1.0 - hit.score / (len(q["hash"][0][1]) * 8)
                work_copy[hit.work_id] = max(work_copy[hit.work_id], copy_from_hash(sim))
        if "clip" in q and "clip" in self.store.specs():
            for hit in self.store.search("clip", q["clip"][0][1][None], 10)[0]:
                work_copy[hit.work_id] = max(work_copy[hit.work_id], _sigmoid((hit.score - 0.95) / 0.01))

        content = self._content_grid(img)
        piece_cells, piece_boxes, piece_sim = self._pieces(q["patch"], content)
        works = {wid: self.store.work(wid) for wid in set(work_copy) | set(piece_cells)}
        works = {k: v for k, v in works.items() if v}
        total = max(int(content.sum()), 1)
        by_artist_cells: dict[str, np.ndarray] = {}
        for wid, cells in piece_cells.items():
            name = works[wid]["artist"] if wid in works else None
            if name:
                acc = by_artist_cells.setdefault(name, np.zeros_like(content))
                acc |= cells
            # one work explaining nearly all of the picture's content is a (cropped) copy
            single = float((cells & content).sum()) / total
            if len(piece_boxes[wid]) >= 4:
                work_copy[wid] = max(work_copy[wid], _sigmoid((single - 0.85) / 0.04))

        calib, names, kinds = self._style_model()
        style_p = calib.probabilities([normalise(q[k][0][1][None])[0] for k in kinds]) if names else np.zeros(0)
        artists = []
        for i, name in enumerate(names):
            copy = max([p for wid, p in work_copy.items() if wid in works and works[wid]["artist"] == name],
                       default=0.0)
            cov = float((by_artist_cells.get(name, np.zeros_like(content)) & content).sum()) / total
            n_src = sum(1 for wid in piece_cells if wid in works and works[wid]["artist"] == name)
            derivative = coverage_score(cov) if n_src >= 1 else 0.0
            artists.append({"artist": name, "style": round(float(style_p[i]), 4),
                            "derivative": round(derivative, 4), "copy": round(copy, 4)})
        if artist is not None:
            artists = [a for a in artists if a["artist"] == artist]
        artists.sort(key=lambda a: -a["style"])

        matches = self._matches(works, work_copy, piece_cells, piece_boxes, piece_sim, content, w, h, artist)
        verdict = self._verdict(artists)
        marks = self._signatures(img, verdict, artists)
        return {"version": RESULT_VERSION, "path": img.source, "sha256": img.sha256, "width": w, "height": h,
                "artists": artists, "matches": matches, "signatures": marks, "verdict": verdict,
                "embedders": dict(self.embedders.status), "error": None}

    # -------------------------------------------------------------- helpers
    @staticmethod
    def _content_grid(img: LoadedImage) -> np.ndarray:
        rgb = np.asarray(img.image.resize((GRID, GRID)))
        from detector.style import foreground
        fg = foreground(rgb)
        return fg if fg.sum() >= GRID else np.ones_like(fg)

    def _pieces(self, patch: list, content: np.ndarray):
        """Per work: raster cells of the query explained by its windows, the query boxes, best cosine."""
        cells: dict[int, np.ndarray] = {}
        boxes: dict[int, list] = defaultdict(list)
        best: dict[int, float] = defaultdict(float)
        if not patch:
            return cells, boxes, best
        hits_all = self.store.search("patch", np.stack([v for _, v in patch]), 5)
        for (box, _), hits in zip(patch, hits_all):
            good = [hit for hit in hits if hit.score >= PATCH_MATCH and hit.work_id is not None]
            if not good:
                continue
            top = good[0].score
            for hit in good:
                if hit.score < top - 0.01:
                    break  # only the equally best sources of this window
                m = cells.setdefault(hit.work_id, np.zeros_like(content))
                x0, y0, x1, y1 = (int(round(c * GRID)) for c in box)
                m[y0:y1, x0:x1] = True
                boxes[hit.work_id].append(box)
                best[hit.work_id] = max(best[hit.work_id], hit.score)
        return cells, boxes, best

    def _matches(self, works, work_copy, piece_cells, piece_boxes, piece_sim, content, w, h, artist):
        total = max(int(content.sum()), 1)
        out = []
        for wid, info in works.items():
            if artist is not None and info["artist"] != artist:
                continue
            cov = float((piece_cells.get(wid, np.zeros_like(content)) & content).sum()) / total
            sim = max(work_copy.get(wid, 0.0), cov)
            if sim < 0.2:
                continue
            if work_copy.get(wid, 0.0) >= cov or wid not in piece_boxes:
                box = [0, 0, w, h]
            else:
                bs = np.array(piece_boxes[wid])
                box = [int(bs[:, 0].min() * w), int(bs[:, 1].min() * h), int(bs[:, 2].max() * w),
                       int(bs[:, 3].max() * h)]
            entry = {"artist": info["artist"], "work": wid, "source": info["source"],
                     "similarity": round(sim, 4), "box": box}
            if info["kind"] == "generated":
                entry.update({"run": info["run"], "checkpoint": info["checkpoint"], "seed": info["seed"]})
            out.append(entry)
        out.sort(key=lambda m: -m["similarity"])
        return out[:10]

    @staticmethod
    def _verdict(artists: list[dict[str, Any]]) -> dict[str, Any]:
        for label, key in (("copy", "copy"), ("derivative", "derivative"), ("style_match", "style")):
            best = max(artists, key=lambda a: a[key], default=None)
            if best and best[key] >= 0.5:
                return {"label": label, "artist": best["artist"], "confidence": best[key]}
        top = max((a["style"] for a in artists), default=0.0)
        return {"label": "unrelated", "artist": None, "confidence": round(1.0 - top, 4)}

    def _signatures(self, img: LoadedImage, verdict: dict, artists: list[dict]) -> list[dict[str, Any]]:
        rgb = np.asarray(img.image)
        marks = signatures.find_marks(rgb)
        if not marks:
            return []
        descs = np.stack([signatures.descriptor(m[2]) for m in marks])
        hits_all = self.store.search("sig", descs, 3)
        by_name = {a["artist"]: a for a in artists}
        style_top = artists[0]["artist"] if artists and artists[0]["style"] >= 0.5 else None
        out = []
        for (box, likeness, _), hits in zip(marks, hits_all):
            best = hits[0] if hits else None
            signer = None
            sim = float(best.score) if best else 0.0
            if best and sim >= SIG_MATCH:
                signer = (self.store.signature(best.signature_id) or {}).get("artist")
            if signer is None and likeness < MARK_MIN:
                continue
            forged = False
            if signer is not None:
                a = by_name.get(signer, {"copy": 0.0, "derivative": 0.0})
                is_copy = a["copy"] >= 0.5
                forged = not is_copy and (style_top != signer or a["derivative"] >= 0.5)
            out.append({"box": list(box), "score": round(likeness, 4), "artist": signer,
                        "similarity": round(sim, 4), "forged": forged})
        return out
