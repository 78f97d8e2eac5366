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

from generator.hands import FAMILIES, RGB, Hand, Point, mix

SCALE = 4
LAYERS: tuple[str, ...] = tuple(FAMILIES)  # FAMILIES is keyed in compositing order, back to front
PAPER: RGB = (255, 255, 255)
WHITE: RGB = (255, 255, 255)
FEATURES = ("eyes", "brows", "nose", "mouth", "cheeks")
FLOOR = 0.76  # hair is clipped above this and other parts stay above it: the signature corner stays free

Mask = Image.Image
Drawer = Callable[["Sketch", np.random.Generator], None]
DRAWERS: dict[tuple[str, str], Drawer] = {}


def draws(layer: str, family: str) -> Callable[[Drawer], Drawer]:
    def register(fn: Drawer) -> Drawer:
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

    def __init__(self, hand: Hand, size: int, detail: bool = False) -> None:
        self.hand, self.size, self.n = hand, size, size * SCALE
        self.img = Image.new("RGBA", (self.n, self.n), (0, 0, 0, 0))
        self.cx, self.cy = 0.5, 0.46
        self.rx, self.ry = hand.face_rx, hand.face_ry
        self.e = hand.eye_r * self.rx
        self.w = max(hand.line * self.n, 0.8 * SCALE)  # ink width in supersampled pixels
        if detail:  # a heavy line would swallow small features: cap it to their scale
            self.w = min(self.w, 0.22 * self.e * self.n)
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
        if shaded:
            self.shaded(mask, colour)
        else:
            self.fill(mask, colour)
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
    sketch = Sketch(hand, size, detail=layer in FEATURES)
    rng = np.random.default_rng([hand.seed, LAYERS.index(layer), variant])
    DRAWERS[layer, hand.shapes[layer][variant]](sketch, rng)
    return sketch.done()


def pick(rng: np.random.Generator, options: Sequence[RGB]) -> RGB:
    return options[rng.integers(len(options))]


def local(x: float, y: float, unit: float, side: int = 1) -> Callable[[float, float], Point]:
    """Point at offsets (in `unit`s) from (x, y); dx is mirrored by `side` so one shape serves both sides."""
    return lambda dx, dy: (x + side * dx * unit, y + dy * unit)


def pairs(s: Sketch) -> list[tuple[int, float, float]]:
    """(side, x, y) of the two eyes; side is -1 for the left eye so shapes can mirror."""
    return [(side, s.cx + side * s.eye_x, s.eye_y) for side in (-1, 1)]


# --- skin: ears are drawn first so the face covers their inner half ----------------------------


def head_with_ears(s: Sketch, rx: float, ry: float, tip: float = 0.0, lobe: bool = False) -> None:
    y = s.cy + 0.12 * s.ry
    for side in (-1, 1):
        x = s.cx + side * 0.95 * s.rx
        p = local(x, y, 1.0, side)
        ear = s.ellipse(x, y, rx, ry)
        if tip:
            ear = union(ear, s.poly([p(-0.3 * rx, 0.5 * ry), p(tip * rx, -tip * ry), p(0.9 * rx, 0.3 * ry)]))
        s.blob(ear, s.hand.skin, shaded=True)
        if lobe:
            rim = [p(0.2 * rx, -0.5 * ry), p(0.9 * rx, -0.5 * ry), p(0.8 * rx, 0.5 * ry), p(0.2 * rx, 0.3 * ry)]
            s.curve(*rim, width=0.6)
    s.blob(s.face(), s.hand.skin, shaded=True)


@draws("skin", "no_ears")
def no_ears(s: Sketch, rng: np.random.Generator) -> None:
    s.blob(s.face(), s.hand.skin, shaded=True)


@draws("skin", "round_ears")
def round_ears(s: Sketch, rng: np.random.Generator) -> None:
    head_with_ears(s, 0.15 * s.rx, 0.2 * s.ry)


@draws("skin", "big_ears")
def big_ears(s: Sketch, rng: np.random.Generator) -> None:
    head_with_ears(s, 0.25 * s.rx, 0.3 * s.ry, lobe=True)


@draws("skin", "lobed_ears")
def lobed_ears(s: Sketch, rng: np.random.Generator) -> None:
    head_with_ears(s, 0.17 * s.rx, 0.24 * s.ry, lobe=True)


@draws("skin", "pointy_ears")
def pointy_ears(s: Sketch, rng: np.random.Generator) -> None:
    head_with_ears(s, 0.13 * s.rx, 0.2 * s.ry, tip=2.4)


# --- hair_back: composited over the skin, so the face is cut out of it -------------------------


def head(s: Sketch, grow: float = 1.1) -> Mask:
    return s.ellipse(s.cx, s.cy - 0.06 * s.ry, grow * s.rx, (grow - 0.02) * s.ry)


