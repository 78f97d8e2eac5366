"""Score one image against the store: the single function behind CLI, scans and the API.

The result object is a public contract (RESULT_VERSION, documented in docs/result.md).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from detector import background, calibrate, evidence, hashes, local, signatures, style
from detector.calibrate import StyleCalibration
from detector.embedders import Embedders, Vectors
from detector.images import ImageError, LoadedImage, file_sha256, load
from index import catalogue as cat
from index.store import Hit, Store
from index.vectors import normalise

RESULT_VERSION = "1.1"  # 1.1: generated matches carry the sample's `index`
COPY_AT = 0.72  # forward x backward agreement where copy probability is 0.5
DERIVATIVE_AT = 0.80  # share of the query's detail explained by >= 2 registered pieces, at 0.5
SIG_MATCH = 0.60  # signature-shape cosine above which a mark may be that artist's signature...
SIG_MARGIN = 0.06  # ...when it is also this much closer to that artist's samples than to anyone else's
MARK_MATCHED = 0.6  # signature-likeness a mark needs when it matches a registered signature
MARK_MIN = 0.9  # ...and when it matches nobody (still reported: garbled signatures are a diffusion artefact)
# signature-shape cosine a grouping carved out of artwork (signatures.CARVE) needs to count at all, a clear
# match: the names it carved out on the benchmarks matched their hands at 0.90 to 0.96, fragments of artwork
# at 0.73 at most (a cloud's outline taken with a name: the wrong hand). 0.8 to 0.9 gave the same results.
CARVED_MATCH = 0.8
SPARE = ("sig",)  # kinds whose mismatched vectors are left out of scoring rather than refusing the store
# registered views searched per mark: every view of about 7 signers' 3 samples (signatures.sample_descriptors
# makes 30 a sample), so the runner-up signer's margin is measured on its best view in all but huge stores
SIG_HITS = 600


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def copy_probability(a: local.Alignment) -> float:
    """A copy explains the query's detail where it lies and shows its own detail there too."""
    if a.footprint < 0.5:
        return 0.0
    return _sigmoid((a.forward * a.backward - COPY_AT) / 0.04)


def derivative_probability(coverage: float, pieces: int) -> float:
    return _sigmoid((coverage - DERIVATIVE_AT) / 0.04) if pieces >= 2 else 0.0


