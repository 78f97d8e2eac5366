"""Gather and verify evidence that pieces of registered works appear in a query.

Three cheap searches *propose* placements of registered works on the query:
  - perceptual hashes of the query's 8 flips/rotations (whole-image copies, even
    when too degraded for keypoints),
  - RootSIFT keypoints of the query and its mirror, with a RANSAC similarity
    transform (crops, rescales, rotations, flips, moved pieces),
  - part-sized window descriptors (pieces that stayed in place or moved as a block).
Every proposal is then *verified* by warping the work onto the query and
measuring which query detail it explains (local.align). Once one work explains
most of the query, a *second look* (propose_pieces) searches the works nearest in
style for the pixels it leaves unexplained: a part pasted from another work.
Only verified evidence reaches the scores.
"""

from __future__ import annotations

import io
from collections import OrderedDict, defaultdict
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from detector import hashes, local
from index.store import Hit, Store

HASH_PROPOSE = 0.62  # hash similarity worth verifying
KP_MATCH = 0.75  # RootSIFT cosine for a tentative keypoint pair
PATCH_PROPOSE = 0.9
MAX_WORKS = 8  # works verified per proposal source


@dataclass
class WorkCanvas:
    canvas: local.Canvas
    content: tuple[float, float, float, float]  # content box in canvas pixels

    @property
    def size(self) -> tuple[int, int]:
        return self.canvas.size


class WorkCanvases:
    """Registered works on the working canvas, decoded from their stored thumbnails (LRU cache).

    Keyed by work id. Ids are not given out twice (`catalogue.next_id`), but a store made before that
    counter may give its removed largest id once more, so `sync` empties the cache whenever works were
    added or removed since it was filled: a long-lived scorer (the HTTP service's) never verifies a
    query against a removed work's pixels under a new work's id.
    """

    def __init__(self, store: Store, capacity: int = 256):  # ~0.15 MB each: bounded per scoring thread
        self.store = store
        self.capacity = capacity
        self._cache: OrderedDict[int, WorkCanvas | None] = OrderedDict()
        self._generation: int | None = None

    def sync(self) -> None:
        """Forget every canvas if the store's works changed since the cache was filled."""
        gen = self.store.works_generation()
        if gen != self._generation:
            self._cache.clear()
            self._generation = gen

    def get(self, work_id: int) -> WorkCanvas | None:
        if work_id in self._cache:
            self._cache.move_to_end(work_id)
            return self._cache[work_id]
        png = self.store.thumbnail(work_id)
        wc = None
        if png is not None:
            img = Image.open(io.BytesIO(png)).convert("RGB")
            can = local.canvas(img, local.VERIFY)
            s = can.shape[1] / img.width
            box = hashes.content_box(img)
            wc = WorkCanvas(local.Canvas.of(can), tuple(c * s for c in box))
        self._cache[work_id] = wc
        if len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return wc


def _box_to_box(src: tuple, dst: tuple, k: int = 0) -> np.ndarray:
    """Affine matrix taking box `src` onto box `dst` through dihedral variant k."""
    corners = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
    s = np.float32([(src[0] + u * (src[2] - src[0]), src[1] + v * (src[3] - src[1])) for u, v in corners])
    d = []
    for u, v in corners:
        uu, vv = hashes.dihedral_point(k, u, v)
        d.append((dst[0] + uu * (dst[2] - dst[0]), dst[1] + vv * (dst[3] - dst[1])))
    return cv2.getAffineTransform(s, np.float32(d))


Placement = tuple[np.ndarray, int, "tuple[float, float, float, float] | None"]


SEARCHES = {"hash": "hash", "kp": "kp", "kp_flip": "kp", "patch": "patch"}  # proposal kind -> index it searches
NEIGHBOURS = {"hash": 5, "kp": 4, "patch": 3}  # nearest stored vectors taken per query row, per index
WORTH = {"kp": KP_MATCH, "patch": PATCH_PROPOSE}  # similarity under which `propose` ignores a hit: not resolved