def hair_back(s: Sketch, mask: Mask) -> None:
    mask = inter(mask, s.rect(0, 0, 1, FLOOR))
    s.blob(minus(mask, s.face().filter(ImageFilter.MinFilter(3))), s.hand.hair, shaded=True)


def tie(s: Sketch, rng: np.random.Generator, x: float, y: float) -> None:
    s.blob(s.ellipse(x, y, 0.09 * s.rx), pick(rng, s.hand.accents))


@draws("hair_back", "long")
def long_hair(s: Sketch, rng: np.random.Generator) -> None:
    fall = s.rect(s.cx - 1.16 * s.rx, s.cy - 0.3 * s.ry, s.cx + 1.16 * s.rx, FLOOR, 0.25 * s.rx)
    hair_back(s, union(head(s, 1.14), fall))


@draws("hair_back", "bob")
def bob(s: Sketch, rng: np.random.Generator) -> None:
    fall = s.rect(s.cx - 1.2 * s.rx, s.cy - 0.2 * s.ry, s.cx + 1.2 * s.rx, s.cy + 0.95 * s.ry, 0.35 * s.rx)
    hair_back(s, union(head(s, 1.16), fall))


@draws("hair_back", "ponytail")
def ponytail(s: Sketch, rng: np.random.Generator) -> None:
    side = rng.choice([-1, 1])
    tail = s.ellipse(s.cx + side * 1.28 * s.rx, s.cy + 0.3 * s.ry, 0.3 * s.rx, 0.75 * s.ry, -side * 18)
    hair_back(s, union(head(s), tail))
    tie(s, rng, s.cx + side * 1.12 * s.rx, s.cy - 0.35 * s.ry)


@draws("hair_back", "pigtails")
def pigtails(s: Sketch, rng: np.random.Generator) -> None:
    tails = [
        s.ellipse(s.cx + side * 1.25 * s.rx, s.cy + 0.4 * s.ry, 0.28 * s.rx, 0.6 * s.ry, -side * 15) for side in (-1, 1)
    ]
    hair_back(s, union(head(s), *tails))
    for side in (-1, 1):
        tie(s, rng, s.cx + side * 1.12 * s.rx, s.cy - 0.12 * s.ry)


@draws("hair_back", "bun")
def bun(s: Sketch, rng: np.random.Generator) -> None:
    hair_back(s, union(head(s), s.ellipse(s.cx, s.cy - 1.08 * s.ry, 0.38 * s.rx)))


@draws("hair_back", "short")
def short(s: Sketch, rng: np.random.Generator) -> None:
    hair_back(s, inter(head(s), s.above([(0, s.cy + 0.3 * s.ry), (1, s.cy + 0.3 * s.ry)])))


@draws("hair_back", "flip")
def flip(s: Sketch, rng: np.random.Generator) -> None:
    flip = [(1.05, 0.35), (1.5, 0.85), (0.95, 0.68)]  # in face radii, away from the centre
    flips = [s.poly([(s.cx + side * dx * s.rx, s.cy + dy * s.ry) for dx, dy in flip]) for side in (-1, 1)]
    cut = s.cy + 0.65 * s.ry
    bowl = inter(s.ellipse(s.cx, s.cy, 1.2 * s.rx, 1.05 * s.ry), s.above([(0, cut), (1, cut)]))
    hair_back(s, union(bowl, *flips))


# --- eyes ---------------------------------------------------------------------------------------


def size(s: Sketch, rng: np.random.Generator) -> float:
    return s.e * rng.uniform(0.88, 1.12)


@draws("eyes", "bead")
def bead(s: Sketch, rng: np.random.Generator) -> None:
    e = size(s, rng)
    for _, x, y in pairs(s):
        s.fill(s.ellipse(x, y, 0.55 * e, 0.8 * e), s.hand.ink)
        s.fill(s.ellipse(x - 0.18 * e, y - 0.32 * e, 0.2 * e), WHITE)


@draws("eyes", "anime")
def anime(s: Sketch, rng: np.random.Generator) -> None:
    e, iris = size(s, rng), pick(rng, s.hand.accents)
    for side, x, y in pairs(s):
        sclera = s.ellipse(x, y, 0.9 * e, 1.1 * e)
        s.fill(sclera, WHITE)
        s.fill(inter(sclera, s.ellipse(x, y + 0.12 * e, 0.68 * e, 0.92 * e)), iris)
        s.fill(inter(sclera, s.ellipse(x, y + 0.2 * e, 0.32 * e, 0.45 * e)), s.hand.ink)
        s.fill(s.ellipse(x - 0.25 * e, y - 0.2 * e, 0.22 * e), WHITE)
        s.fill(s.ellipse(x + 0.22 * e, y + 0.42 * e, 0.1 * e), WHITE)
        p = local(x, y, e, side)
        s.curve(p(-0.95, -0.4), p(-0.5, -1.35), p(0.5, -1.35), p(1.15, -0.6), width=1.3)


