"""Every 24-bit colour's grey level and colour-hash class, kept on disk for hashing to look up.

Pillow's HSV conversion (a float division per pixel) was the costliest step of hashing an icon,
and each conversion of a small image costs more in per-call overhead than in pixels. With the
grey level and imagehash colour-hash class of every colour in a table, a pixel's are two lookups.

The tables (2 x 16 MiB) take about a second to build from Pillow's own conversions, so each is
what imagehash computes. Paid in every process, that second outweighed what the lookups save
below some ten thousand files a process, so they are built once per user and Pillow version and
kept in the user's cache folder (`detector.cache`, which reads only this user's regular files),
from which each process reads them (about 0.1 s). The file is a zip holding the array
uncompressed, whose CRC-32 catches a damaged copy, and must agree with Pillow on a spot check.
Anything else is rebuilt; where the cache cannot be written (or there is no home folder), each
process builds its own.
"""

from __future__ import annotations

import functools
import threading
import zipfile
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from detector import cache

COLOURS = 1 << 24  # indexed r + 256 g + 65536 b: an RGBX pixel's bytes read as a little-endian uint32, less X
BLACK = 14  # the class of pixels imagehash counts as black (grey level below 32)


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


def _read(path: Path) -> np.ndarray | None:
    """The tables saved at `path`, or None when it is anything but a regular file of this user's
    holding them whole. Nothing in it may raise: a damaged cache is rebuilt, never an error."""
    f = cache.open_own(path)
    if f is None:
        return None
    try:
        with f, zipfile.ZipFile(f) as z:
            info = z.getinfo("tables.npy")
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > 2 * COLOURS + 4096:
                return None  # np.savez stores the array as it is: anything else is not ours (or a bomb)
            fmt = np.lib.format
            with z.open(info) as member:
                version = fmt.read_magic(member)
                header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, fortran, dtype = header(member)
                if shape != (2, COLOURS) or fortran or dtype != np.uint8:
                    return None
                data = member.read()  # to its end: zipfile then checks the CRC-32, raising on a damaged copy
        tables = np.frombuffer(data, np.uint8).reshape(2, COLOURS)
        return tables if _agrees(tables) else None
    except Exception:  # noqa: BLE001 - truncated, damaged, not a zip of ours: rebuilt, whatever the reason
        return None


def load_or_build(path: Path | None) -> np.ndarray:
    """The tables saved at `path`, or built (and saved there when it can be written)."""
    tables = _read(path) if path is not None else None
    if tables is None:
        tables = build()
        if path is not None:
            cache.write_whole(path, lambda f: np.savez(f, tables=tables))
    return tables


def _cache_file() -> Path | None:
    try:
        folder = cache.cache_dir()
    except RuntimeError:  # no home folder (HOME unset and a user the system does not know) and none named
        return None
    return folder / f"colour-tables-v1-pillow-{PIL.__version__}-uid{cache.uid()}.npz"


# the first hashing threads of a server wait for one build, not build one each; re-entrant, so code
# that hashes from a signal handler during the build cannot deadlock on it
_LOCK = threading.RLock()


@functools.cache
def _tables() -> tuple[np.ndarray, np.ndarray]:
    classes, greys = load_or_build(_cache_file())
    return classes, greys


def tables() -> tuple[np.ndarray, np.ndarray]:
    """(classes, greys) for this process: each a COLOURS-long uint8 array indexed by colour."""
    with _LOCK:
        return _tables()
