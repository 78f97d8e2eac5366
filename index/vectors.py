"""FAISS indexes for one embedding kind: build, search, and crash-safe persistence.

Float kinds use inner product on L2-normalised vectors (cosine similarity); binary
kinds (perceptual hashes) use Hamming distance. Both are wrapped in an ID map so
FAISS ids are catalogue row ids.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import faiss
import numpy as np

DEFAULT_FLOAT_FACTORY = "Flat"
DEFAULT_BINARY_FACTORY = "BFlat"


def normalise(vecs: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation so inner product is cosine similarity."""
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.maximum(norms, 1e-12)


def _min_train(factory: str) -> int:
    """Vectors needed to train a factory: nlist for IVF, 256 per PQ codebook, else 0."""
    need = 0
    for part in factory.removeprefix("B").split(","):
        if m := re.match(r"IVF(\d+)", part):
            need = max(need, int(m.group(1)))
        if m := re.match(r"PQ\d+(?:x(\d+))?", part):
            need = max(need, 2 ** int(m.group(1) or 8))
    return need


NPROBE = 16  # IVF lists visited per query: recall@10 ~0.95 at 1M (docs/benchmarks.md)
EF_SEARCH = 64  # HNSW candidate list: recall@10 ~0.94 at 1M


def fit(factory: str, n: int) -> str:
    """`factory` with "{nlist}" replaced by a list count for `n` vectors: the power of two nearest
    4 sqrt(n) (FAISS's rule of thumb), at least 64 and at most n / 39 (k-means wants 39 points per
    list), so a search visits nprobe lists of about sqrt(n) / 4 vectors each."""
    if "{nlist}" not in factory:
        return factory
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(max(n, 1)), 64)))
    while nlist > 64 and nlist * 39 > n:
        nlist //= 2
    return factory.replace("{nlist}", str(nlist))


def _inner(index: faiss.Index) -> faiss.Index | None:
    """The index inside an ID map, as its own class."""
    if isinstance(index, faiss.IndexIDMap):
        return faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexBinaryIDMap):
        return faiss.downcast_IndexBinary(index.index)
    return None


def factory_of(index: faiss.Index) -> str | None:
    """The factory string of an index this module builds (Flat, IVF<n>,Flat, HNSW<m> and their binary
    forms BFlat, BIVF<n>, BHNSW<m>); None for others."""
    inner = _inner(index)
    if isinstance(inner, (faiss.IndexFlat, faiss.IndexBinaryFlat)):
        name = "Flat"
    elif isinstance(inner, (faiss.IndexIVFFlat, faiss.IndexBinaryIVF)):
        name = f"IVF{inner.nlist}" + ("" if isinstance(inner, faiss.IndexBinaryIVF) else ",Flat")
    elif isinstance(inner, (faiss.IndexHNSWFlat, faiss.IndexBinaryHNSW)):
        name = f"HNSW{inner.hnsw.nb_neighbors(1)}"
    else:
        return None
    return "B" + name if isinstance(index, faiss.IndexBinary) else name


def tune(index: faiss.Index) -> faiss.Index:
    """Set search-time parameters FAISS would otherwise leave at its low-recall defaults.

    They are saved with the index; `read` sets them again, for binary indexes saved before they were
    tuned here (FAISS's nprobe of 1 missed most near copies in a binary IVF index).
    """
    inner = _inner(index)
    if inner is None:
        return index
    if hasattr(inner, "nprobe"):
        inner.nprobe = NPROBE
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = EF_SEARCH
    return index


