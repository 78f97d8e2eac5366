"""`chimera scan --engine ray`: the scan's records computed on Ray Data.

The pipeline is Ray Data's, stage by stage, for each CHUNK files of the tree in turn (a Ray
dataset is built from a listing, so the driver holds one chunk's paths, never the whole tree's):
  1. the driver lists the next chunk of the tree;
  2. read tasks (service/ray_reads.py) take each file's sha256; the driver drops what a
     resumed scan already has and keeps one file of each set of byte-identical ones (their
     records are the same; a copy of a file scored in an earlier chunk gets that file's record
     while it is among the last `scan.REMEMBERED`, as in the local engine);
  3. read tasks read those files, and an actor pool decodes and scores them in batches:
     each actor holds the models and a read-only store for its whole life, so they load
     once per actor and chunk, not per file; the files of a batch whose actor died are
     scored again one at a time (`_scored`);
  4. the driver streams the records back to `scan`, which writes them as they arrive,
     each followed by its byte-identical copies' (under their own paths) when the bytes
     scored are still those hashed.
Step 2 reads every file once more than a scan that scored every copy would; scoring an
image costs thousands of times what reading it does.
On a cluster (`--ray-address`), every node needs this package installed and the
store and the scanned folder at the same paths (a shared filesystem).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import warnings
from collections import Counter, OrderedDict
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from detector.embedders import Embedders
from detector.images import iter_image_paths, shown
from detector.score import Scorer, error_result
from index.store import Store
from service.ray_reads import digest, read
from service.scan import BATCH, STOPPED, Done, Job, limit_threads, remember, score_jobs

READ_BATCH = 64  # files per read task
# files per Ray dataset: the driver holds their paths and hashes (a few hundred bytes a file, where a
# whole tree of millions would take gigabytes), and each chunk starts its actors anew (seconds, against
# the minutes to hours a chunk takes to score: about an hour for one worker at 14 images/s)
CHUNK = 50_000


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise RuntimeError("--engine ray needs Ray Data: pip install 'chimera-provenance[ray]'") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not minutes (Ray retries its connection for long), when nothing listens there."""
    hostport = address.split("://", 1)[-1]
    if hostport in ("auto", "local") or ":" not in hostport:
        return
    host, port = hostport.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise RuntimeError(f"cannot reach the Ray cluster at {address}: {e}") from None


class _ScoreActor:
    """One scoring worker: the embedders and a read-only store, loaded once.

    (Ray Data 2.60 logs "Actor ... has constructor arguments in the object store" for
    every actor pool, whatever its arguments: ray-project/ray#57733, harmless.)
    """

    def __init__(self, store: str, clip: dict[str, Any], artist: str | None) -> None:
        self.scorer = Scorer(Store.open(store, read_only=True), Embedders.load(**clip, quiet=True))
        limit_threads(1)  # one CPU per actor
        self.artist = artist

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        jobs = [Job(shown(path), None if problem else data, problem or None)
                for path, problem, data in zip(batch["path"], batch["problem"], batch["data"])]
        return {"n": batch["n"],
                "record": np.array([json.dumps(r) for r in score_jobs(self.scorer, jobs, self.artist)], dtype=object)}


