"""The one place images are read: every path (CLI, scans, the HTTP API) goes through here.

Untrusted files are normal input for a forensics tool, so decoding is defensive:
a pixel budget against decompression bombs, truncated data rejected (never
silently padded), EXIF orientation applied, any mode flattened to RGB on white,
first frame only for animations.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import (BmpImagePlugin, GifImagePlugin, Image, ImageFile, ImageOps, JpegImagePlugin,  # noqa: F401
                 PngImagePlugin, TiffImagePlugin, WebPImagePlugin)  # registers FORMATS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
# Pillow's decoders for those (JPEG's also opens camera MPO files). Only these are tried: some others
# (ICO, ICNS) decode an embedded picture of any size while opening, before any pixel budget is checked.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "DIB", "TIFF")
MAX_PIXELS = 64 * 1024 * 1024  # the default pixel budget; CHIMERA_MAX_PIXELS sets another (`pixel_budget`)

ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(Exception):
    """An input that is not a usable image; `reason` says why, for the user."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image  # RGB, orientation applied
    sha256: str  # of the file's bytes, so duplicates are exact-byte duplicates
    width: int
    height: int
    source: str


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def shown(path: Path | str) -> str:
    """A path as text every record, catalogue and report can hold: bytes of a file name that are not
    UTF-8 (Python keeps them as lone surrogates, which SQLite, CSV and HTML writers refuse) as \\xNN."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def for_terminal(text: object) -> str:
    """Text as a terminal line may show it: control characters (escape sequences in a hostile file name
    could retitle or clear the user's terminal) and other unprintable ones as \\xNN or \\uNNNN."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else
                   f"\\u{ord(c):04x}" if ord(c) < 65536 else f"\\U{ord(c):08x}" for c in str(text))


def unshown(text: str) -> Path:
    """The file a `shown` path names: its \\xNN back to the raw bytes of the name. (A name holding
    the text "\\xNN" itself is ambiguous; whoever opens a shown path tries it as written first.)"""
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m[1], 16)]), text.encode("utf-8"))
    return Path(os.fsdecode(raw))


FOLDER = "a folder, not an image file"


