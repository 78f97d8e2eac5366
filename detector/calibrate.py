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

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score

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


class LinearHands:
    """Multinomial logistic regression over one kind's unit vectors: one class per artist, plus one
    for the background (images in nobody's hand). Its regularisation is picked by cross-validated
    accuracy on the registered works themselves, never on queries."""

    def __init__(self, vecs: np.ndarray, owner: np.ndarray, background: np.ndarray, n_artists: int, seed: int):
        self.n_artists = n_artists
        x = np.concatenate([vecs, background])
        y = np.concatenate([owner, np.full(len(background), n_artists)])
        cv = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            scores = [cross_val_score(self._model(c), x, y, cv=cv).mean() for c in LINEAR_C]
            self.c = LINEAR_C[int(np.argmax(scores))]  # the first of equals: the most regularised
            # rows: the registered works, then the background, as `x`
            self.out_of_fold = _log_odds(cross_val_predict(self._model(self.c), x, y, cv=cv, method="predict_proba"),
                                         n_artists)
            self.model = self._model(self.c).fit(x, y)

    @staticmethod
    def _model(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, max_iter=2000)

    def log_odds(self, queries: np.ndarray) -> np.ndarray:
        return _log_odds(self.model.predict_proba(queries), self.n_artists)


class StyleCalibration:
    """Fitted on one snapshot of the store's style (and CLIP) vectors."""

    def __init__(self, blocks: list[tuple[np.ndarray, np.ndarray]], n_artists: int, seed: int = 0,
                 background: list[np.ndarray] | None = None):
        """`blocks`: per embedding kind, (unit vectors, owner artist index) of registered works;
        `background`: per kind, unit vectors of images in nobody's hand (negatives for every artist)."""
        self.blocks = blocks
        self.n_artists = n_artists
        self.background = background or []
        self.model: LogisticRegression | None = None
        self.linear: list[LinearHands] = []
        if n_artists >= 2:
            self._fit(seed)

    def _fit(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        n = len(self.blocks[0][1])
        pick = np.sort(rng.choice(n, size=min(n, MAX_FIT), replace=False))
        owner = self.blocks[0][1][pick]
        if self.background and np.bincount(owner, minlength=self.n_artists).min() >= FOLDS:
            self.linear = [LinearHands(vecs[pick], own[pick], bg, self.n_artists, seed)
                           for (vecs, own), bg in zip(self.blocks, self.background)]
        feats, bg_feats = [], []
        for i, (vecs, own) in enumerate(self.blocks):
            sims = vecs[pick] @ vecs.T
            sims[np.arange(len(pick)), pick] = np.nan  # leave each work out of its own neighbours
            lin = self.linear[i].out_of_fold if self.linear else None
            feats.append(features(artist_similarity(sims, own, self.n_artists), None if lin is None else lin[:len(pick)]))
            if self.background:
                b = self.background[i]
                bg_feats.append(features(artist_similarity(b @ vecs.T, own, self.n_artists),
                                         None if lin is None else lin[len(pick):]))
        width = feats[0].shape[-1] * len(self.blocks)
        x = np.concatenate(feats, axis=-1).reshape(-1, width)
        y = (owner[:, None] == np.arange(self.n_artists)[None, :]).reshape(-1)
        if self.background:
            x = np.concatenate([x, np.concatenate(bg_feats, axis=-1).reshape(-1, width)])
            y = np.concatenate([y, np.zeros(len(self.background[0]) * self.n_artists, bool)])
        if y.all() or not y.any():
            return
        self.model = LogisticRegression(C=10.0, class_weight="balanced", max_iter=500).fit(x, y)

    def probabilities(self, queries: list[np.ndarray]) -> np.ndarray:
        """P(artist) for one query: one unit vector per block, same order as `blocks`."""
        feats = [features(artist_similarity((vecs @ q)[None, :], owner, self.n_artists),
                          self.linear[i].log_odds(q[None, :]) if self.linear else None)
                 for i, (q, (vecs, owner)) in enumerate(zip(queries, self.blocks))]
        x = np.concatenate(feats, axis=-1).reshape(self.n_artists, -1)
        if self.model is None:  # one artist: no background to calibrate against; a fixed, documented curve
            return 1 / (1 + np.exp(-(x[:, 0] - 0.85) / 0.04))
        return self.model.predict_proba(x)[:, 1]
