"""Perceptual hashes: imagehash's own bits, for all 8 turns, at bulk-scan speed.

The fast paths (our Pillow-exact resampler, batched reductions, table-driven colour
hash) are only worth having if they change no bit, so these tests hold them to the
reference implementations: Pillow's Image.resize and imagehash's functions.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import imagehash
import numpy as np
import pytest
from conftest import draw_icon
from PIL import Image, ImageDraw

from detector import colour_tables, hashes, resample


def _greys(rng: np.random.Generator, n: int, lo: int = 8, hi: int = 160) -> list[np.ndarray]:
    """Noise, hard black-and-white edges (Lanczos rings past 0..255) and smooth ramps, odd sizes."""
    out = []
    for k in range(n):
        h, w = (int(v) for v in rng.integers(lo, hi, 2))
        if k % 3 == 0:
            out.append(rng.integers(0, 256, (h, w), dtype=np.uint8))
        elif k % 3 == 1:
            out.append(((rng.random((h, w)) > 0.5) * 255).astype(np.uint8))
        else:
            out.append(np.clip(np.cumsum(rng.integers(-3, 4, (h, w)), axis=1) + 128, 0, 255).astype(np.uint8))
    return out


def _pillow(grey: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.LANCZOS))


def test_resampler_gives_pillows_pixels_in_batches_and_alone():
    rng = np.random.default_rng(0)
    sizes = [(32, 32), (9, 8), (8, 9), (64, 64)]
    greys = _greys(rng, 48) + [np.full((100, 12), 7, np.uint8), rng.integers(0, 256, (150, 40), dtype=np.uint8)]
    # tall images make Pillow run the vertical pass first for some sizes; 150 px is past BATCH_MAX
    assert any(resample.down_first(*g.shape, s) for g in greys for s in sizes)
    for start in range(0, len(greys), 8):
        batch = greys[start:start + 8]
        for grey, resized in zip(batch, resample.resize_batch(batch, sizes)):
            for size, pixels in zip(sizes, resized):
                assert np.array_equal(pixels, _pillow(grey, size)), (grey.shape, size)
    for grey in greys[:6]:
        h, w = grey.shape
        for size in [(w, 9), (17, h), (w, h), (w + 3, max(1, h - 5))]:  # one pass only, none, upscaling
            assert np.array_equal(resample.resize(grey, size), _pillow(grey, size)), (grey.shape, size)



def test_window_descriptors_are_pillows_box_thumbnails():
    """Window descriptors (detector/regions.py) are 12x12 thumbnails of each window that is not flat, by
    Pillow's BOX filter, made a column strip at a time: they must be Pillow's pixels, so stored and new
    descriptors agree. Windows overlap and sit anywhere; tall ones take Pillow's vertical pass first."""
    from detector import regions
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (140, 150, 3), dtype=np.uint8)
    pixels[70:] = pixels[70:] // 64 * 64  # flat stretches: exact ties in the rounding
    pixels[100:, :40] = 90  # a flat corner: its windows are left out
    img = Image.fromarray(pixels)
    shapes = [(h, w) for h in (2, 5, 12, 21, 22, 33, 64, 90) for w in (3, 12, 13, 21, 43, 64)]
    assert any(resample.down_first(h, w, (12, 12)) for h, w in shapes)
    boxes = [(x / 150, y / 140, (x + w) / 150, (y + h) / 140) for h, w in shapes
             for x, y in zip(rng.integers(0, 150 - w, 4), rng.integers(0, 140 - h, 4))]
    boxes += [(0.0, 0.75, 0.25, 1.0), (0.05, 0.8, 0.2, 0.95)]  # inside the flat corner
    expected = []
    for box in boxes:
        x0, y0 = int(box[0] * 150), int(box[1] * 140)
        crop = pixels[y0:max(int(box[3] * 140), y0 + 1), x0:max(int(box[2] * 150), x0 + 1)]
        if crop.mean(axis=2).std() >= regions.MIN_CONTENT:
            thumb = np.asarray(Image.fromarray(crop).resize((12, 12), Image.Resampling.BOX), np.float32)
            vec = (thumb - thumb.mean()).ravel()
            expected.append((box, vec / np.linalg.norm(vec)))
    got = regions.describe(img, boxes)
    assert 0 < len(got) == len(expected) < len(boxes)
    for (box, vec), (ref_box, ref) in zip(got, expected):
        assert box == ref_box and np.array_equal(vec, ref), box


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    icons = [draw_icon(k, (200 - 20 * k, 90, 40 + 25 * k), size=64 + 16 * k) for k in range(6)]
    crops = [icon.crop((3, 0, icon.width - 5, icon.height - 9)) for icon in icons]
    noise = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 50), (70, 33), (9, 120)]]
    flat = [Image.new("RGB", (30, 30), (5, 5, 5)), Image.new("RGB", (24, 40), (255, 0, 0))]
    return icons + crops + noise + flat