@draws("eyes", "happy")
def happy(s: Sketch, rng: np.random.Generator) -> None:
    e = size(s, rng)
    for _, x, y in pairs(s):
        p = local(x, y, e)
        s.curve(p(-0.85, 0.3), p(-0.45, -0.7), p(0.45, -0.7), p(0.85, 0.3), width=1.3)


@draws("eyes", "sleepy")
def sleepy(s: Sketch, rng: np.random.Generator) -> None:
    e = size(s, rng)
    for side, x, y in pairs(s):
        p = local(x, y, e, side)
        s.curve(p(-0.85, -0.15), p(-0.45, 0.6), p(0.45, 0.6), p(0.85, -0.15), width=1.2)
        s.ink([p(0.7, 0.2), p(1.05, 0.5)], 0.8)


@draws("eyes", "round")
def round_eyes(s: Sketch, rng: np.random.Generator) -> None:
    e, look = size(s, rng), rng.choice([-0.3, 0.0, 0.3])
    for _, x, y in pairs(s):
        white = s.ellipse(x, y, 0.85 * e)
        s.blob(white, WHITE)
        s.fill(inter(white, s.ellipse(x + look * e, y + 0.1 * e, 0.42 * e)), s.hand.ink)
        s.fill(s.ellipse(x + look * e - 0.12 * e, y - 0.05 * e, 0.12 * e), WHITE)
        s.outline(white, 0.8)


@draws("eyes", "wink")
def wink(s: Sketch, rng: np.random.Generator) -> None:
    e, winking = size(s, rng), rng.choice([-1, 1])
    for side, x, y in pairs(s):
        if side == winking:
            p = local(x, y, e, side)
            s.ink([p(0.7, -0.55), p(-0.55, 0), p(0.7, 0.55)], 1.2)
        else:
            s.fill(s.ellipse(x, y, 0.6 * e, 0.85 * e), s.hand.ink)
            s.fill(s.ellipse(x - 0.2 * e, y - 0.35 * e, 0.22 * e), WHITE)


@draws("eyes", "sparkle")
def sparkle(s: Sketch, rng: np.random.Generator) -> None:
    e, iris = size(s, rng), pick(rng, s.hand.accents)
    for _, x, y in pairs(s):
        ball = s.ellipse(x, y, 0.9 * e)
        s.fill(ball, iris)
        s.fill(s.ellipse(x, y + 0.1 * e, 0.42 * e), s.hand.ink)
        s.fill(s.poly(star_pts(x - 0.28 * e, y - 0.3 * e, 0.5 * e)), WHITE)
        s.outline(ball, 0.8)


@draws("eyes", "almond")
def almond(s: Sketch, rng: np.random.Generator) -> None:
    e, iris = size(s, rng), pick(rng, s.hand.accents)
    for side, x, y in pairs(s):
        p = local(x, y, e, side)
        top = bezier(p(-1.05, 0.1), p(-0.5, -0.85), p(0.5, -0.85), p(1.05, -0.05))
        bottom = bezier(p(1.05, -0.05), p(0.5, 0.65), p(-0.5, 0.65), p(-1.05, 0.1))
        white = s.poly(top + bottom)
        s.fill(white, WHITE)
        s.fill(inter(white, s.ellipse(x, y, 0.55 * e)), iris)
        s.fill(inter(white, s.ellipse(x, y, 0.28 * e)), s.hand.ink)
        s.outline(white, 0.8)
        s.ink([p(0.95, -0.15), p(1.35, -0.5)], 0.8)
        s.ink([p(0.7, -0.5), p(0.95, -0.9)], 0.8)


@draws("eyes", "lidded")
def lidded(s: Sketch, rng: np.random.Generator) -> None:
    e, iris = size(s, rng), pick(rng, s.hand.accents)
    for _, x, y in pairs(s):
        white = s.ellipse(x, y, 0.95 * e, 0.8 * e)
        s.fill(white, WHITE)
        s.fill(inter(white, s.ellipse(x, y + 0.15 * e, 0.55 * e)), iris)
        s.fill(inter(white, s.ellipse(x, y + 0.2 * e, 0.25 * e)), s.hand.ink)
        s.fill(inter(white, s.above([(x - e, y - 0.05 * e), (x + e, y - 0.05 * e)])), mix(s.hand.skin, s.hand.ink, 0.2))
        s.outline(white, 0.8)
        s.ink([(x - 1.05 * e, y - 0.05 * e), (x + 1.05 * e, y - 0.05 * e)], 1.4)


# --- brows (x offsets are mirrored by `side`, positive = away from the nose) ----------------------


def brows(s: Sketch, rng: np.random.Generator) -> list[tuple[int, float, float, float]]:
    e = size(s, rng)
    return [(side, x, y - 1.75 * e, e) for side, x, y in pairs(s)]


def brow_colour(s: Sketch) -> RGB:
    return mix(s.hand.hair, s.hand.ink, 0.5)


