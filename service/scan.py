"""Bulk folder scans: score every image under a folder, one result per file.

Two engines produce the records; this module writes them. "local" streams the
tree (never listed in memory) and scores batches of files in this process or a
pool of spawned worker processes; "ray" runs the same batches on Ray Data
(service/scan_ray.py), on one machine or a cluster. Workers open the store
read-only. Every record is written as soon as it arrives, so an interrupted scan
keeps what it finished; `resume` skips files already in the output (the same path
with the same sha256, `already`; unreadable ones by path). A bad file becomes a record with
`error` set; the scan goes on. The local engine scores byte-identical files once (`_Twins`).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Collection, Iterator, NamedTuple

from tqdm import tqdm

from detector.embedders import Embedders
from detector.images import ImageError, LoadedImage, decode, iter_image_paths, read_bytes, shown, unshown
from detector.score import SPARE, Scorer, error_result
from index.store import Store
from service.report import CSV_FIELDS, csv_row, csv_text, is_flagged, write_html

FORMATS = (".jsonl", ".csv", ".html")
ENGINES = ("local", "ray")
BATCH = 8  # files per scoring job at first, and per Ray actor call: a short scan spreads over every worker
BIG_BATCH = 32  # files per job once every worker has IN_FLIGHT queued: a call's fixed costs (numpy's
# per-call overhead in hashing, a CLIP forward pass) are shared by more images (hashing 16% faster than at 8)
JOB_BYTES = 32 << 20  # file bytes at which a job ends (with the file that reaches them): IN_FLIGHT wait a worker
CALL_PIXELS = 16 << 20  # decoded pixels per scoring call at most (a larger image goes alone)
_worker: dict[str, Any] = {}


def _records_path(out: Path) -> Path:
    """Where results stream to: the file itself, or for an HTML report a JSON Lines file beside it
    named after it (report.html.jsonl), so it never takes the place of a scan written as report.jsonl."""
    return out.with_name(out.name + ".jsonl") if out.suffix.lower() == ".html" else out


def _whole_rows_end(path: Path, block: int = 1 << 16) -> int:
    """Where the file's last whole record ends: after its last newline, or for CSV its last newline
    outside quotes (a quoted file name may hold a newline; CSV doubles quotes inside quotes, so a
    newline is outside them when an even number of quotes precede it)."""
    csv_quotes = path.suffix.lower() == ".csv"
    end = 0
    with open(path, "rb") as f:
        if not csv_quotes:  # JSON escapes newlines in strings: the last one ends a record
            size = f.seek(0, os.SEEK_END)
            at = size
            while at > 0:
                start = max(0, at - block)
                f.seek(start)
                newline = f.read(at - start).rfind(b"\n")
                if newline >= 0:
                    return start + newline + 1
                at = start
            return 0
        odd, pos = False, 0
        while chunk := f.read(block):
            lines = chunk.split(b"\n")
            for line in lines[:-1]:
                odd ^= line.count(b'"') % 2 == 1
                pos += len(line) + 1
                if not odd:
                    end = pos
            odd ^= lines[-1].count(b'"') % 2 == 1
            pos += len(lines[-1])
    return end


def _drop_torn_tail(path: Path) -> None:
    """Cut off what follows the file's last whole record: a scan killed while writing leaves part of
    a record there, which a resumed scan would fail to read or append its own records onto. That
    file is scored again."""
    end = _whole_rows_end(path)
    if end < path.stat().st_size:
        with open(path, "rb+") as f:
            f.truncate(end)


def _newest(records: Path) -> dict[str, tuple[int, str]]:
    """Each file's newest record in the output (a file scored again: it was unreadable, or its bytes
    changed), as (its position among the records, its count key): a resumed output of millions of
    records is summed up without holding them. An error that no longer holds is left out: a folder
    that could not be listed and now can be (its files have records of their own), or a path that is
    gone; neither is scanned again, so no newer record would ever replace it."""
    newest: dict[str, tuple[int, str, str | None]] = {}
    for i, r in enumerate(_read_records(records)):
        newest[os.path.abspath(r["path"])] = (i, _label(r), r.get("error") or None)
    return {path: (i, label) for path, (i, label, error) in newest.items() if not (error and _mended(path, error))}


def _mended(path: str, error: str) -> bool:
    """Whether an error record of `path` (absolute) no longer holds: the path is gone, or the folder it
    names can be listed now."""
    if not _exists(path):
        return True
    if error.startswith("cannot list this folder"):
        try:
            os.scandir(path if os.path.lexists(path) else unshown(path)).close()
            return True
        except OSError:
            return False
    return False


def _exists(path: str) -> bool:
    """Whether the file a record's (`shown`) path names is there: as written, or with its \\xNN back
    to the bytes of a name that is not UTF-8."""
    return os.path.lexists(path) or os.path.lexists(unshown(path))


def _flagged(records: Path, keep: set[int] | None) -> Iterator[dict[str, Any]]:
    """The output's flagged records, streamed for the HTML report: those at the positions `keep`
    (each file's newest), or every one (None)."""
    for i, r in enumerate(_read_records(records)):
        if (keep is None or i in keep) and is_flagged(r):
            yield r


def _label(record: dict[str, Any]) -> str:
    """A record's count key: its verdict, or "error" (CSV rows hold the verdict as a column)."""
    if record.get("error"):
        return "error"
    verdict = record.get("verdict")
    return verdict["label"] if isinstance(verdict, dict) else verdict


def _read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a scan output, streamed. A file that is not one (another CSV's columns, a line
    that is not a record) is refused with a ValueError naming the file and the line: resumed, its
    records would be taken for a scan's, or a scan's appended to someone else's file. A spreadsheet
    that saved the CSV again may have put a byte-order mark before its header: that is read past."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            if path.suffix.lower() == ".csv":
                rows = csv.DictReader(f)
                _check_header(path, rows.fieldnames)
                for row in rows:
                    if not row.get("path"):
                        raise ValueError(f"{shown(path)}, line {rows.line_num}: not a scan record (no path)")
                    yield {k: csv_text(v) for k, v in row.items()}
            else:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        yield _record(path, n, line)
    except UnicodeDecodeError:
        raise ValueError(f"{shown(path)}: not the output of a scan (not UTF-8 text)") from None


def _check_header(path: Path, columns: list[str] | None) -> None:
    """A scan's CSV header is CSV_FIELDS, or the first of them (older versions wrote fewer columns)."""
    if columns is not None and (len(columns) < 3 or columns != CSV_FIELDS[:len(columns)]):
        raise ValueError(f"{shown(path)}: not the output of a scan (its first line is not a scan's CSV header: "
                         f"{', '.join(columns[:4])}...)")


def _record(path: Path, n: int, line: str) -> dict[str, Any]:
    """Line n of a JSON Lines output as a record, or a ValueError saying where it is not one."""
    try:
        r = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{shown(path)}, line {n}: not a scan record ({e})") from None
    if not isinstance(r, dict) or not isinstance(r.get("path"), str):
        raise ValueError(f"{shown(path)}, line {n}: not a scan record (no path)")
    return r


def _check_resumable(path: Path) -> None:
    """Refuse an output that is not a scan's before anything in it is cut (`_drop_torn_tail`) or added:
    its first whole line must be a scan's CSV header or record, and a file of one line cut short (a scan
    killed while writing its first) the start of one."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = f.readline()
    except UnicodeDecodeError:
        raise ValueError(f"{shown(path)}: not the output of a scan (not UTF-8 text)") from None
    csv_out = path.suffix.lower() == ".csv"
    if first.endswith("\n"):
        if csv_out:
            _check_header(path, next(csv.reader([first])))
        else:
            _record(path, 1, first)
    elif first:  # one line with no end: the start of a scan's header or record, or no scan's
        torn = ",".join(CSV_FIELDS).startswith(first.rstrip("\r")) if csv_out else \
            any(first.startswith(key) or key.startswith(first) for key in ('{"version"', '{"path"'))
        if not torn:
            raise ValueError(f"{shown(path)}: not the output of a scan (its one line, with no end, is no "
                             "scan's record cut off)")


class Done(NamedTuple):
    """What an output file already holds, for resuming (paths made absolute)."""

    latest: dict[str, str | None]  # path -> the sha256 of its newest record (None: the file could not be read)
    # the one artist its first scored record lists (scored with --artist, or the store held one), "" when it
    # lists several (scored against every artist); None when no record says (none scored, or an older CSV)
    against: str | None

    @property
    def records(self) -> int:
        return len(self.latest)

    def holds(self, path: Path, sha256: str | None) -> bool:
        """Whether the output's newest record of this path is of these bytes (`sha256` of them), or for
        a file that cannot be read (None) is an unreadable file's. A byte-identical copy under another
        name is another file, and a file whose bytes changed since (even back to bytes an older record
        had) is scored again."""
        where = os.path.abspath(shown(path))
        return where in self.latest and self.latest[where] == sha256


def _done(out: Path) -> Done:
    done = Done({}, None)
    path = _records_path(out)
    if not path.exists():
        return done
    _check_resumable(path)
    _drop_torn_tail(path)
    relative, found = None, False  # a relative path written from another working folder names nothing here
    for r in _read_records(path):
        where = os.path.abspath(r["path"])
        if not os.path.isabs(r["path"]) and not found:
            relative = relative or r["path"]
            found = _exists(where) or os.path.isdir(os.path.dirname(where))  # a file since moved away
        done.latest[where] = r.get("sha256") or None
        if done.against is None and not r.get("error"):
            done = done._replace(against=_against(r))
    if relative is not None and not found:
        raise ValueError(f"--resume: {path.name} names files relative to another working folder ({relative} is "
                         "not here): resume from that folder")
    return done


def _csv_header(path: Path) -> list[str]:
    """The columns of a CSV being resumed: rows appended to one written before a column was added
    leave that column out, rather than run one field past the header."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), None) or CSV_FIELDS


def _against(r: dict[str, Any]) -> str | None:
    """`Done.against` as one scored record tells it: a JSON record by its `artists`, a CSV row by its
    `artists_scored` count and `top_style_artist` (None for a CSV written before that column)."""
    if isinstance(r.get("artists"), list):
        names = [a["artist"] for a in r["artists"]]
    elif (r.get("artists_scored") or "").isdigit():
        names = [r.get("top_style_artist") or ""] * int(r["artists_scored"])
    else:
        return None
    return names[0] if len(names) == 1 else ""


def _check_same_artists(done: Done, out: Path, artist: str | None, store: Store) -> None:
    """Refuse to resume an output scored with another --artist: its records and this run's would
    answer different questions (one artist's scores, or every artist's) in one file."""
    if done.against is None:
        return
    theirs = done.against or None
    if artist is not None and theirs != artist or artist is None and theirs is not None and len(store.artists()) > 1:
        before = f"with --artist {theirs}" if theirs else "against every artist"
        now = f"with --artist {artist}" if artist else "against every artist"
        raise ValueError(f"--resume: {out.name} holds records scored {before}, this scan scores {now}: "
                         "resume with the same --artist, or write a new --out")


class Job(NamedTuple):
    """One file to score: its bytes (and their sha256), or why they could not be read."""

    path: str
    data: bytes | None
    problem: str | None
    sha256: str | None = None


def score_jobs(scorer: Scorer, jobs: list[Job], artist: str | None) -> list[dict[str, Any]]:
    """One record per job, in order: decodable images are scored in batches (CLIP embeds each in one
    pass) of at most CALL_PIXELS decoded pixels, so that a job of large images never holds them all
    decoded at once; unreadable or undecodable files, and any image the scorer fails on, become error
    records, so no single file can stop a scan."""
    records: list[dict[str, Any] | None] = [None] * len(jobs)
    group: list[tuple[int, LoadedImage]] = []
    for i, job in enumerate(jobs):
        if job.problem or job.data is None:
            records[i] = error_result(job.path, job.problem or "cannot read")
            continue
        try:
            img = decode(job.data, job.path)
        except ImageError as e:
            records[i] = error_result(job.path, e.reason, job.sha256 or hashlib.sha256(job.data).hexdigest())
            continue
        if group and sum(im.width * im.height for _, im in group) + img.width * img.height > CALL_PIXELS:
            _score_group(scorer, group, artist, records)
            group = []
        group.append((i, img))
    _score_group(scorer, group, artist, records)
    return records  # type: ignore[return-value]


def _score_group(scorer: Scorer, group: list[tuple[int, LoadedImage]], artist: str | None,
                 records: list[dict[str, Any] | None]) -> None:
    """Score the decoded images of `group` in one call into `records` at their indices."""
    if not group:
        return
    try:
        scored = scorer.score_many([im for _, im in group], artist)
    except Exception:  # noqa: BLE001 - find the culprit: score the batch one by one
        scored = [_score_alone(scorer, im, artist) for _, im in group]
    for (i, _), record in zip(group, scored):
        records[i] = record


def _score_alone(scorer: Scorer, img: LoadedImage, artist: str | None) -> dict[str, Any]:
    try:
        return scorer.score(img, artist)
    except Exception as e:  # noqa: BLE001 - a scan reports a file it cannot score and goes on
        return error_result(img.source, f"internal error while scoring ({type(e).__name__}: {e})", img.sha256)


def limit_threads(threads: int) -> None:
    """Cap this worker's native thread pools (BLAS and OpenMP via threadpoolctl, OpenCV, torch).

    A scan runs a worker per core; a worker's BLAS threads spinning on a core that another
    worker needs cost more than they save on the tiny products of icon-sized images.

    Call it once the worker has loaded its models: it caps the pools that are loaded, and torch
    is only loaded with CLIP (importing it here would cost every CLIP-less worker seconds and
    hundreds of MB).
    """
    import cv2
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    cv2.setNumThreads(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _init(store: str, clip: dict[str, Any], threads: int, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the scan's to handle: it stops the pool
    _watch_parent(parent)
    _worker["scorer"] = Scorer(Store.open(store, read_only=True), Embedders.load(**clip, quiet=True))
    limit_threads(threads)


PARENT_POLL = 1.0  # seconds between a worker's looks at whether the scan that started it is still there


def _watch_parent(parent: int) -> None:
    """End this worker once the scan process that started it (pid `parent`, which it is given: one
    killed while this worker was still starting is gone already) is no longer its parent. Killed
    outright (SIGKILL, or a signal the scan could not turn into its own stop), the scan left its workers
    waiting for tasks for ever: each holds both ends of the pool's queues, so none ever reads the end
    of one."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL)
        os._exit(1)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _score_batch(batch: tuple[list[Job], str | None]) -> list[dict[str, Any]]:
    return score_jobs(_worker["scorer"], *batch)


def _ready() -> bool:
    return True


STOPPED = "the scan worker scoring this file stopped (killed for memory, or a crash in native code)"


class _Pool:
    """Batches scored in `workers` spawned processes, records in the batches' order.

    A worker that dies (killed for memory, or a crash in a native decoder on a hostile file) breaks
    a process pool and every batch in it, and a pool that hides the loss would wait for ever. So the
    pool is started again, the batch whose result was lost is scored again one file at a time (alone
    in the pool, so a file that stops a worker again is the one to blame: it gets an error record),
    and the batches it held are sent again. Records go out in order, and at most IN_FLIGHT batches per
    worker are out: the tree is read as fast as it is scored, and a worker done with a quick batch
    has more to do while the oldest, slow one finishes.
    """

    IN_FLIGHT = 4

    def __init__(self, workers: int, initargs: tuple) -> None:
        self.workers, self.initargs = workers, initargs
        self.pending: deque[tuple[tuple[list[Job], str | None], Any]] = deque()
        self.pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # spawn, not fork: a forked child of a process running OpenMP (FAISS, torch) can deadlock
        pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init,
                                   initargs=self.initargs)
        try:  # a task per worker: the pool starts a process for each task that finds none idle, so all start now
            for probe in [pool.submit(_ready) for _ in range(self.workers)]:
                probe.result()
        except BrokenProcessPool:
            pool.shutdown(wait=False)
            raise RuntimeError("the scan's worker processes could not start (their error is above)") from None
        return pool

    def _restart(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._start()

    def records(self, batches: Iterator[tuple[list[Job], str | None]]) -> Iterator[dict[str, Any]]:
        for batch in batches:
            self.pending.append((batch, self.pool.submit(_score_batch, batch)))
            if len(self.pending) >= self.IN_FLIGHT * self.workers:
                yield from self._next()
        while self.pending:
            yield from self._next()

    def _next(self) -> list[dict[str, Any]]:
        batch, future = self.pending.popleft()
        try:
            return future.result()
        except BrokenProcessPool:
            pass
        self._restart()
        records = self._one_by_one(batch)
        self.pending = deque((b, self.pool.submit(_score_batch, b)) for b, _ in self.pending)
        return records

    def _one_by_one(self, batch: tuple[list[Job], str | None]) -> list[dict[str, Any]]:
        jobs, artist = batch
        records = []
        for job in jobs:
            try:
                records += self.pool.submit(_score_batch, ([job], artist)).result()
            except BrokenProcessPool:
                records.append(error_result(job.path, STOPPED, job.sha256))
                self._restart()
        return records

    def close(self) -> None:
        """Stop the workers now. Batches already handed to them (one a worker and one more) were scored
        to the end before a stopped scan could exit, Ctrl-C or SIGTERM taking 12-15 s, longer than
        the grace a job runner gives before SIGKILL (docker's 10 s); their files have no record
        yet, so a resumed scan scores them. (The executor has no public way to stop its processes
        before Python 3.14.)"""
        processes = list((self.pool._processes or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            p.terminate()


def _jobs(root: Path, done: Done, counts: Counter) -> Iterator[Job]:
    for path, problem in iter_image_paths([root]):
        data, problem = (None, problem) if problem else read_bytes(path)
        sha = None if data is None else hashlib.sha256(data).hexdigest()  # once: resume and twins both key on it
        if done.holds(path, sha):
            counts["resumed"] += 1
            continue
        yield Job(shown(path), data, problem, sha)


def _batches(jobs: Iterator[Job], artist: str | None, small: int = 0,
             most: int = JOB_BYTES) -> Iterator[tuple[list[Job], str | None]]:
    """Jobs in batches: the first `small` of BATCH files, the rest of BIG_BATCH; any batch ends early
    once its bytes reach `most`."""
    batch: list[Job] = []
    held = made = 0
    for job in jobs:
        batch.append(job)
        held += len(job.data or b"")
        if len(batch) == (BATCH if made < small else BIG_BATCH) or held >= most:
            yield batch, artist
            batch, held, made = [], 0, made + 1
    if batch:
        yield batch, artist


REMEMBERED = 4096  # records kept, by sha256, for byte-identical copies still to come (both engines)


def remember(written: OrderedDict[str, dict[str, Any]], sha: str, record: dict[str, Any]) -> None:
    """Keep `record` as the newest of the last REMEMBERED records scored, by the sha256 of its bytes."""
    written[sha] = record
    written.move_to_end(sha)
    while len(written) > REMEMBERED:
        written.popitem(last=False)


class _Twins:
    """Byte-identical files in one scan are scored once: a record depends only on the bytes (and the
    store and options, the same for the whole scan), so a copy's record is its original's under its own
    path. Reposts make such copies common in the folders bulk scans meet.

    `unique` filters the jobs; `records` follows each original's record with its copies' and hands out
    copies of records already written. The last REMEMBERED records are kept for copies still to come;
    a copy found after its original's record was forgotten is scored again."""

    def __init__(self, counts: Counter):
        self.counts = counts
        self.inflight: set[str] = set()  # originals sent to be scored, records not back yet
        self.waiting: dict[str, list[str]] = {}  # sha256 -> paths of copies of an original in flight
        self.written: OrderedDict[str, dict[str, Any]] = OrderedDict()  # sha256 -> record, newest last
        self.ready: list[tuple[str, dict[str, Any]]] = []  # (path, record) of copies found after their original

    def unique(self, jobs: Iterator[Job]) -> Iterator[Job]:
        for job in jobs:
            if job.sha256 in self.inflight:
                self.waiting.setdefault(job.sha256, []).append(job.path)
                continue
            if job.sha256 in self.written:
                self.ready.append((job.path, self.written[job.sha256]))
                continue
            if job.sha256 is not None:
                self.inflight.add(job.sha256)
            yield job

    def records(self, scored: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for record in scored:
            sha = record.get("sha256")
            copies: list[str] = []
            if sha in self.inflight:
                self.inflight.discard(sha)
                copies = self.waiting.pop(sha, [])
                remember(self.written, sha, record)
            yield record
            yield from self._copies([(p, record) for p in copies])
        yield from self._copies()  # and those found while the last records were written

    def _copies(self, pairs: Collection[tuple[str, dict[str, Any]]] = ()) -> Iterator[dict[str, Any]]:
        """Records of copies: `pairs` of (path, original record), then those found after their original."""
        ready, self.ready = self.ready, []
        for path, original in [*pairs, *ready]:
            self.counts["copies"] += 1
            yield {**original, "path": path}


def _local(store: Store, embedders: Embedders, root: Path, artist: str | None, done: Done,
           counts: Counter, workers: int, clip: dict[str, Any] | None) -> Iterator[dict[str, Any] | None]:
    """Records from this machine: in this process, or in `workers` spawned processes (`_Pool`);
    byte-identical files scored once (`_Twins`). Yields None first, once the workers have started."""
    twins = _Twins(counts)
    # in parallel, small batches first, enough for every worker's queue: a short scan is spread evenly
    small = _Pool.IN_FLIGHT * workers if workers > 1 else 0
    batches = _batches(twins.unique(_jobs(root, done, counts)), artist, small)
    if workers <= 1:
        scorer = Scorer(store, embedders)
        yield None
        yield from twins.records(r for batch in batches for r in score_jobs(scorer, *batch))
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = _Pool(workers, (str(store.root), clip or {"use_clip": False}, threads, os.getpid()))
    try:
        yield None
        yield from twins.records(pool.records(batches))
    finally:
        pool.close()


def scan(store: Store, embedders: Embedders, root: Path, out: Path, artist: str | None = None,
         progress: bool = False, workers: int | None = None, resume: bool = False,
         clip: dict[str, Any] | None = None, engine: str = "local", ray_address: str | None = None,
         counts: Counter[str] | None = None) -> str:
    """Scan `root` recursively into `out` (format from its suffix); returns a one-line summary.
    `counts`, when given, is filled with the records the output holds per verdict and "error" (a
    resumed scan's output holds what the earlier runs wrote too), "scanned" (files scored by this
    run) and "resumed" (files it skipped as done).

    With workers > 1 the files are scored in that many processes (engine "local", default
    1: this process; at most one per core) or Ray actors (engine "ray", on a local Ray or the
    cluster at `ray_address`; default one actor per CPU less one); `clip`
    holds the embedder options workers load (model, weights, use_clip) so they score
    like `embedders`. Workers open the store read-only.
    """
    fmt = out.suffix.lower()
    if fmt not in FORMATS:
        raise ValueError(f"--out must end in one of {', '.join(FORMATS)} (got {out.name})")
    if engine not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINES)} (got {engine!r})")
    cores = os.cpu_count() or 1
    if engine == "local" and workers is not None and workers > cores:
        raise ValueError(f"--workers {workers} is more than this machine's {cores} cores (the local engine runs "
                         "one process per core at most; --engine ray scales out to more machines)")
    if artist is not None and not store.has_artist(artist):
        raise ValueError(f"no artist named {artist!r} in the store")
    records = _records_path(out)
    for target in {out, records}:  # found now, not after the whole scan when the report is written
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a folder", str(target))
    store.check_embedders(embedders.specs(), spare=SPARE)  # here, before any worker starts, not in each of them
    counts = Counter() if counts is None else counts
    legacy = out.with_suffix(".jsonl")
    if resume and fmt == ".html" and not records.exists() and legacy.exists():
        raise ValueError(f"--resume: {records.name} does not exist; if {legacy.name} holds this report's records "
                         f"(chimera kept them there before), rename it to {records.name}; else scan without --resume")
    done = _done(out) if resume else Done({}, None)
    _check_same_artists(done, out, artist, store)
    blocked = next((p for p in records.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:  # (mkdir would say "File exists")
        raise NotADirectoryError(errno.ENOTDIR, f"{blocked} is a file, not a folder", str(records))
    records.parent.mkdir(parents=True, exist_ok=True)
    append = resume and records.exists() and records.stat().st_size > 0
    total = sum(1 for _ in iter_image_paths([root]))
    if engine == "ray":
        from service.scan_ray import ray_records
        results = ray_records(store.root, root, artist, done, counts, workers, clip, ray_address)
    else:
        results = _local(store, embedders, root, artist, done, counts, workers or 1, clip)
    next(results)  # the engine starts (workers, or Ray) before the output is touched: a failed start empties nothing
    try:
        with open(records, "a" if append else "w", newline="", encoding="utf-8") as f:
            writer = (csv.DictWriter(f, _csv_header(records) if append else CSV_FIELDS, extrasaction="ignore")
                      if records.suffix.lower() == ".csv" else None)
            if writer and not append:
                writer.writeheader()
            # the bar counts the files this run scores: those the output holds already are no part of its rate
            with tqdm(total=max(total - done.records, 0), unit="img", desc="scanning", disable=not progress) as bar:
                for result in results:
                    counts[_label(result)] += 1
                    counts["scanned"] += 1
                    if writer:
                        writer.writerow(csv_row(result))
                    else:
                        f.write(json.dumps(result) + "\n")
                    f.flush()
                    bar.update(1)
    finally:
        results.close()  # the workers (or Ray) stop, whether the output could be opened, written or not
    labels = ("copy", "derivative", "style_match", "unrelated", "error")
    summary = f"scanned {counts['scanned']} files: " + ", ".join(f"{counts[k]} {k}" for k in labels)
    if counts["copies"]:
        summary += f" ({counts['copies']} byte-identical to a file scored before them, scored once)"
    if counts["resumed"]:
        summary += f" ({counts['resumed']} already done, skipped)"
    keep = None  # the records the report shows: every one, or after a resume each file's newest
    if append:  # the output, and the report, cover the whole scan, not only this run's part
        newest = _newest(records)
        whole = Counter(label for _, label in newest.values())
        for k in labels:
            counts[k] = whole[k]
        summary += f"; {out.name} now holds records of {sum(whole.values())} files: " + ", ".join(
            f"{whole[k]} {k}" for k in labels)
        keep = {i for i, _ in newest.values()}
    if fmt == ".html":
        write_html(_flagged(records, keep), out, summary, work_png=store.thumbnail)
    return summary
