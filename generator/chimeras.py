"""Chimeras: explicit recombinations of an artist's icons, with ground truth for every region.

A misuse detector has to say which originals a suspicious image was assembled from, so every
chimera records, per part (re-composited kinds) or per pixel box (pixel kinds), the source icon
it came from. Sources are always reference icons of one artist, and re-composited chimeras never
reproduce an existing icon's part tuple (that would be a copy, not a chimera).

Kinds:
    part_swap  layers taken from 2-4 icons, re-composited from the part library in place
    scrambled  the same, with some parts swapped in position (e.g. eyes moved to the mouth)
    half_swap  left half of icon A, right half of icon B, pixel-wise
    collage    3-4 rectangular pieces of different icons tiled, each at its original place
"""

from __future__ import annotations

import json
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from generator.dataset import load_manifest, save_png
from generator.parts import LAYERS, alpha_box, composite

KINDS = ("part_swap", "scrambled", "half_swap", "collage")
SWAPS = (("eyes", "mouth"), ("brows", "mouth"), ("eyes", "nose"), ("nose", "mouth"), ("brows", "cheeks"))
Made = tuple[Image.Image, list[dict], dict[str, list[int]]]


class Source:
    """Reads icons and part layers of a dataset, caching them: chimeras re-use the same few files."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.image = lru_cache(maxsize=None)(self._image)

    def _image(self, path: str) -> Image.Image:
        with Image.open(self.data / path) as img:
            return img.copy()

    def part(self, work: dict, layer: str) -> Image.Image:
        return self.image(f"{work['artist']}/parts/{layer}/{work['parts'][layer]}.png")


def pick(rng: np.random.Generator, works: list[dict], count: int) -> list[dict]:
    return [works[i] for i in rng.choice(len(works), size=count, replace=False)]


def assign_parts(rng: np.random.Generator, works: list[dict]) -> dict[str, dict]:
    """Layer -> source work, from >= 2 distinct works, giving a part tuple no existing icon has."""
    existing = {tuple(w["parts"][layer] for layer in LAYERS) for w in works}
    for _ in range(100):
        donors = pick(rng, works, min(len(works), int(rng.integers(2, 5))))
        owner = {layer: donors[rng.integers(len(donors))] for layer in LAYERS}
        if len({w["path"] for w in owner.values()}) < 2:
            continue
        if tuple(owner[layer]["parts"][layer] for layer in LAYERS) not in existing:
            return owner
    raise ValueError("could not recombine these works into a new part tuple; are there >= 2 icons per artist?")


def recompose(owner: dict[str, dict], source: Source, moves: dict[str, tuple[int, int]]) -> Made:
    """Composite each layer from its owner's part library, translated by `moves` where given."""
    layers, sources, boxes = [], [], {}
    for layer in LAYERS:
        work, (dx, dy) = owner[layer], moves.get(layer, (0, 0))
        img = Image.new("RGBA", (work["size"], work["size"]), (0, 0, 0, 0))
        img.paste(source.part(work, layer), (dx, dy))
        layers.append(img)
        sources.append({"work": work["path"], "part": layer, "variant": work["parts"][layer], "offset": [dx, dy]})
        boxes[layer] = alpha_box(img)
    return composite(layers), sources, boxes


def part_swap(rng: np.random.Generator, works: list[dict], source: Source) -> Made:
    return recompose(assign_parts(rng, works), source, {})


