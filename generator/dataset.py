"""Writing a synthetic-artist dataset: part libraries, icons, signatures and a manifest.

Layout under `out/`:

    manifest.jsonl                                   one record per icon (reference and held-out)
    artist_XX/icons/artist_XX_NNNN.png               reference icons (opaque RGB)
    artist_XX/heldout/artist_XX_hNNNN.png            held-out originals (only with holdout > 0)
    artist_XX/parts/<layer>/<variant>.png            the part library (RGBA, full canvas)
    artist_XX/parts/<layer>/<variant>_mask.png       its alpha (L)
    artist_XX/signatures/sig_K.png                   jittered signature samples (RGBA)

An artist's icons are distinct points of the Cartesian product of its part variants, like an
illustrator re-using a part library. Eyes, mouth, front hair and accessory keep a few variants back (HELDOUT) that only
held-out icons use, so "new original by the same hand" is a well-defined evaluation split.
"""

from __future__ import annotations

import json
import sys
from math import prod
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from generator.hands import VARIANTS, Hand
from generator.parts import LAYERS, alpha_box, composite, render_part, render_signature

HELDOUT: dict[str, int] = {"eyes": 2, "mouth": 2, "hair_front": 2, "accessory": 2}  # reserved for held-out icons
SPLITS = ("reference", "heldout")
SIGNATURE_SAMPLES = 3
SAMPLE_WIDTH = 160  # pixels: signature samples are written at this width, whatever the icon size
PROGRESS_ABOVE = 500  # icons; smaller datasets are made silently


def artist_name(index: int) -> str:
    return f"artist_{index:02d}"


def artist_seed(seed: int, index: int) -> int:
    """Spread (dataset seed, artist) pairs over the seed space so neighbouring artists are unrelated."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def save_png(img: Image.Image, path: Path) -> None:
    """PNG with fixed settings and no metadata, so equal images give byte-identical files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=False, compress_level=6)


def pool(layer: str, split: str) -> range:
    """Variants of `layer` that icons of `split` may use: held-out ones are disjoint from references."""
    n, held = VARIANTS[layer], HELDOUT.get(layer, 0)
    if split == "reference":
        return range(n - held)
    return range(n - held, n) if held else range(n)


def sample_combos(rng: np.random.Generator, pools: list[range], count: int) -> list[tuple[int, ...]]:
    """`count` distinct part tuples from the product of `pools`, without enumerating the product."""
    radices = [len(p) for p in pools]
    if count > prod(radices):
        raise ValueError(f"only {prod(radices)} distinct icons exist, asked for {count}")
    combos = []
    for index in rng.choice(prod(radices), size=count, replace=False):
        digits = []
        for p, radix in zip(pools, radices):
            index, digit = divmod(int(index), radix)
            digits.append(p[digit])
        combos.append(tuple(digits))
    return combos


def part_library(hand: Hand, size: int) -> dict[str, list[Image.Image]]:
    return {layer: [render_part(hand, layer, v, size) for v in range(VARIANTS[layer])] for layer in LAYERS}


def save_library(root: Path, library: dict[str, list[Image.Image]]) -> None:
    for layer, variants in library.items():
        for v, img in enumerate(variants):
            save_png(img, root / layer / f"{v}.png")
            save_png(img.getchannel("A"), root / layer / f"{v}_mask.png")


