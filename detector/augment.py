"""Edits that make labelled queries: copies, derivatives and signed images.

Used by the evaluation (benchmarks and tests) to say, for each query, what a
perfect detector would answer: which work it copies, which works it is assembled
from, where a signature was pasted.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Box = tuple[int, int, int, int]


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    import io
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def copy_edits(img: Image.Image, rng: random.Random) -> dict[str, Image.Image]:
    """One of each edit a copy may have undergone (DISC21-style), on an RGB image."""
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.72, 0.88)), int(h * rng.uniform(0.72, 0.88))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    pad = int(w * rng.uniform(0.1, 0.25))
    overlay = img.copy()
    ImageDraw.Draw(overlay).text((2, h // 2 - 6), rng.choice(["COPY", "sale!", "lol", "#1"]), fill=(255, 0, 255))
    hue = ImageOps.colorize(img.convert("L"), black=(30, 0, 60), white=(255, 250, 210))
    return {
        "crop": img.crop((x, y, x + cw, y + ch)),
        "resize": img.resize((w * 2, h * 2), Image.Resampling.BICUBIC),
        "downscale": img.resize((max(16, w * 3 // 4), max(16, h * 3 // 4)), Image.Resampling.LANCZOS),
        "jpeg": _jpeg(img, rng.randint(25, 45)),
        "rotate": img.rotate(rng.choice([-8, -5, 5, 8]), resample=Image.Resampling.BICUBIC, fillcolor="white"),
        "rotate90": img.transpose(Image.Transpose.ROTATE_90),
        "recolour": Image.blend(hue, ImageEnhance.Color(img).enhance(1.8), 0.3),
        "pad": ImageOps.expand(img, border=pad, fill=rng.choice(["white", "black", (40, 120, 200)])),
        "flip": img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "blur": img.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 1.2))),
        "text": overlay,
    }


def _fit(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    return img if img.size == size else img.resize(size, Image.Resampling.LANCZOS)


def half_swap(a: Image.Image, b: Image.Image, vertical: bool = True) -> tuple[Image.Image, list[Box]]:
    """Left (or top) half of a, the rest of b; returns the image and each source's box."""
    b = _fit(b, a.size)
    w, h = a.size
    out = b.copy()
    box = (0, 0, w // 2, h) if vertical else (0, 0, w, h // 2)
    out.paste(a.crop(box), box[:2])
    rest = (w // 2, 0, w, h) if vertical else (0, h // 2, w, h)
    return out, [box, rest]


def quad_collage(imgs: list[Image.Image]) -> tuple[Image.Image, list[Box]]:
    """Four quadrants, each from its own image (same place it had there)."""
    w, h = imgs[0].size
    out = Image.new("RGB", (w, h), "white")
    boxes = [(0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h), (w // 2, h // 2, w, h)]
    for im, box in zip(imgs, boxes):
        out.paste(_fit(im, (w, h)).crop(box), box[:2])
    return out, boxes


def paste_part(base: Image.Image, donor: Image.Image, rng: random.Random) -> tuple[Image.Image, list[Box]]:
    """A part-sized piece of donor (about a third of the side) pasted onto base, possibly moved."""
    donor = _fit(donor, base.size)
    w, h = base.size
    pw, ph = int(w * 0.45), int(h * 0.35)
    sx, sy = rng.randint(w // 8, w - pw - w // 8), rng.randint(h // 6, h - ph - h // 8)
    dx = min(max(0, sx + rng.randint(-w // 8, w // 8)), w - pw)
    dy = min(max(0, sy + rng.randint(-h // 8, h // 8)), h - ph)
    out = base.copy()
    out.paste(donor.crop((sx, sy, sx + pw, sy + ph)), (dx, dy))
    return out, [(0, 0, w, h), (dx, dy, dx + pw, dy + ph)]


def ink_to_rgba(sig: Image.Image) -> Image.Image:
    """A signature sample (ink on white or on transparency) as RGBA with the paper transparent."""
    if sig.mode == "RGBA" and np.asarray(sig)[..., 3].min() < 255:
        return sig
    rgb = np.asarray(sig.convert("RGB")).astype(np.int16)
    alpha = np.clip((255 - rgb.min(axis=2)) * 2, 0, 255).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb.astype(np.uint8), alpha]), "RGBA")


def paste_signature(img: Image.Image, sig: Image.Image, rng: random.Random,
                    corner: str | None = None) -> tuple[Image.Image, Box]:
    """Sign `img` with `sig` near a corner (bottom-right by default, as most artists do)."""
    rgba = ink_to_rgba(sig)
    bbox = rgba.getchannel("A").getbbox() or (0, 0, rgba.width, rgba.height)
    rgba = rgba.crop(bbox)
    w, h = img.size
    tw = int(w * rng.uniform(0.28, 0.36))
    th = max(3, int(rgba.height * tw / rgba.width))
    rgba = rgba.resize((tw, th), Image.Resampling.LANCZOS).rotate(rng.uniform(-6, 6), expand=True,
                                                                    resample=Image.Resampling.BICUBIC)
    corner = corner or "br"
    m = max(1, w // 32)
    x = w - rgba.width - m if corner[1] == "r" else m
    y = h - rgba.height - m if corner[0] == "b" else m
    out = img.convert("RGB").copy()
    out.paste(rgba, (x, y), rgba)
    box = rgba.getchannel("A").getbbox() or (0, 0, rgba.width, rgba.height)
    return out, (x + box[0], y + box[1], x + box[2], y + box[3])


def handwriting_signature(name: str, font_path: str, rng: random.Random, size: int = 48) -> Image.Image:
    """Render `name` in a handwriting font with per-sample jitter (slant, scale, stroke)."""
    font = ImageFont.truetype(font_path, int(size * rng.uniform(0.9, 1.1)))
    left, top, right, bottom = font.getbbox(name)
    img = Image.new("RGB", (right - left + 16, bottom - top + 16), "white")
    ImageDraw.Draw(img).text((8 - left, 8 - top), name, font=font, fill=(20, 20, 40),
                             stroke_width=rng.choice([0, 0, 1]), stroke_fill=(20, 20, 40))
    shear = rng.uniform(-0.15, 0.15)
    return img.transform(img.size, Image.Transform.AFFINE, (1, shear, -shear * img.height / 2, 0, 1, 0),
                         resample=Image.Resampling.BICUBIC, fillcolor="white")