def ray_records(store_root: Path, root: Path, artist: str | None, held: Done,
                counts: Counter, workers: int | None, clip: dict[str, Any] | None,
                address: str | None) -> Iterator[dict[str, Any] | None]:
    """Records of every image under `root`, in completion order, scored by `workers` Ray actors
    (default: one per CPU Ray reports, less one for reading), after a None yielded once Ray is
    reached. Starts a local Ray when none is running and `address` is None, and stops it again
    at the end."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        address = address or os.environ.get("RAY_ADDRESS")
        # a local Ray gets a slot for the light read tasks beside `workers` scoring actors
        cpus = None if address else max(os.cpu_count() or 1, (workers or 0) + 1)
        if address:
            _check_reachable(address)
        # ray.init puts in a SIGTERM handler of its own (exit status 15, no word of what stopped the scan):
        # the command's is put back, which raises in the scan and shuts Ray down on the way out
        on_term = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(address=address, num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR")
        except Exception as e:  # noqa: BLE001 - Ray raises several kinds; the user needs the first line
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise RuntimeError(f"cannot start or reach {where}: {str(e).splitlines()[0]}") from None
        finally:
            if on_term is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, on_term)
    try:
        yield None
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the scan shows its own bar
        ctx.print_on_execution_start = False
        # a batch whose actor died is dropped, not retried for ever (`_scored` scores its files again);
        # Ray Data would log each such block with a traceback: the scan's records say what happened
        ctx.max_errored_blocks = -1
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        if not workers:
            workers = max(1, int(ray.cluster_resources().get("CPU", 2)) - 1)
        recent: OrderedDict[str, dict[str, Any]] = OrderedDict()  # sha256 -> record, of the last files scored
        listing = iter_image_paths([root])
        while chunk := list(islice(listing, CHUNK)):
            yield from _chunk_records(ray, chunk, store_root, artist, held, counts, workers, clip, recent)
    except ray.exceptions.RayError as e:  # an actor that could not start, a node lost: the first line says which
        raise RuntimeError(f"the Ray scan failed: {str(e).strip().splitlines()[0]}") from None
    finally:
        if started:
            ray.shutdown()


def _chunk_records(ray: Any, chunk: list[tuple[Path, str | None]], store_root: Path, artist: str | None,
                   held: Done, counts: Counter, workers: int, clip: dict[str, Any] | None,
                   recent: OrderedDict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The records of one chunk of the listing (steps 2-4 of the module's pipeline); `recent` holds the
    records of files scored in earlier chunks, for their copies in this one, and gains this chunk's.
    Files are known by their number in the chunk (`n`): two paths may be shown alike (`shown`).

    A file is read twice (hashed, then scored), so it may change in between: its copies take its record
    only when the bytes scored are the bytes hashed, and are scored themselves otherwise. A batch whose
    actor died (a file that kills the process decoding it, the OOM killer) is not retried as it was,
    which would kill actor after actor for ever: its files are scored again one at a time, and a file
    that stops an actor on its own gets an error record, as in the local engine."""
    items = [{"n": n, "path": str(p), "file": os.path.abspath(p), "problem": problem or ""}
             for n, (p, problem) in enumerate(chunk)]
    todo: dict[int, dict[str, Any]] = {}  # the files to score
    hashed: dict[int, str] = {}  # file -> the sha256 its bytes had when hashed
    first: dict[str, int] = {}  # sha256 -> the first file with those bytes
    copies: dict[int, list[dict[str, Any]]] = {}  # that file -> the other files with its bytes
    # a read task that died (a file that kills the process hashing it, the OOM killer) dropped its files'
    # hashes: they are hashed again one file a task, and a file whose hashing dies again is scored unhashed
    unhashed = dict(enumerate(items))
    for again in (False, True):
        if not unhashed:
            break
        batch = list(unhashed.values())
        rows = _map_once(ray.data.from_items(batch, override_num_blocks=len(batch) if again else
                                             _blocks(len(batch), workers)),
                         digest, batch_size=None if again else READ_BATCH, num_cpus=0.25).iter_rows()
        for row in rows:
            sha, n = row["sha256"], int(row["n"])  # sha "" for a file that could not be read: scored on its own
            del unhashed[n]
            if held.holds(Path(row["path"]), sha or None):
                counts["resumed"] += 1
            elif sha in recent:  # a copy of a file scored in an earlier chunk
                recent.move_to_end(sha)
                counts["copies"] += 1
                yield {**recent[sha], "path": shown(row["path"])}
            elif sha in first:
                copies.setdefault(first[sha], []).append(items[n])
            else:
                if sha:
                    hashed[n] = sha
                    first[sha] = n
                todo[n] = items[n]
    for n, item in unhashed.items():  # resumed when its newest record is an error without a sha256 (STOPPED)
        if held.holds(Path(item["path"]), None):
            counts["resumed"] += 1
        else:
            todo[n] = item
    changed: list[dict[str, Any]] = []  # copies of a file whose bytes changed after it was hashed
    for n, record in _remembered(_scored(ray, todo, hashed, store_root, artist, workers, clip), recent):
        yield record
        twins = copies.pop(n, [])
        if record.get("sha256") != hashed.get(n):
            changed += twins
            continue
        for item in twins:
            counts["copies"] += 1
            yield {**record, "path": shown(item["path"])}
    for _, record in _remembered(_scored(ray, {item["n"]: item for item in changed}, {}, store_root, artist,
                                         workers, clip), recent):
        yield record


