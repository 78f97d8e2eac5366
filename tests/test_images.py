"""Image loading: every mode becomes RGB on white, orientation applied, bad files refused clearly."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import hostile_tiff
from detector.images import ImageError, decode, load


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_transparent_modes_composite_on_white():
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = decode(encode(rgba, "PNG"), "x.png").image
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (255, 0, 0)
    la = Image.new("LA", (16, 16), (0, 0))
    assert decode(encode(la, "PNG"), "la.png").image.getpixel((3, 3)) == (255, 255, 255)
    p = Image.new("P", (16, 16), 1)
    p.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    p.info["transparency"] = 0
    assert decode(encode(p, "PNG", transparency=0), "p.png").image.getpixel((3, 3)) == (0, 255, 0)


def test_cmyk_and_16_bit_become_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    r, g, b = decode(encode(cmyk, "TIFF"), "c.tif").image.getpixel((1, 1))
    assert r > 200 and g < 50 and b < 50
    deep = Image.new("I;16", (16, 16), 65535)
    assert decode(encode(deep, "PNG"), "d.png").image.getpixel((1, 1)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (20, 10), "white")
    img.paste((255, 0, 0), (0, 0, 10, 10))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when shown
    out = decode(encode(img, "JPEG", exif=exif.tobytes(), quality=95), "e.jpg").image
    assert out.size == (10, 20)
    top = np.asarray(out)[:5].mean(axis=(0, 1))
    assert top[0] > 200 and top[1] < 80  # the red half is now on top


def test_animation_uses_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    r, g, b = decode(data, "a.gif").image.getpixel((2, 2))
    assert r > 200 and b < 50


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def _ico_holding(png: bytes) -> bytes:
    """An ICO whose directory says 16x16 and whose one entry is `png`, of any size."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22) + png


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    # Pillow decodes an ICO's embedded picture while opening it, before the pixel budget is seen: not read
    (_ico_holding(encode(Image.new("RGBA", (3000, 3000)), "PNG")), "not an image"),
    (b"this is not an image at all", "not an image"),
    (encode(Image.new("RGB", (64, 64), "red"), "PNG")[:80], "corrupt or truncated"),
    (_png_header_only(100_000, 100_000), "decompression bomb"),
    (encode(Image.new("RGB", (4, 4)), "PNG"), "too small"),
])
def test_bad_inputs_raise_clear_errors(data: bytes, reason: str):
    with pytest.raises(ImageError) as e:
        decode(data, "bad.png")
    assert reason in str(e.value) and e.value.source == "bad.png"


def test_missing_file(tmp_path: Path):
    with pytest.raises(ImageError, match="cannot read"):
        load(tmp_path / "nope.png")


def test_32_bit_and_float_grey_keep_their_tones_instead_of_clipping_to_white():
    """A 32-bit integer TIFF holding 0..255000 and a float one holding 0..1 show a dark-to-light ramp,
    not a flat white or black picture (Pillow's own conversion clips them)."""
    ramp = np.tile(np.linspace(0, 1, 32), (16, 1))
    for img in (Image.fromarray((ramp * 255000).astype(np.int32), "I"), Image.fromarray(ramp.astype(np.float32), "F")):
        grey = np.asarray(decode(encode(img, "TIFF"), "deep.tif").image)[..., 0]
        assert grey[:, 0].max() < 20 and grey[:, -1].min() > 235 and (np.diff(grey[0].astype(int)) >= 0).all()