@draws("brows", "arch")
def arch(s: Sketch, rng: np.random.Generator) -> None:
    for side, x, y, e in brows(s, rng):
        p = local(x, y, e, side)
        s.curve(p(-0.9, 0.15), p(-0.3, -0.45), p(0.4, -0.45), p(1.0, 0.2), width=1.3, colour=brow_colour(s))


@draws("brows", "flat")
def flat_brows(s: Sketch, rng: np.random.Generator) -> None:
    for side, x, y, e in brows(s, rng):
        s.ink([(x - side * 0.8 * e, y), (x + side * 0.8 * e, y)], 1.5, brow_colour(s))


@draws("brows", "angry")
def angry(s: Sketch, rng: np.random.Generator) -> None:
    for side, x, y, e in brows(s, rng):
        s.ink([(x - side * 0.85 * e, y + 0.35 * e), (x + side * 0.85 * e, y - 0.35 * e)], 1.7, brow_colour(s))


@draws("brows", "worried")
def worried(s: Sketch, rng: np.random.Generator) -> None:
    for side, x, y, e in brows(s, rng):
        p = local(x, y, e, side)
        s.curve(p(-0.85, -0.4), p(-0.3, -0.3), p(0.4, 0), p(0.9, 0.3), width=1.2, colour=brow_colour(s))


@draws("brows", "thick")
def thick(s: Sketch, rng: np.random.Generator) -> None:
    for side, x, y, e in brows(s, rng):
        p = local(x, y, e, side)
        s.curve(p(-0.7, 0.05), p(-0.2, -0.25), p(0.3, -0.25), p(0.75, 0.1), width=2.8, colour=brow_colour(s))


@draws("brows", "dots")
def dots(s: Sketch, rng: np.random.Generator) -> None:
    for side, x, y, e in brows(s, rng):
        s.fill(s.ellipse(x - side * 0.3 * e, y, 0.38 * e, 0.24 * e), brow_colour(s))


@draws("brows", "wavy")
def wavy(s: Sketch, rng: np.random.Generator) -> None:
    for side, x, y, e in brows(s, rng):
        p = local(x, y, e, side)
        s.curve(p(-0.9, 0), p(-0.3, -0.5), p(0.3, 0.5), p(0.9, -0.1), width=1.2, colour=brow_colour(s))


# --- nose ---------------------------------------------------------------------------------------


def nose(s: Sketch, rng: np.random.Generator) -> tuple[float, float, float]:
    return s.cx, s.eye_y + 0.55 * (s.mouth_y - s.eye_y), 1.3 * size(s, rng)


@draws("nose", "dot")
def dot_nose(s: Sketch, rng: np.random.Generator) -> None:
    x, y, e = nose(s, rng)
    s.fill(s.ellipse(x, y, 0.26 * e, 0.2 * e), s.hand.ink)


@draws("nose", "hook")
def hook(s: Sketch, rng: np.random.Generator) -> None:
    x, y, e = nose(s, rng)
    p = local(x, y, e)
    s.curve(p(0.05, -0.5), p(-0.05, -0.2), p(-0.45, 0.2), p(0.15, 0.22), width=0.8)


@draws("nose", "button")
def button(s: Sketch, rng: np.random.Generator) -> None:
    x, y, e = nose(s, rng)
    bump = s.ellipse(x, y, 0.4 * e, 0.3 * e)
    s.fill(bump, mix(s.hand.skin, s.hand.blush, 0.6))
    s.outline(bump, 0.6)
    s.fill(s.ellipse(x - 0.15 * e, y - 0.1 * e, 0.08 * e), WHITE)


@draws("nose", "vee")
def vee(s: Sketch, rng: np.random.Generator) -> None:
    x, y, e = nose(s, rng)
    s.ink([(x - 0.35 * e, y - 0.15 * e), (x, y + 0.2 * e), (x + 0.35 * e, y - 0.15 * e)], 0.8)


@draws("nose", "nostrils")
def nostrils(s: Sketch, rng: np.random.Generator) -> None:
    x, y, e = nose(s, rng)
    for side in (-1, 1):
        s.fill(s.ellipse(x + side * 0.2 * e, y, 0.1 * e), s.hand.ink)


@draws("nose", "shadow")
def shadow(s: Sketch, rng: np.random.Generator) -> None:
    x, y, e = nose(s, rng)
    p = local(x, y, e)
    s.fill(s.poly([p(0.05, -0.8), p(0.35, 0.25), p(-0.15, 0.25)]), mix(s.hand.skin, s.hand.ink, 0.35), 0.55)


@draws("nose", "line")
def line_nose(s: Sketch, rng: np.random.Generator) -> None:
    x, y, e = nose(s, rng)
    s.ink([(x, y - 0.6 * e), (x, y + 0.2 * e), (x + 0.25 * e, y + 0.2 * e)], 0.8)


# --- mouth --------------------------------------------------------------------------------------

TONGUE: RGB = (236, 120, 130)


