"""The user's cache folder: files a process may read instead of rebuilding (never the store).

Only a regular file of this user's is read (a pipe put there would block the read, and another
user's file is not trusted), and a file is replaced whole or not at all, so a reader sees the
old file or the new one. A cache that cannot be written (a full disk, no home folder) costs
only the rebuild, never an error.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def cache_dir() -> Path:
    """$CHIMERA_CACHE_DIR, else $XDG_CACHE_HOME/chimera-provenance, else ~/.cache/chimera-provenance
    (RuntimeError when none is named and there is no home folder)."""
    given = os.environ.get("CHIMERA_CACHE_DIR", "").strip()
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "chimera-provenance"


def uid() -> int:
    """Who this process writes files as (the effective user)."""
    return os.geteuid() if hasattr(os, "geteuid") else 0


def open_own(path: Path) -> BinaryIO | None:
    """`path` opened for reading when it is a regular file of this user's, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a pipe put there must not block
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_uid == uid():
            return open(os.dup(fd), "rb")
        return None
    except OSError:
        return None
    finally:
        os.close(fd)


def write_whole(path: Path, write: Callable[[BinaryIO], None]) -> bool:
    """Save `path` through `write(file)` whole or not at all; False when the cache cannot be written."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
            tmp = f.name
            write(f)
        os.replace(tmp, path)
        return True
    except BaseException as e:  # a full disk, or Ctrl-C while writing: leave no temporary file behind
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if not isinstance(e, OSError):
            raise
        return False
