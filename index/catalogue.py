"""SQLite catalogue: artists, works, signatures, generated outputs, embedders, vectors.

WAL mode lets readers keep reading while the single writer commits; every
mutation is one transaction, so a kill leaves either all of a work or none of it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS artists (
  id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS works (
  id INTEGER PRIMARY KEY,
  artist_id INTEGER REFERENCES artists(id) ON DELETE CASCADE,
  kind TEXT NOT NULL CHECK (kind IN ('reference', 'generated')),
  source TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE,
  width INTEGER NOT NULL, height INTEGER NOT NULL, added_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS thumbnails (
  work_id INTEGER PRIMARY KEY REFERENCES works(id) ON DELETE CASCADE, png BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS generated (
  work_id INTEGER PRIMARY KEY REFERENCES works(id) ON DELETE CASCADE,
  run TEXT NOT NULL, checkpoint TEXT, seed INTEGER, sample_index INTEGER);
CREATE TABLE IF NOT EXISTS signatures (
  id INTEGER PRIMARY KEY,
  artist_id INTEGER NOT NULL REFERENCES artists(id) ON DELETE CASCADE,
  source TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE,
  width INTEGER NOT NULL, height INTEGER NOT NULL, added_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS embedders (
  kind TEXT PRIMARY KEY, descriptor TEXT NOT NULL, dim INTEGER NOT NULL,
  binary INTEGER NOT NULL, owner TEXT NOT NULL CHECK (owner IN ('work', 'signature')));
CREATE TABLE IF NOT EXISTS vectors (
  id INTEGER PRIMARY KEY,
  kind TEXT NOT NULL REFERENCES embedders(kind),
  work_id INTEGER REFERENCES works(id) ON DELETE CASCADE,
  signature_id INTEGER REFERENCES signatures(id) ON DELETE CASCADE,
  x0 REAL NOT NULL, y0 REAL NOT NULL, x1 REAL NOT NULL, y1 REAL NOT NULL,
  data BLOB NOT NULL,
  CHECK ((work_id IS NULL) != (signature_id IS NULL)));
CREATE INDEX IF NOT EXISTS vectors_kind ON vectors(kind, id);
CREATE INDEX IF NOT EXISTS vectors_work ON vectors(work_id);
CREATE INDEX IF NOT EXISTS vectors_signature ON vectors(signature_id);
"""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def canonical(descriptor: dict[str, Any]) -> str:
    """One spelling per descriptor, so equality of strings is equality of embedders."""
    return json.dumps(descriptor, sort_keys=True, separators=(",", ":"))


def connect(path: Path, read_only: bool = False, immutable: bool = False) -> sqlite3.Connection:
    """Open the catalogue in WAL mode with foreign keys on; create tables if new.

    `read_only` opens it so that SQLite itself refuses every write: scans and scan
    workers on other machines can never change the store they read. `immutable` (read-only
    too) tells SQLite that nothing can change the file, for a folder nobody here can write.
    """
    target = f"file:{path.resolve()}?mode=ro" + ("&immutable=1" if immutable else "") if read_only else str(path)
    conn = sqlite3.connect(target, timeout=30.0, isolation_level=None, check_same_thread=False, uri=read_only)
    conn.row_factory = sqlite3.Row
    if read_only:
        conn.execute("PRAGMA busy_timeout=30000")
        return conn
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def init_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if version is None:  # (OR IGNORE: another process making the same new store may have written it)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    elif int(version[0]) != SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"store schema version {version[0]} is not supported (this chimera reads {SCHEMA_VERSION})")


def get_meta(conn: sqlite3.Connection, key: str, default: str | None = None) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return row[0] if row else default


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                 (key, value))


def next_id(conn: sqlite3.Connection, table: str) -> int:
    """The id for a new row of `works` or `signatures`: one past every id the table ever gave out.
    SQLite's own rowid gives the largest id again once that row is deleted, and an id a user holds
    (`index remove --work`, a result's `matches[].work`) would then name another work. (Stores made
    before this counter start from their largest id.)"""
    row = conn.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0]
    new = max(int(get_meta(conn, f"last_id:{table}", "0")), row) + 1
    set_meta(conn, f"last_id:{table}", str(new))
    return new


def generation(conn: sqlite3.Connection, kind: str) -> int:
    return int(get_meta(conn, f"gen:{kind}", "0"))


def bump_generation(conn: sqlite3.Connection, kind: str) -> int:
    """A new generation for a kind: a number no catalogue of this store has given before, the
    microseconds since the epoch (or one more than the last, if the clock went back). A counter
    would give a number again after the catalogue is restored from a backup, or made anew beside
    the old indexes, and the index file a later catalogue saved under that number would be trusted
    as current: searched under ids that now name other works."""
    old = generation(conn, kind)
    gen = max(old + 1, time.time_ns() // 1000)
    set_meta(conn, f"gen:{kind}", str(gen))
    set_meta(conn, f"previous_gen:{kind}", str(old))
    return gen


def previous_generation(conn: sqlite3.Connection, kind: str) -> int:
    """The generation a kind had before its last bump (one less, in stores from before that was kept)."""
    return int(get_meta(conn, f"previous_gen:{kind}", str(generation(conn, kind) - 1)))


def iter_vectors(conn: sqlite3.Connection, kind: str, dtype: np.dtype,
                 batch: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (ids, vectors) batches of one kind in id order, for rebuilding an index."""
    last = -1
    while True:
        rows = conn.execute("SELECT id, data FROM vectors WHERE kind=? AND id>? ORDER BY id LIMIT ?",
                            (kind, last, batch)).fetchall()
        if not rows:
            return
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.stack([np.frombuffer(r[1], dtype=dtype) for r in rows])
        yield ids, vecs
        last = int(ids[-1])
