"""Benchmark the store's FAISS index factories: build time, latency, throughput, size, recall.

Every index is built with `index.vectors.build` and queried with `index.vectors.search`,
the functions the store uses, so the numbers include our own overhead (normalisation,
batch concatenation, the IndexIDMap2 wrapper) and not just FAISS's.

Vectors are a seeded mixture of Gaussian clusters rather than uniform noise: uniform
high-dimensional vectors have no neighbourhood structure, which makes IVF and HNSW
recall meaninglessly bad, whereas image embeddings do cluster (by style, subject).
The clusters live in a low-dimensional latent space (default 32-d) mapped into `--dim`
by a fixed random linear map, plus a little isotropic noise: embeddings have a low
intrinsic dimension, and full-dimensional isotropic clusters are the opposite extreme,
so well separated in 512-d that IVF with nprobe=1 already finds ~97% of neighbours.
Queries are drawn from the same mixture but are not database vectors.

Recall@k is measured against the exact "Flat" index of the same run, which is why
Flat is always benchmarked first. Approximate indexes are searched at the `--nprobe` /
`--ef-search` given here; the extra "recall@k at defaults" column shows what FAISS's own
defaults give (nprobe=1, efSearch=16), set explicitly because `index.vectors.build` tunes
every index it builds (the store's nprobe=16, efSearch=64, chosen after this column showed
what the defaults cost).

Exact (Flat) indexes are searched by `vx.search` with matrix products rather than by FAISS
(see `index.vectors._exact_search`); the row "Flat (FAISS's own search)" times FAISS's search
of the same index, so the gain is measured in every run.

Usage:
    .venv/bin/python benchmarks/index_bench.py [--sizes 100000 1000000] [--dim 512]
        [--queries 1000] [--k 10] [--factories Flat IVF1024,Flat HNSW32 ...] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import faiss
import numpy as np

from index import vectors as vx

BASELINE = "Flat"
DEFAULT_FACTORIES = ["Flat", "IVF1024,Flat", "IVF1024,PQ32", "HNSW32"]
DEFAULT_SIZES = [100_000, 1_000_000]
QUICK_SIZES = [20_000]
BATCH_ROWS = 100_000  # rows per (ids, vectors) batch handed to build(), like the catalogue's iterator

_START = time.perf_counter()


@dataclass(frozen=True)
class Result:
    """One table row: one factory at one database size."""

    n: int
    factory: str
    params: str
    build_s: float
    size_bytes: int
    latency_s: np.ndarray  # per single-query call
    batch_qps: float
    recall: float
    recall_defaults: float


def log(msg: str) -> None:
    """Progress on stderr so stdout stays a clean markdown report."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ data
@dataclass(frozen=True)
class Mixture:
    """Gaussian clusters in a latent space, linearly embedded in the output space."""

    centres: np.ndarray     # (clusters, latent) ~ N(0, 1)
    projection: np.ndarray  # (latent, dim), entries N(0, 1/latent): keeps per-dimension variance
    noise: float            # latent std around a centre
    ambient: float          # isotropic output-space std, relative to the signal's per-dimension std

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n float32 vectors, filled in chunks to cap temporary memory."""
        latent, dim = self.projection.shape
        ambient_std = self.ambient * np.sqrt(1 + self.noise ** 2)
        out = np.empty((n, dim), np.float32)
        for start in range(0, n, BATCH_ROWS):
            m = min(n, start + BATCH_ROWS) - start
            z = self.centres[rng.integers(len(self.centres), size=m)]
            z += self.noise * rng.standard_normal((m, latent), dtype=np.float32)
            out[start:start + m] = z @ self.projection
            out[start:start + m] += ambient_std * rng.standard_normal((m, dim), dtype=np.float32)
        return out


def make_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(database, queries) from one mixture; smaller sizes use a prefix of the largest database."""
    rng = np.random.default_rng(args.seed)
    mixture = Mixture(centres=rng.standard_normal((args.centres, args.latent), dtype=np.float32),
                      projection=rng.standard_normal((args.latent, args.dim), dtype=np.float32)
                      / np.float32(np.sqrt(args.latent)),
                      noise=args.noise, ambient=args.ambient)
    return mixture.draw(rng, max(args.sizes)), mixture.draw(rng, args.queries)


