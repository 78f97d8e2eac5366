"""Explaining an image as a composite of one artist's parts, each possibly displaced.

The question "does this sample contain the artist's eyes, and where?" is answered by analysis
by synthesis: the sample is fitted as the back-to-front alpha composite of one variant (or none)
per layer from the artist's part library, each shifted within a translation window, by coordinate
descent on the L2 error starting from the nearest training icon's parts. Fitting the whole
composite (rather than matching each part alone) handles occlusion: glasses over eyes or a fringe
over brows are explained by the layers in front, not counted against the eyes.

A fitted part is *recognised* when, over its visible footprint (its alpha times what the layers
in front leave visible), it explains the sample well in absolute terms (weighted RMS <= TAU),
clearly better than leaving the layer out (<= RHO x that error), and better than the runner-up
variant by a clear margin (MARGIN, see `Explainer.margin`), where the runner-up would look
visibly different (MIN_GAP): two variants that render alike in this context cannot be told apart.
The constants were set on degraded copies of training icons (`generator.calibrate`), before any
diffusion sample was analysed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from generator.parts import LAYERS

TAU = 0.15  # RMS over the footprint, colours in [0, 1]
RHO = 0.5  # the part's error must be at most half the error of leaving it out
MARGIN = 0.2  # (d2^2 - d1^2) / |C2 - C1|^2 for runner-up variant 2: 0 = halfway, 1 = exactly variant 1
MIN_GAP = 0.3  # summed squared difference the runner-up must make, else the variant is ambiguous here
MIN_MASS = 1.0  # visible alpha summed over pixels; below it a part is hidden, neither recognised nor not
ROUNDS = 3
SHIFT_PRIOR = 1e-6  # SSE per squared pixel of shift: among equal fits, the undisplaced one


def premultiplied(img: Image.Image, size: int) -> np.ndarray:
    """(size, size, 4) float32 premultiplied RGBA in [0, 1]; resized in premultiplied space (no halos)."""
    img = img.convert("RGBa")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255


def load_library(data: Path, artist: str, size: int) -> dict[str, np.ndarray]:
    """layer -> (variants, size, size, 4) premultiplied parts from `data/<artist>/parts/`."""
    root = Path(data) / artist / "parts"
    library = {}
    for layer in LAYERS:
        files = sorted((p for p in (root / layer).glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))
        if not files:
            raise ValueError(f"{root / layer} has no part variants")
        arrays = []
        for path in files:
            with Image.open(path) as img:
                arrays.append(premultiplied(img, size))
        library[layer] = np.stack(arrays)
    return library


def offsets(radius: int) -> np.ndarray:
    """(O, 2) [dx, dy] in the row-major order of a (2r+1, 2r+1) correlation output."""
    r = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    return np.stack([dx.ravel(), dy.ravel()], axis=1)


def search_weights(parts: np.ndarray) -> torch.Tensor:
    """(V, 9, H, W) per-variant maps whose correlations with `search_maps` add up to the SSE."""
    c, a = parts[..., :3], parts[..., 3:]
    stacked = np.concatenate([2 * c, -2 * a, (c**2).sum(-1, keepdims=True), -2 * c * a, a**2], axis=-1)
    return torch.from_numpy(stacked.astype(np.float64)).permute(0, 3, 1, 2).contiguous()


def search_maps(below: np.ndarray, through: np.ndarray, residual: np.ndarray) -> torch.Tensor:
    """(1, 9, H, W) context maps: see `Explainer.candidates`."""
    t2 = through**2
    maps = np.concatenate([
        residual * through, (residual * below).sum(-1, keepdims=True) * through, t2,
        t2 * below, t2 * (below**2).sum(-1, keepdims=True),
    ], axis=-1)
    return torch.from_numpy(maps.astype(np.float64)).permute(2, 0, 1)[None]


def place(part: np.ndarray, dx: int, dy: int) -> np.ndarray:
    h, w, _ = part.shape
    out = np.zeros_like(part)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = part[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def over(layers: list[np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied colour and alpha of `layers` composited back to front (empty: transparent)."""
    colour, alpha = np.zeros((*shape, 3), np.float32), np.zeros((*shape, 1), np.float32)
    for layer in layers:
        a = layer[..., 3:]
        colour, alpha = layer[..., :3] + (1 - a) * colour, a + (1 - a) * alpha
    return colour, alpha