def signature_width(size: int) -> int:
    return max(8, size // 3)


def sign(icon: Image.Image, hand: Hand, rng: np.random.Generator) -> tuple[Image.Image, list[int]]:
    """Paste a freshly jittered signature near the bottom-right corner; returns the icon and its ink box."""
    sig = render_signature(hand, signature_width(icon.width), jitter_seed=int(rng.integers(2**31)))
    margin = max(1, icon.width // 32)
    x = icon.width - sig.width - margin - int(rng.integers(margin + 1))
    y = icon.height - sig.height - margin - int(rng.integers(margin + 1))
    canvas = icon.convert("RGBA")
    canvas.alpha_composite(sig, (x, y))
    x0, y0, x1, y1 = alpha_box(sig) or (0, 0, 0, 0)
    return canvas.convert("RGB"), [x0 + x, y0 + y, x1 + x, y1 + y]


def make_dataset(
    out: Path,
    artists: int,
    per_artist: int,
    size: int = 64,
    seed: int = 0,
    signed: bool = False,
    holdout: int = 0,
) -> list[dict]:
    """Write `artists` synthetic artists with `per_artist` reference icons each (+ `holdout` held-out).

    Same arguments give byte-identical files. The references' part tuples do not depend on
    `holdout` or `signed`, so an index built on references stays valid across those choices.
    Returns the manifest records (also written to `out/manifest.jsonl`).
    """
    out = Path(out)
    for split, count in zip(SPLITS, (per_artist, holdout)):  # before anything is drawn or written
        if count > (most := prod(len(pool(layer, split)) for layer in LAYERS)):
            raise ValueError(f"only {most} distinct {split} icons exist, asked for {count}")
    records: list[dict] = []
    total = artists * (per_artist + holdout)
    # a bar on a terminal only: in a log its redraws are one long line
    with tqdm(total=total, desc="icons", disable=total <= PROGRESS_ABOVE or not sys.stderr.isatty()) as bar:
        for a in range(artists):
            name, hand = artist_name(a), Hand.from_seed(artist_seed(seed, a))
            library = part_library(hand, size)
            save_library(out / name / "parts", library)
            boxes = {layer: [alpha_box(img) for img in imgs] for layer, imgs in library.items()}
            for k in range(SIGNATURE_SAMPLES):  # samples as an artist submits them: a readable scan
                sig = render_signature(hand, SAMPLE_WIDTH, jitter_seed=k)
                save_png(sig, out / name / "signatures" / f"sig_{k}.png")
            for split, count in zip(SPLITS, (per_artist, holdout)):
                rng = np.random.default_rng([seed, a, SPLITS.index(split)])
                folder, stem = ("icons", f"{name}_") if split == "reference" else ("heldout", f"{name}_h")
                for i, combo in enumerate(sample_combos(rng, [pool(layer, split) for layer in LAYERS], count)):
                    icon = composite(library[layer][v] for layer, v in zip(LAYERS, combo))
                    record_boxes = {layer: boxes[layer][v] for layer, v in zip(LAYERS, combo)}
                    if signed:
                        icon, record_boxes["signature"] = sign(icon, hand, rng)
                    path = Path(name, folder, f"{stem}{i:04d}.png")
                    save_png(icon, out / path)
                    record = {
                        "artist": name, "path": path.as_posix(), "split": split,
                        "parts": dict(zip(LAYERS, combo)), "boxes": record_boxes, "size": size, "seed": seed,
                    }
                    if split == "heldout":
                        record["heldout_parts"] = list(HELDOUT)
                    records.append(record)
                    bar.update()
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def load_manifest(data: Path, parts: bool = False) -> list[dict]:
    """The manifest's records; a line that is not one (no JSON object with a path and an artist, both
    text) is a ValueError naming it, not a KeyError deep in training. With `parts`, every record
    must also name every layer's part variant, the parts' boxes and the icon size, as `make_dataset`
    writes them: analysis and chimeras are built from the parts, where training needs only the icons."""
    path = Path(data) / "manifest.jsonl"
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a dataset manifest ({e})") from None
    for n, r in enumerate(records, 1):
        if not (isinstance(r, dict) and isinstance(r.get("path"), str) and isinstance(r.get("artist"), str)):
            raise ValueError(f"{path}: record {n} is not an icon's (an object with a \"path\" and an \"artist\")")
        if parts and not (isinstance(r.get("parts"), dict) and set(LAYERS) <= set(r["parts"])
                          and isinstance(r.get("boxes"), dict) and isinstance(r.get("size"), int)):
            raise ValueError(f"{path}: record {n} names no part variants, boxes and size (\"parts\" of every layer, "
                             "\"boxes\", \"size\"), which `chimera dataset make` writes: analysis and chimeras need "
                             "a dataset made by it")
    return records
