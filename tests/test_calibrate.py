"""Style calibration: which hand drew a work, when its subject says otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector import calibrate
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


def test_a_cached_calibration_scores_exactly_as_its_fit_and_a_damaged_one_is_fitted_again(tmp_path, monkeypatch):
    """A calibration is fitted once per store state and kept in the cache folder: read back, it gives
    the fitted probabilities bit for bit without fitting; other vectors (registered or background) get
    their own; a damaged or hostile file (one that is not JSON, nests past Python's recursion limit,
    holds an integer no float holds, NaN or Infinity, or coefficients of the wrong shape) is fitted
    again and mended."""
    monkeypatch.setenv("CHIMERA_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(2)
    vecs, owner, subjects, hands = _world(rng, per_artist=40)
    bg = _unit(rng.normal(size=(32, vecs.shape[1])))
    fits: list[int] = []
    real_fit = StyleCalibration._fit
    monkeypatch.setattr(StyleCalibration, "_fit", lambda self, seed: fits.append(1) or real_fit(self, seed))
    queries = _unit(rng.normal(size=(10, vecs.shape[1])))
    fitted = calibrate.cached([(vecs, owner)], 2, [bg])
    assert fitted.linear and fitted.model is not None and fits == [1]
    want = np.array([fitted.probabilities([q]) for q in queries])
    [path] = tmp_path.glob("calibration-*.json")
    assert path.name.endswith(f"-uid{os.geteuid()}.json")  # another user's file is never read: named apart
    read = calibrate.cached([(vecs, owner)], 2, [bg])
    assert fits == [1] and np.array_equal(np.array([read.probabilities([q]) for q in queries]), want)
    calibrate.cached([(vecs[1:], owner[1:])], 2, [bg])  # other works: another fit, another file
    calibrate.cached([(vecs, owner)], 2, [bg[1:]])  # another background (another Pillow's resampling)
    assert fits == [1, 1, 1] and len(list(tmp_path.glob("calibration-*.json"))) == 3
    good = json.loads(path.read_text())
    nan = json.dumps(good).replace(str(good["model"]["intercept"][0]), "NaN", 1)
    huge = json.dumps(good).replace(str(good["model"]["intercept"][0]), "9" * 400, 1)
    wrong = json.dumps({**good, "linear": [{"dtype": "float32", "coef": [[1.0, 2.0]], "intercept": [0.0]}]})
    for damage in (b"{not json", b"[" * 100_000, nan.encode(), nan.replace("NaN", "Infinity").encode(),
                   huge.encode(), wrong.encode(), b"[]"):
        path.write_bytes(damage)
        again = calibrate.cached([(vecs, owner)], 2, [bg])
        assert np.array_equal(np.array([again.probabilities([q]) for q in queries]), want)
        assert json.loads(path.read_text()) == good
    assert len(fits) == 3 + 7


def test_chimera_score_reads_the_calibration_a_first_score_kept(tmp_path, icons):
    """The second `chimera score` of a store reads the calibration the first one fitted, so it never
    imports scikit-learn (a second and a half of start-up), and prints the same result."""
    from service.cli import main
    store = str(tmp_path / "store")
    for artist, hue in (("alice", (230, 180, 40)), ("bob", (60, 120, 220))):
        assert main(["--store", store, "--no-clip", "index", "add", "--artist", artist,
                     str(icons(artist, 6, hue))]) == 0
    query = str(sorted(Path(icons("alice", 7, (230, 180, 40))).iterdir())[-1])
    probe = ("import sys; from service.cli import main; rc = main(sys.argv[1:]); "
             "print('sklearn' in sys.modules, file=sys.stderr); sys.exit(rc)")
    env = {**os.environ, "CHIMERA_CACHE_DIR": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-c", probe, "--store", store, "--no-clip", "score", "--json", query],
                           env=env, capture_output=True, text=True, cwd=Path(__file__).parents[1]) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0]
    assert [r.stderr.split()[-1] for r in runs] == ["True", "False"]
    assert json.loads(runs[0].stdout) == json.loads(runs[1].stdout)
    assert len(list((tmp_path / "cache").glob("calibration-*.json"))) == 1


def test_the_cache_keeps_the_newest_calibrations_whatever_else_lies_there(tmp_path, monkeypatch):
    """Pruning keeps this user's CACHE_KEEP newest calibration files; a dangling link or a file that
    vanishes meanwhile stopped it, and the folder grew without bound."""
    monkeypatch.setenv("CHIMERA_CACHE_DIR", str(tmp_path))
    uid = os.geteuid()
    for i in range(calibrate.CACHE_KEEP + 10):
        f = tmp_path / f"calibration-{i:040d}-uid{uid}.json"
        f.write_text("{}")
        os.utime(f, (1_000_000 + i, 1_000_000 + i))
    (tmp_path / f"calibration-{'d' * 40}-uid{uid}.json").symlink_to(tmp_path / "gone")
    other = tmp_path / f"calibration-{'e' * 40}-uid{uid + 1}.json"  # another user's: not ours to prune
    other.write_text("{}")
    os.utime(other, (0, 0))
    calibrate._prune(tmp_path)
    left = {p.name for p in tmp_path.glob(f"calibration-*-uid{uid}.json")}
    assert len(left) == calibrate.CACHE_KEEP  # the link, newest of all, among them
    assert not left & {f"calibration-{i:040d}-uid{uid}.json" for i in range(11)}
    assert other.exists()
