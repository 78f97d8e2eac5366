"""Every 24-bit colour's grey level and colour-hash class, kept on disk for hashing to look up.

Pillow's HSV conversion (a float division per pixel) was the costliest step of hashing an icon,
and each conversion of a small image costs more in per-call overhead than in pixels. With the
grey level and imagehash colour-hash class of every colour in a table, a pixel's are two lookups.

The tables (2 x 16 MiB) take about a second to build from Pillow's own conversions, so each is
what imagehash computes. Paid in every process, that second outweighed what the lookups save
below some ten thousand files a process, so they are built once per machine and Pillow version
and kept in the cache folder (`cache_dir`); each process maps the file read-only, and a scan's
workers share one copy in the page cache. A file that cannot be read or disagrees with Pillow
on a spot check is rebuilt; where the cache cannot be written, each process builds its own.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

COLOURS = 1 << 24  # indexed r + 256 g + 65536 b: an RGBX pixel's bytes read as a little-endian uint32, less X
BLACK = 14  # the class of pixels imagehash counts as black (grey level below 32)


def cache_dir() -> Path:
    """$CHIMERA_CACHE_DIR, else $XDG_CACHE_HOME/chimera-provenance, else ~/.cache/chimera-provenance."""
    given = os.environ.get("CHIMERA_CACHE_DIR", "").strip()
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "chimera-provenance"


def _labels() -> np.ndarray:
    """Class of each (saturation, hue) pair of a non-black pixel in imagehash's colour hash,
    flattened as [saturation * 256 + hue]: 0 grey (low saturation), 1-6 faint colour by hue bin,
    7-12 bright colour by hue bin, 13 neither (saturation exactly 2/3, which imagehash counts as
    colour but bins nowhere). Hue bins are np.histogram's over linspace(0, 255, 7)."""
    hue_bin = np.minimum(np.searchsorted(np.linspace(0, 255, 7), np.arange(256), side="right") - 1, 5)
    sat = np.arange(256)[:, None]
    return np.where(sat < 256 // 3, 0, np.where(sat < 256 * 2 // 3, 1 + hue_bin[None, :],
                                                 np.where(sat > 256 * 2 // 3, 7 + hue_bin[None, :], 13))
                    ).astype(np.uint8).ravel()


_LABEL = _labels()


def convert(colours: np.ndarray) -> np.ndarray:
    """(2, n) uint8: the colour-hash classes and grey levels of `colours` (indices as in COLOURS), by
    Pillow's own HSV and grey conversions of a one-row image of them."""
    n = len(colours)
    # little-endian 32-bit indices read as RGBX bytes are exactly the colours r, g, b they index
    rgb = Image.frombuffer("RGB", (n, 1), np.asarray(colours, "<u4").tobytes(), "raw", "RGBX", 0, 1)
    out = np.empty((2, n), np.uint8)
    out[1] = np.frombuffer(rgb.convert("L").tobytes(), np.uint8)
    # the (hue, saturation) bytes of each 3-byte HSV pixel, read as one little-endian uint16: hue + 256 * saturation
    out[0] = _LABEL[np.ndarray((n,), dtype="<u2", buffer=rgb.convert("HSV").tobytes(), strides=(3,))]
    out[0][out[1] < 256 // 8] = BLACK
    return out


def build() -> np.ndarray:
    """(2, COLOURS) classes and grey levels, in chunks of 2^20 colours so Pillow's buffers stay small."""
    tables = np.empty((2, COLOURS), np.uint8)
    step = 1 << 20
    for start in range(0, COLOURS, step):
        tables[:, start:start + step] = convert(np.arange(start, start + step))
    return tables


def _agrees(tables: np.ndarray) -> bool:
    """Whether a loaded file is these tables: its shape, and 4,096 colours spread over the cube
    (the eight corners among them) as Pillow converts them now."""
    if tables.shape != (2, COLOURS) or tables.dtype != np.uint8:
        return False
    probe = np.concatenate([np.random.default_rng(0).integers(0, COLOURS, 4088),
                            [r + 256 * g + 65536 * b for r in (0, 255) for g in (0, 255) for b in (0, 255)]])
    return np.array_equal(tables[:, probe], convert(probe))


def load_or_build(path: Path) -> np.ndarray:
    """The tables from `path`, mapped read-only, or built (and saved there when it can be written)."""
    try:
        tables = np.load(path, mmap_mode="r", allow_pickle=False)
        if _agrees(tables):
            return tables
    except (OSError, ValueError, EOFError):  # missing, truncated, not an .npy file
        pass
    tables = build()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
            tmp = f.name
            np.save(f, tables)
        os.replace(tmp, path)  # whole or not at all: a process reading meanwhile sees the old file or none
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return tables


@functools.cache
def tables() -> tuple[np.ndarray, np.ndarray]:
    """(classes, greys) for this process: each a COLOURS-long uint8 array indexed by colour (plain
    arrays over the mapped file: a memmap's every lookup would make a memmap, at a few us a call)."""
    classes, greys = np.asarray(load_or_build(cache_dir() / f"colour-tables-v1-pillow-{PIL.__version__}.npy"))
    return classes, greys