def batches(vecs: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) batches in the shape the store feeds to `vx.build`."""
    for start in range(0, len(vecs), BATCH_ROWS):
        stop = min(len(vecs), start + BATCH_ROWS)
        yield np.arange(start, stop, dtype=np.int64), vecs[start:stop]


# ------------------------------------------------------------- measuring
def tune(index: faiss.Index, nprobe: int, ef_search: int) -> str:
    """Set search-time parameters through the ID map and verify they reached the inner index.

    ParameterSpace recurses through IndexIDMap2; the read-back guards against a FAISS
    version where it silently would not.
    """
    inner = faiss.downcast_index(index.index)
    ps = faiss.ParameterSpace()
    if isinstance(inner, faiss.IndexIVF):
        ps.set_index_parameter(index, "nprobe", nprobe)
        assert faiss.extract_index_ivf(index).nprobe == nprobe
        return f"nprobe={nprobe}"
    if isinstance(inner, faiss.IndexHNSW):
        ps.set_index_parameter(index, "efSearch", ef_search)
        assert inner.hnsw.efSearch == ef_search
        return f"efSearch={ef_search}"
    return "-"


def ours(index: faiss.Index, queries: np.ndarray, k: int) -> np.ndarray:
    """The store's search (`vx.search`): ids."""
    return vx.search(index, False, queries, k)[1]


def faiss_own(index: faiss.Index, queries: np.ndarray, k: int) -> np.ndarray:
    """FAISS's own search of the same index, which `vx.search` replaces for exact indexes: ids."""
    return index.search(vx.normalise(queries), k)[1]


FAISS_OWN = f"{BASELINE} (FAISS's own search)"


def single_query_latency(index: faiss.Index, queries: np.ndarray, k: int, search=ours) -> np.ndarray:
    """Seconds per one-row search call: the interactive path (one uploaded image)."""
    search(index, queries[:1], k)  # warm-up: first call pays one-off allocations
    times = np.empty(len(queries))
    for i in range(len(queries)):
        t0 = time.perf_counter()
        search(index, queries[i:i + 1], k)
        times[i] = time.perf_counter() - t0
    return times


def batched(index: faiss.Index, queries: np.ndarray, k: int, search=ours) -> tuple[np.ndarray, float]:
    """(ids, queries per second) for one batched search call: the bulk-scan path."""
    t0 = time.perf_counter()
    ids = search(index, queries, k)
    return ids, len(queries) / (time.perf_counter() - t0)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k that the index returned."""
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth)]))


def bench_one(factory: str, database: np.ndarray, queries: np.ndarray, latency_queries: np.ndarray,
              truth: np.ndarray | None, args: argparse.Namespace) -> tuple[list[Result], np.ndarray]:
    """Build, size and search one factory; returns its rows (the baseline's with FAISS's own search
    too) and its batched result ids."""
    n, dim = database.shape
    log(f"N={n:,} {factory}: building")
    t0 = time.perf_counter()
    index, note = vx.build(dim, False, factory, batches(database))
    build_s = time.perf_counter() - t0
    if note:
        raise SystemExit(f"{factory} at N={n}: {note} (the row would silently measure Flat)")
    size = faiss.serialize_index(index).nbytes
    log(f"N={n:,} {factory}: built in {build_s:.1f}s, {size / 2**20:.0f} MiB; recall at FAISS defaults")
    tune(index, 1, 16)  # FAISS's defaults: `build` has set the store's own
    ids_defaults, _ = batched(index, queries, args.k)
    params = tune(index, args.nprobe, args.ef_search)
    log(f"N={n:,} {factory}: {len(latency_queries)} single-query calls ({params})")
    latency = single_query_latency(index, latency_queries, args.k)
    log(f"N={n:,} {factory}: batched search of {len(queries)} queries")
    ids, qps = batched(index, queries, args.k)
    reference = ids if truth is None else truth  # the baseline is its own reference
    rows = [Result(n, factory, params, build_s, size, latency, qps,
                   recall_at_k(ids, reference), recall_at_k(ids_defaults, reference))]
    if factory == BASELINE:  # what `vx.search`'s matrix products replace, on the same index
        log(f"N={n:,} {FAISS_OWN}: single-query calls and batched search")
        latency = single_query_latency(index, latency_queries, args.k, faiss_own)
        own, qps = batched(index, queries, args.k, faiss_own)
        rows.append(Result(n, FAISS_OWN, params, build_s, size, latency, qps, recall_at_k(own, ids),
                           recall_at_k(own, ids)))
    return rows, ids


# -------------------------------------------------------------- reporting
def machine() -> list[str]:
    """Facts a reader needs to compare these numbers with another machine's."""
    cpu = "unknown"
    ram = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
            ram = f"{kib / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        pass
    return [f"CPU: {cpu}, {os.cpu_count()} logical cores, RAM {ram}",
            f"faiss {faiss.__version__} ({faiss.get_compile_options().strip()}), "
            f"OMP threads {faiss.omp_get_max_threads()}, numpy {np.__version__}, "
            f"Python {platform.python_version()}, {platform.system()} {platform.machine()}"]