def on_paper(layers: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    colour, alpha = over(layers, shape)
    return colour + (1 - alpha)  # white paper behind


@dataclass
class Part:
    variant: int | None  # None: the fit leaves this layer out
    offset: tuple[int, int]
    mass: float = 0.0
    error: float = float("nan")
    absent_error: float = float("nan")
    margin: float = float("nan")

    def recognised(self, tau: float = TAU) -> bool:
        return (
            self.variant is not None and self.mass >= MIN_MASS and self.error <= tau
            and self.error <= RHO * self.absent_error and self.margin >= MARGIN
        )

    def hidden(self) -> bool:
        return self.variant is not None and self.mass < MIN_MASS

    def as_dict(self) -> dict:
        return {
            "variant": self.variant, "offset": list(self.offset), "mass": round(self.mass, 2),
            "error": round(self.error, 4), "absent_error": round(self.absent_error, 4),
            "margin": round(self.margin, 3), "recognised": self.recognised(), "hidden": self.hidden(),
        }


@dataclass
class Explanation:
    parts: dict[str, Part]
    fit: np.ndarray  # (H, W, 3) the fitted composite
    visible: dict[str, np.ndarray] = field(repr=False)  # layer -> (H, W) visible alpha of the fitted part
    error: float = 0.0  # RMS of the whole fit


class Explainer:
    """Fits images of one artist; `radius` bounds the displacement searched, in pixels."""

    def __init__(self, library: dict[str, np.ndarray], radius: int) -> None:
        self.library, self.radius = library, radius
        self.weights = {layer: search_weights(parts) for layer, parts in library.items()}
        self.offsets = offsets(radius)
        self.prior = SHIFT_PRIOR * (self.offsets**2).sum(1)

    def placed(self, layer: str, part: Part) -> np.ndarray | None:
        if part.variant is None:
            return None
        return place(self.library[layer][part.variant], *part.offset)

    def context(self, image: np.ndarray, state: dict[str, Part], i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What is behind layer i (opaque), the transmittance of what is in front, and the residual without it."""
        shape = image.shape[:2]
        layers = [self.placed(layer, state[layer]) for layer in LAYERS]
        below = on_paper([p for p in layers[:i] if p is not None], shape)
        front_colour, front_alpha = over([p for p in layers[i + 1:] if p is not None], shape)
        through = 1 - front_alpha
        return below, through, front_colour + through * below - image

    def candidates(self, layer: str, below: np.ndarray, through: np.ndarray, residual: np.ndarray) -> np.ndarray:
        """(V, O) SSE of the composite with each variant at each offset, plus the shift prior.

        With residual R (layer left out), transmittance T of the layers in front, opaque B behind and
        the shifted part S (premultiplied colour S_c, alpha S_a), the error is R + T (S_c - S_a B), so
        SSE = sum R^2 + 2 R T S_c - 2 R T B S_a + T^2 S_c^2 - 2 T^2 B S_c S_a + T^2 B^2 S_a^2: five
        cross-correlations of context maps with part maps, all offsets at once in one conv2d.
        """
        r = self.radius
        maps = torch.nn.functional.pad(search_maps(below, through, residual), (r, r, r, r))
        cross = torch.nn.functional.conv2d(maps, self.weights[layer])[0].flatten(1).numpy()
        return float((residual**2).sum()) + cross + self.prior

    def explain(self, image: np.ndarray, start: dict[str, int]) -> Explanation:
        """Fit `image` ((H, W, 3) float in [0, 1]) starting from the part tuple `start`."""
        state = {layer: Part(start[layer], (0, 0)) for layer in LAYERS}
        for _ in range(ROUNDS):
            changed = False
            for i, layer in enumerate(LAYERS):
                below, through, residual = self.context(image, state, i)
                absent = float(np.einsum("hwc,hwc->", residual, residual))
                sse = self.candidates(layer, below, through, residual)
                v, o = np.unravel_index(int(np.argmin(sse)), sse.shape)
                choice = Part(int(v), self.shift(o)) if sse[v, o] < absent else Part(None, (0, 0))
                if (choice.variant, choice.offset) != (state[layer].variant, state[layer].offset):
                    state[layer], changed = choice, True
            if not changed:
                break
        return self.score(image, state)

    def score(self, image: np.ndarray, state: dict[str, Part]) -> Explanation:
        """Footprint errors, absent errors and runner-up margins of a fitted state."""
        visible = {}
        for i, layer in enumerate(LAYERS):
            part = state[layer]
            below, through, residual = self.context(image, state, i)
            if part.variant is None:
                visible[layer] = np.zeros(image.shape[:2], np.float32)
                continue
            p = self.placed(layer, part)
            delta = through * (p[..., :3] - p[..., 3:] * below)  # what this part changes in the composite
            weight = (p[..., 3:] * through)[..., 0]
            visible[layer], part.mass = weight, float(weight.sum())
            if part.mass < MIN_MASS:
                continue
            w = weight[..., None] / (3 * part.mass)
            part.error = float(np.sqrt((w * (residual + delta) ** 2).sum()))
            part.absent_error = float(np.sqrt((w * residual**2).sum()))
            part.margin = self.margin(layer, part, below, through, residual, delta)
        layers = [q for q in (self.placed(layer, state[layer]) for layer in LAYERS) if q is not None]
        fit = on_paper(layers, image.shape[:2])
        return Explanation(state, fit, visible, float(np.sqrt(((fit - image) ** 2).mean())))

    def shift(self, o: int) -> tuple[int, int]:
        dx, dy = self.offsets[o]
        return int(dx), int(dy)

    def margin(self, layer: str, part: Part, below: np.ndarray, through: np.ndarray,
               residual: np.ndarray, delta: np.ndarray) -> float:
        """Where the sample lies between the chosen variant (1) and the runner-up (0 = halfway).

        0 when the runner-up is visibly no different here (occluded, or nearly the same shape):
        then which variant it is cannot be told.
        """
        sse = self.candidates(layer, below, through, residual)
        sse[part.variant] = np.inf
        if not np.isfinite(sse).any():
            return 1.0
        v2, o2 = np.unravel_index(int(np.argmin(sse)), sse.shape)
        rival = place(self.library[layer][v2], *self.shift(o2))
        rival_delta = through * (rival[..., :3] - rival[..., 3:] * below)
        sse1 = float(((residual + delta) ** 2).sum())
        gap = float(((delta - rival_delta) ** 2).sum())
        return (float(sse[v2, o2]) - sse1) / gap if gap >= MIN_GAP else 0.0