def _not_regular(path: Path) -> str | None:
    """Why `path` (links followed) cannot be read as an image file: a pipe would block a scan for
    ever and a device (/dev/zero) never ends; None for a regular file."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "not a regular file (a pipe, device, socket or broken link)"
    except OSError as e:  # a folder on the way that may be listed but not entered
        return f"cannot read ({e.strerror or e})"
    if stat.S_ISDIR(mode):
        return FOLDER
    return None if stat.S_ISREG(mode) else "not a regular file (a pipe, device, socket or broken link)"


def file_sha256(path: Path | str) -> str | None:
    """The sha256 of a regular file's bytes (what error records carry), None when it cannot be read
    (or holds more than any image may: `read_bytes`)."""
    data, _ = (None, None) if _not_regular(Path(path)) else read_bytes(Path(path))
    return None if data is None else hashlib.sha256(data).hexdigest()


def pixel_budget() -> int:
    """The pixel budget: CHIMERA_MAX_PIXELS, else MAX_PIXELS. Read when used, so that a bad value is
    one clear error (ValueError) where it is checked, not a failed import."""
    given = os.environ.get("CHIMERA_MAX_PIXELS", "").strip()
    if not given:
        return MAX_PIXELS
    try:
        value = int(given)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"CHIMERA_MAX_PIXELS must be a whole number of pixels, 1 or more (got {given!r})")
    return value


def _wide_grey(img: Image.Image) -> tuple[Image.Image, np.ndarray | None]:
    """A 16- or 32-bit grey image as 8-bit L, and where its colour key (a PNG tRNS value) sits, if it
    has one. Pillow's own conversions clip such tones to white; these keep the picture."""
    a = np.asarray(img)  # in the file's byte order (I;16B too: Pillow's convert clips that to 0..255)
    key = img.info.get("transparency")
    keyed = a == key if isinstance(key, int) else None
    if img.mode.startswith("I;16"):  # Pillow's point() takes only the native order
        native = Image.frombytes("I;16", img.size, a.astype("<u2").tobytes())
        return native.point(lambda v: v / 256).convert("L"), keyed
    if img.mode == "F":  # NaN (no data) and infinities would make the range, and so every pixel, NaN
        finite = np.isfinite(a)
        hi = float(a[finite].max()) if finite.any() else 0.0
        if not finite.all():  # NaN as black, infinities as the ends of the range
            img = Image.frombytes("F", img.size, np.nan_to_num(a, nan=0.0, posinf=hi, neginf=0.0).tobytes())
    else:
        hi = img.getextrema()[1]
    # 32-bit integer or float grey: scaled by its range, not clipped to white
    top = 1.0 if img.mode == "F" and hi <= 1.0 else 255 if hi <= 255 else 65535 if hi <= 65535 else hi
    return img.convert("F").point(lambda v: v * 255.0 / top).convert("L"), keyed


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to RGB, compositing transparency over white (how a viewer shows it): alpha channels,
    transparent palette entries and colour keys (a PNG's tRNS on a grey or RGB image)."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        img, keyed = _wide_grey(img)
        if keyed is not None:
            alpha = np.where(keyed, 0, 255).astype(np.uint8)
            img = Image.merge("LA", (img, Image.frombytes("L", img.size, alpha.tobytes())))
    elif img.info.get("transparency") is not None and img.mode in ("P", "1", "L", "RGB"):
        img = img.convert("RGBA")  # Pillow turns the key (a palette index or a colour) into alpha
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METADATA_CHUNKS = (b"tEXt", b"zTXt", b"iTXt", b"iCCP")  # text, and the colour profile (inflated the same way)


def without_metadata(data: bytes) -> bytes:
    """A PNG's bytes without its text and colour-profile chunks (any other file as it is)."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    pieces, start, pos = [], 0, len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,), kind = struct.unpack_from(">I", data, pos), data[pos + 4:pos + 8]
        end = pos + 12 + length
        if kind in METADATA_CHUNKS:
            pieces.append(data[start:pos])
            start = end
        if kind == b"IEND":
            break
        pos = end
    return data if start == 0 else b"".join(pieces) + data[start:]


def _open(data: bytes, source: str, limit: int) -> Image.Image:
    """The first frame, loaded and turned upright, once the pixel budget admits its size."""
    img = Image.open(io.BytesIO(data), formats=FORMATS)
    depth = {"L;1": 1, "L;2": 2, "L;4": 4}.get(getattr(getattr(img, "png", None), "im_rawmode", ""))
    if depth and img.mode == "L" and isinstance(img.info.get("transparency"), int):
        # Pillow scales 1-, 2- and 4-bit grey to 8 bits but leaves the colour key as the file gives it
        img.info["transparency"] *= 255 // (2 ** depth - 1)
    w, h = img.size
    if w * h > limit:
        raise ImageError(source, f"{w}x{h} is {w * h} pixels, over the limit of {limit} (possible decompression bomb)")
    img.seek(0)  # first frame of an animation
    img.load()
    ImageOps.exif_transpose(img, in_place=True)  # (in place: no copy when there is nothing to turn)
    return img


def decode(data: bytes, source: str, max_pixels: int | None = None) -> LoadedImage:
    """Decode bytes into a LoadedImage or raise ImageError with a clear reason.

    Any failure inside the decoders is the file's fault, whatever Pillow raises (a hostile TIFF tag
    of the wrong type raises TypeError): it becomes an ImageError, so a scan or request goes on.
    Pillow refuses a whole PNG over a compressed text or colour-profile chunk that inflates past 1 MB
    (its guard against bombs): an editor's long XMP history, or padding added to dodge a scan, made a
    copy an error record. Such a file is read again without them, which the pixels never need (what
    is lost is an orientation written only in that text; scores never use colour profiles)."""
    limit = pixel_budget() if max_pixels is None else max_pixels
    if not data:
        raise ImageError(source, "empty file")
    try:
        with warnings.catch_warnings():
            # our budget, not Pillow's, decides (checked in `_open` before any pixel is decoded); Pillow
            # still refuses outright past twice its own, whatever CHIMERA_MAX_PIXELS says. Its other
            # warnings (a damaged EXIF block) concern the file, not the user's terminal.
            warnings.simplefilter("ignore")
            try:
                img = _open(data, source, limit)
            except ValueError as e:
                if "MAX_TEXT" not in str(e):
                    raise
                img = _open(without_metadata(data), source, limit)
            rgb = to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(source, f"too many pixels (possible decompression bomb; Pillow refuses over "
                                 f"{2 * (Image.MAX_IMAGE_PIXELS or 0)})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(source, "not an image (unrecognised format; PNG, JPEG, WebP, GIF, BMP and TIFF are read)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(source, f"corrupt or truncated image ({e})") from None
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise ImageError(source, f"corrupt image: the decoder failed ({type(e).__name__}: {e})") from None
    if rgb.width < 8 or rgb.height < 8:
        raise ImageError(source, f"{rgb.width}x{rgb.height} is too small to analyse (min 8x8)")
    return LoadedImage(rgb, hashlib.sha256(data).hexdigest(), rgb.width, rgb.height, source)


def byte_budget() -> int:
    """The most bytes an image file may hold: 8 a pixel of the pixel budget (16-bit RGBA, stored
    uncompressed) and 16 MiB of metadata. A larger file is no image the budget admits, and reading
    it whole (a sparse file of a terabyte) would only exhaust memory."""
    return 8 * pixel_budget() + (16 << 20)


def read_bytes(path: Path) -> tuple[bytes | None, str | None]:
    """A file's bytes, or None and why they cannot be read: the reason every error record gives,
    whichever command or scan engine read the file."""
    limit = byte_budget()
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > limit:
                data = None
            else:
                data = f.read(limit + 1)  # at most: a file may grow while it is read
    except OSError as e:
        return None, f"cannot read ({e.strerror or e})"
    except MemoryError:
        data = None
    if data is None or len(data) > limit:
        return None, (f"too large: over {limit} bytes, more than an image of CHIMERA_MAX_PIXELS "
                      f"({pixel_budget()}) pixels holds")
    return data, None


def load(path: Path | str, max_pixels: int | None = None) -> LoadedImage:
    path = Path(path)
    if (problem := _not_regular(path)) and os.path.exists(path):
        raise ImageError(shown(path), problem)
    data, problem = read_bytes(path)
    if data is None:
        raise ImageError(shown(path), problem or "cannot read")
    return decode(data, shown(path), max_pixels)


def iter_image_paths(paths: list[Path]):
    """Files to process, in a stable order: folders recursively, by image suffix (any case).

    Yields (path, None) for images and (path, reason) for named paths that are unusable, for folders
    that cannot be listed and for links to folders (never followed: a link may lead out of the tree,
    or back into it for ever), streaming folders so a huge tree is never listed in memory at once.
    """
    for p in paths:
        problem = _not_regular(p)
        if problem == FOLDER:
            unlisted: list[OSError] = []  # folders os.walk cannot list (no permission): each gets a record
            for root, dirs, files in os.walk(p, onerror=unlisted.append):
                yield from _unlisted(unlisted)
                dirs.sort()
                for name in [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                    dirs.remove(name)  # os.walk would not enter it either: said, not silently passed over
                    link = Path(root) / name
                    try:
                        target = f" ({os.readlink(link)})"
                    except OSError:  # gone meanwhile
                        target = ""
                    yield link, (f"a link to a folder{target}, not followed: its files were not scanned (scan the "
                                 "folder it names to include them)")
                for name in sorted(files):
                    f = Path(root) / name
                    if is_image_path(f):
                        yield f, _not_regular(f)
            yield from _unlisted(unlisted)
        elif problem is None:
            yield (p, None) if is_image_path(p) else (p, f"not an image file suffix ({p.suffix or 'none'})")
        else:
            yield p, problem if problem.startswith("cannot") or os.path.exists(p) else "no such file or directory"


def _unlisted(errors: list[OSError]) -> Iterator[tuple[Path, str]]:
    while errors:
        e = errors.pop(0)
        yield Path(e.filename), f"cannot list this folder ({e.strerror or e}): the files in it were not scanned"
