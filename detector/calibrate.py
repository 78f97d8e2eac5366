"""Turn raw nearest-neighbour similarities into calibrated per-artist probabilities.

A raw cosine says little on its own (icons of one artist all look alike to a
colour histogram). So for every registered work we compute, leaving it out, its
similarity to each artist, and fit a logistic model of "is this artist's" on
(similarity, margin over the best other artist). 0.5 then means "as likely this
artist as not", with the other registered artists and a procedural background set
(detector/background.py: images in nobody's hand) as the background.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

TOP_K = 3
MAX_FIT = 3000  # works sampled for fitting: n^2 similarities, bounded


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


def features(per_artist: np.ndarray) -> np.ndarray:
    """(queries, artists, 2): similarity and margin over the best other artist."""
    n = per_artist.shape[1]
    if n == 1:
        return np.stack([per_artist, per_artist - 0.5], axis=-1)
    top2 = np.sort(per_artist, axis=1)[:, -2:]
    best_other = np.where(per_artist >= top2[:, [1]], top2[:, [0]], top2[:, [1]])
    return np.stack([per_artist, per_artist - best_other], axis=-1)


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
        if n_artists >= 2:
            self._fit(seed)

    def _fit(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        n = len(self.blocks[0][1])
        pick = np.sort(rng.choice(n, size=min(n, MAX_FIT), replace=False))
        feats = []
        for vecs, owner in self.blocks:
            sims = vecs[pick] @ vecs.T
            sims[np.arange(len(pick)), pick] = np.nan  # leave each work out of its own neighbours
            feats.append(features(artist_similarity(sims, owner, self.n_artists)))
        x = np.concatenate(feats, axis=-1).reshape(-1, 2 * len(self.blocks))
        y = (self.blocks[0][1][pick][:, None] == np.arange(self.n_artists)[None, :]).reshape(-1)
        if self.background:
            bg = [features(artist_similarity(b @ vecs.T, owner, self.n_artists))
                  for b, (vecs, owner) in zip(self.background, self.blocks)]
            x = np.concatenate([x, np.concatenate(bg, axis=-1).reshape(-1, 2 * len(self.blocks))])
            y = np.concatenate([y, np.zeros(len(self.background[0]) * self.n_artists, bool)])
        if y.all() or not y.any():
            return
        self.model = LogisticRegression(C=10.0, class_weight="balanced", max_iter=500).fit(x, y)

    def probabilities(self, queries: list[np.ndarray]) -> np.ndarray:
        """P(artist) for one query: one unit vector per block, same order as `blocks`."""
        feats = [features(artist_similarity((vecs @ q)[None, :], owner, self.n_artists))
                 for q, (vecs, owner) in zip(queries, self.blocks)]
        x = np.concatenate(feats, axis=-1).reshape(self.n_artists, -1)
        if self.model is None:  # one artist: no background to calibrate against; a fixed, documented curve
            return 1 / (1 + np.exp(-(x[:, 0] - 0.85) / 0.04))
        return self.model.predict_proba(x)[:, 1]
