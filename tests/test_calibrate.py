"""Style calibration: which hand drew a work, when its subject says otherwise."""

from __future__ import annotations

import numpy as np

from detector.calibrate import FOLDS, StyleCalibration


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _world(rng: np.random.Generator, per_artist: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two artists drawing 30 subjects: a vector is mostly its subject, a little its artist's hand.
    Only artist 0 ever drew subject 0, and drew it five times over."""
    dim = 64
    subjects = rng.normal(size=(30, dim)) * 3
    hands = rng.normal(size=(2, dim))
    owner = np.repeat([0, 1], per_artist)
    subject = rng.integers(1, 30, size=len(owner))
    subject[:5] = 0
    vecs = _unit(subjects[subject] + hands[owner] + 0.5 * rng.normal(size=(len(owner), dim)))
    return vecs, owner, subjects, hands


def test_a_subject_only_one_artist_drew_is_attributed_to_the_hand_that_drew_it():
    rng = np.random.default_rng(0)
    vecs, owner, subjects, hands = _world(rng, per_artist=60)
    background = _unit(rng.normal(size=(64, vecs.shape[1])))
    calib = StyleCalibration([(vecs, owner)], 2, background=[background])
    assert calib.linear, "every artist has enough works: the linear feature is used"
    queries = _unit(subjects[0] + hands[1] + 0.5 * rng.normal(size=(20, vecs.shape[1])))
    # the nearest registered works are artist 0's five drawings of subject 0...
    assert (owner[np.argsort(-(queries @ vecs.T), axis=1)[:, :3]] == 0).mean() > 0.9
    # ...yet the calibrated style says artist 1's hand, and confidently
    p = np.array([calib.probabilities([q]) for q in queries])
    assert (p.argmax(axis=1) == 1).mean() >= 0.9
    assert np.median(p[:, 1]) > 0.5 > np.median(p[:, 0])
    # and a vector in nobody's hand is nobody's
    stray = _unit(rng.normal(size=(20, vecs.shape[1])))
    assert np.median([calib.probabilities([q]).max() for q in stray]) < 0.5


def test_an_artist_with_too_few_works_leaves_calibration_to_the_neighbours():
    rng = np.random.default_rng(1)
    vecs, owner, _, _ = _world(rng, per_artist=40)
    keep = np.concatenate([np.flatnonzero(owner == 0), np.flatnonzero(owner == 1)[:FOLDS - 1]])
    background = _unit(rng.normal(size=(32, vecs.shape[1])))
    calib = StyleCalibration([(vecs[keep], owner[keep])], 2, background=[background])
    assert not calib.linear
    p = calib.probabilities([vecs[0]])
    assert p.shape == (2,) and p[0] > 0.5
