"""Turn raw nearest-neighbour similarities into calibrated per-artist probabilities.

A raw cosine says little on its own (icons of one artist all look alike to a
colour histogram). So for every registered work we compute, leaving it out, its
similarity to each artist, and fit a logistic model of "is this artist's" on
(similarity, margin over the best other artist, a linear model's log-odds). 0.5 then
means "as likely this artist as not", with the other registered artists and a
procedural background set (detector/background.py: images in nobody's hand) as the
background.

The nearest neighbours answer "which registered works look most like this", and a
new work's nearest neighbours are often works of the same subject by another hand
(a skull is closest to the other artist's skull). A linear model over the same
vectors, fitted to tell the artists and the background apart, weighs the directions
that separate hands (shading, line weight) over those that separate subjects. Its
log-odds for the registered works are out of fold, as the similarities are left out,
so the calibration sees what a query will get.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import scipy
from scipy.special import expit

from detector import cache

TOP_K = 3
MAX_FIT = 3000  # works sampled for fitting: n^2 similarities, bounded
LINEAR_C = (1.0, 10.0, 100.0, 1000.0)  # inverse regularisation of the linear model, picked by cross-validation
FOLDS = 3  # every artist needs this many registered works for the linear feature (else it is left out)


def artist_similarity(sims: np.ndarray, owner: np.ndarray, n_artists: int, k: int = TOP_K) -> np.ndarray:
    """(queries, artists) mean of each artist's top-k similarities; -1 where the artist has none."""
    out = np.full((sims.shape[0], n_artists), -1.0, np.float32)
    for a in range(n_artists):
        cols = sims[:, owner == a]
        if cols.shape[1] == 0:
            continue
        top = -np.sort(-np.nan_to_num(cols, nan=-np.inf), axis=1)[:, :k]  # NaN = left out: sorts last
        valid = np.isfinite(top)
        count = valid.sum(axis=1)
        mean = np.where(valid, top, 0).sum(axis=1) / np.maximum(count, 1)
        out[:, a] = np.where(count > 0, mean, -1.0)
    return out


def features(per_artist: np.ndarray, log_odds: np.ndarray | None = None) -> np.ndarray:
    """(queries, artists, 2 or 3): similarity, margin over the best other artist, and the linear
    model's log-odds of the artist when there is one."""
    n = per_artist.shape[1]
    if n == 1:
        return np.stack([per_artist, per_artist - 0.5], axis=-1)
    top2 = np.sort(per_artist, axis=1)[:, -2:]
    best_other = np.where(per_artist >= top2[:, [1]], top2[:, [0]], top2[:, [1]])
    cols = [per_artist, per_artist - best_other] + ([log_odds] if log_odds is not None else [])
    return np.stack(cols, axis=-1)


def _log_odds(proba: np.ndarray, n_artists: int) -> np.ndarray:
    """(queries, artists) log p / (1 - p) of each artist's class, bounded."""
    p = np.clip(proba[:, :n_artists], 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


class Logistic:
    """A fitted logistic regression's coefficients, and its probabilities as scikit-learn computes
    them (its `predict_proba`: the logistic function for two classes, softmax for more, in the
    coefficients' precision; equal to the last bit but for BLAS's order of summation). Scoring needs
    only these, so a calibration read back from the cache (`cached`) scores without importing
    scikit-learn, about 1.5 s of every `chimera score`."""

    def __init__(self, coef: np.ndarray, intercept: np.ndarray):
        # one memory layout, fitted or read back: BLAS sums in an order that depends on it, and a
        # cached calibration must give the fitted probabilities to the last bit
        self.coef, self.intercept = np.ascontiguousarray(coef), np.ascontiguousarray(intercept)

    @classmethod
    def of(cls, model: Any) -> "Logistic":
        return cls(model.coef_, model.intercept_)

    def proba(self, x: np.ndarray) -> np.ndarray:
        scores = x @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:  # two classes
            p = expit(scores[:, 0])
            return np.stack([1 - p, p], axis=1)
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        return scores / scores.sum(axis=1, keepdims=True)

    def params(self) -> dict[str, Any]:
        return {"dtype": str(self.coef.dtype), "coef": self.coef.tolist(), "intercept": self.intercept.tolist()}

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> "Logistic":
        dtype = np.dtype(p["dtype"])
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"not a coefficient type: {dtype}")
        coef, intercept = np.array(p["coef"], dtype), np.array(p["intercept"], dtype)
        if coef.ndim != 2 or intercept.shape != coef.shape[:1]:
            raise ValueError("coefficients of the wrong shape")
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise ValueError("coefficients that are not finite")
        return cls(coef, intercept)


def _logistic_regression(c: float, **kw: Any) -> Any:
    from sklearn.linear_model import LogisticRegression  # imported to fit only (see Logistic)
    return LogisticRegression(C=c, **kw)


