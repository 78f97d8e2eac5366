"""The reference store: a SQLite catalogue plus FAISS indexes derived from it.

The catalogue is the source of truth (it keeps every vector), the FAISS files are
caches named by a per-kind generation, so a crash can only ever leave a stale
cache, never a store that disagrees with itself.
"""

from index.store import Store, StoreError, Hit

__all__ = ["Store", "StoreError", "Hit"]