def cpu_seconds() -> tuple[float, float, float]:
    """(machine busy, machine total, this process) CPU seconds so far, from /proc/stat and getrusage."""
    with open("/proc/stat") as f:
        jiffies = [int(v) for v in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = jiffies[3] + jiffies[4]  # idle + iowait
    own = resource.getrusage(resource.RUSAGE_SELF)
    return (sum(jiffies[:8]) - idle) / tick, sum(jiffies[:8]) / tick, own.ru_utime + own.ru_stime


def other_cpu_share(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Fraction of all cores' time that other processes took: they skew latency, OpenMP ones badly."""
    busy, total, own = (a - b for a, b in zip(after, before))
    return max(0.0, busy - own) / total if total > 0 else 0.0


def header(args: argparse.Namespace, other_share: float) -> list[str]:
    """Markdown bullets: machine, data, and how busy the machine was (latencies depend on it)."""
    return [*(f"- {line}" for line in machine()),
            f"- data: {args.centres} Gaussian centres N(0,1) in {args.latent}-d, noise std {args.noise},"
            f" random linear map to {args.dim}-d plus {args.ambient:g} relative isotropic noise, seed {args.seed};"
            f" {args.queries} queries ({args.latency_queries} timed singly), k={args.k}",
            f"- total run time {time.perf_counter() - _START:.0f}s;"
            f" other processes used {other_share:.0%} of the machine's CPU time meanwhile"]


def table(results: Sequence[Result], k: int) -> list[str]:
    """One markdown row per (N, factory)."""
    rows = [f"| N | factory | search params | build s | index MiB | 1-query mean ms | p50 ms | p99 ms"
            f" | batched q/s | recall@{k} | recall@{k} at defaults |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ms = r.latency_s * 1e3
        rows.append(f"| {r.n:,} | {r.factory} | {r.params} | {r.build_s:.1f} | {r.size_bytes / 2**20:.1f}"
                    f" | {ms.mean():.2f} | {np.percentile(ms, 50):.2f} | {np.percentile(ms, 99):.2f}"
                    f" | {r.batch_qps:,.0f} | {r.recall:.3f} | {r.recall_defaults:.3f} |")
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", help=f"database sizes (default {DEFAULT_SIZES})")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, help="queries for throughput and recall (default 1000)")
    p.add_argument("--latency-queries", type=int, help="of those, how many to time one by one (default 200)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--factories", nargs="+", default=DEFAULT_FACTORIES,
                   help=f"FAISS factory strings; {BASELINE} is always added first as the recall baseline")
    p.add_argument("--nprobe", type=int, default=16, help="IVF lists visited per query")
    p.add_argument("--ef-search", type=int, default=64, help="HNSW candidate list size per query")
    p.add_argument("--centres", type=int, default=1000, help="Gaussian clusters in the mixture")
    p.add_argument("--latent", type=int, default=32, help="dimension the clusters live in")
    p.add_argument("--noise", type=float, default=1.0, help="latent std around a centre (centres are N(0, 1))")
    p.add_argument("--ambient", type=float, default=0.1, help="isotropic noise, relative to the signal std")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int,
                   help="FAISS OpenMP threads (default: FAISS's, one per core); 1 avoids stalls on a busy machine")
    p.add_argument("--quick", action="store_true", help="smoke run: N=20k, 200 queries, 50 timed singly")
    args = p.parse_args(argv)
    args.sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    args.queries = args.queries or (200 if args.quick else 1000)
    args.latency_queries = min(args.queries, args.latency_queries or (50 if args.quick else 200))
    args.factories = [BASELINE] + [f for f in args.factories if f != BASELINE]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    cpu_before = cpu_seconds()
    log(f"generating {max(args.sizes):,} + {args.queries} vectors, dim {args.dim}")
    database, queries = make_data(args)
    results: list[Result] = []
    for n in sorted(args.sizes):
        truth = None
        for factory in args.factories:
            rows, ids = bench_one(factory, database[:n], queries, queries[:args.latency_queries], truth, args)
            truth = ids if truth is None else truth
            results.extend(rows)
    print("\n".join([*header(args, other_cpu_share(cpu_before, cpu_seconds())), "", *table(results, args.k)]))


if __name__ == "__main__":
    main()