def test_hash_bits_are_imagehashs_phash_dhash_and_colour_hash():
    for img in _images():
        bits = np.unpackbits(hashes.hash_bits(img))
        assert np.array_equal(bits[:64], imagehash.phash(img).hash.ravel())
        assert np.array_equal(bits[64:128], imagehash.dhash(img).hash.ravel())
        assert np.array_equal(bits[192:234], imagehash.colorhash(img, binbits=3).hash.ravel())
        assert not bits[234:].any()  # padding
        # wHash: imagehash's Haar LL at the median, computed as 8x8 block means; imagehash rounds the
        # Haar coefficients through float32, we compare exact means, so only ties may differ
        assert (bits[128:192] != imagehash.whash(img).hash.ravel()).sum() <= 4


def test_colour_classes_and_grey_levels_of_every_colour_are_imagehashs():
    """Hashing looks up each pixel's grey level and colour-hash class by its 24-bit colour: for every
    colour, they must be Pillow's grey level, which imagehash's hashes reduce, and the class that
    imagehash.colorhash's masks put a pixel of that colour in."""
    idx = np.arange(1 << 24, dtype=np.uint32)
    img = Image.fromarray(np.stack([idx & 255, idx >> 8 & 255, idx >> 16], axis=1).astype(np.uint8).reshape(4096, 4096, 3))
    intensity = np.asarray(img.convert("L")).ravel()
    black = intensity < 256 // 8
    h, s, _ = (np.asarray(band).ravel() for band in img.convert("HSV").split())
    grey = ~black & (s < 256 // 3)
    faint = ~black & ~grey & (s < 256 * 2 // 3)
    bright = ~black & ~grey & (s > 256 * 2 // 3)
    hue = np.digitize(h, np.linspace(0, 255, 7)[1:-1])  # np.histogram's six bins, the last closed
    expected = np.where(black, 14, np.where(grey, 0, np.where(faint, 1 + hue, np.where(bright, 7 + hue, 13))))
    classes, greys = colour_tables.tables()
    assert np.array_equal(classes, expected) and np.array_equal(greys, intensity)


def test_colour_tables_are_kept_on_disk_and_rebuilt_when_wrong(tmp_path):
    """Built once (about a second) and read by every process after. A file that is truncated,
    damaged, not the tables, another user's or not a file at all (a pipe must not block the read)
    is rebuilt and mended; an unwritable cache, or none, costs only the build."""
    path = tmp_path / "tables.npz"
    built = colour_tables.load_or_build(path)
    inode = path.stat().st_ino

    def kept() -> bool:  # read from the file, not rebuilt (a rebuilt file replaces it, with a new inode)
        before = path.stat().st_ino
        return np.array_equal(colour_tables.load_or_build(path), built) and path.stat().st_ino == before

    assert kept() and path.stat().st_ino == inode
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 1  # one bit of the classes: only the zip's CRC-32 sees it
    wrong = built.copy()
    wrong[0, np.random.default_rng(1).integers(0, colour_tables.COLOURS, 1 << 18)] ^= 1  # 1.6% of colours
    for bad in (good[:len(good) // 2], b"not an array", bytes(damaged), wrong, "pipe", "another user",
                "a folder", "a plain .npy", "compressed"):
        path.unlink()
        if isinstance(bad, bytes):
            path.write_bytes(bad)
        elif isinstance(bad, np.ndarray):
            np.savez(path, tables=bad)
        elif bad == "pipe":
            os.mkfifo(path)
        elif bad == "a folder":
            path.mkdir()
        elif bad == "a plain .npy":
            with path.open("wb") as f:
                np.save(f, built)
        elif bad == "compressed":  # not how np.savez writes it: a bomb's way in
            np.savez_compressed(path, tables=built)
        elif os.getuid() == 0:
            path.write_bytes(good)
            os.chown(path, 65534, 65534)
        else:
            continue
        done = []
        reader = threading.Thread(target=lambda: done.append(colour_tables.load_or_build(path)), daemon=True)
        reader.start()
        reader.join(60)
        assert done and np.array_equal(done[0], built), bad if isinstance(bad, str) else len(bad)
        if isinstance(bad, str) and bad == "a folder":  # left as it is: no cache, no error
            path.rmdir()
            colour_tables.load_or_build(path)
        assert path.is_file() and path.stat().st_uid == os.getuid() and kept()  # mended for the next process
    blocked = tmp_path / "a file" / "tables.npz"
    blocked.parent.write_text("in the way")
    assert np.array_equal(colour_tables.load_or_build(blocked), built) and not list(tmp_path.glob("*.tmp"))
    assert np.array_equal(colour_tables.load_or_build(None), built)


def test_colour_tables_are_built_once_however_many_threads_ask(tmp_path, monkeypatch):
    """A server's first requests hash at once: one build for all of them, and a Ctrl-C during
    the write leaves no temporary file in the cache."""
    monkeypatch.setenv("CHIMERA_CACHE_DIR", str(tmp_path))
    builds = []
    real_build = colour_tables.build
    monkeypatch.setattr(colour_tables, "build", lambda: builds.append(1) or real_build())
    colour_tables._tables.cache_clear()
    try:
        threads = [threading.Thread(target=colour_tables.tables) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(builds) == 1
    finally:
        colour_tables._tables.cache_clear()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        colour_tables.load_or_build(tmp_path / "again.npz")
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "again.npz").exists()


def test_no_home_folder_means_no_cache_not_an_error(monkeypatch):
    """A service under a user the system does not know, with HOME unset, still hashes."""
    def no_home(cls):  # what Path.home raises then
        raise RuntimeError("Could not determine home directory.")

    for name in ("CHIMERA_CACHE_DIR", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(Path, "home", classmethod(no_home))
    assert colour_tables._cache_file() is None
    monkeypatch.setenv("CHIMERA_CACHE_DIR", "/somewhere")
    assert colour_tables._cache_file().parent == Path("/somewhere")


def test_batched_hashes_equal_one_image_at_a_time():
    images = _images()
    batched = hashes.dihedral_bits_many(images)
    for img, turns in zip(images, batched):
        assert len(turns) == 8
        assert all(np.array_equal(a, b) for a, b in zip(turns, hashes.dihedral_bits(img)))
    assert hashes.dihedral_bits_many([]) == []


def test_hashes_of_all_turns_agree_with_hashing_each_turned_image():
    img = draw_icon(4, (200, 90, 40), size=96).crop((3, 0, 90, 80))  # not square: turns change the shape
    fast = hashes.dihedral_bits(img)
    for k, turned in enumerate(hashes.dihedral(img)):
        bits = np.unpackbits(hashes.hash_bits(turned)) != np.unpackbits(fast[k])
        # flips commute exactly with the reductions; quarter turns up to Pillow's rounding between passes
        assert bits.sum() == 0 if k % 2 == 0 else bits.sum() <= 6
    other = hashes.hash_bits(draw_icon(5, (40, 90, 200), size=96).crop((3, 0, 90, 80)))
    assert (np.unpackbits(other) != np.unpackbits(fast[0])).sum() > 20  # and they still tell icons apart


@pytest.mark.parametrize("pad", [0, 7])
def test_content_box_trims_uniform_borders_only(pad):
    icon = draw_icon(2, (30, 120, 200), size=48)
    canvas = Image.new("RGB", (48 + 2 * pad, 48 + 3 * pad), (255, 255, 255))
    canvas.paste(icon, (pad, 2 * pad))
    x0, y0, x1, y1 = hashes.content_box(canvas)
    inner = hashes.content_box(icon)
    assert (x0 - pad, y0 - 2 * pad, x1 - pad, y1 - 2 * pad) == inner
    # trimmed, a padded copy hashes as its source does, in every turn
    assert all(np.array_equal(a, b) for a, b in zip(hashes.dihedral_bits(canvas, trim=True),
                                                    hashes.dihedral_bits(icon.crop(inner))))
    assert hashes.content_box(Image.new("RGB", (20, 20), (9, 9, 9))) == (0, 0, 20, 20)
    # Pillow's hidden fourth byte of an RGB pixel is 0 in a bare Image.new and 255 where a colour was
    # given (a TIFF's extra samples set it too): the border is what the colours say, not that byte
    drawing = Image.new("RGB", (48, 48), "black")
    ImageDraw.Draw(drawing).ellipse([10, 12, 36, 40], fill=(200, 90, 40))
    black = Image.new("RGB", (60, 56))
    black.paste(drawing, (6, 4))
    assert set(np.frombuffer(black.tobytes("raw", "RGBX"), np.uint8)[3::4].tolist()) == {0, 255}
    x0, y0, x1, y1 = hashes.content_box(drawing)
    assert hashes.content_box(black) == (x0 + 6, y0 + 4, x1 + 6, y1 + 4)
    trimmed = hashes.dihedral_bits(drawing.crop(hashes.content_box(drawing)))
    assert all(np.array_equal(a, b) for a, b in zip(hashes.dihedral_bits(black, trim=True), trimmed))


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_content_is_any_pixel_with_one_channel_past_the_tolerance(mode):
    """A faint mark on a padded canvas is content once one channel differs from the border by more
    than 12 levels, wherever it sits, in colour and grey images alike."""
    base = (200, 100, 50) if mode == "RGB" else 200
    for x, y, w, h in [(3, 5, 30, 20), (7, 0, 26, 40), (15, 3, 25, 37), (0, 20, 40, 20)]:  # edges touched too
        for step, expected in [(12, (0, 0, 40, 40)), (13, (x, y, x + w, y + h))]:
            canvas = np.zeros((40, 40, 3) if mode == "RGB" else (40, 40), np.uint8)
            canvas[:] = base
            mark = np.array(base) + (np.array([0, 0, -step]) if mode == "RGB" else step)
            canvas[y:y + h, x:x + w] = mark  # over 20% of the area: a smaller box counts as all border
            assert hashes.content_box(Image.fromarray(canvas, mode)) == expected, (x, y, w, h, step)
    column = Image.new(mode, (1, 4), base)  # OpenCV reads a 4x1 image beside a number as two scalars
    column.putpixel((0, 2), (0, 0, 0) if mode == "RGB" else 0)
    assert hashes.content_box(column) == (0, 2, 1, 3)


@pytest.mark.parametrize("mode", ["1", "L", "P", "I", "F", "LA", "RGBA", "CMYK", "I;16"])
def test_content_box_of_any_mode_is_that_of_its_colours(mode):
    """The scoring code measures decoded (RGB) images, but the box is a public helper: every mode
    Pillow holds gets the box of its RGB conversion, never an OpenCV error."""
    canvas = Image.new("RGB", (40, 36), (255, 255, 255))
    canvas.paste(Image.new("RGB", (22, 18), (0, 0, 0)), (7, 9))
    img = canvas.convert("L").convert(mode) if mode in ("I;16", "1") else canvas.convert(mode)
    assert hashes.content_box(img) == hashes.content_box(img.convert("RGB")) == (7, 9, 29, 27)


def test_a_page_is_found_past_a_changed_corner_and_specks_but_not_past_a_second_picture():
    """The picture on a page (`hashes.picture`) is boxed by what is off the page's colour. That colour
    is what at least half the image's outermost ring shares (one changed corner pixel had hidden the
    page, and then two), and a speck of a few pixels far from the picture, JPEG-smeared too, is not
    part of it; a second picture, or a mark of any size beside the picture, is."""
    icon = draw_icon(4, (200, 60, 30), size=40)
    page = Image.new("RGB", (300, 200), (20, 20, 20))
    page.paste(icon, (150, 50))
    assert hashes.picture(page).frame == (150, 50, 190, 90)
    touched = page.copy()
    for xy in ((0, 0), (10, 120), (11, 120), (11, 121)):  # the top-left pixel, and a speck of 3
        touched.putpixel(xy, (200, 200, 200))
    assert hashes.picture(touched).frame == (150, 50, 190, 90)
    for corner in ((299, 0), (0, 199), (299, 199)):  # a second corner changed alike: outvoted by the ring
        twice = touched.copy()
        twice.putpixel(corner, (200, 200, 200))
        assert hashes.picture(twice).frame == (150, 50, 190, 90), corner
    every = touched.copy()  # and all four: the ring votes for its own colour, not only the corners'
    for corner in ((299, 0), (0, 199), (299, 199)):
        every.putpixel(corner, (255, 0, 0))
    assert hashes.picture(every).frame == (150, 50, 190, 90)
    near = Image.new("RGB", (300, 200), (20, 20, 20))  # a picture a few pixels from the changed corner
    near.paste(icon, (3, 3))
    near.putpixel((0, 0), (200, 200, 200))
    assert hashes.picture(near).frame == (3, 3, 43, 43)
    shaded = np.full((200, 300, 3), 100, np.uint8)  # a page shaded two ways: the top-left pixel loses the
    shaded[..., 0] += np.linspace(0, 24, 200).round().astype(np.uint8)[:, None]  # ring's vote...
    shaded[..., 1] += np.linspace(0, 24, 300).round().astype(np.uint8)[None, :]
    shaded[100:140, 150:190] = np.asarray(icon)
    assert hashes.picture(Image.fromarray(shaded)).frame == (150, 100, 190, 140)  # ...but lies on the page
    dots = np.zeros((400, 400, 3), np.uint8)  # a dotted drawing reaching the sheet's corner: its own first
    for y in range(0, 120, 6):  # dot is no speck on the sheet, which stays whole (as registered)
        for x in range(0, 150, 6):
            dots[y:y + 3, x:x + 3] = (x % 256, 2 * y % 256, 200)
    assert hashes.picture(Image.fromarray(dots)).frame == (0, 0, 400, 400)
    red = page.copy()
    red.putpixel((0, 0), (255, 0, 0))
    frames = []
    for img in (page, red):  # JPEG smears the pixel into a dozen or more (and the picture's edges too)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=60)
        frames.append(hashes.picture(Image.open(buf).convert("RGB")).frame)
    assert frames[1] == frames[0] != (0, 0, 300, 200), frames
    beside = page.copy()
    beside.putpixel((192, 70), (200, 200, 200))  # a pixel two columns from the picture: beside it
    assert hashes.picture(beside).frame == (150, 50, 193, 90)
    second = page.copy()
    second.paste(icon.resize((20, 20)), (100, 150))  # a second picture, small: both are the picture
    assert hashes.picture(second).frame == (100, 50, 190, 170)
    dot = page.copy()
    dot.paste((200, 200, 200), (120, 150, 126, 156))  # 36 pixels: more than a speck
    assert hashes.picture(dot).frame == (120, 50, 190, 156)
    corners = page.copy()  # three corners changed: the ring still says where the page is
    for xy, c in (((0, 0), (200, 0, 0)), ((299, 0), (0, 200, 0)), ((0, 199), (0, 0, 200))):
        corners.putpixel(xy, c)
    assert hashes.picture(corners).frame == (150, 50, 190, 90)
    ramp = Image.fromarray(np.repeat(np.linspace(0, 255, 300).astype(np.uint8)[None, :, None], 200, 0).repeat(3, 2))
    ramp.paste(icon, (150, 50))  # no colour along half the edge: no uniform page
    assert hashes.picture(ramp).frame == (0, 0, 300, 200)