def mouth(s: Sketch, rng: np.random.Generator) -> tuple[float, float, float, RGB]:
    return s.cx, s.mouth_y, s.m * rng.uniform(0.9, 1.1), mix(s.hand.ink, (200, 50, 70), 0.55)


@draws("mouth", "smile")
def smile(s: Sketch, rng: np.random.Generator) -> None:
    x, y, m, _ = mouth(s, rng)
    s.curve((x - m, y - 0.15 * m), (x - 0.45 * m, y + 0.55 * m), (x + 0.45 * m, y + 0.55 * m), (x + m, y - 0.15 * m))


@draws("mouth", "open")
def open_mouth(s: Sketch, rng: np.random.Generator) -> None:
    x, y, m, colour = mouth(s, rng)
    p = local(x, y, m)
    hole = s.poly(bezier(p(-0.8, -0.2), p(-0.6, 0.95), p(0.6, 0.95), p(0.8, -0.2)))
    s.fill(hole, colour)
    s.fill(inter(hole, s.ellipse(x, y + 0.55 * m, 0.45 * m, 0.3 * m)), TONGUE)
    s.outline(hole, 0.8)


@draws("mouth", "cat")
def cat(s: Sketch, rng: np.random.Generator) -> None:
    x, y, m, _ = mouth(s, rng)
    for side in (-1, 1):
        p = local(x, y, m, side)
        s.curve(p(0.8, -0.05), p(0.65, 0.45), p(0.1, 0.45), p(0, -0.05), width=0.9)


@draws("mouth", "o")
def o_mouth(s: Sketch, rng: np.random.Generator) -> None:
    x, y, m, colour = mouth(s, rng)
    hole = s.ellipse(x, y + 0.15 * m, 0.32 * m, 0.42 * m)
    s.fill(hole, colour)
    s.outline(hole, 0.8)


@draws("mouth", "flat")
def flat_mouth(s: Sketch, rng: np.random.Generator) -> None:
    x, y, m, _ = mouth(s, rng)
    s.ink([(x - 0.6 * m, y + 0.1 * m), (x + 0.6 * m, y + 0.1 * m)])


@draws("mouth", "grin")
def grin(s: Sketch, rng: np.random.Generator) -> None:
    x, y, m, colour = mouth(s, rng)
    p = local(x, y, m)
    hole = s.poly(bezier(p(-1, -0.25), p(-0.8, 0.9), p(0.8, 0.9), p(1, -0.25)))
    s.fill(hole, colour)
    s.fill(inter(hole, s.rect(0, 0, 1, y + 0.12 * m)), WHITE)
    s.outline(hole, 0.8)


@draws("mouth", "smirk")
def smirk(s: Sketch, rng: np.random.Generator) -> None:
    x, y, m, _ = mouth(s, rng)
    p = local(x, y, m, rng.choice([-1, 1]))
    s.curve(p(-0.8, 0.15), p(-0.2, 0.35), p(0.5, 0.25), p(0.9, -0.3))


@draws("mouth", "tongue")
def tongue(s: Sketch, rng: np.random.Generator) -> None:
    x, y, m, _ = mouth(s, rng)
    tip = s.ellipse(x + 0.2 * m, y + 0.45 * m, 0.28 * m, 0.32 * m)
    s.fill(tip, TONGUE)
    s.outline(tip, 0.7)
    s.curve((x - m, y - 0.15 * m), (x - 0.45 * m, y + 0.45 * m), (x + 0.45 * m, y + 0.45 * m), (x + m, y - 0.15 * m))


@draws("mouth", "frown")
def frown(s: Sketch, rng: np.random.Generator) -> None:
    x, y, m, _ = mouth(s, rng)
    p = local(x, y, m)
    s.curve(p(-0.75, 0.3), p(-0.3, -0.25), p(0.3, -0.25), p(0.75, 0.3))


@draws("mouth", "shout")
def shout(s: Sketch, rng: np.random.Generator) -> None:
    x, y, m, colour = mouth(s, rng)
    hole = s.poly([(x - 0.65 * m, y - 0.2 * m), (x + 0.65 * m, y - 0.2 * m), (x, y + 0.85 * m)])
    s.fill(hole, colour)
    s.outline(hole, 0.8)


# --- cheeks -------------------------------------------------------------------------------------


def cheeks(s: Sketch, rng: np.random.Generator) -> list[tuple[int, float, float, float]]:
    e = size(s, rng)
    return [(side, x + side * 0.35 * e, y + 1.4 * e, e) for side, x, y in pairs(s)]


@draws("cheeks", "blush")
def blush(s: Sketch, rng: np.random.Generator) -> None:
    for _, x, y, e in cheeks(s, rng):
        soft = s.ellipse(x, y, 0.75 * e, 0.4 * e).filter(ImageFilter.GaussianBlur(0.1 * e * s.n))
        s.fill(soft, s.hand.blush, 0.75)