def _to_image(xs: np.ndarray, ys: np.ndarray, canvas: tuple[int, ...], frame: tuple[int, int, int, int]) -> list[int]:
    """The image-pixel box [x0, y0, x1, y1] (exclusive end) of canvas pixels (xs, ys), the canvas being
    the image's box `frame`, by integer arithmetic: a float scale rounded up could put the end one pixel
    past the image (30 * 87/87 ...)."""
    (h, w), (left, top, right, bottom) = canvas[:2], frame
    width, height = right - left, bottom - top
    return [left + int(xs.min()) * width // w, top + int(ys.min()) * height // h,
            left - (-(int(xs.max()) + 1) * width // w), top - (-(int(ys.max()) + 1) * height // h)]


def error_result(path: str, message: str, sha256: str | None = None) -> dict[str, Any]:
    """The record of a file that could not be scored (`sha256` of its bytes when they could be read)."""
    return {"version": RESULT_VERSION, "path": path, "sha256": sha256, "width": None, "height": None,
            "artists": [], "matches": [], "signatures": [], "verdict": None, "embedders": {}, "error": message}


class Scorer:
    """Holds the store and embedders; caches calibration and work canvases between calls."""

    def __init__(self, store: Store, embedders: Embedders):
        self.store = store
        self.embedders = embedders
        self._specs: dict | None = None
        self._unsettled = False  # kinds recorded by another version, with no vector yet (`_check_store`)
        self.sig_mismatch: str | None = None
        self._check_store()
        self.works = evidence.WorkCanvases(store)
        self._calibration: tuple[tuple, StyleCalibration, list[str], list[str], list[str]] | None = None
        self._bg: dict[str, np.ndarray] | None = None

    def _check_store(self) -> None:
        """A query is only compared with vectors made as it is (StoreError otherwise); signature samples
        described by another version leave signature matching out (marks are still reported, matched
        to nobody). Checked again whenever the store's embedders change: a server's scorer lives on
        while another install registers vectors in the store it scores against. A kind the store
        records otherwise but holds no vector of is no mismatch (its next add records the adder's
        version) until another install adds to it without changing the record: while there is such a
        kind, every batch checks again."""
        specs = self.store.specs()
        if specs != self._specs or self._unsettled:
            self.sig_mismatch = self.store.check_embedders(self.embedders.specs(), spare=SPARE).get("sig")
            self._unsettled = bool(self.store.replaced(self.embedders.specs()))
            self._specs = specs

    def _status(self) -> dict[str, str]:
        """The result's `embedders`: what made the evidence, and what could not be used."""
        status = dict(self.embedders.status)
        if self.sig_mismatch:
            status["signature"] = ("unavailable: the store's signature samples were described by another version; "
                                   "add them again to match marks")
        return status

    def _style_model(self) -> tuple[StyleCalibration, list[str], list[str], list[str]]:
        """(calibration, every artist's name, the kinds it reads, the names of its classes: the artists
        with works). An artist without works (made by the API, or with signature samples only) is listed
        with style 0 and is no class: as one, it changed every other artist's style scores."""
        specs = self.store.specs()
        kinds = [k for k in ("style", "clip") if k in specs and (k != "clip" or self.embedders.clip)]
        with self.store.snapshot():  # owners and vectors of one catalogue state, though a writer commits between
            # every artist is listed, works or not: the roster is part of the key as much as the vectors
            roster = self.store.roster()
            key = (tuple(cat.generation(self.store.conn, k) for k in kinds), roster)
            if self._calibration is None or self._calibration[0] != key:
                blocks, hands = [], None
                for kind in kinds:  # (every work has a vector of each kind: they are never mixed)
                    _, owner, _ = self.store.owners(kind)  # (artists by id, as the roster)
                    _, vecs = self.store.vectors(kind)
                    keep = owner >= 0  # generated outputs carry no artist: not style references
                    hands = np.unique(owner[keep]) if hands is None else hands
                    blocks.append((normalise(vecs[keep]), np.searchsorted(hands, owner[keep])))
                hands = [] if hands is None else hands.tolist()
                calib = StyleCalibration(blocks, 0)  # nothing registered: no style to calibrate
                if hands:
                    calib = calibrate.cached(blocks, len(hands), self._background(kinds))
                names = [name for _, name in roster]
                self._calibration = (key, calib, names, kinds, [names[i] for i in hands])
        return self._calibration[1:]

    def _background(self, kinds: list[str]) -> list[np.ndarray]:
        """Unit vectors of the procedural background set, per kind (computed once per Scorer)."""
        if self._bg is None:
            imgs = background.images()
            self._bg = {"style": normalise(np.stack([style.style_vector(im) for im in imgs]))}
            if self.embedders.clip:
                self._bg["clip"] = normalise(self.embedders.clip.embed(imgs))
        return [self._bg[k] for k in kinds]

    def score_path(self, path: Path | str, artist: str | None = None) -> dict[str, Any]:
        """Like `score`, but a file that cannot be read becomes a result with `error` set."""
        try:
            return self.score(load(path), artist)
        except ImageError as e:  # the same record a scan writes: the reason alone, the bytes' hash if read
            return error_result(e.source, e.reason, file_sha256(path))

    def score_many(self, imgs: list[LoadedImage], artist: str | None = None) -> list[dict[str, Any]]:
        """Results for a batch of images: the embedders (CLIP above all) see the whole batch at once."""
        self._check_store()
        self._check_artist(artist)
        self.works.sync()
        views = self._pictures(imgs)
        qs = self.embedders.describe_queries(views)
        return [self._score(im, view, artist, q, hits)
                for im, view, q, hits in zip(imgs, views, qs, evidence.search(self.store, qs))]

    def _pictures(self, imgs: list[LoadedImage]) -> list[hashes.Picture]:
        """`hashes.picture` of each image, unless its bytes are a registered work's (`Store.holder`).
        Works are described as registered: a drawing registered small on its sheet is the whole sheet,
        and its very file, cut out, was compared with that at another scale and found by nothing. (A
        hash near a registered sheet proves nothing: mostly blank sheets hash alike, and another drawing
        pasted on one came within 0.97-1.0 of it and was called its copy.)"""
        out = []
        for im in imgs:
            view = hashes.picture(im.image)
            if view.image is not im.image and self.store.holder(im.sha256) is not None:
                view = hashes.picture(im.image, cut=False)
            out.append(view)
        return out

    def score(self, img: LoadedImage, artist: str | None = None) -> dict[str, Any]:
        """The result object for one decoded image (restricted to `artist` when given)."""
        return self.score_many([img], artist)[0]

    def _check_artist(self, artist: str | None) -> None:
        if artist is not None and not self.store.has_artist(artist):
            raise ValueError(f"no artist named {artist!r} in the store")

    def _score(self, img: LoadedImage, view: hashes.Picture, artist: str | None,
               q: Vectors, hits: dict[str, list[list[Hit]]]) -> dict[str, Any]:
        """The result object of an image whose scored part (`view`, from `hashes.picture`) has its query
        vectors `q` and their nearest stored vectors (`hits`, from evidence.search) computed (artist
        checked). Signatures are looked for on the whole image: a name may be on the page."""
        qc = local.Canvas.of(local.canvas(view.image, local.VERIFY))
        sx, sy = qc.size[0] / view.image.width, qc.size[1] / view.image.height  # differ for extreme aspect ratios
        (x0, y0, x1, y1), page = view.trimmed, view.page
        # a picture in a border of its own, on a page: `describe_queries` hashed it there too (rows past the 8 turns)
        if len(q["hash"]) > 8 and page:
            qc.on_page((page[0] * sx, page[1] * sy, page[2] * sx, page[3] * sy))
        q_detail = qc.detail
        q_content = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        aligned = evidence.verify(self.works, evidence.propose(self.works, q, hits, qc.size, q_content), qc)
        placed = list(aligned.values())  # every verified placement: a work may sit in a query twice
        for wid, a in evidence.verify(self.works, evidence.propose_pieces(self.store, self.works, q, qc, aligned),
                                      qc).items():
            aligned.setdefault(wid, a)  # a work placed as a whole keeps that placement (its piece's siblings)
            placed.append(a)
        info = self.store.works(list(aligned))
        placed = [a for a in placed if a.work_id in info]

        calib, names, kinds, classes = self._style_model()
        style_p = dict(zip(classes, calib.probabilities([normalise(q[k][0][1][None])[0] for k in kinds])
                           if classes else []))
        artists, pieces_all = [], []
        mixed, mixed_from = self._mixed_hands(placed, info, names, q_detail)
        for name in names:
            mine = [a for a in placed if info[a.work_id]["artist"] == name]
            pieces, coverage = evidence.cover(mine, q_detail)
            pieces_all += pieces
            derivative = max(derivative_probability(coverage, len(pieces)), mixed if name in mixed_from else 0.0)
            artists.append({"artist": name, "style": round(float(style_p.get(name, 0.0)), 4),
                            "derivative": round(derivative, 4),
                            "copy": round(max((copy_probability(a) for a in mine), default=0.0), 4)})
        artists.sort(key=lambda a: -a["style"])
        every = artists  # signatures are judged against every artist, whatever the filter
        if artist is not None:
            artists = [a for a in artists if a["artist"] == artist]
            if not artists:  # no style vectors of theirs: removed meanwhile (an error), or no works yet
                self._check_artist(artist)
                artists = [{"artist": artist, "style": 0.0, "derivative": 0.0, "copy": 0.0}]

        matches = self._matches(aligned, placed, info, pieces_all, q_detail, view.frame, artist)
        verdict = self._verdict(artists)
        return {"version": RESULT_VERSION, "path": img.source, "sha256": img.sha256, "width": img.width,
                "height": img.height, "artists": artists, "matches": matches,
                "signatures": self._signatures(img, every), "verdict": verdict,
                "embedders": self._status(), "error": None}

    @staticmethod
    def _mixed_hands(placed: list[local.Alignment], info: dict, names: list[str],
                     q_detail: np.ndarray) -> tuple[float, set[str]]:
        """(derivative probability, artists whose works gave pieces) of a collage of several artists'
        works: a half of A's icon beside a half of B's is a derivative of both, though neither
        artist's works alone explain it. (0, empty) unless pieces of two or more artists are needed."""
        known = [a for a in placed if info[a.work_id]["artist"] in names]
        if len({info[a.work_id]["artist"] for a in known}) < 2:
            return 0.0, set()  # one artist's works: its own cover above is the whole story
        pieces, coverage = evidence.cover(known, q_detail)
        hands = {info[a.work_id]["artist"] for a, _ in pieces}
        return (derivative_probability(coverage, len(pieces)), hands) if len(hands) >= 2 else (0.0, set())

    def _matches(self, aligned: dict[int, local.Alignment], placed: list[local.Alignment], info: dict, pieces: list,
                 q_detail: np.ndarray, frame: tuple[int, int, int, int], artist: str | None) -> list[dict[str, Any]]:
        """Registered works in evidence: copies, the pieces a collage is made of, and works that
        reproduce a piece just as exactly (icons sharing a part are equally likely sources), alone or
        together: a sibling that reproduces two quadrants of a collage hides the two works each
        quadrant came from, unless pieces of other works that cover its piece between them are listed.
        A work placed twice is listed as its likeliest copy (the placement its artist's copy score
        is), with that placement's box. Restricted to `artist`, generated outputs stay: which run
        made the image is evidence whoever's it is."""
        as_copy: dict[int, local.Alignment] = {}
        for a in placed:
            if a.work_id not in as_copy or copy_probability(a) > copy_probability(as_copy[a.work_id]):
                as_copy[a.work_id] = a
        total = max(int(q_detail.sum()), 1)
        region: dict[int, tuple[float, np.ndarray]] = {}  # work -> (strength, query region it explains)

        def offer(wid: int, share: float, where: np.ndarray) -> None:
            if share > region.get(wid, (0.0, None))[0]:
                region[wid] = (share, where)

        for a, new in pieces:
            share, size = float(new.sum()) / total, max(int(new.sum()), 1)
            offer(a.work_id, share, new)  # a work may give two pieces: it keeps its larger
            hand = info.get(a.work_id, {}).get("artist")
            siblings = [b for wid, b in aligned.items() if wid != a.work_id and info.get(wid, {}).get("artist") == hand]
            for b in siblings:
                overlap = float((b.exact & new).sum()) / size
                if overlap >= 0.9:
                    offer(b.work_id, 0.99 * share * overlap, new)
            parts, coverage = evidence.cover(siblings, new)
            if len(parts) >= 2 and coverage >= 0.9:
                for b, part in parts:
                    offer(b.work_id, 0.99 * float(part.sum()) / total, part)
        out = []
        for wid in aligned:
            if wid not in info or (artist is not None and info[wid]["artist"] not in (artist, None)):
                continue
            a = as_copy.get(wid, aligned[wid])
            copy = copy_probability(a)
            share, piece = region.get(wid, (0.0, None))
            if copy < 0.2 and share == 0.0:
                continue
            ys, xs = np.nonzero(a.explained if copy >= 0.5 or piece is None else piece)
            box = _to_image(xs, ys, q_detail.shape, frame) if len(xs) else [0, 0, 0, 0]
            entry = {"artist": info[wid]["artist"], "work": wid, "source": info[wid]["source"],
                     "similarity": round(max(copy, share), 4), "box": box}
            if info[wid]["kind"] == "generated":
                entry.update({"run": info[wid]["run"], "checkpoint": info[wid]["checkpoint"],
                              "seed": info[wid]["seed"], "index": info[wid]["sample_index"]})
            out.append(entry)
        out.sort(key=lambda m: -m["similarity"])
        return out[:10]

    @staticmethod
    def _verdict(artists: list[dict[str, Any]]) -> dict[str, Any]:
        """Derivative evidence first: it needs exact pieces of two or more works, which edited copies
        lack and part swaps of near-identical siblings have (though one work alone nearly explains
        them); then copy, then style; else unrelated."""
        for label in ("derivative", "copy"):
            best = max(artists, key=lambda a: a[label], default=None)
            if best and best[label] >= 0.5:
                return {"label": label, "artist": best["artist"], "confidence": best[label]}
        top = max(artists, key=lambda a: a["style"], default=None)
        if top and top["style"] >= 0.5:
            return {"label": "style_match", "artist": top["artist"], "confidence": top["style"]}
        top = max((a["style"] for a in artists), default=0.0)
        return {"label": "unrelated", "artist": None, "confidence": round(1.0 - top, 4)}

    def _signatures(self, img: LoadedImage, artists: list[dict]) -> list[dict[str, Any]]:
        """Signature-like marks, each matched against the registered samples.

        A mark is often offered in several groupings (with its faint ink, with artwork it touches).
        A grouping carved out of artwork counts only as a clear match of a registered hand (CARVED_MATCH).
        The likeliest decides, unless it resembles no registered signature at all: then the artwork
        it took in may be what hides the name, and the next grouping that matches one clearly is
        the mark. (A likeliest grouping close to two signers stays unattributed: other groupings
        of an ambiguous mark picked for matching would turn a coin toss into an accusation.)"""
        found = signatures.find_marks(np.asarray(img.image), min_likeness=min(MARK_MATCHED, MARK_MIN))
        marks = [m for groupings in found for m in groupings]
        if not marks:
            return []
        hits_all = ([[] for _ in marks] if self.sig_mismatch else
                    self.store.search("sig", np.stack([signatures.descriptor(m[2]) for m in marks]), SIG_HITS))
        signer_of = self.store.signers([h.signature_id for hits in hits_all for h in hits])
        by_name = {a["artist"]: a for a in artists}
        style_top = artists[0]["artist"] if artists and artists[0]["style"] >= 0.5 else None

        def signer(i: int) -> tuple[str | None, float]:
            """(the registered signer grouping i clearly matches or None, its closest sample's similarity)."""
            best: dict[str, float] = {}
            for hit in hits_all[i]:
                name = signer_of.get(hit.signature_id)
                if name and hit.score > best.get(name, -1.0) and signatures.same_size(marks[i][0], img.image.size,
                                                                                      hit.box):
                    best[name] = hit.score
            ranked = sorted(best.items(), key=lambda kv: -kv[1]) + [(None, 0.0)] * 2
            (name, sim), (_, runner_up) = ranked[0], ranked[1]
            return (name if sim >= SIG_MATCH and sim - runner_up >= SIG_MARGIN else None), sim

        signers = [signer(i) for i in range(len(marks))]
        # a grouping carved out of artwork may be reported only when it clearly matches a hand
        trusted = [not m[3] or (who is not None and sim >= CARVED_MATCH) for m, (who, sim) in zip(marks, signers)]

        out, first = [], 0
        for groupings in found:
            offered = [i for i in range(first, first + len(groupings)) if trusted[i]]
            first += len(groupings)
            if not offered:
                continue
            at, (who, sim) = offered[0], signers[offered[0]]
            if sim < SIG_MATCH:  # the likeliest grouping resembles no signature: does another?
                for i in offered[1:]:
                    if (clear := signers[i])[0]:
                        at, (who, sim) = i, clear
                        break
            box, likeness, _, _ = marks[at]
            if likeness < (MARK_MATCHED if who else MARK_MIN):
                continue
            forged = False
            if who is not None:  # A's mark on what is not A's registered work: made by A's hand?
                a = by_name.get(who, {"copy": 0.0, "derivative": 0.0})
                forged = a["copy"] < 0.5 and (style_top != who or a["derivative"] >= 0.5)
            # a cosine of mean-centred shapes: below 0 is no resemblance at all, which the contract's [0, 1] says as 0
            out.append({"box": list(box), "score": round(likeness, 4), "artist": who,
                        "similarity": round(max(float(sim), 0.0), 4), "forged": forged})
        return out