def build(dim: int, binary: bool, factory: str,
          batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[faiss.Index, str]:
    """Build an ID-mapped index from (ids, vectors) batches.

    Trainable factories (IVF, PQ) are trained on the vectors themselves; when there
    are too few to train, fall back to exact search and say so in the returned note.
    """
    ids_all, vecs_all = [], []
    for ids, vecs in batches:
        ids_all.append(ids)
        vecs_all.append(vecs if binary else normalise(vecs))
    ids = np.concatenate(ids_all) if ids_all else np.zeros(0, np.int64)
    vecs = (np.concatenate(vecs_all) if vecs_all
            else np.zeros((0, dim // 8 if binary else dim), np.uint8 if binary else np.float32))
    note = ""
    if len(ids) < _min_train(factory):
        note = f"{factory} needs >= {_min_train(factory)} vectors to train, have {len(ids)}: using exact search"
        factory = DEFAULT_BINARY_FACTORY if binary else DEFAULT_FLOAT_FACTORY
    if binary:
        index = faiss.IndexBinaryIDMap2(faiss.index_binary_factory(dim, factory))
    else:
        index = faiss.IndexIDMap2(faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT))
    if not index.is_trained and len(ids):
        index.train(vecs)
    if len(ids):
        index.add_with_ids(vecs, ids)
    index = tune(index)
    probe = vecs[:1] if len(ids) else np.zeros((1, vecs.shape[1]), vecs.dtype)
    index.search(probe, 1)  # a factory FAISS builds but cannot search ("IVF0,Flat") fails here, not in scoring
    return index, note


PROBE = """
import sys
import numpy as np
from index import vectors as vx
factory, dim, binary, n = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
rng = np.random.default_rng(0)
vecs = (rng.integers(0, 256, (n, dim // 8), dtype=np.uint8) if binary
        else rng.standard_normal((n, dim)).astype(np.float32))
try:
    vx.build(dim, binary, factory, [(np.arange(n), vecs)])
except RuntimeError:
    pass  # refused with a reason, which the real build gives
"""
PROBE_SECONDS = 120


PROBE_MAX = 1024  # numbers in a probed factory are capped at this (IVF65536 is probed as IVF1024)


def unsafe(factory: str, dim: int, binary: bool) -> str | None:
    """Why FAISS cannot be trusted to build `factory` in this process, else None. Some factory strings
    abort, crash or hang inside FAISS instead of raising ("HNSW0", "IVF16_HNSW1,Flat", "NSG2"), which
    would end the process (a server's too) with no word of why. A user's choice is therefore built
    first on random vectors in a child process, with its numbers capped at PROBE_MAX so that it is
    trained for real on a few thousand vectors (the faults are in small numbers; a larger one would
    need as many vectors to build anything but the exact search it falls back to). The child runs
    in this package's folder: the user's own (an index.py there) must not be imported."""
    probed = re.sub(r"\d+", lambda m: str(min(int(m.group()), PROBE_MAX)), factory)
    n = max(_min_train(probed), 300)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, probed, str(dim), str(int(binary)), str(n)],
                              capture_output=True, text=True, timeout=PROBE_SECONDS, env=env, cwd=root)
    except subprocess.TimeoutExpired:
        return f"FAISS did not finish building it on {n} random vectors in {PROBE_SECONDS} s"
    if done.returncode < 0:
        return f"FAISS crashed building it ({signal.Signals(-done.returncode).name})"
    if done.returncode:
        return f"FAISS failed building it: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


def add(index: faiss.Index, binary: bool, ids: np.ndarray, vecs: np.ndarray) -> None:
    index.add_with_ids(vecs if binary else normalise(vecs), ids.astype(np.int64))


def search(index: faiss.Index, binary: bool, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours: (scores, ids). Float: cosine (higher is closer); binary: Hamming."""
    k = min(k, index.ntotal)
    if k <= 0 or len(queries) == 0:
        return np.zeros((len(queries), 0)), np.zeros((len(queries), 0), np.int64)
    if binary:
        return index.search(np.ascontiguousarray(queries, dtype=np.uint8), k)
    inner = _inner(index)
    if isinstance(inner, faiss.IndexFlat) and inner.metric_type == faiss.METRIC_INNER_PRODUCT:
        return _exact_search(inner, faiss.vector_to_array(index.id_map), normalise(queries), k)
    return index.search(normalise(queries), k)


EXACT_BLOCK = 16384  # stored vectors scored per matrix product: memory stays at queries x this many floats


def _exact_search(flat: faiss.IndexFlat, ids: np.ndarray, queries: np.ndarray,
                  k: int) -> tuple[np.ndarray, np.ndarray]:
    """An exact inner-product search as matrix products (numpy's BLAS) and a top-k selection.

    FAISS answers these, below 128,000 queries a call, with one dot product per (query, vector)
    pair, streaming every stored vector from memory once per query; a scan searches about a
    hundred window rows an image, so it is bound by memory bandwidth. One matrix product reads
    the vectors once for all the rows (measured: 12 ms against FAISS's 45 ms for 101 rows over
    6,091 x 432; docs/benchmarks.md). The vectors are FAISS's own, read in place; ties are broken
    by insertion order, so the answer does not depend on the selection's internals.
    """
    stored = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
    best = np.zeros((len(queries), 0), np.float32)
    where = np.zeros((len(queries), 0), np.int64)
    for start in range(0, flat.ntotal, EXACT_BLOCK):
        block = queries @ stored[start:start + EXACT_BLOCK].T
        cand = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < block.shape[1] else \
            np.broadcast_to(np.arange(block.shape[1]), block.shape)
        best = np.concatenate([best, np.take_along_axis(block, cand, axis=1)], axis=1)
        where = np.concatenate([where, cand + start], axis=1)
        order = np.lexsort((where, -best), axis=1)[:, :k]  # by score, descending, then by position
        best, where = np.take_along_axis(best, order, axis=1), np.take_along_axis(where, order, axis=1)
    return best, np.where(np.isfinite(best), ids[where], -1)  # a NaN query finds nothing, as with FAISS


def write_atomic(index: faiss.Index, binary: bool, path: Path) -> None:
    """Write to a temp name, fsync, rename, fsync the directory: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        (faiss.write_index_binary if binary else faiss.write_index)(index, str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:  # a full disk or a kill's KeyboardInterrupt: leave no half-written file holding space
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read(path: Path, binary: bool) -> faiss.Index:
    """An index as saved, tuned (binary IVF and HNSW indexes were saved untuned before 2026-11-28)."""
    return tune((faiss.read_index_binary if binary else faiss.read_index)(str(path)))
