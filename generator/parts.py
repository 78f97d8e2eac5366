"""Drawing a hand's face parts as full-canvas RGBA layers, and its signature.

Every part is its own full-canvas layer (transparent elsewhere) so an icon is just the alpha
composite of one variant per layer, and chimeras can re-composite or move parts exactly.
Everything is drawn at SCALE x resolution and downsampled with LANCZOS for anti-aliasing; shapes
are built as binary masks so outlines follow the union of shapes (hair tufts, ears) cleanly.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from generator.hands import FAMILIES, RGB, Hand, Point, hsv, mix

SCALE = 4
LAYERS: tuple[str, ...] = tuple(FAMILIES)  # FAMILIES is keyed in compositing order, back to front
PAPER: RGB = (255, 255, 255)
WHITE: RGB = (255, 255, 255)
FLOOR = 0.8  # nothing is drawn below this (canvas units), keeping the signature corner free

Mask = Image.Image
Drawer = Callable[["Sketch", np.random.Generator], None]
DRAWERS: dict[tuple[str, str], Drawer] = {}


def draws(layer: str, *families: str) -> Callable[[Drawer], Drawer]:
    def register(fn: Drawer) -> Drawer:
        for family in families:
            DRAWERS[layer, family] = fn
        return fn
    return register


def union(*masks: Mask) -> Mask:
    out = masks[0]
    for m in masks[1:]:
        out = ImageChops.lighter(out, m)
    return out


def minus(a: Mask, b: Mask) -> Mask:
    return ImageChops.subtract(a, b)


def inter(a: Mask, b: Mask) -> Mask:
    return ImageChops.darker(a, b)


def shift(mask: Mask, dx: int, dy: int) -> Mask:
    out = Image.new(mask.mode, mask.size, 0)
    out.paste(mask, (dx, dy))
    return out


def bezier(*ctrl: Point, steps: int = 16) -> list[Point]:
    """Flatten a chain of cubic Beziers (p0, c, c, p1, c, c, p2, ...) into a polyline."""
    pts = np.asarray(ctrl, dtype=float)
    t = np.linspace(0, 1, steps)[:, None]
    out = [tuple(pts[0])]
    for p0, c0, c1, p1 in zip(pts[0:-1:3], pts[1::3], pts[2::3], pts[3::3]):
        seg = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * c0 + 3 * (1 - t) * t**2 * c1 + t**3 * p1
        out += [tuple(p) for p in seg[1:]]
    return out  # type: ignore[return-value]


def ellipse_pts(x: float, y: float, rx: float, ry: float, angle: float = 0.0, steps: int = 72) -> list[Point]:
    t = np.linspace(0, 2 * np.pi, steps, endpoint=False)
    a = np.deg2rad(angle)
    ex, ey = rx * np.cos(t), ry * np.sin(t)
    return list(zip(x + ex * np.cos(a) - ey * np.sin(a), y + ex * np.sin(a) + ey * np.cos(a)))


def heart_pts(x: float, y: float, r: float) -> list[Point]:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    hx = 16 * np.sin(t) ** 3
    hy = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return list(zip(x + hx * r / 16, y + hy * r / 16))


def star_pts(x: float, y: float, r: float, points: int = 4, inner: float = 0.35) -> list[Point]:
    t = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False) - np.pi / 2
    rr = np.where(np.arange(2 * points) % 2 == 0, r, r * inner)
    return list(zip(x + rr * np.cos(t), y + rr * np.sin(t)))


def alpha_box(img: Image.Image) -> list[int] | None:
    """[x0, y0, x1, y1] (x1, y1 exclusive, like PIL) of the non-transparent pixels, or None."""
    box = img.getchannel("A").getbbox()
    return list(box) if box else None


def composite(layers: Iterable[Image.Image], background: RGB = PAPER) -> Image.Image:
    """Alpha-composite RGBA layers in order over an opaque background; exact for uint8 inputs."""
    layers = list(layers)
    out = Image.new("RGBA", layers[0].size, (*background, 255))
    for layer in layers:
        out.alpha_composite(layer)
    return out.convert("RGB")


class Sketch:
    """One supersampled RGBA layer plus the hand's anchor points, all in canvas units (0..1)."""

    def __init__(self, hand: Hand, size: int) -> None:
        self.hand, self.size, self.n = hand, size, size * SCALE
        self.img = Image.new("RGBA", (self.n, self.n), (0, 0, 0, 0))
        self.w = max(hand.line * self.n, 0.8 * SCALE)  # ink width in supersampled pixels
        self.cx, self.cy = 0.5, 0.46
        self.rx, self.ry = hand.face_rx, hand.face_ry
        self.e = hand.eye_r * self.rx
        self.eye_x, self.eye_y = hand.eye_gap * self.rx, self.cy + hand.eye_dy * self.ry
        self.mouth_y, self.m = self.cy + hand.mouth_dy * self.ry, hand.mouth_w * self.rx
        self.fringe_y = self.cy - hand.fringe * self.ry

    def px(self, pts: Sequence[Point]) -> list[Point]:
        return [(x * self.n, y * self.n) for x, y in pts]

    def blank(self) -> Mask:
        return Image.new("L", (self.n, self.n), 0)

    def poly(self, pts: Sequence[Point]) -> Mask:
        mask = self.blank()
        ImageDraw.Draw(mask).polygon(self.px(pts), fill=255)
        return mask

    def ellipse(self, x: float, y: float, rx: float, ry: float | None = None, angle: float = 0.0) -> Mask:
        return self.poly(ellipse_pts(x, y, rx, rx if ry is None else ry, angle))

    def rect(self, x0: float, y0: float, x1: float, y1: float, radius: float = 0.0) -> Mask:
        mask = self.blank()
        ImageDraw.Draw(mask).rounded_rectangle(self.px([(x0, y0), (x1, y1)]), radius * self.n, fill=255)
        return mask

    def above(self, pts: Sequence[Point]) -> Mask:
        """Everything above a left-to-right curve: used to cut fringes and hat brims."""
        return self.poly([*pts, (pts[-1][0], -1.0), (pts[0][0], -1.0)])

    def line(self, pts: Sequence[Point], width: float = 1.0) -> Mask:
        """A round-capped polyline mask; width is in multiples of the hand's line weight."""
        mask, w = self.blank(), max(width * self.w, SCALE)
        draw, xy = ImageDraw.Draw(mask), self.px(pts)
        draw.line(xy, fill=255, width=round(w), joint="curve")
        for x, y in (xy[0], xy[-1]):
            draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=255)
        return mask

    def face(self, grow: float = 1.0) -> Mask:
        """The face silhouette: a superellipse (ellipse .. rounded rect) optionally narrowed into an egg."""
        p, egg = {"ellipse": (2.0, 0.0), "rounded": (3.4, 0.06), "egg": (2.1, 0.2)}[self.hand.face_shape]
        t = np.linspace(0, 2 * np.pi, 180, endpoint=False)
        c, s = np.cos(t), np.sin(t)
        x, y = np.sign(c) * np.abs(c) ** (2 / p), np.sign(s) * np.abs(s) ** (2 / p)
        x = x * (1 - egg * np.clip(y, 0, 1) ** 2)
        return self.poly(list(zip(self.cx + grow * self.rx * x, self.cy + grow * self.ry * y)))

    def fill(self, mask: Mask, colour: RGB, alpha: float = 1.0) -> None:
        if alpha < 1.0:
            mask = mask.point(lambda v: round(v * alpha))
        layer = Image.new("RGBA", mask.size, (*colour, 0))
        layer.putalpha(mask)
        self.img.alpha_composite(layer)

    def shaded(self, mask: Mask, colour: RGB) -> None:
        """Fill in the hand's shading style, lit from the upper left."""
        box = mask.getbbox()
        if self.hand.shading == "flat" or box is None:
            return self.fill(mask, colour)
        x0, y0, x1, y1 = box
        if self.hand.shading == "cel":
            self.fill(mask, colour)
            d = max(1, round(0.16 * min(x1 - x0, y1 - y0)))
            return self.fill(minus(mask, shift(mask, -d, -d)), mix(colour, self.hand.ink, 0.28))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        lx, ly = x0 + 0.35 * (x1 - x0), y0 + 0.3 * (y1 - y0)
        t = np.clip(np.hypot(xx - lx, yy - ly) / (0.85 * max(x1 - x0, y1 - y0)), 0, 1)[..., None]
        light, dark = np.array(mix(colour, WHITE, 0.35)), np.array(mix(colour, self.hand.ink, 0.3))
        rgba = np.dstack([np.round(light + (dark - light) * t), np.asarray(mask.crop(box))]).astype(np.uint8)
        self.img.alpha_composite(Image.fromarray(rgba, "RGBA"), (x0, y0))

    def outline(self, mask: Mask, width: float = 1.0) -> None:
        """Ink the inner rim of a mask: erosion by blur + threshold keeps the stroke round at corners."""
        w = width * self.w
        eroded = mask.filter(ImageFilter.GaussianBlur(w / 2.05)).point(lambda v: 255 if v >= 250 else 0)
        self.fill(minus(mask, eroded), self.hand.ink)

    def blob(self, mask: Mask, colour: RGB, shaded: bool = False, outline: bool = True) -> None:
        self.shaded(mask, colour) if shaded else self.fill(mask, colour)
        if outline:
            self.outline(mask)

    def ink(self, pts: Sequence[Point], width: float = 1.0, colour: RGB | None = None) -> None:
        self.fill(self.line(pts, width), colour or self.hand.ink)

    def curve(self, *ctrl: Point, width: float = 1.0, colour: RGB | None = None) -> None:
        self.ink(bezier(*ctrl), width, colour)

    def done(self) -> Image.Image:
        return self.img.resize((self.size, self.size), Image.Resampling.LANCZOS)


def render_part(hand: Hand, layer: str, variant: int, size: int) -> Image.Image:
    """Variant `variant` of `layer` in `hand`'s style: a size x size RGBA layer, deterministic."""
    sketch = Sketch(hand, size)
    rng = np.random.default_rng([hand.seed, LAYERS.index(layer), variant])
    DRAWERS[layer, hand.shapes[layer][variant]](sketch, rng)
    return sketch.done()


def pick(rng: np.random.Generator, options: Sequence[RGB]) -> RGB:
    return options[rng.integers(len(options))]