def scrambled(rng: np.random.Generator, works: list[dict], source: Source) -> Made:
    """Swap the positions of 1-2 pairs of parts (e.g. eyes <-> mouth), centre to centre."""
    owner = assign_parts(rng, works)
    # a part drawn too small to leave a pixel (some accessories on 20-24 px icons) has no box: it stays
    centre = {layer: np.array(box).reshape(2, 2).mean(0) for layer in LAYERS
              if (box := owner[layer]["boxes"].get(layer)) is not None}
    moves: dict[str, tuple[int, int]] = {}
    order, drawn = rng.permutation(len(SWAPS)), int(rng.integers(1, 3))
    for n, i in enumerate(order):
        if n >= drawn and moves:  # the swaps drawn; past them only while none has moved a part
            break
        a, b = SWAPS[i]
        if a in moves or b in moves or a not in centre or b not in centre:
            continue
        dx, dy = (int(d) for d in np.round(centre[b] - centre[a]))
        if (dx, dy) != (0, 0):  # (centres a pixel apart round together on tiny icons: that swap moves nothing)
            moves[a], moves[b] = (dx, dy), (-dx, -dy)
    return recompose(owner, source, moves)


def tile(works: list[dict], source: Source, regions: dict[str, list[int]]) -> Made:
    """Paste each region of the corresponding work at the same place: pixel-exact provenance."""
    first = source.image(works[0]["path"])
    out = Image.new("RGB", first.size)
    sources = []
    for work, (name, box) in zip(works, regions.items()):
        out.paste(source.image(work["path"]).crop(box), box[:2])
        sources.append({"work": work["path"], "box": box, "region": name})
    return out, sources, regions


def half_swap(rng: np.random.Generator, works: list[dict], source: Source) -> Made:
    size = works[0]["size"]
    return tile(pick(rng, works, 2), source, {"left": [0, 0, size // 2, size], "right": [size // 2, 0, size, size]})


def collage(rng: np.random.Generator, works: list[dict], source: Source) -> Made:
    size, count = works[0]["size"], int(rng.integers(3, 5))
    x, y = (int(rng.integers(round(0.3 * size), round(0.7 * size) + 1)) for _ in range(2))
    if count == 4:
        boxes = [[0, 0, x, y], [x, 0, size, y], [0, y, x, size], [x, y, size, size]]
    else:
        boxes = [[0, 0, x, size], [x, 0, size, y], [x, y, size, size]]
    return tile(pick(rng, works, count), source, {f"piece_{i}": b for i, b in enumerate(boxes)})


MIN_WORKS = 4  # reference icons an artist needs: a collage takes up to 4
MAKERS: dict[str, Callable[[np.random.Generator, list[dict], Source], Made]] = {
    "part_swap": part_swap, "scrambled": scrambled, "half_swap": half_swap, "collage": collage,
}


def make_chimeras(data: Path, out: Path, n: int, seed: int = 0) -> list[dict]:
    """Write `n` chimeras of the reference icons in `data` to `out/chimera_NNNN.png` + `out/chimeras.jsonl`.

    Kinds cycle through KINDS so every kind is equally represented; the artist of each chimera is
    drawn at random. Paths in "sources" are relative to `data`, "path" is relative to `out`.
    """
    data, out = Path(data), Path(out)
    by_artist: dict[str, list[dict]] = defaultdict(list)
    for work in load_manifest(data, parts=True):
        if work.get("split", "reference") == "reference":
            by_artist[work["artist"]].append(work)
    if n < 1:
        raise ValueError(f"--n must be at least 1 (got {n})")
    if seed < 0:
        raise ValueError(f"--seed must be 0 or more (got {seed})")
    few = sorted(a for a, works in by_artist.items() if len(works) < MIN_WORKS)
    if not by_artist or few:
        raise ValueError(f"chimeras need at least {MIN_WORKS} reference icons per artist "
                         f"({', '.join(few) + ' has fewer' if few else 'the dataset has none'}): collages "
                         "take up to 4 icons (make a larger dataset with `chimera dataset make`)")
    artists, source, rng = sorted(by_artist), Source(data), np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        kind, artist = KINDS[i % len(KINDS)], artists[rng.integers(len(artists))]
        img, sources, boxes = MAKERS[kind](rng, by_artist[artist], source)
        path = f"chimera_{i:04d}.png"
        save_png(img, out / path)
        records.append(
            {"path": path, "artist": artist, "kind": kind, "sources": sources, "boxes": boxes, "size": img.width}
        )
    (out / "chimeras.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records