class LinearHands:
    """Multinomial logistic regression over one kind's unit vectors: one class per artist, plus one
    for the background (images in nobody's hand). Its regularisation is picked by cross-validated
    accuracy on the registered works themselves, never on queries."""

    def __init__(self, vecs: np.ndarray, owner: np.ndarray, background: np.ndarray, n_artists: int, seed: int):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score
        self.n_artists = n_artists
        x = np.concatenate([vecs, background])
        y = np.concatenate([owner, np.full(len(background), n_artists)])
        cv = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            scores = [cross_val_score(self._model(c), x, y, cv=cv).mean() for c in LINEAR_C]
            c = LINEAR_C[int(np.argmax(scores))]  # the first of equals: the most regularised
            # rows: the registered works, then the background, as `x`
            self.out_of_fold = _log_odds(cross_val_predict(self._model(c), x, y, cv=cv, method="predict_proba"),
                                         n_artists)
            self.model = Logistic.of(self._model(c).fit(x, y))

    @staticmethod
    def _model(c: float) -> Any:
        return _logistic_regression(c, max_iter=2000)


class StyleCalibration:
    """Fitted on one snapshot of the store's style (and CLIP) vectors."""

    def __init__(self, blocks: list[tuple[np.ndarray, np.ndarray]], n_artists: int, seed: int = 0,
                 background: list[np.ndarray] | None = None):
        """`blocks`: per embedding kind, (unit vectors, owner artist index) of registered works;
        `background`: per kind, unit vectors of images in nobody's hand (negatives for every artist)."""
        self.blocks = blocks
        self.n_artists = n_artists
        self.background = background or []
        self.model: Logistic | None = None
        self.linear: list[Logistic] = []  # per block, when the linear feature is used
        if n_artists >= 2:
            self._fit(seed)

    def params(self) -> dict[str, Any]:
        """The fitted coefficients, as JSON (floats written exactly: Python's repr round-trips)."""
        return {"n_artists": self.n_artists, "model": self.model and self.model.params(),
                "linear": [m.params() for m in self.linear]}

    @classmethod
    def restore(cls, blocks: list[tuple[np.ndarray, np.ndarray]], n_artists: int,
                params: dict[str, Any]) -> "StyleCalibration":
        """The calibration `params` describe, over the same `blocks` it was fitted on (ValueError
        when they do not fit them)."""
        out = cls.__new__(cls)
        out.blocks, out.n_artists, out.background = blocks, n_artists, []
        if params.get("n_artists") != n_artists:
            raise ValueError("fitted for another number of artists")
        out.model = Logistic.from_params(params["model"]) if params.get("model") else None
        out.linear = [Logistic.from_params(p) for p in params.get("linear") or []]
        if out.linear and [m.coef.shape for m in out.linear] != [(n_artists + 1, v.shape[1]) for v, _ in blocks]:
            raise ValueError("linear models of the wrong shape")
        width = 2 if n_artists == 1 else 3 if out.linear else 2
        if out.model is not None and out.model.coef.shape != (1, width * len(blocks)):
            raise ValueError("calibration model of the wrong shape")
        return out

    def _fit(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        n = len(self.blocks[0][1])
        pick = np.sort(rng.choice(n, size=min(n, MAX_FIT), replace=False))
        owner = self.blocks[0][1][pick]
        hands = []
        if self.background and np.bincount(owner, minlength=self.n_artists).min() >= FOLDS:
            hands = [LinearHands(vecs[pick], own[pick], bg, self.n_artists, seed)
                     for (vecs, own), bg in zip(self.blocks, self.background)]
            self.linear = [h.model for h in hands]
        feats, bg_feats = [], []
        for i, (vecs, own) in enumerate(self.blocks):
            sims = vecs[pick] @ vecs.T
            sims[np.arange(len(pick)), pick] = np.nan  # leave each work out of its own neighbours
            lin = hands[i].out_of_fold if hands else None
            feats.append(features(artist_similarity(sims, own, self.n_artists), None if lin is None else lin[:len(pick)]))
            if self.background:
                b = self.background[i]
                bg_feats.append(features(artist_similarity(b @ vecs.T, own, self.n_artists),
                                         None if lin is None else lin[len(pick):]))
        width = feats[0].shape[-1] * len(self.blocks)
        x = np.concatenate(feats, axis=-1).reshape(-1, width)
        own = owner[:, None] == np.arange(self.n_artists)[None, :]
        # a work left out of its artist's works leaves none when it is the only one: no similarity to
        # them (-1) is no example of how similar an artist's own works are (learnt as one, high
        # similarity read as "not this artist" where every artist had one work)
        alone = own & (np.bincount(self.blocks[0][1], minlength=self.n_artists) == 1)[owner][:, None]
        x, y = x[~alone.reshape(-1)], own.reshape(-1)[~alone.reshape(-1)]
        if self.background:
            x = np.concatenate([x, np.concatenate(bg_feats, axis=-1).reshape(-1, width)])
            y = np.concatenate([y, np.zeros(len(self.background[0]) * self.n_artists, bool)])
        if y.all() or not y.any():
            return
        self.model = Logistic.of(_logistic_regression(10.0, class_weight="balanced", max_iter=500).fit(x, y))

    def probabilities(self, queries: list[np.ndarray]) -> np.ndarray:
        """P(artist) for one query: one unit vector per block, same order as `blocks`."""
        feats = [features(artist_similarity((vecs @ q)[None, :], owner, self.n_artists),
                          _log_odds(self.linear[i].proba(q[None, :]), self.n_artists) if self.linear else None)
                 for i, (q, (vecs, owner)) in enumerate(zip(queries, self.blocks))]
        x = np.concatenate(feats, axis=-1).reshape(self.n_artists, -1)
        if self.model is None:  # one artist (or one work each): nothing to calibrate against; a fixed, documented curve
            return 1 / (1 + np.exp(-(x[:, 0] - 0.85) / 0.04))
        return self.model.proba(x)[:, 1]


CACHE_KEEP = 16  # calibration files kept in the cache folder (one per store state scored; the newest stay)
CACHE_MAX_BYTES = 64 << 20  # a larger file is not read (about two million coefficients: never ours)
_FIT_CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()  # what fits: this module, as installed


def _cache_path(blocks: list[tuple[np.ndarray, np.ndarray]], n_artists: int,
                background: list[np.ndarray]) -> Path | None:
    """Where the calibration of exactly these inputs is kept: named by a digest of the registered
    vectors and owners, the background vectors, this module's code and the versions of the libraries
    that fit (the vectors themselves, not what makes them: another Pillow may resample the
    background differently), per user (another's file is never read)."""
    h = hashlib.sha256(json.dumps({
        "code": _FIT_CODE, "artists": n_artists, "numpy": np.__version__, "scipy": scipy.__version__,
        "sklearn": metadata.version("scikit-learn")}, sort_keys=True).encode())
    for vecs, owner in [*blocks, *((b, np.zeros(0)) for b in background)]:
        h.update(repr((vecs.shape, str(vecs.dtype), owner.shape, str(owner.dtype))).encode())
        h.update(np.ascontiguousarray(vecs).tobytes())
        h.update(np.ascontiguousarray(owner).tobytes())
    try:
        return cache.cache_dir() / f"calibration-{h.hexdigest()[:40]}-uid{cache.uid()}.json"
    except RuntimeError:  # no home folder, and no cache folder named
        return None


def _finite(constant: str) -> float:
    raise ValueError(f"{constant} is no coefficient")


def _read_params(path: Path) -> Any:
    """The JSON at `path`, or None. Nothing in it may raise: a damaged file is fitted again."""
    f = cache.open_own(path)
    if f is None:
        return None
    with f:
        try:
            data = f.read(CACHE_MAX_BYTES + 1)
            return json.loads(data, parse_constant=_finite) if len(data) <= CACHE_MAX_BYTES else None
        except Exception:  # noqa: BLE001 - unreadable, not JSON, nested past the recursion limit...
            return None


def _prune(folder: Path) -> None:
    """Keep this user's CACHE_KEEP newest calibration files (a store that changes often leaves one per
    state); a file gone meanwhile (another process pruning) is passed over."""
    dated = []
    for p in folder.glob(f"calibration-*-uid{cache.uid()}.json"):
        try:
            dated.append((p.lstat().st_mtime, p))
        except OSError:
            continue
    for _, old in sorted(dated, reverse=True)[CACHE_KEEP:]:
        try:
            old.unlink(missing_ok=True)
        except OSError:
            pass


def cached(blocks: list[tuple[np.ndarray, np.ndarray]], n_artists: int,
           background: list[np.ndarray]) -> StyleCalibration:
    """The calibration of these registered vectors: read from the user's cache folder when this exact
    fit was made before (by any process: each `chimera score` is one), else fitted and kept there.

    A fit takes scikit-learn's import (about 1.5 s) and cross-validated fits (0.5 s for 180 works,
    more for large stores); a cached one is its coefficients, which give the fitted probabilities
    exactly (`Logistic`). A damaged or foreign file is fitted again and replaced."""
    path = _cache_path(blocks, n_artists, background)
    params = _read_params(path) if path is not None else None
    if isinstance(params, dict):
        try:
            return StyleCalibration.restore(blocks, n_artists, params)
        except Exception:  # noqa: BLE001 - any file that is not a fit of these inputs: fitted again
            pass
    calib = StyleCalibration(blocks, n_artists, background=background)
    if path is not None:
        text = json.dumps(calib.params()).encode()
        if len(text) <= CACHE_MAX_BYTES and cache.write_whole(path, lambda f: f.write(text)):
            _prune(path.parent)
    return calib
