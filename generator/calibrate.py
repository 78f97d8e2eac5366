"""How the analysis metrics behave on planted images whose truth is known.

Before any diffusion sample is judged, the judge is checked: exact and degraded copies of training
icons (should be memorised, parts recognised in place), part swaps and scrambles made by
`generator.chimeras` (should be chimeras with recognised parts; scrambles displaced), and uniform
noise (nothing). Part precision counts a recognised part as right when its variant is the planted
one and its offset is within 1 px of the planted offset.

    python -m generator.calibrate DATA [--size 32] [--n 12]
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageFilter

from generator.analyze import Reference, as_array, explain_image, load_reference
from generator.chimeras import Source, part_swap, scrambled
from generator.dataset import load_manifest
from generator.train import training_set

Truth = dict[str, tuple[int, tuple[int, int]]]  # layer -> (variant, (dx, dy)) at dataset scale
KINDS = ("copy", "copy, blur 0.5 px", "copy, noise 0.05", "part swap", "scrambled", "uniform noise")


def planted(kind: str, rng: np.random.Generator, works: list[dict], source: Source) -> tuple[Image.Image, Truth | None]:
    """One planted image of `kind` and its per-layer truth (None for noise)."""
    if kind.startswith("copy"):
        work = works[int(rng.integers(len(works)))]
        img = source.image(work["path"]).convert("RGB")
        if kind.endswith("blur 0.5 px"):
            img = img.filter(ImageFilter.GaussianBlur(0.5))
        if kind.endswith("noise 0.05"):
            noisy = np.asarray(img, np.float32) + rng.normal(0, 0.05 * 255, (img.height, img.width, 3))
            img = Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))
        return img, {layer: (v, (0, 0)) for layer, v in work["parts"].items()}
    if kind == "uniform noise":
        size = works[0]["size"]
        return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), None
    maker: Callable = {"part swap": part_swap, "scrambled": scrambled}[kind]
    img, sources, _ = maker(rng, works, source)
    return img, {s["part"]: (s["variant"], tuple(s["offset"])) for s in sources}


def correct(record: dict[str, Any], truth: Truth, scale: float) -> int:
    hits = 0
    for layer in record["recognised"]:
        variant, (dx, dy) = truth[layer]
        got = record["parts"][layer]
        hits += got["variant"] == variant and max(abs(got["offset"][0] - dx * scale), abs(got["offset"][1] - dy * scale)) <= 1
    return hits


def calibrate(data: Path, size: int | None = None, n: int = 12, seed: int = 0, artist: str | None = None) -> dict[str, dict]:
    """Per planted kind: median nearest-icon tile distance, memorised, chimera and scrambled rates,
    recognised fraction, part precision."""
    data = Path(data)
    artist, _ = training_set(data, artist)
    works = [r for r in load_manifest(data, parts=True) if r["artist"] == artist and r.get("split", "reference") == "reference"]
    size = size or works[0]["size"]
    ref: Reference = load_reference(data, artist, size)
    source, rng, table = Source(data), np.random.default_rng(seed), {}
    for kind in KINDS:
        rows, recognised, right = [], 0, 0
        for _ in range(n):
            img, truth = planted(kind, rng, works, source)
            record, _ = explain_image(as_array(img, size), ref)
            rows.append(record)
            if truth is not None:
                recognised += len(record["recognised"])
                right += correct(record, truth, size / works[0]["size"])
        table[kind] = {
            "nearest_distance": float(np.median([r["memorisation"]["nearest"][0]["distance"] for r in rows])),
            "memorised": float(np.mean([r["memorisation"]["memorised"] for r in rows])),
            "recognised_fraction": float(np.mean([r["recognised_fraction"] for r in rows])),
            "part_precision": right / recognised if recognised else None,
            "chimera": float(np.mean([r["chimera"] for r in rows])),
            "scrambled": float(np.mean([r["scrambled"] for r in rows])),
        }
    return table


def markdown(table: dict[str, dict]) -> str:
    cols = ("nearest_distance", "memorised", "recognised_fraction", "part_precision", "chimera", "scrambled")
    lines = ["| planted | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for kind, row in table.items():
        lines.append(f"| {kind} | " + " | ".join("-" if row[c] is None else f"{row[c]:.2f}" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--size", type=int, default=None, help="analysis size (default: the dataset's)")
    parser.add_argument("--n", type=int, default=12, help="images per planted kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{platform.node()}: calibrate {args.data} size={args.size} n={args.n} seed={args.seed}\n")
    print(markdown(calibrate(args.data, args.size, args.n, args.seed)))


if __name__ == "__main__":
    main()