def _remembered(scored: Iterator[tuple[int, dict[str, Any]]], recent: OrderedDict[str, dict[str, Any]]
                ) -> Iterator[tuple[int, dict[str, Any]]]:
    """`scored` as it comes, each record with a sha256 kept in `recent` for copies in later chunks."""
    for n, record in scored:
        if record.get("sha256"):
            remember(recent, record["sha256"], record)
        yield n, record


def _blocks(n: int, workers: int) -> int:
    """Read tasks for n files: at most READ_BATCH files each, and enough for every actor to start on one."""
    return min(n, max(4 * workers, -(-n // READ_BATCH)))


def _scored(ray: Any, todo: dict[int, dict[str, Any]], hashed: dict[int, str], store_root: Path,
            artist: str | None, workers: int, clip: dict[str, Any] | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(file, its record) for each file of `todo`, in completion order: scored in batches, and the files
    of a batch whose actor died scored again one at a time, one call at a time on each actor (a call
    waiting on an actor dies with it); a file that stops an actor on its own gets an error record
    (with the sha256 `hashed` holds for it, if any)."""
    todo = dict(todo)
    for batch in (BATCH, 1):
        for n, record in _actor_pool(ray, list(todo.values()), store_root, artist, workers, clip, batch):
            del todo[n]
            yield n, record
    for n, item in todo.items():
        yield n, error_result(shown(item["path"]), STOPPED, hashed.get(n))


def _actor_pool(ray: Any, todo: list[dict[str, Any]], store_root: Path, artist: str | None, workers: int,
                clip: dict[str, Any] | None, batch: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(file, record) of the files `todo`, read by read tasks and scored by an actor pool, `batch` files a
    call, in completion order. A call whose actor died yields nothing for its files (`ray_records` lets
    Ray Data drop such blocks) and is not retried; the actor is replaced."""
    if not todo:
        return
    ds = ray.data.from_items(todo, override_num_blocks=len(todo) if batch == 1 else _blocks(len(todo), workers))
    # a block a task (batch_size=None): a batch larger than the blocks merged them into one bundle, and
    # a scan of fewer than READ_BATCH x workers files went to a single actor, its records all at the end
    ds = _map_once(ds, read, batch_size=None, num_cpus=0.25)
    pool = ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=None if batch > 1 else 1)
    ds = _map_once(ds, _ScoreActor, batch_size=batch, num_cpus=1, compute=pool,
                   fn_constructor_kwargs={"store": str(store_root), "artist": artist, "clip": clip or {"use_clip": False}})
    for row in ds.iter_rows():
        yield int(row["n"]), json.loads(row["record"])


def _map_once(ds: Any, fn: Any, **options: Any) -> Any:
    """`ds.map_batches(fn, **options)` whose calls are not run again when their process dies: Ray Data
    retries tasks and actor calls for ever by default, so a file that kills the process reading or
    scoring it would stop the scan for good. (Neither setting has a named parameter; Ray 2.60 deprecates
    their keyword form, for 2.64: pyproject keeps Ray below that.)"""
    again = {"max_task_retries": 0} if "compute" in options else {"max_retries": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return ds.map_batches(fn, **options, **again)