def search(store: Store, queries: list[dict]) -> list[dict[str, list[list[Hit]]]]:
    """The nearest stored vectors of every proposal kind (SEARCHES), for a batch of queries' vectors,
    split back per query and kind.

    An image's result must not depend on the images scored with it (a scan's batch, a Ray block, one
    file from the command line). Float similarities come from BLAS, whose last bits depend on how many
    rows are searched together, and a last bit can move a hit across a threshold: each query's float
    rows are searched on their own. Hamming distances are exact integers, so one search of the binary
    index serves the whole batch (a batch of rows costs FAISS and SQLite far less than as many calls)."""
    out: list[dict[str, list[list[Hit]]]] = [{kind: [] for kind in SEARCHES} for _ in queries]
    specs = store.specs()
    for index, k in NEIGHBOURS.items():
        kinds = [kind for kind, i in SEARCHES.items() if i == index]
        rows = [(n, kind, v) for n, q in enumerate(queries) for kind in kinds for _, v in q.get(kind) or []]
        exact = index not in specs or specs[index].binary
        for group in [rows] if exact else [[r for r in rows if r[0] == n] for n in range(len(queries))]:
            if group:
                for (n, kind, _), hits in zip(group, store.search(index, np.stack([v for _, _, v in group]), k,
                                                                  WORTH.get(index))):
                    out[n][kind].append(hits)
    return out


def propose(works: WorkCanvases, q: dict, hits: dict[str, list[list[Hit]]], q_size: tuple[int, int],
            q_content: tuple) -> dict[int, list[Placement]]:
    """work id -> candidate placements: (2x3 matrix query canvas -> work canvas, support, focus).
    `hits`: the query's from `search`. focus is the box of the work (canvas pixels) that matched
    when only a part of it did, so registration looks there; None for whole-work matches."""
    out: dict[int, list[Placement]] = defaultdict(list)
    bits = len(q["hash"][0][1]) * 8
    best_hash: dict[int, tuple[float, int]] = {}
    for k, row in enumerate(hits["hash"]):
        for hit in row:
            sim = 1 - hit.score / bits
            if sim >= HASH_PROPOSE and sim > best_hash.get(hit.work_id, (0, 0))[0]:
                best_hash[hit.work_id] = (sim, k)
    for wid, (_, k) in sorted(best_hash.items(), key=lambda kv: -kv[1][0])[:MAX_WORKS]:
        wc = works.get(wid)
        if wc:  # rows come 8 turns at a time: of the content, then of the picture in a second border
            box = q["hash"][k][0]
            region = q_content if k < 8 else (box[0] * q_size[0], box[1] * q_size[1], box[2] * q_size[0],
                                              box[3] * q_size[1])
            out[wid].append((_box_to_box(region, wc.content, k % 8), 0, None))
    upright: dict[int, int] = {}  # work -> inliers of its placement from the query's own keypoints
    for kind, flipped in (("kp", False), ("kp_flip", True)):
        items = q.get(kind) or []
        if len(items) < 3:
            continue
        pts = np.float32([(b[0] * q_size[0], b[1] * q_size[1]) for b, _ in items])
        pairs: dict[int, list[tuple[int, tuple]]] = defaultdict(list)  # work -> (query keypoint, work point)
        for i, row in enumerate(hits[kind]):
            for hit in row:
                if hit.score >= KP_MATCH and hit.work_id is not None:
                    pairs[hit.work_id].append((i, hit.box))
        for wid, ps in sorted(pairs.items(), key=lambda kv: -len(kv[1]))[:MAX_WORKS]:
            wc = works.get(wid)
            if wc is None or len(ps) < 4:
                continue
            qp = pts[[i for i, _ in ps]]
            wp = np.float32([(b[0] * wc.size[0], b[1] * wc.size[1]) for _, b in ps])
            m, inl = local.fit(qp, wp, tol=0.03 * local.VERIFY)
            if m is None or inl.sum() < 4:
                continue
            if not flipped:
                upright[wid] = int(inl.sum())
            elif inl.sum() <= upright.get(wid, 0):
                continue  # a symmetric work fits its mirror too: only a better fit is a flipped copy
            else:  # points were on the mirrored canvas: compose with the mirror (local.mirrored's)
                m = m @ np.float32([[-1, 0, q_size[0] - local.MIRROR_X * local.VERIFY / local.CANVAS],
                                    [0, 1, 0], [0, 0, 1]])
            out[wid].append((m.astype(np.float32), int(inl.sum()), None))
    # windows: each near-identical window pair votes for (work, shift); pieces moved as a block agree
    votes: dict[tuple[int, float, float], list[tuple]] = defaultdict(list)  # -> the work's matching windows
    if q.get("patch"):
        for (qbox, _), row in zip(q["patch"], hits["patch"]):
            for hit in row:
                if hit.score >= PATCH_PROPOSE and hit.work_id is not None:
                    dx, dy = round((qbox[0] - hit.box[0]) * 16) / 16, round((qbox[1] - hit.box[1]) * 16) / 16
                    votes[(hit.work_id, dx, dy)].append(hit.box)
    for (wid, dx, dy), hits in sorted(votes.items(), key=lambda kv: -len(kv[1]))[:2 * MAX_WORKS]:
        wc = works.get(wid)
        if wc:
            shifted = (dx * q_size[0], dy * q_size[1], (1 + dx) * q_size[0], (1 + dy) * q_size[1])
            boxes = np.array(hits)  # the part of the work that matched: register on it
            focus = (*(boxes[:, :2].min(axis=0) * wc.size), *(boxes[:, 2:].max(axis=0) * wc.size))
            out[wid].append((_box_to_box(shifted, (0, 0, *wc.size)), 0, focus))
    return out