@draws("cheeks", "freckles")
def freckles(s: Sketch, rng: np.random.Generator) -> None:
    for _, x, y, e in cheeks(s, rng):
        for dx, dy in ((-0.35, -0.05), (0.0, 0.15), (0.35, -0.05)):
            s.fill(s.ellipse(x + dx * e, y + dy * e, 0.1 * e), mix(s.hand.skin, s.hand.ink, 0.45))


@draws("cheeks", "hatch")
def hatch(s: Sketch, rng: np.random.Generator) -> None:
    for _, x, y, e in cheeks(s, rng):
        for dx in (-0.4, 0.0, 0.4):
            p = local(x + dx * e, y, e)
            s.ink([p(-0.15, 0.25), p(0.15, -0.25)], 0.7, mix(s.hand.blush, s.hand.ink, 0.3))


@draws("cheeks", "disc")
def disc(s: Sketch, rng: np.random.Generator) -> None:
    for _, x, y, e in cheeks(s, rng):
        s.fill(s.ellipse(x, y, 0.42 * e), s.hand.blush, 0.85)


@draws("cheeks", "heart")
def heart(s: Sketch, rng: np.random.Generator) -> None:
    for _, x, y, e in cheeks(s, rng):
        s.fill(s.poly(heart_pts(x, y, 0.4 * e)), mix(s.hand.blush, (230, 60, 90), 0.5))


@draws("cheeks", "swirl")
def swirl(s: Sketch, rng: np.random.Generator) -> None:
    t = np.linspace(0, 3 * np.pi, 40)
    for side, x, y, e in cheeks(s, rng):
        r = 0.45 * e * (1 - t / (3.5 * np.pi))
        s.ink(list(zip(x + side * r * np.cos(t), y + r * np.sin(t))), 0.7, mix(s.hand.blush, s.hand.ink, 0.3))


# --- hair_front: a cap over the head, cut along a fringe curve ----------------------------------


def hang(s: Sketch, x: float, y: float) -> float:
    """Drop the fringe at the temples into side locks, so hair frames the face."""
    t = np.clip((abs(x - s.cx) - 0.88 * s.rx) / (0.22 * s.rx), 0, 1)
    return y + t * max(0.0, s.cy + 0.15 * s.ry - y)


def fringe(s: Sketch, ys: Callable[[float], float], steps: int = 48) -> list[Point]:
    xs = np.linspace(s.cx - 1.25 * s.rx, s.cx + 1.25 * s.rx, steps)
    return [(float(x), hang(s, float(x), ys(float(x)))) for x in xs]


def hair_front(s: Sketch, curve: list[Point], *extra: Mask, grow: float = 1.1) -> None:
    s.blob(union(inter(head(s, grow), s.above(curve)), *extra), s.hand.hair, shaded=True)


def zigzag(s: Sketch, teeth: int, depth: float) -> list[Point]:
    xs = np.linspace(s.cx - 1.25 * s.rx, s.cx + 1.25 * s.rx, 2 * teeth + 1)
    ys = [s.fringe_y + (depth if i % 2 else -0.6 * depth) * s.ry for i in range(len(xs))]
    return [(float(x), hang(s, float(x), y)) for x, y in zip(xs, ys)]


@draws("hair_front", "bangs")
def bangs(s: Sketch, rng: np.random.Generator) -> None:
    hair_front(s, zigzag(s, int(rng.integers(5, 8)), 0.12))


@draws("hair_front", "straight")
def straight(s: Sketch, rng: np.random.Generator) -> None:
    hair_front(s, fringe(s, lambda x: s.fringe_y + 0.05 * s.ry))


@draws("hair_front", "side_sweep")
def side_sweep(s: Sketch, rng: np.random.Generator) -> None:
    side, high, low = rng.choice([-1, 1]), s.cy - 0.85 * s.ry, s.fringe_y + 0.15 * s.ry
    hair_front(s, fringe(s, lambda x: high + (low - high)
                         * max(0.0, (side * (x - s.cx) / (1.25 * s.rx) + 1) / 2) ** 0.6))


@draws("hair_front", "curtains")
def curtains(s: Sketch, rng: np.random.Generator) -> None:
    high, low = s.cy - 0.9 * s.ry, s.fringe_y + 0.25 * s.ry
    hair_front(s, fringe(s, lambda x: high + (low - high) * (abs(x - s.cx) / (1.25 * s.rx)) ** 0.7))


@draws("hair_front", "spiky")
def spiky(s: Sketch, rng: np.random.Generator) -> None:
    cy, rx, ry = s.cy - 0.06 * s.ry, 1.1 * s.rx, 1.08 * s.ry

    def at(angle: float, r: float) -> Point:
        a = np.deg2rad(angle)
        return s.cx + r * rx * np.sin(a), cy - r * ry * np.cos(a)

    angles = np.linspace(-60, 60, 5) + rng.uniform(-6, 6)
    spikes = [s.poly([at(a - 14, 0.9), at(a, 1.28), at(a + 14, 0.9)]) for a in angles]
    hair_front(s, zigzag(s, 4, 0.16), *spikes)