def test_pipes_and_devices_are_refused_instead_of_read(tmp_path: Path):
    """A FIFO named like an image would block a scan for ever, a link to /dev/zero never ends: both are
    named as what they are, by the loader and by the folder walk, and a good file beside them still loads."""
    import os

    from detector.images import iter_image_paths
    Image.new("RGB", (16, 16), "red").save(tmp_path / "good.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    for name in ("pipe.png", "zero.png"):
        with pytest.raises(ImageError, match="not a regular file"):
            load(tmp_path / name)
    found = {p.name: problem for p, problem in iter_image_paths([tmp_path])}
    assert found["good.png"] is None and "not a regular file" in found["pipe.png"] and "not a regular file" in found["zero.png"]


def test_file_names_that_are_not_utf8_are_shown_escaped():
    from detector.images import shown
    name = os.fsdecode(b"caf\xe9.png")
    assert shown(name) == "caf\\xe9.png" and shown("ünïcødé ✓.png") == "ünïcødé ✓.png"


def test_a_decoder_failing_in_any_way_is_a_clear_image_error():
    with pytest.raises(ImageError, match="corrupt image: the decoder failed"):
        decode(hostile_tiff(), "hostile.tif")


def _ramp_ok(img: Image.Image) -> bool:
    grey = np.asarray(img)[..., 0].astype(int)
    return grey[:, 0].max() < 20 and grey[:, -1].min() > 235 and (np.diff(grey[1]) >= 0).all()


def test_big_endian_16_bit_and_float_grey_with_missing_values_keep_their_tones():
    """A big-endian 16-bit TIFF (scanners and Macs write them) decoded black, and one NaN or infinite
    pixel of a float TIFF made the whole picture black: a copy saved so went unseen."""
    ramp = np.tile(np.linspace(0, 1, 32), (16, 1))
    big = Image.frombytes("I;16B", (32, 16), (ramp * 65535).astype(">u2").tobytes())
    assert _ramp_ok(decode(encode(big, "TIFF"), "be.tif").image)
    for bad in (np.nan, np.inf, -np.inf):
        floats = ramp.astype(np.float32)
        floats[0, 5] = bad  # in a row the check leaves alone: the rest of the picture must not change
        assert _ramp_ok(decode(encode(Image.fromarray(floats, "F"), "TIFF"), "f.tif").image), bad


def test_colour_key_transparency_composites_on_white():
    """A PNG's tRNS colour key on an RGB or grey image is transparency, as on a palette image."""
    rgb = Image.new("RGB", (16, 16), (1, 2, 3))
    rgb.putpixel((0, 0), (200, 0, 0))
    out = decode(encode(rgb, "PNG", transparency=(1, 2, 3)), "k.png").image
    assert out.getpixel((5, 5)) == (255, 255, 255) and out.getpixel((0, 0)) == (200, 0, 0)
    grey = Image.new("L", (16, 16), 7)
    grey.putpixel((0, 0), 100)
    out = decode(encode(grey, "PNG", transparency=7), "g.png").image
    assert out.getpixel((5, 5)) == (255, 255, 255) and out.getpixel((0, 0)) == (100, 100, 100)
    deep = Image.frombytes("I;16", (16, 16), np.full((16, 16), 5000, "<u2").tobytes())
    deep.putpixel((0, 0), 65535)
    out = decode(encode(deep, "PNG", transparency=5000), "d.png").image
    assert out.getpixel((5, 5)) == (255, 255, 255) and out.getpixel((0, 0)) == (255, 255, 255)
    assert decode(encode(deep, "PNG"), "d.png").image.getpixel((5, 5)) == (19, 19, 19)  # 5000 / 256, no key


def test_a_png_with_megabytes_of_compressed_metadata_is_still_read():
    """Pillow refuses text chunks that inflate past 1 MB; the picture is read without them."""
    from PIL import PngImagePlugin
    from detector.images import without_metadata
    img = Image.new("RGB", (16, 16), (10, 200, 30))
    img.putpixel((3, 3), (0, 0, 0))
    for add in ("add_text", "add_itxt"):
        info = PngImagePlugin.PngInfo()
        getattr(info, add)("XML:com.adobe.xmp", "<x:xmpmeta/>" * 200_000, zip=True)
        data = encode(img, "PNG", pnginfo=info)
        assert len(data) < 20_000
        out = decode(data, "meta.png")
        assert np.array_equal(np.asarray(out.image), np.asarray(img))
        assert out.sha256 == hashlib.sha256(data).hexdigest()  # of the file as it was sent
        stripped = without_metadata(data)
        assert not any(kind in stripped for kind in (b"tEXt", b"zTXt", b"iTXt")) and len(stripped) < len(data)
    plain = encode(img, "PNG")
    assert without_metadata(plain) is plain


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_a_colour_key_on_2_bit_grey_is_scaled_as_its_pixels_are():
    """Pillow widens 1-, 2- and 4-bit grey to 8 bits but keeps a tRNS key at the file's depth, so a key of
    1 (grey 85 once widened) matched no pixel and keyed pixels showed grey instead of transparent."""
    row = bytes([0b00011011, 0b00011011])  # one row of eight 2-bit pixels: 0, 1, 2, 3, 0, 1, 2, 3
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 2, 0, 0, 0, 0)) + _chunk(b"tRNS", struct.pack(">H", 1))
            + _chunk(b"IDAT", zlib.compress((b"\0" + row) * 8)) + _chunk(b"IEND", b""))
    grey = np.asarray(decode(data, "k2.png").image)[0, :, 0]
    assert grey.tolist() == [0, 255, 170, 255] * 2  # the keyed pixels show white, the others as drawn


def test_a_png_with_a_colour_profile_that_inflates_past_pillows_guard_is_still_read():
    """Pillow inflates a colour profile (iCCP) under the same 1 MB guard as text: read without it."""
    img = Image.new("RGB", (16, 16), (10, 200, 30))
    plain = encode(img, "PNG")
    profile = b"icc\0\0" + zlib.compress(bytes(2_000_000))
    at = plain.index(b"IDAT") - 4
    data = plain[:at] + _chunk(b"iCCP", profile) + plain[at:]
    assert np.array_equal(np.asarray(decode(data, "icc.png").image), np.asarray(img))