PIECE_MAIN = 0.4  # share of the query's detail one work must reproduce exactly before a second look
PIECE_MIN = 0.03  # share of the query's detail an unexplained blob needs to be looked for
PIECE_MATCH = 0.95  # normalised correlation (smoothed, half size) at which a blob's pixels are found in a work
PIECE_INSET = 0.1  # share of a blob's width and height left off each side
PIECE_CANDIDATES = 128  # works searched for a blob: the query's nearest in style


def _unexplained(qc: local.Canvas, aligned: dict[int, local.Alignment]) -> list[tuple[int, int, int, int]]:
    """Boxes (query canvas pixels) inside the two largest blobs of detail no verified work reproduces
    exactly, when each holds at least PIECE_MIN of the query's detail."""
    total = max(int(qc.detail.sum()), 1)
    explained = np.zeros_like(qc.detail)
    for a in aligned.values():
        explained |= a.exact
    rest = qc.detail & ~explained
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        cv2.dilate(rest.astype(np.uint8), np.ones((local.WIN, local.WIN), np.uint8)), connectivity=8)
    boxes = []
    for i in np.argsort(-stats[1:, cv2.CC_STAT_AREA])[:2] + 1:
        ys, xs = np.nonzero(rest & (labels == i))
        if len(xs) < PIECE_MIN * total:
            continue
        # detail windows reach WIN // 2 beyond a piece, and its rim may hold the main work's
        # pixels where they happen to agree: the piece's inner part is what is looked for
        r = local.WIN // 2
        x0, y0, x1, y1 = xs.min() + r, ys.min() + r, xs.max() + 1 - r, ys.max() + 1 - r
        mx, my = int((x1 - x0) * PIECE_INSET), int((y1 - y0) * PIECE_INSET)
        if x1 - x0 - 2 * mx >= 8 and y1 - y0 - 2 * my >= 8:  # a sliver (a blob along the edge) is no piece
            boxes.append((x0 + mx, y0 + my, x1 - mx, y1 - my))
    return boxes


def propose_pieces(store: Store, works: WorkCanvases, q: dict, qc: local.Canvas,
                   aligned: dict[int, local.Alignment]) -> dict[int, list[Placement]]:
    """A second look for pieces pasted from other works, once one work explains most of the query.

    A part-sized piece moved by a few pixels carries too few keypoints to outvote the works
    sharing its face, and no work window fits inside it, so the first look rarely proposes its
    donor. What the main work leaves unexplained is the piece itself: its pixels are looked for
    (template matching on the half-size canvases, anywhere, without rescaling: a piece is found
    where query and donor share the working canvas's scale, as icons of one set do) in the works
    nearest the query in style, the main work among them (a part of it moved elsewhere); each
    work where they are found is proposed at that shift, focused on them.
    """
    main = max((int(a.exact.sum()) for a in aligned.values()), default=0)
    if main < PIECE_MAIN * qc.detail.sum() or not q.get("style"):
        return {}
    boxes = _unexplained(qc, aligned)
    if not boxes:
        return {}
    nearest = store.search("style", q["style"][0][1][None], PIECE_CANDIDATES)[0]
    candidates = [(h.work_id, wc) for h in nearest if h.work_id is not None and (wc := works.get(h.work_id))]
    sx, sy = qc.coarse_scale
    out: dict[int, list[Placement]] = defaultdict(list)
    for bx0, by0, bx1, by1 in boxes:
        x0, y0 = int(np.ceil(bx0 * sx)), int(np.ceil(by0 * sy))
        piece = qc.coarse[y0:int(by1 * sy), x0:int(bx1 * sx)]
        if min(piece.shape) < 4 or piece.std() < 1.0:
            continue
        found = []
        for wid, wc in candidates:
            if wc.canvas.coarse.shape[0] >= piece.shape[0] and wc.canvas.coarse.shape[1] >= piece.shape[1]:
                _, best, _, at = cv2.minMaxLoc(cv2.matchTemplate(wc.canvas.coarse, piece, cv2.TM_CCOEFF_NORMED))
                if best >= PIECE_MATCH:
                    found.append((best, wid, wc, at))
        for _, wid, wc, (ax, ay) in sorted(found, key=lambda f: -f[0])[:MAX_WORKS]:
            wsx, wsy = wc.canvas.coarse_scale
            shift = np.float32([[1, 0, ax / wsx - x0 / sx], [0, 1, ay / wsy - y0 / sy]])  # query -> work canvas
            out[wid].append((shift, 0, (ax / wsx, ay / wsy, (ax + piece.shape[1]) / wsx, (ay + piece.shape[0]) / wsy)))
    return out