@draws("hair_front", "curly")
def curly(s: Sketch, rng: np.random.Generator) -> None:
    r, cy = 0.2 * s.rx, s.cy - 0.06 * s.ry
    angles = np.linspace(-1.3, 1.3, 7)
    top = [s.ellipse(s.cx + 1.02 * s.rx * np.sin(a), cy - 1.02 * s.ry * np.cos(a), r) for a in angles]
    fringe_curls = [s.ellipse(x, s.fringe_y, 0.7 * r) for x in np.linspace(s.cx - 0.8 * s.rx, s.cx + 0.8 * s.rx, 5)]
    hair_front(s, fringe(s, lambda x: s.fringe_y), *top, *fringe_curls)


@draws("hair_front", "cowlick")
def cowlick(s: Sketch, rng: np.random.Generator) -> None:
    p = local(s.cx, s.cy - 1.1 * s.ry, 1.0, rng.choice([-1, 1]))
    curl = [p(0, 0.05), p(0.1 * s.rx, -0.3 * s.ry), p(0.4 * s.rx, -0.25 * s.ry), p(0.3 * s.rx, -0.08 * s.ry)]
    lick = s.line(bezier(*curl), 2.2)
    hair_front(s, fringe(s, lambda x: s.fringe_y + 0.06 * s.ry * np.sin(14 * x)), lick)


@draws("hair_front", "buzz")
def buzz(s: Sketch, rng: np.random.Generator) -> None:
    hair_front(s, fringe(s, lambda x: s.cy - 0.62 * s.ry), grow=1.04)


# --- accessory ----------------------------------------------------------------------------------

GOLD: RGB = (236, 190, 60)


def frame(s: Sketch, rng: np.random.Generator) -> RGB:
    return s.hand.ink if rng.random() < 0.4 else pick(rng, s.hand.accents)


def glasses(s: Sketch, rng: np.random.Generator, lens: Callable[[float, float, float], Mask]) -> None:
    """Frames around both eyes: `lens(x, y, r)` is the lens shape, the frame is the rim between r and r - t."""
    colour, r, t = frame(s, rng), 1.35 * s.e, max(s.w, 1.2 * SCALE) / s.n
    for side, x, y in pairs(s):
        s.fill(lens(x, y, r - t), pick(rng, s.hand.accents), 0.2)
        s.fill(minus(lens(x, y, r), lens(x, y, r - t)), colour)
        s.ink([(x + side * r, y - 0.2 * s.e), (s.cx + side * s.rx, y - 0.4 * s.e)], 0.9, colour)
    bridge = s.cx - s.eye_x + 0.9 * r, s.cx + s.eye_x - 0.9 * r
    ends, mid = [(x, s.eye_y - 0.2 * s.e) for x in bridge], (s.cx, s.eye_y - 0.6 * s.e)
    s.curve(ends[0], mid, mid, ends[1], width=0.9, colour=colour)


@draws("accessory", "round_glasses")
def round_glasses(s: Sketch, rng: np.random.Generator) -> None:
    glasses(s, rng, lambda x, y, r: s.ellipse(x, y, r))


@draws("accessory", "square_glasses")
def square_glasses(s: Sketch, rng: np.random.Generator) -> None:
    glasses(s, rng, lambda x, y, r: s.rect(x - 1.1 * r, y - 0.8 * r, x + 1.1 * r, y + 0.8 * r, 0.3 * r))


@draws("accessory", "beanie")
def beanie(s: Sketch, rng: np.random.Generator) -> None:
    colour, band = pick(rng, s.hand.accents), pick(rng, s.hand.accents)
    dome = s.ellipse(s.cx, s.cy - 0.1 * s.ry, 1.18 * s.rx, 1.16 * s.ry)
    brim = s.cy - 0.5 * s.ry
    pompom = s.ellipse(s.cx, s.cy - 1.22 * s.ry, 0.2 * s.rx)
    s.blob(union(inter(dome, s.above([(0, brim), (1, brim)])), pompom), colour, shaded=True)
    cuff = s.rect(s.cx - 1.2 * s.rx, brim - 0.22 * s.ry, s.cx + 1.2 * s.rx, brim + 0.05 * s.ry, 0.1 * s.rx)
    s.blob(cuff, mix(band, WHITE, 0.3), shaded=True)


@draws("accessory", "earrings")
def earrings(s: Sketch, rng: np.random.Generator) -> None:
    colour, hoop, r = pick(rng, (*s.hand.accents, GOLD)), rng.random() < 0.5, 0.1 * s.rx
    for side in (-1, 1):
        x, y = s.cx + side * 0.98 * s.rx, s.cy + 0.3 * s.ry
        if hoop:
            s.fill(minus(s.ellipse(x, y + r, r), s.ellipse(x, y + r, r - max(s.w, 1.2 * SCALE) / s.n)), colour)
        else:
            s.ink([(x, y), (x, y + 1.2 * r)], 0.7)
            s.blob(s.poly(star_pts(x, y + 1.9 * r, 0.9 * r, 4, 0.55)), colour)


