"""The store directory: catalogue + per-kind FAISS caches + a single-writer lock.

Layout of a store directory::

    catalogue.sqlite          the truth: rows and every vector (WAL mode)
    indexes/<kind>.<gen>.faiss  search cache for one kind at one generation
    write.lock / writer.pid   who may write (one at a time; readers never lock)

Each write transaction bumps the generation of the kinds it touched, to a number never
given before (`catalogue.bump_generation`). An index file is only trusted when its
generation is the catalogue's current one, so a writer killed between committing and
writing its index leaves a stale file that the next open ignores and rebuilds from the
catalogue, and so does a catalogue restored from a backup beside newer index files.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import faiss
import filelock
import numpy as np

from index import catalogue as cat
from index import vectors as vx

Box = tuple[float, float, float, float]


class StoreError(Exception):
    """A user-facing problem with the store: the message is shown as is."""


class NoStore(StoreError):
    """Nothing at the path yet (opened without `create`): to a lister an empty store, to a writer a new one."""


class IndexesNotSaved(StoreError):
    """The change is committed to the catalogue, but its search indexes could not be saved (they are
    rebuilt from the catalogue when next needed): the write happened, with a warning, not an error."""


@dataclass(frozen=True)
class KindSpec:
    """What the store needs to know about one embedding kind.

    `descriptor` names model, weights and preprocessing: vectors of a kind are only
    ever compared with vectors made by an identical descriptor.
    """

    kind: str
    descriptor: dict[str, Any]
    dim: int
    binary: bool = False
    owner: str = "work"
    # approximate factory this kind switches to past `approximate_from` vectors ("{nlist}" in it is
    # fitted to the count: index.vectors.fit)
    factory: str | None = None
    approximate_from: int = 100_000

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.binary else np.float32)


@dataclass(frozen=True)
class Hit:
    """One search result, resolved to its catalogue owner."""

    vector_id: int
    score: float
    work_id: int | None
    signature_id: int | None
    box: Box


SQLITE_INTEGER = range(-(1 << 63), 1 << 63)  # ids beyond this are no row's: SQLite refuses to compare them
RESOLVED_MAX = 200_000  # vector ids `Store.resolve` remembers per kind (~350 bytes each: ~70 MB at most)
LEGACY_APPROXIMATE = 100_000  # threshold of auto factories saved without one (stores made before 2026-11-26)


def default_store_path() -> Path:
    return Path(os.environ.get("CHIMERA_STORE", "chimera-store"))


def _stamp(db: Path) -> tuple:
    """What a writer changes: the catalogue's inode, size and modification time, and its WAL's."""
    out = []
    for path in (db, db.with_name(db.name + "-wal")):
        try:
            st = path.stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def _frozen_connection(root: Path, db: Path) -> tuple[sqlite3.Connection, tuple | None]:
    """A read-only connection to the catalogue of a store in a folder this user cannot write, and the
    `_stamp` of its files to watch (None on a read-only mount).

    SQLite reads a WAL database through the WAL's shared-memory file, which it cannot make in such a
    folder. While a writer (the folder's owner, say a curator updating the store a server reads) has
    the catalogue open, that file exists, and a plain read-only connection shares SQLite's locking and
    sees the writer's commits; when the last writer closes, SQLite folds the WAL in and removes both
    files under it. Otherwise only an immutable connection can read, and it assumes nothing changes.
    On a read-only mount nothing can; elsewhere both kinds are watched (`Store.conn` opens the
    catalogue again when its files change)."""
    try:
        fixed = bool(os.statvfs(root).f_flag & os.ST_RDONLY)
    except OSError as e:
        raise StoreError(f"cannot read the store at {root} ({e.strerror or e})") from None
    stamp = None if fixed else _stamp(db)  # before opening: a change from here on is seen
    if not fixed:
        conn = cat.connect(db, read_only=True)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # maps the shared memory, or fails
            return conn, stamp  # watched too: when the last writer closes, SQLite removes what it reads through
        except sqlite3.OperationalError:
            conn.close()
    wal = db.with_name(db.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:  # immutable reads would not see what it holds
        raise StoreError(f"the store at {root} is in a folder this user cannot write, and its last changes are "
                         f"still in {wal.name} (a writer was killed, or is still running): open it once where it "
                         "can be written (`chimera index check`) to fold them into the catalogue")
    return cat.connect(db, read_only=True, immutable=True), stamp


class Store:
    """Open with `Store.open(path)`; write inside `with store.writer() as w:`."""

    def __init__(self, root: Path, conn: sqlite3.Connection, read_only: bool = False, frozen: bool = False,
                 watch: tuple | None = None):
        self.root = root
        self._conn: sqlite3.Connection | None = conn
        self._watch = watch  # the catalogue's files as an immutable connection found them (`conn`)
        self.read_only = read_only or frozen
        self.frozen = frozen  # read-only because its folder is not writable (`open`)
        self._cache: dict[str, tuple[int, faiss.Index]] = {}
        self._resolved: dict[str, tuple[int, dict[int, tuple]]] = {}  # kind -> (generation, `resolve`'s answers)
        self.notes: list[str] = []

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, root: Path | str | None = None, create: bool = False, read_only: bool = False) -> "Store":
        """Open (or with `create`, make) the store at `root`; `read_only` for readers that must never
        write, such as scan workers (their stale indexes are rebuilt in memory, never saved)."""
        root = Path(root) if root is not None else default_store_path()
        try:
            str(root).encode("utf-8")
        except UnicodeEncodeError:  # FAISS takes its file names as text
            raise StoreError(f"the store's path must be UTF-8 text: {str(root).encode('utf-8', 'surrogateescape')!r}"
                             ) from None
        db = root / "catalogue.sqlite"
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root} is a file, not a store (a store is a folder)")
        if not db.exists():
            if not create or read_only:
                raise NoStore(f"no store at {root} (add works with `chimera index add` first)")
            (root / "indexes").mkdir(parents=True, exist_ok=True)
        frozen = not os.access(root, os.W_OK)  # a folder this user cannot write: read, never written
        for attempt in range(50):  # two processes making one new store: switching it to WAL can meet a lock
            try:
                conn, watch = _frozen_connection(root, db) if frozen else (cat.connect(db, read_only), None)
                cat.init_schema(conn)
                break
            except sqlite3.DatabaseError as e:
                if not isinstance(e, sqlite3.OperationalError) or "locked" not in str(e) or attempt == 49:
                    raise StoreError(f"{db} is not a readable chimera catalogue: {e}") from None
                time.sleep(0.1)
        return cls(root, conn, read_only, frozen, watch)

    @property
    def conn(self) -> sqlite3.Connection:
        """The catalogue's connection. One to a store this user cannot write (`_frozen_connection`) may
        not see a writer's changes: when the files show one, between transactions, it is opened again."""
        if self._watch is not None and (self._conn is None or not self._conn.in_transaction):
            db = self.root / "catalogue.sqlite"
            if self._conn is None or _stamp(db) != self._watch:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None  # if opening again fails (a killed writer's WAL), it is tried at the next use
                self._conn, self._watch = _frozen_connection(self.root, db)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------- reads
    def specs(self) -> dict[str, KindSpec]:
        rows = self.conn.execute("SELECT kind, descriptor, dim, binary, owner FROM embedders").fetchall()
        return {r["kind"]: KindSpec(r["kind"], json.loads(r["descriptor"]), r["dim"],
                                    bool(r["binary"]), r["owner"]) for r in rows}

    def embedder_mismatches(self, specs: Sequence[KindSpec]) -> dict[str, str]:
        """kind -> why, for each kind the store holds whose vectors `specs` would make differently: another
        model, weights, preprocessing or library version. Kinds the store lacks or holds no vectors of (every
        sample of another version removed: `Writer.register` records this run's), or that a run cannot make
        (CLIP without weights), are not a mismatch."""
        known, out = self.specs(), {}
        for spec in self.replaced(specs, known):
            have = known[spec.kind]
            if self.conn.execute("SELECT 1 FROM vectors WHERE kind=? LIMIT 1", (spec.kind,)).fetchone():
                out[spec.kind] = (f"embedder mismatch for '{spec.kind}': the store holds vectors from "
                                  f"{cat.canonical(have.descriptor)}, this run makes {cat.canonical(spec.descriptor)}; "
                                  "vectors from different models, weights, preprocessing or versions are never "
                                  "mixed")
        return out

    def replaced(self, specs: Sequence[KindSpec], known: dict[str, KindSpec] | None = None) -> list[KindSpec]:
        """Those of `specs` that the store records differently (descriptor or size); `known`: `specs()`,
        when the caller has just read it."""
        known = self.specs() if known is None else known
        return [sp for sp in specs if (have := known.get(sp.kind)) is not None and
                (cat.canonical(have.descriptor) != cat.canonical(sp.descriptor) or have.dim != sp.dim)]

    def check_embedders(self, specs: Sequence[KindSpec], spare: Sequence[str] = ()) -> dict[str, str]:
        """Refuse (StoreError) a mismatch (`embedder_mismatches`) of any kind but those in `spare`, whose
        mismatches are returned: a scorer leaves their evidence out instead."""
        found = self.embedder_mismatches(specs)
        for kind, why in found.items():
            if kind not in spare:
                raise StoreError(f"{why} (use the versions the store was made with, or register the works in "
                                 "a new --store)")
        return found

    def artists(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT a.name, (SELECT COUNT(*) FROM works w WHERE w.artist_id=a.id AND w.kind='reference') AS works,"
            " (SELECT COUNT(*) FROM signatures s WHERE s.artist_id=a.id) AS signatures"
            " FROM artists a ORDER BY a.name").fetchall()
        return [dict(r) for r in rows]

    def works_of(self, artist: str) -> list[dict[str, Any]]:
        """An artist's registered works, oldest first: the ids `index remove --work` takes."""
        rows = self.conn.execute(
            "SELECT w.id, w.source, w.sha256, w.width, w.height, w.added_at FROM works w"
            " JOIN artists a ON a.id=w.artist_id WHERE a.name=? AND w.kind='reference' ORDER BY w.id",
            (artist,)).fetchall()
        return [dict(r) for r in rows]

    def roster(self) -> tuple[tuple[int, str], ...]:
        """(id, name) of every artist, by id: what a cached per-artist model must have been made for."""
        return tuple((r[0], r[1]) for r in self.conn.execute("SELECT id, name FROM artists ORDER BY id"))

    def signatures_of(self, artist: str) -> list[dict[str, Any]]:
        """An artist's signature samples, oldest first: the ids `index remove --signature` takes."""
        rows = self.conn.execute(
            "SELECT s.id, s.source, s.sha256, s.width, s.height, s.added_at FROM signatures s"
            " JOIN artists a ON a.id=s.artist_id WHERE a.name=? ORDER BY s.id", (artist,)).fetchall()
        return [dict(r) for r in rows]

    def has_artist(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM artists WHERE name=?", (name,)).fetchone() is not None

    def generated_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM works WHERE kind='generated'").fetchone()[0]

    def work(self, work_id: int) -> dict[str, Any] | None:
        return self.works([work_id]).get(work_id)

    def works(self, work_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """work id -> its catalogue row (artist name, generated run...), in one query; unknown ids left out."""
        rows = self._rows_in(
            "SELECT w.id, w.kind, w.source, w.sha256, w.width, w.height, w.added_at, a.name AS artist,"
            " g.run, g.checkpoint, g.seed, g.sample_index FROM works w LEFT JOIN artists a ON a.id=w.artist_id"
            " LEFT JOIN generated g ON g.work_id=w.id WHERE w.id IN ({})", work_ids)
        return {r["id"]: dict(r) for r in rows}

    def _rows_in(self, sql: str, ids: Sequence[int | None]) -> Iterator[sqlite3.Row]:
        """The rows of `sql` for these ids (None and repeats dropped), its `{}` the IN list: in chunks
        of at most 900, within the bound parameters every SQLite build accepts."""
        wanted = sorted({int(i) for i in ids if i is not None and int(i) in SQLITE_INTEGER})
        for start in range(0, len(wanted), 900):
            chunk = wanted[start:start + 900]
            yield from self.conn.execute(sql.format(",".join("?" * len(chunk))), chunk)

    def holder(self, sha256: str, signature: bool = False) -> str | None:
        """What already holds these exact bytes ("work 12 of alice", "signature sample 3 of bob", "generated
        output 40"), or None: a skipped duplicate says where its twin is."""
        table = "signatures" if signature else "works"
        row = self.conn.execute(f"SELECT t.id, a.name FROM {table} t LEFT JOIN artists a ON a.id=t.artist_id"
                                " WHERE t.sha256=?", (sha256,)).fetchone()
        if row is None:
            return None
        what = "signature sample" if signature else "work" if row["name"] is not None else "generated output"
        return f"{what} {row['id']}" + (f" of {row['name']}" if row["name"] is not None else "")

    def works_generation(self) -> int:
        """A number that changes whenever a work is added or removed: the generation of the hash kind,
        since every work has hash vectors (all 8 turns) and every write that adds or removes them bumps it."""
        return cat.generation(self.conn, "hash")

    def thumbnail(self, work_id: int) -> bytes | None:
        """The work's pixels as stored (PNG, longer side at most 256): evidence needs no source file."""
        row = next(self._rows_in("SELECT png FROM thumbnails WHERE work_id IN ({})", [work_id]), None)
        return row[0] if row else None

    def signers(self, signature_ids: Sequence[int]) -> dict[int, str]:
        """signature sample id -> its artist's name, in one query."""
        rows = self._rows_in("SELECT s.id, a.name FROM signatures s JOIN artists a ON a.id=s.artist_id"
                             " WHERE s.id IN ({})", signature_ids)
        return {r[0]: r[1] for r in rows}

    def owners(self, kind: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(vector ids, owner artist index, artist names) for every vector of a kind.

        Scoring uses this to aggregate neighbours per artist without a query per hit.
        """
        rows = self.conn.execute(
            "SELECT v.id, COALESCE(w.artist_id, s.artist_id, -1) FROM vectors v"
            " LEFT JOIN works w ON w.id=v.work_id LEFT JOIN signatures s ON s.id=v.signature_id"
            " WHERE v.kind=? ORDER BY v.id", (kind,)).fetchall()
        names = {r[0]: r[1] for r in self.conn.execute("SELECT id, name FROM artists")}
        order = sorted(names)
        pos = {aid: i for i, aid in enumerate(order)}
        ids = np.array([r[0] for r in rows], np.int64)
        owner = np.array([pos.get(r[1], -1) for r in rows], np.int64)
        return ids, owner, [names[a] for a in order]

    def vectors(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """All (ids, vectors) of one kind, as stored (unnormalised)."""
        spec = self.specs()[kind]
        batches = list(cat.iter_vectors(self.conn, kind, spec.dtype))
        if not batches:
            width = spec.dim // 8 if spec.binary else spec.dim
            return np.zeros(0, np.int64), np.zeros((0, width), spec.dtype)
        return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])

    def resolve(self, kind: str, vector_ids: Sequence[int]) -> dict[int, tuple[int | None, int | None, Box]]:
        """vector id -> (work id, signature id, box), for ids of one kind.

        Remembered per kind until its generation changes (any write to it), up to RESOLVED_MAX ids:
        a scan's searches keep meeting the same stored vectors, and SQLite was asked again for every
        batch (4% of a scan worker's time under cProfile)."""
        gen = cat.generation(self.conn, kind)
        known = self._resolved.get(kind)
        if known is None or known[0] != gen or len(known[1]) > RESOLVED_MAX:
            known = self._resolved[kind] = (gen, {})
        places = known[1]
        wanted = [int(i) for i in vector_ids if i >= 0]
        for r in self._rows_in("SELECT id, work_id, signature_id, x0, y0, x1, y1 FROM vectors WHERE id IN ({})",
                               [i for i in wanted if i not in places]):
            places[r[0]] = (r[1], r[2], (r[3], r[4], r[5], r[6]))
        return {i: places[i] for i in wanted if i in places}

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see the catalogue as it was at their first read, whatever other connections
        commit meanwhile (a read transaction; inside a writer's own transaction, that one).

        A search reads the generation, searches that generation's index, then resolves the vector ids
        it found: a work removed and another added in between could otherwise hand a removed vector's
        id (SQLite reuses the largest rowid) to the new work, and the hit to the wrong owner."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def search(self, kind: str, queries: np.ndarray, k: int, min_score: float | None = None) -> list[list[Hit]]:
        """k nearest stored vectors of `kind` for each query row, resolved to owners; with `min_score`
        (float kinds: cosine), only those at least that similar (the rest are never resolved)."""
        with self.snapshot():  # the index searched and the ids resolved are of one generation
            spec = self.specs().get(kind)
            if spec is None:
                return [[] for _ in range(len(queries))]
            scores, ids = vx.search(self._index(spec), spec.binary, queries, k)
            keep = ids >= 0
            if min_score is not None:
                if spec.binary:
                    raise ValueError(f"{kind} scores are Hamming distances: min_score is for similarities")
                keep &= scores.astype(np.float64) >= min_score  # as a Hit's (float64) score compares
            owners = self.resolve(kind, np.unique(ids[keep]).tolist())
        return [[Hit(i, s, *owners[i]) for s, i, ok in zip(srow, irow, krow) if ok and i in owners]
                for srow, irow, krow in zip(scores.astype(np.float64).tolist(), ids.tolist(), keep.tolist())]

    def index_path(self, kind: str, gen: int) -> Path:
        return self.root / "indexes" / f"{kind}.{gen}.faiss"

    def chosen_factory(self, kind: str) -> str | None:
        """The factory the user chose for a kind (`index rebuild --index-factory`), if any."""
        return cat.get_meta(self.conn, f"factory:{kind}")

    def factory(self, spec: KindSpec) -> str:
        """The FAISS factory for a kind: the user's (`index rebuild --index-factory`), else exact search,
        except for kinds that declare an approximate factory once they outgrow exact search."""
        chosen = self.chosen_factory(spec.kind)
        if chosen:
            return chosen
        auto = cat.get_meta(self.conn, f"auto_factory:{spec.kind}")
        if auto:
            name, _, start = auto.partition("@")
            n = self.conn.execute("SELECT COUNT(*) FROM vectors WHERE kind=?", (spec.kind,)).fetchone()[0]
            if n >= int(start or LEGACY_APPROXIMATE):
                return vx.fit(name, n)
        return vx.DEFAULT_BINARY_FACTORY if spec.binary else vx.DEFAULT_FLOAT_FACTORY

    def _index(self, spec: KindSpec) -> faiss.Index:
        """The search index of a kind at the catalogue's current generation.

        Loaded from its file when that file is current; otherwise rebuilt from the
        catalogue's vectors (after a crash, or while a writer has not yet saved).
        """
        gen = cat.generation(self.conn, spec.kind)
        cached = self._cache.get(spec.kind)
        if cached and cached[0] == gen:
            return cached[1]
        path = self.index_path(spec.kind, gen)
        try:
            index = vx.read(path, spec.binary)
        except (RuntimeError, OSError):
            index = self._build(spec)
        self._cache[spec.kind] = (gen, index)
        return index

    def _build(self, spec: KindSpec) -> faiss.Index:
        index, note = vx.build(spec.dim, spec.binary, self.factory(spec),
                               cat.iter_vectors(self.conn, spec.kind, spec.dtype))
        if note:
            self.notes.append(f"{spec.kind}: {note}")
        return index

    def check(self) -> list[str]:
        """Integrity problems (empty when the store agrees with itself). Read in one snapshot, so a
        writer committing meanwhile is no problem: the catalogue and the indexes checked are of one
        generation (an index file the writer replaced meanwhile is stale, not damaged)."""
        try:
            problems = [r[0] for r in self.conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
            with self.snapshot():
                problems += [f"foreign key violation in {r[0]}" for r in self.conn.execute("PRAGMA foreign_key_check")]
                problems += self._check_indexes()
                # a work and its vectors are written in one transaction, so none can lack them all; one may
                # lack a kind (a blank picture has no keypoints and no detailed windows): no inconsistency
                for table, owner in (("works", "work_id"), ("signatures", "signature_id")):
                    missing = self.conn.execute(f"SELECT COUNT(*) FROM {table} t WHERE NOT EXISTS"
                                                f" (SELECT 1 FROM vectors v WHERE v.{owner}=t.id)").fetchone()[0]
                    if missing:
                        problems.append(f"{missing} {table} without any vectors")
        except sqlite3.DatabaseError as e:  # a damaged page: SQLite stops at it
            problems = [f"the catalogue is damaged ({e}); restore catalogue.sqlite from a backup"]
        return problems

    def _check_indexes(self) -> list[str]:
        problems = []
        for spec in self.specs().values():
            gen = cat.generation(self.conn, spec.kind)
            path = self.index_path(spec.kind, gen)
            if not path.exists():
                continue  # stale or never written: rebuilt on demand, not an inconsistency
            try:
                index = vx.read(path, spec.binary)
            except RuntimeError as e:
                if path.exists():  # else a writer replaced it since this snapshot: stale, not damaged
                    problems.append(f"{path.name}: unreadable ({str(e).strip().splitlines()[-1]}); "
                                    "`chimera index rebuild` rewrites it")
                continue
            stored = {r[0] for r in self.conn.execute("SELECT id FROM vectors WHERE kind=?", (spec.kind,))}
            indexed = set(faiss.vector_to_array(index.id_map).tolist())
            if stored != indexed:
                problems.append(f"{path.name}: {len(indexed & stored)} of {len(indexed)} ids indexed are among "
                                f"the catalogue's {len(stored)}; `chimera index rebuild` rewrites it")
        return problems

    # ------------------------------------------------------------------ writes
    @contextmanager
    def writer(self, timeout: float | None = None) -> Iterator["Writer"]:
        """Hold the store's write lock; save every touched index when done.

        A second writer waits (saying so on stderr) up to `timeout` seconds
        (env CHIMERA_LOCK_TIMEOUT, default 60), then fails with a clear message.
        """
        if self.read_only:
            raise StoreError(f"the store at {self.root} " + ("is in a folder this user cannot write" if self.frozen
                                                              else "was opened read-only"))
        if timeout is None:
            given = os.environ.get("CHIMERA_LOCK_TIMEOUT", "60")
            try:
                timeout = float(given)
            except ValueError:
                timeout = math.nan
            if not 0 <= timeout < math.inf:  # NaN, negative (filelock: wait for ever) and infinite refused
                raise StoreError(f"CHIMERA_LOCK_TIMEOUT must be a number of seconds, 0 or more "
                                 f"(got {given!r})") from None
        lock = filelock.FileLock(str(self.root / "write.lock"))
        pidfile = self.root / "writer.pid"
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            try:
                holder = pidfile.read_text().strip() or "?"
            except OSError:  # none, or the holder removed it since: it is finishing
                holder = "?"
            print(f"chimera: waiting up to {timeout:g}s for another writer (pid {holder}) on {self.root}",
                  file=sys.stderr)
            try:
                lock.acquire(timeout=timeout)
            except filelock.Timeout:
                raise StoreError(f"store {self.root} is busy: another writer (pid {holder}) holds its lock;"
                                 " try again when it finishes") from None
        try:
            pidfile.write_text(str(os.getpid()))
            writer = Writer(self)
            try:
                yield writer
            except sqlite3.OperationalError as e:  # a full disk, a folder made read-only meanwhile
                raise StoreError(f"could not write the catalogue ({e}); what was added or removed before "
                                 "this step is kept, this step is not") from None
            try:
                writer.save()
            except (OSError, RuntimeError) as e:  # FAISS reports failed writes as RuntimeError
                # FAISS's message is "Error in <function> at <file>:<line>: Error: '<test>' failed: <why>"
                reason = str(e).strip().rpartition("failed: ")[2][-200:] or type(e).__name__
                raise IndexesNotSaved(f"the catalogue holds the changes, but saving its search indexes failed "
                                      f"({reason}); they are rebuilt from the catalogue when next needed") from None
        finally:
            pidfile.unlink(missing_ok=True)
            lock.release()


class Writer:
    """Mutations, each one SQLite transaction, mirrored into the in-memory indexes."""

    def __init__(self, store: Store):
        self.store = store
        self.conn = store.conn
        self.touched: set[str] = set()
        self.dirty: set[str] = set()  # kinds whose index cannot apply a removal in place

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One SQLite transaction. On some errors (a full disk: SQLITE_FULL) SQLite has already rolled it
        back itself, and a second ROLLBACK would replace the real reason with "no transaction is active"."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def register(self, specs: Sequence[KindSpec]) -> None:
        """Record the embedders of this run; refuse any whose descriptor differs from the store's.

        Everything is checked before anything is written, so a refused run leaves no trace.
        """
        known = self.store.specs()
        self.store.check_embedders(specs)
        kinds = {sp.kind for sp in specs}
        missing = [k for k, s in known.items() if s.owner in {sp.owner for sp in specs} and k not in kinds]
        if missing:
            raise StoreError(f"the store holds {', '.join(sorted(missing))} vectors for every work but this run "
                             "cannot make them (is an embedder unavailable?); refusing to add incomplete works")
        new = [sp for sp in specs if sp.kind not in known]
        for sp in new:
            table = "works" if sp.owner == "work" else "signatures"
            if self.conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
                raise StoreError(f"this run adds '{sp.kind}' vectors but the store already holds {table} without "
                                 f"them; vectors are never mixed (use the store's embedders, e.g. --no-clip, "
                                 f"or a new --store)")
        # auto factories are the code's, never the user's: new kinds get theirs, and a store made
        # before thresholds were saved with them ("HNSW32", no "@") takes the current one
        def saved_without_threshold(kind: str) -> bool:
            saved = cat.get_meta(self.conn, f"auto_factory:{kind}")
            return saved is not None and "@" not in saved

        auto = {sp.kind: f"{sp.factory}@{sp.approximate_from}" for sp in specs
                if sp.factory and (sp in new or saved_without_threshold(sp.kind))}
        replaced = self.store.replaced(specs)  # (of no vector left: `check_embedders` passed)
        if new or auto or replaced:
            with self._transaction() as c:
                c.executemany("INSERT OR REPLACE INTO embedders VALUES (?, ?, ?, ?, ?)",
                              [(sp.kind, cat.canonical(sp.descriptor), sp.dim, int(sp.binary), sp.owner)
                               for sp in new + replaced])
                for sp in replaced:  # its saved (empty) index is of the old size: built again
                    cat.bump_generation(c, sp.kind)
                for kind, value in auto.items():
                    cat.set_meta(c, f"auto_factory:{kind}", value)

    def ensure_artist(self, name: str) -> int:
        if not name or not name.strip():
            raise StoreError("an artist needs a name (got an empty one)")
        row = self.conn.execute("SELECT id FROM artists WHERE name=?", (name,)).fetchone()
        if row:
            return row[0]
        with self._transaction() as c:
            return c.execute("INSERT INTO artists (name, created_at) VALUES (?, ?)", (name, cat.now())).lastrowid

    def add_work(self, artist: str | None, source: str, sha256: str, width: int, height: int,
                 vectors: dict[str, list[tuple[Box, np.ndarray]]],
                 generated: dict[str, Any] | None = None, thumbnail: bytes | None = None) -> int:
        """Add one work, its thumbnail and all its vectors atomically; returns the work id. A work is an
        artist's or a generated output (with its provenance): one with neither is refused."""
        if artist is None and not generated:
            raise ValueError(f"{source}: a work needs an artist, or a generated output's provenance")
        artist_id = self.ensure_artist(artist) if artist is not None else None
        with self._transaction() as c:
            wid = c.execute("INSERT INTO works (id, artist_id, kind, source, sha256, width, height, added_at)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (cat.next_id(c, "works"), artist_id, "generated" if generated else "reference", source,
                             sha256, width, height, cat.now())).lastrowid
            if generated:
                c.execute("INSERT INTO generated VALUES (?, ?, ?, ?, ?)",
                          (wid, generated["run"], generated.get("checkpoint"), generated.get("seed"),
                           generated.get("index")))
            if thumbnail is not None:
                c.execute("INSERT INTO thumbnails VALUES (?, ?)", (wid, thumbnail))
            added = self._insert_vectors(c, "work_id", wid, vectors)
        self._apply_adds(added)
        return wid

    def add_signature(self, artist: str, source: str, sha256: str, width: int, height: int,
                      vectors: dict[str, list[tuple[Box, np.ndarray]]]) -> int:
        artist_id = self.ensure_artist(artist)
        with self._transaction() as c:
            sid = c.execute("INSERT INTO signatures (id, artist_id, source, sha256, width, height, added_at)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?)", (cat.next_id(c, "signatures"), artist_id, source, sha256,
                                                              width, height, cat.now())).lastrowid
            added = self._insert_vectors(c, "signature_id", sid, vectors)
        self._apply_adds(added)
        return sid

    def _insert_vectors(self, c: sqlite3.Connection, owner_col: str, owner_id: int,
                        vectors: dict[str, list[tuple[Box, np.ndarray]]]) -> dict[str, tuple[list[int], list[np.ndarray]]]:
        specs = self.store.specs()
        added: dict[str, tuple[list[int], list[np.ndarray]]] = {}
        for kind, items in vectors.items():
            if not items:  # nothing of this kind (e.g. a flat image has no keypoints): generation unchanged
                continue
            spec = specs[kind]
            ids, vecs = added.setdefault(kind, ([], []))
            for box, vec in items:
                vec = np.ascontiguousarray(vec, dtype=spec.dtype)
                ids.append(c.execute(f"INSERT INTO vectors (kind, {owner_col}, x0, y0, x1, y1, data)"
                                     " VALUES (?, ?, ?, ?, ?, ?, ?)",
                                     (kind, owner_id, *map(float, box), vec.tobytes())).lastrowid)
                vecs.append(vec)
            cat.bump_generation(c, kind)
        return added

    def _apply_adds(self, added: dict[str, tuple[list[int], list[np.ndarray]]]) -> None:
        """Mirror committed vectors into the cached index and advance its generation.

        A process that has not searched a kind yet (`chimera index add`), or holds it from before
        another process's writes, takes the index saved before this add from its file: else `save`
        would rebuild it from the catalogue, retraining an IVF index's lists on every add."""
        specs = self.store.specs()
        for kind, (ids, vecs) in added.items():
            spec = specs[kind]
            gen = cat.generation(self.conn, kind)
            cached = None if kind in self.dirty else self._before(spec)
            if cached and ids:
                vx.add(cached[1], spec.binary, np.array(ids, np.int64), np.stack(vecs))
                self.store._cache[kind] = (gen, cached[1])
            self.touched.add(kind)

    def _before(self, spec: KindSpec) -> tuple[int, faiss.Index] | None:
        """The kind's index as it stood just before this write bumped its generation: the one held, when
        it is of the generation before, else the one the last writer (maybe another process) saved, else
        None. A store held open from before another process's writes must not change and save its older index."""
        before = cat.previous_generation(self.conn, spec.kind)
        cached = self.store._cache.get(spec.kind)
        return cached if cached is not None and cached[0] == before else self._saved(spec, before)

    def _saved(self, spec: KindSpec, gen: int) -> tuple[int, faiss.Index] | None:
        """(gen, the index saved at generation `gen`), cached, when it is built as the kind now calls for;
        else None, and save() builds it from the catalogue: none was saved, it is unreadable, its IVF
        lists no longer fit the kind's size, or it is the exact search a chosen factory fell back to
        while there were too few vectors to train (or a factory `vx.factory_of` cannot name)."""
        try:
            index = vx.read(self.store.index_path(spec.kind, gen), spec.binary)
        except (RuntimeError, OSError):
            return None
        if vx.factory_of(index) != self.store.factory(spec):
            return None
        self.store._cache[spec.kind] = (gen, index)
        return gen, index

    def _delete_owned(self, where: str, args: tuple,
                      delete: Callable[[sqlite3.Connection], object]) -> None:
        """Run `delete` in one transaction and drop the vectors it cascades from the indexes.

        `where` selects the doomed vectors over `vectors v` joined to works `w` and signatures `s`.
        """
        join = ("FROM vectors v LEFT JOIN works w ON w.id=v.work_id"
                " LEFT JOIN signatures s ON s.id=v.signature_id WHERE " + where)
        with self._transaction() as c:
            gone = c.execute(f"SELECT v.kind, v.id {join}", args).fetchall()
            delete(c)
            kinds = sorted({r[0] for r in gone})
            for kind in kinds:
                cat.bump_generation(c, kind)
        specs = self.store.specs()
        for kind in kinds:
            ids = np.array([r[1] for r in gone if r[0] == kind], np.int64)
            gen = cat.generation(self.conn, kind)
            cached = None if kind in self.dirty else self._before(specs[kind])
            self.store._cache.pop(kind, None)  # held again once its ids are removed; else save() rebuilds it
            if cached is not None:
                try:
                    cached[1].remove_ids(ids)
                    self.store._cache[kind] = (gen, cached[1])
                except RuntimeError:  # e.g. HNSW cannot remove in place: rebuilt on save
                    self.dirty.add(kind)
            self.touched.add(kind)

    def remove_artist(self, name: str) -> dict[str, int]:
        """Remove an artist with all its works, signatures and vectors; returns what was removed."""
        row = self.conn.execute("SELECT id FROM artists WHERE name=?", (name,)).fetchone()
        if row is None:
            raise StoreError(f"no artist named {name!r} in {self.store.root}")
        aid = row[0]
        counts = {t: self.conn.execute(f"SELECT COUNT(*) FROM {t} WHERE artist_id=?", (aid,)).fetchone()[0]
                  for t in ("works", "signatures")}
        self._delete_owned("w.artist_id=? OR s.artist_id=?", (aid, aid),
                           lambda c: c.execute("DELETE FROM artists WHERE id=?", (aid,)))
        return counts

    def remove_work(self, name: str, work_id: int) -> None:
        if self.store.works([work_id]).get(work_id, {}).get("artist") != name:
            raise StoreError(f"artist {name!r} has no work {work_id}")
        self._delete_owned("w.id=?", (work_id,), lambda c: c.execute("DELETE FROM works WHERE id=?", (work_id,)))

    def remove_signature(self, name: str, signature_id: int) -> None:
        if self.store.signers([signature_id]).get(signature_id) != name:
            raise StoreError(f"artist {name!r} has no signature sample {signature_id}")
        self._delete_owned("s.id=?", (signature_id,),
                           lambda c: c.execute("DELETE FROM signatures WHERE id=?", (signature_id,)))

    def rebuild(self, factory: str | None = None) -> list[str]:
        """Rebuild every index from the catalogue, optionally with a new FAISS factory.

        "FLOAT" or "FLOAT;BINARY" (e.g. "IVF1024,Flat;BIVF256"). Every index is built before the
        choice is saved, so a factory FAISS refuses leaves the store as it was.
        """
        specs = self.store.specs()
        chosen: dict[str, str] = {}
        if factory:
            float_f, _, binary_f = factory.partition(";")
            chosen = {s.kind: f.strip() for s in specs.values() if (f := binary_f if s.binary else float_f).strip()}
        for kind, name in chosen.items():
            if why := vx.unsafe(name, specs[kind].dim, specs[kind].binary):
                raise StoreError(f"cannot build a {name!r} index for {kind}: {why}")
        built = {}
        for spec in specs.values():
            name = chosen.get(spec.kind) or self.store.factory(spec)
            try:
                index, note = vx.build(spec.dim, spec.binary, name,
                                       cat.iter_vectors(self.conn, spec.kind, spec.dtype))
            except RuntimeError as e:
                raise StoreError(f"cannot build a {name!r} index for {spec.kind}: "
                                 f"{str(e).strip().splitlines()[-1] if str(e).strip() else e}") from None
            if note:
                self.store.notes.append(f"{spec.kind}: {note}")
            built[spec.kind] = index
        with self._transaction() as c:
            for kind, name in chosen.items():
                cat.set_meta(c, f"factory:{kind}", name)
            for kind in built:  # a new generation: a long-lived reader (the HTTP service) drops the index it holds
                cat.bump_generation(c, kind)
        for kind, index in built.items():
            self.store._cache[kind] = (cat.generation(self.conn, kind), index)
            self.touched.add(kind)
        return list(self.store.notes)

    def save(self) -> None:
        """Persist each touched (or missing) index under its current generation; drop older files.

        An index held in memory (by a long-lived process: the HTTP service) that no longer has the
        factory its kind calls for (it outgrew exact search, or its IVF lists outgrew their count)
        is rebuilt first: adding to it would keep it as it was. A new process adding works holds the
        index it read from its file (`_apply_adds`), so the same check applies there."""
        (self.store.root / "indexes").mkdir(exist_ok=True)
        for spec in self.store.specs().values():
            gen = cat.generation(self.conn, spec.kind)
            path = self.store.index_path(spec.kind, gen)
            if spec.kind not in self.touched and path.exists():
                continue
            cached = self.store._cache.get(spec.kind)
            current_factory = vx.factory_of(cached[1]) if cached else None
            if (current_factory is not None and not self.store.chosen_factory(spec.kind)  # rebuilt on request only
                    and current_factory != self.store.factory(spec)):
                self.store._cache[spec.kind] = (gen, self.store._build(spec))
            elif spec.kind in self.dirty:
                self.store._cache.pop(spec.kind, None)
            vx.write_atomic(self.store._index(spec), spec.binary, path)
            for old in path.parent.glob(f"{spec.kind}.*.faiss"):
                if old != path:
                    old.unlink(missing_ok=True)
            for torn in path.parent.glob(f".{spec.kind}.*.faiss.*.tmp"):  # a writer killed mid-write left it
                torn.unlink(missing_ok=True)  # (under the write lock, nobody else is writing one)