def distinct(placements: list[Placement], size: tuple[int, int], tol: float = 0.75) -> list[Placement]:
    """Placements that differ: one of each group putting the query's corners within `tol` canvas
    pixels of the same spot (the best-supported), since refinement takes them to the same place.
    A group keeps a focus if any of its placements has one: registering on the part that matched
    is right for a whole match too, and it is what proves a pasted part."""
    corners = np.float32([[0, 0, 1], [size[0], 0, 1], [0, size[1], 1], [size[0], size[1], 1]]).T
    groups: list[list] = []  # [matrix, support, focus, where the matrix puts the corners]
    for matrix, support, focus in sorted(placements, key=lambda p: -p[1]):
        at = matrix @ corners
        group = next((g for g in groups if np.abs(at - g[3]).max() <= tol), None)
        if group is None:
            groups.append([matrix, support, focus, at])
        elif group[2] is None:
            group[2] = focus
    return [(m, s, f) for m, s, f, _ in groups]


def verify(works: WorkCanvases, proposals: dict[int, list[Placement]],
           q: local.Canvas) -> dict[int, local.Alignment]:
    """Best verified placement per work: by forward x backward agreement plus the share of the
    query's detail it reproduces exactly, so a placement proving a pasted piece is not outranked
    by one that merely resembles the whole (a recoloured copy has no exact pixels anywhere, and
    agreement alone decides)."""
    best: dict[int, local.Alignment] = {}
    for wid, placements in proposals.items():
        wc = works.get(wid)
        if wc is None:
            continue
        for matrix, support, focus in distinct(placements, q.size):
            a = local.align(wid, q, wc.canvas, matrix, support, focus)
            if wid not in best or a.strength(q) > best[wid].strength(q):
                best[wid] = a
    return best


def _solid(mask: np.ndarray) -> np.ndarray:
    """`mask` without its slivers (opened by 3x3). Where the main work is inexact (a blurred or
    resampled copy), a sibling placed a fraction of a pixel apart matches thin runs of edge pixels
    by chance; a piece cut out of a work is exact over whole windows."""
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0


def cover(alignments: list[local.Alignment], q_detail: np.ndarray, min_gain: float = 0.03,
          max_pieces: int = 6) -> tuple[list[tuple[local.Alignment, np.ndarray]], float]:
    """Greedy set cover of the query's detail (or any part of it, `q_detail`) by exact pieces:
    [(alignment, its new pixels)], coverage.

    Exact agreement, not mere resemblance: sibling icons that share an outline
    resemble each other everywhere but reproduce each other only where truly shared.
    Pieces after the first count only solid runs of new pixels (`_solid`).
    """
    total = max(int(q_detail.sum()), 1)
    covered = np.zeros_like(q_detail)
    allowed = np.ones_like(q_detail)
    pieces = []
    pool = list(alignments)
    while pool and len(pieces) < max_pieces:
        news = [_solid(a.exact & q_detail & ~covered & allowed) if pieces else a.exact & q_detail for a in pool]
        gains = [int(n.sum()) for n in news]
        i = int(np.argmax(gains))
        if gains[i] < min_gain * total:
            break
        new = news[i]
        pieces.append((pool.pop(i), new))
        covered |= new
        if len(pieces) == 1:  # later pieces must replace what the main work contradicts, or lie beyond it
            allowed = pieces[0][0].conflict | ~pieces[0][0].inside
    if len(pieces) >= 2:  # the cut between two pieces belongs to neither; it is not unexplained content
        kernel = np.ones((local.WIN, local.WIN), np.uint8)
        near = sum((cv2.dilate(new.astype(np.uint8), kernel) > 0).astype(np.uint8) for _, new in pieces)
        total = max(total - int((q_detail & ~covered & (near >= 2)).sum()), 1)
    return pieces, float(covered.sum()) / total
