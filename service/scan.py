"""Bulk folder scans: score every image under a folder, one result per file.

The tree is streamed (never listed in memory), files are scored by a pool of
worker processes (each with its own store connection and embedders), and every
result is written as soon as it completes, so an interrupted scan keeps what it
finished; `resume` skips files already in the output (by sha256; unreadable ones
by path). An unreadable file becomes a record with `error` set; the scan goes on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing as mp
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from detector.embedders import Embedders
from detector.images import ImageError, decode, iter_image_paths
from detector.score import Scorer, error_result
from index.store import Store
from service.report import CSV_FIELDS, csv_row, is_flagged, write_html

FORMATS = (".jsonl", ".csv", ".html")
_worker: dict[str, Any] = {}


def _records_path(out: Path) -> Path:
    """Where results stream to: the file itself, or for an HTML report a JSON Lines file beside it."""
    return out.with_suffix(".jsonl") if out.suffix.lower() == ".html" else out


def _done(out: Path) -> tuple[set[str], set[str]]:
    """(sha256s, paths of error records) already in an output file, for resuming."""
    path = _records_path(out)
    shas, paths = set(), set()
    if not path.exists():
        return shas, paths
    with open(path, newline="") as f:
        rows = csv.DictReader(f) if path.suffix.lower() == ".csv" else (json.loads(line) for line in f if line.strip())
        for r in rows:
            if r.get("sha256"):
                shas.add(r["sha256"])
            else:
                paths.add(r["path"])
    return shas, paths


def _init(store: str, clip: dict[str, Any]) -> None:
    _worker["scorer"] = Scorer(Store.open(store), Embedders.load(**clip, quiet=True))


def _score(job: tuple[str, bytes | None, str | None, str | None]) -> dict[str, Any]:
    path, data, problem, artist = job
    if problem:
        return error_result(path, problem)
    try:
        img = decode(data, path)
    except ImageError as e:
        return error_result(path, e.reason)
    return _worker["scorer"].score(img, artist)


def _jobs(root: Path, artist: str | None, skip: tuple[set[str], set[str]], counts: Counter) -> Iterator[tuple]:
    for path, problem in iter_image_paths([root]):
        data = None
        if not problem:
            try:
                data = path.read_bytes()
            except OSError as e:
                problem = f"cannot read ({e.strerror or e})"
        if data is not None and hashlib.sha256(data).hexdigest() in skip[0] or data is None and str(path) in skip[1]:
            counts["resumed"] += 1
            continue
        yield str(path), data, problem, artist


def scan(store: Store, embedders: Embedders, root: Path, out: Path, artist: str | None = None,
         progress: bool = False, workers: int = 1, resume: bool = False,
         clip: dict[str, Any] | None = None) -> str:
    """Scan `root` recursively into `out` (format from its suffix); returns a one-line summary.

    With workers > 1 the files are scored in that many processes; `clip` holds the
    embedder options they load (model, weights, use_clip) so they score like `embedders`.
    """
    fmt = out.suffix.lower()
    if fmt not in FORMATS:
        raise ValueError(f"--out must end in one of {', '.join(FORMATS)} (got {out.name})")
    counts: Counter[str] = Counter()
    skip = _done(out) if resume else (set(), set())
    records = _records_path(out)
    records.parent.mkdir(parents=True, exist_ok=True)
    append = resume and records.exists()
    total = sum(1 for _ in iter_image_paths([root]))
    flagged: list[dict] = []
    with open(records, "a" if append else "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS) if records.suffix.lower() == ".csv" else None
        if writer and not append:
            writer.writeheader()
        jobs = _jobs(root, artist, skip, counts)
        if workers > 1:
            # spawn, not fork: a forked child of a process running OpenMP (FAISS, torch) can deadlock
            pool = mp.get_context("spawn").Pool(workers, _init, (str(store.root), clip or {"use_clip": False}))
            results = pool.imap(_score, jobs, chunksize=4)
        else:
            pool = None
            _worker["scorer"] = Scorer(store, embedders)
            results = map(_score, jobs)
        bar = tqdm(total=total, unit="img", desc="scanning", disable=not progress)
        try:
            for result in results:
                counts["error" if result["error"] else result["verdict"]["label"]] += 1
                if writer:
                    writer.writerow(csv_row(result))
                else:
                    f.write(json.dumps(result) + "\n")
                f.flush()
                if fmt == ".html" and is_flagged(result):
                    flagged.append(result)
                bar.n = sum(counts.values())
                bar.refresh()
        finally:
            bar.close()
            _worker.clear()
            if pool:
                pool.terminate()
    summary = f"scanned {sum(counts.values()) - counts['resumed']} files: " + ", ".join(
        f"{counts[k]} {k}" for k in ("copy", "derivative", "style_match", "unrelated", "error"))
    if counts["resumed"]:
        summary += f" ({counts['resumed']} already done, skipped)"
    if fmt == ".html":
        if append:  # the report covers the whole scan, not only this session's part
            with open(records) as f:
                flagged = [r for r in (json.loads(line) for line in f if line.strip()) if is_flagged(r)]
        write_html(flagged, out, summary, work_png=store.thumbnail)
    return summary