@draws("accessory", "bow")
def bow(s: Sketch, rng: np.random.Generator) -> None:
    colour, side = pick(rng, s.hand.accents), rng.choice([-1, 1])
    x, y, w = s.cx + side * 0.55 * s.rx, s.cy - 1.0 * s.ry, 0.38 * s.rx
    wings = [s.poly([(x, y), (x + d * w, y - 0.6 * w), (x + d * w, y + 0.6 * w)]) for d in (-1, 1)]
    s.blob(union(*wings), colour, shaded=True)
    s.blob(s.ellipse(x, y, 0.25 * w), mix(colour, s.hand.ink, 0.2))


@draws("accessory", "flower")
def flower(s: Sketch, rng: np.random.Generator) -> None:
    colour, side = pick(rng, s.hand.accents), rng.choice([-1, 1])
    x, y, r = s.cx + side * 0.72 * s.rx, s.cy - 0.88 * s.ry, 0.15 * s.rx
    angles = np.linspace(0, 2 * np.pi, 5, endpoint=False)
    petals = [s.ellipse(x + r * np.cos(a), y + r * np.sin(a), 0.75 * r) for a in angles]
    s.blob(union(*petals), colour)
    s.blob(s.ellipse(x, y, 0.5 * r), GOLD)


@draws("accessory", "cat_ears")
def cat_ears(s: Sketch, rng: np.random.Generator) -> None:
    colour = s.hand.hair if rng.random() < 0.5 else pick(rng, s.hand.accents)
    for side in (-1, 1):
        p = local(s.cx, s.cy, 1.0, side)
        ear = [p(0.2 * s.rx, -1.0 * s.ry), p(0.75 * s.rx, -1.42 * s.ry), p(0.95 * s.rx, -0.7 * s.ry)]
        s.blob(s.poly(ear), colour, shaded=True)
        inner = [(0.6 * px + 0.4 * qx, 0.6 * py + 0.4 * qy) for (px, py), (qx, qy) in zip(ear, ear[1:] + ear[:1])]
        s.fill(s.poly(inner), s.hand.blush)


@draws("accessory", "crown")
def crown(s: Sketch, rng: np.random.Generator) -> None:
    y, h, w = s.cy - 1.0 * s.ry, 0.32 * s.ry, 0.42 * s.rx
    points = [(-1, 0), (-1.08, -1), (-0.5, -0.45), (0, -1.1), (0.5, -0.45), (1.08, -1), (1, 0)]
    s.blob(s.poly([(s.cx + dx * w, y + dy * h) for dx, dy in points]), GOLD, shaded=True)
    s.fill(s.ellipse(s.cx, y - 0.3 * h, 0.1 * w), pick(rng, s.hand.accents))


# --- signature ----------------------------------------------------------------------------------


def render_signature(hand: Hand, width: int, jitter_seed: int | None = None) -> Image.Image:
    """The hand's signature as an RGBA image (ink strokes on transparency), `width` pixels wide.

    With a jitter seed the control points, slant and proportions wobble slightly: a real
    signature is never drawn identically twice, and detectors must not rely on exact pixels.
    """
    n, height = width * SCALE, max(2, round(width * hand.signature_aspect))
    strokes = [np.asarray(stroke, dtype=float) for stroke in hand.signature]
    if jitter_seed is not None:
        rng = np.random.default_rng([hand.seed, jitter_seed])
        shear, stretch = rng.normal(0, 0.06), rng.uniform(0.94, 1.06)
        strokes = [p + rng.normal(0, 0.015, p.shape) for p in strokes]
        strokes = [np.c_[stretch * (p[:, 0] + shear * (0.5 - p[:, 1])), p[:, 1]] for p in strokes]
    lines = [np.asarray(bezier(*map(tuple, p))) for p in strokes]
    lo, hi = np.min([l.min(0) for l in lines], 0), np.max([l.max(0) for l in lines], 0)
    w = max(hand.signature_weight * n, SCALE)
    box = np.array([n, height * SCALE]) - 2 * w
    img = Image.new("L", (n, height * SCALE), 0)
    draw = ImageDraw.Draw(img)
    for line in lines:
        xy = [tuple(p) for p in w + (line - lo) / np.maximum(hi - lo, 1e-6) * box]
        draw.line(xy, fill=255, width=round(w), joint="curve")
        for x, y in (xy[0], xy[-1]):
            draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=255)
    out = Image.new("RGBA", img.size, (*hand.ink, 0))
    out.putalpha(img)
    return out.resize((width, height), Image.Resampling.LANCZOS)
