"""Shared fixtures: small procedural images made by the tests themselves (offline, fast)."""

from __future__ import annotations

import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from service.cli import main


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Tests keep what chimera caches (the hashing colour tables) in a folder of their own, not the
    user's ~/.cache; subprocesses the tests start inherit it."""
    os.environ["CHIMERA_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    del os.environ["CHIMERA_CACHE_DIR"]


def draw_icon(seed: int, hue: tuple[int, int, int], size: int = 64) -> Image.Image:
    """A face-like icon whose features depend on `seed`; `hue` plays the artist's palette."""
    r = random.Random(seed)
    s = size / 64
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    d.ellipse([8 * s, 8 * s, 56 * s, 56 * s], fill=hue, outline=(20, 20, 20), width=max(1, int(2 * s)))
    for cx in (22 + r.randint(-3, 3), 42 + r.randint(-3, 3)):
        cy = 26 + r.randint(-3, 3)
        rad = r.randint(3, 6)
        d.ellipse([(cx - rad) * s, (cy - rad) * s, (cx + rad) * s, (cy + rad) * s], fill="white", outline="black")
        d.ellipse([(cx - 1.5) * s, (cy - 1.5) * s, (cx + 1.5) * s, (cy + 1.5) * s], fill="black")
    top = 36 + r.randint(-2, 6)
    d.arc([20 * s, top * s, 44 * s, (top + 12) * s], r.choice([0, 180]), r.choice([180, 360]),
          fill=(90, 20, 20), width=max(1, int(2 * s)))
    d.rectangle([r.randint(10, 40) * s, 6 * s, r.randint(44, 56) * s, 12 * s], fill=tuple(255 - c for c in hue))
    return im


def hostile_tiff() -> bytes:
    """An 8x8 grey TIFF whose StripOffsets tag is stored as a FLOAT: Pillow raises TypeError on it,
    an exception no decoder of sound files raises."""
    at = 8 + 2 + 12 * 9 + 4  # the pixels follow the one directory
    tags = [(256, 3, 8), (257, 3, 8), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 11, at), (277, 3, 1),
            (278, 3, 8), (279, 4, 64)]
    ifd = b"".join(struct.pack("<HHI", tag, kind, 1) + (struct.pack("<f", value) if kind == 11 else
                   struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0))
                   for tag, kind, value in tags)
    return b"II*\x00" + struct.pack("<IH", 8, len(tags)) + ifd + struct.pack("<I", 0) + bytes(range(0, 256, 4))


@pytest.fixture
def icons(tmp_path: Path):
    """icons(artist, n, hue) -> folder of n distinct PNG icons for one artist."""
    def make(artist: str, n: int, hue: tuple[int, int, int], start: int = 0) -> Path:
        folder = tmp_path / "art" / artist
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            draw_icon(zlib.crc32(f"{artist}/{i}".encode()), hue).save(folder / f"{artist}_{i:03d}.png")
        return folder
    return make


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def chimera(store_dir: Path, capsys):
    """Run the real CLI in-process: chimera(*args) -> (exit code, stdout, stderr)."""
    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--store", str(store_dir), "--no-clip", *args])
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def rgb_array(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture
def refused(capsys):
    """refused(*args, says=TEXT): the CLI answers `chimera ARGS` with one line on stderr holding TEXT, exit 2,
    no traceback (the README's contract for user errors)."""
    def check(*args: str, says: str) -> None:
        capsys.readouterr()
        assert main(list(args)) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return check

