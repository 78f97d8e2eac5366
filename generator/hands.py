"""A procedural artist "hand": the style habits that make one artist's icons recognisably theirs.

Attribution should be possible from palette, line and shading but not trivial, so every trait is
sampled independently from the seed: two hands may share a shading style or a face shape, but
the combination (plus the exact colours and proportions) is personal.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]
Point = tuple[float, float]
Stroke = tuple[Point, ...]  # a chain of cubic Beziers: p0, c, c, p1, c, c, p2, ...

SHADINGS = ("flat", "cel", "radial")
FACE_SHAPES = ("ellipse", "rounded", "egg")

# Shape families each layer can be drawn in, keyed in compositing order (back to front).
# A hand knows only a subset of them: its repertoire is part of its style.
FAMILIES: dict[str, tuple[str, ...]] = {
    "skin": ("round_ears", "pointy_ears", "no_ears", "big_ears", "lobed_ears"),
    "hair_back": ("long", "bob", "ponytail", "pigtails", "bun", "short", "flip"),
    "eyes": ("bead", "anime", "happy", "sleepy", "round", "wink", "sparkle", "almond", "lidded"),
    "brows": ("arch", "flat", "angry", "worried", "thick", "dots", "wavy"),
    "nose": ("dot", "hook", "button", "vee", "nostrils", "shadow", "line"),
    "mouth": ("smile", "open", "cat", "o", "flat", "grin", "smirk", "tongue", "frown", "shout"),
    "cheeks": ("blush", "freckles", "hatch", "disc", "heart", "swirl"),
    "hair_front": ("bangs", "straight", "side_sweep", "curtains", "spiky", "curly", "cowlick", "buzz"),
    "accessory": (
        "round_glasses", "square_glasses", "beanie", "earrings", "bow", "flower", "cat_ears", "crown",
    ),
}

# How many variants a hand draws of each layer; eyes and mouth get the most because the
# dataset holds some of them out as "new originals" (see generator.dataset.HELDOUT).
VARIANTS: dict[str, int] = {
    "skin": 4, "hair_back": 6, "eyes": 8, "brows": 6, "nose": 5,
    "mouth": 8, "cheeks": 5, "hair_front": 6, "accessory": 6,
}

SKIN_TONES: tuple[RGB, ...] = (
    (255, 224, 196), (248, 208, 170), (234, 186, 148), (205, 150, 110),
    (160, 110, 80), (120, 80, 58), (255, 236, 220), (240, 200, 180),
)
INKS: tuple[RGB, ...] = ((24, 20, 28), (60, 36, 24), (28, 36, 80), (58, 26, 70), (20, 60, 52))


def hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def jitter(rng: np.random.Generator, colour: RGB, amount: int) -> RGB:
    shifted = np.clip(np.array(colour) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return tuple(int(c) for c in shifted)  # type: ignore[return-value]


@dataclass(frozen=True)
class Hand:
    """Everything one artist does the same way in every icon.

    Proportions are fractions of the face half-width `face_rx` / half-height `face_ry` (which are
    themselves fractions of the canvas side), so one hand draws consistently at any size.
    """

    seed: int
    skin: RGB
    blush: RGB
    hair: RGB
    accents: tuple[RGB, RGB, RGB]
    ink: RGB
    line: float  # outline width as a fraction of the canvas side
    shading: str  # one of SHADINGS
    face_shape: str  # one of FACE_SHAPES
    face_rx: float
    face_ry: float
    eye_dy: float  # eye line below the face centre
    eye_gap: float  # half the distance between the eyes
    eye_r: float
    mouth_dy: float
    mouth_w: float  # half the mouth width
    fringe: float  # how far above the face centre the fringe ends
    shapes: dict[str, tuple[str, ...]]  # layer -> the families this hand draws, one per variant
    signature: tuple[Stroke, ...]  # in a unit box, x right, y down
    signature_aspect: float  # height / width of the signature box
    signature_weight: float  # pen width as a fraction of the signature width

    @classmethod
    def from_seed(cls, seed: int) -> Hand:
        rng = np.random.default_rng(seed)
        hue = rng.random()
        scheme = ((0.0, 0.08, -0.08), (0.0, 0.5, 0.55), (0.0, 1 / 3, 2 / 3))[rng.integers(3)]
        sat, val = rng.uniform(0.45, 0.9), rng.uniform(0.65, 0.95)
        skin = jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 8)
        if rng.random() < 0.15:  # some artists draw fantasy-coloured people
            skin = hsv(rng.random(), rng.uniform(0.12, 0.3), 0.97)
        return cls(
            seed=seed,
            skin=skin,
            blush=mix(skin, hsv(rng.uniform(-0.04, 0.04), 0.75, 0.95), rng.uniform(0.45, 0.75)),
            hair=hsv(rng.random(), rng.uniform(0.25, 0.9), rng.uniform(0.2, 0.95)),
            accents=tuple(hsv(hue + o, sat, val) for o in scheme),  # type: ignore[arg-type]
            ink=jitter(rng, INKS[rng.integers(len(INKS))], 10),
            line=float(rng.uniform(0.010, 0.034)),
            shading=SHADINGS[rng.integers(len(SHADINGS))],
            face_shape=FACE_SHAPES[rng.integers(len(FACE_SHAPES))],
            face_rx=float(rng.uniform(0.24, 0.3)),
            face_ry=float(rng.uniform(0.25, 0.285)),
            eye_dy=float(rng.uniform(0.05, 0.25)),
            eye_gap=float(rng.uniform(0.36, 0.55)),
            eye_r=float(rng.uniform(0.16, 0.24)),
            mouth_dy=float(rng.uniform(0.5, 0.65)),
            mouth_w=float(rng.uniform(0.24, 0.38)),
            fringe=float(rng.uniform(0.4, 0.62)),
            shapes={layer: repertoire(rng, layer) for layer in FAMILIES},
            signature=scribble(rng),
            signature_aspect=float(rng.uniform(0.28, 0.4)),
            signature_weight=float(rng.uniform(0.04, 0.065)),
        )


def repertoire(rng: np.random.Generator, layer: str) -> tuple[str, ...]:
    """The families a hand draws `layer` in, in variant order: a random subset of FAMILIES[layer]."""
    return tuple(str(f) for f in rng.permutation(FAMILIES[layer])[: VARIANTS[layer]])


def scribble(rng: np.random.Generator) -> tuple[Stroke, ...]:
    """A handwriting-like name: one cursive Bezier chain of up-down letter strokes plus a flourish.

    Letter count, slant, letter heights and loopiness (tangent size) all come from the seed, so
    signatures differ in rhythm and shape, not just in colour.
    """
    letters = int(rng.integers(3, 7))
    slant = rng.uniform(-0.1, 0.35)
    loop = rng.uniform(0.3, 0.9)
    tops = rng.choice([0.1, 0.35], size=letters, p=[0.35, 0.65])
    knots = []
    for i, x in enumerate(np.linspace(0.06, 0.9, 2 * letters + 1)):
        y = 0.7 if i % 2 == 0 else tops[i // 2] + rng.uniform(-0.05, 0.05)
        knots.append(np.array([x + slant * (0.7 - y) * 0.3, y]))
    step = 0.84 / (2 * letters)
    tangents = [np.array([step * loop * rng.uniform(0.5, 1.8), rng.normal(0, 0.12)]) for _ in knots]
    main = [knots[0]]
    for k0, k1, t0, t1 in zip(knots, knots[1:], tangents, tangents[1:]):
        main += [k0 + t0, k1 - t1, k1]
    flourish = {
        "underline": [(0.04, 0.9), (0.35, 1.0), (0.7, 0.78), (0.98, 0.86)],
        "tbar": [(0.3, 0.3), (0.4, 0.25), (0.55, 0.32), (0.66, 0.27)],
        "swash": [(0.9, 0.7), (1.05, 0.4), (0.6, 0.05), (0.2, 0.2)],
    }[("underline", "tbar", "swash")[rng.integers(3)]]
    flourish = [np.array(p) + rng.normal(0, 0.03, 2) for p in flourish]
    return tuple(tuple((round(float(x), 4), round(float(y), 4)) for x, y in s) for s in (main, flourish))
