"""What one scored image costs by its size: window descriptors against Pillow, and the whole score.

    .venv/bin/python benchmarks/size_bench.py [--sides 64 512 1024 2048 4096] [--images 3] [--rounds 3]

World: 3 synthetic artists (the generator), 30 reference icons each registered in a fresh
store. Queries: registered icons enlarged to each side (bicubic, 4:3), the repost of an
artwork at print size that a platform meets; PNG bytes, decoded as a scan decodes them.
One thread, as in a scan worker. Columns, medians over `--rounds` alternating rounds:
  windows (ours)        regions.describe of the query windows: running sums shared by every window
  windows (Pillow)      the baseline: each informative window cropped and reduced by Pillow's own
                        Image.resize(BOX), then normalised alike; the descriptors must be identical
  embedders             hashes.picture and Embedders.describe_queries (hashes, style, windows, keypoints)
  score                 decode plus Scorer.score: what `chimera score` and a scan spend on the image
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from detect_eval import machine
from PIL import Image

from detector import hashes, regions
from detector.embedders import Embedders
from detector.images import decode, load
from detector.score import Scorer
from generator.dataset import make_dataset
from index.store import Store
from service.ingest import add_images
from service.scan import limit_threads


def pillow_windows(img: Image.Image, boxes: list[regions.Box]) -> list[tuple[regions.Box, np.ndarray]]:
    """The window descriptors the plain way: crop, test, reduce with Pillow, normalise."""
    w, h = img.size
    rgb = np.asarray(img)
    out = []
    for box in boxes:
        x0, y0 = int(box[0] * w), int(box[1] * h)
        crop = rgb[y0:max(int(box[3] * h), y0 + 1), x0:max(int(box[2] * w), x0 + 1)]
        if crop.mean(axis=2).std() < regions.MIN_CONTENT:
            continue
        thumb = np.asarray(Image.fromarray(crop).resize((regions.PATCH,) * 2, Image.Resampling.BOX), np.float32)
        vec = (thumb - thumb.mean()).ravel()
        out.append((box, vec / max(float(np.linalg.norm(vec)), 1e-6)))
    return out


def timed(fn, items: list) -> float:
    """Milliseconds per item."""
    t = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t) / len(items) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", type=int, nargs="+", default=[64, 512, 1024, 2048, 4096])
    ap.add_argument("--images", type=int, default=3, help="queries per side")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    limit_threads(1)
    with tempfile.TemporaryDirectory(prefix="size-bench-") as tmp_name:
        tmp = Path(tmp_name)
        make_dataset(tmp / "data", artists=3, per_artist=30, size=64, seed=0, holdout=0)
        emb = Embedders.load(use_clip=False, quiet=True)
        icons = []
        with Store.open(tmp / "store", create=True) as store:
            for artist in sorted(p.name for p in (tmp / "data").iterdir() if p.is_dir()):
                files = sorted((tmp / "data" / artist / "icons").glob("*.png"))
                add_images(store, emb, artist, [load(p) for p in files])
                icons += [load(p).image for p in files[:args.images]]
        scorer = Scorer(Store.open(tmp / "store", read_only=True), emb)
        scorer.score(decode(png(icons[0]), "warm-up"))
        print(f"machine: {machine()}; one thread; {args.images * 3} queries per side, medians of {args.rounds} rounds\n")
        print("| side (4:3) | windows, ours ms | windows, Pillow ms | speed-up | embedders ms | score ms |")
        print("|---:|---:|---:|---:|---:|---:|")
        for side in args.sides:
            size = (side, side * 3 // 4) if side > 64 else (64, 64)
            files = [png(icon.resize(size, Image.Resampling.BICUBIC)) for icon in icons]
            imgs = [decode(data, "query").image for data in files]
            for img in imgs:  # the same descriptors, or the comparison means nothing
                ours, theirs = regions.describe(img, regions.QUERY_WINDOWS), pillow_windows(img, regions.QUERY_WINDOWS)
                assert len(ours) == len(theirs) and all(a[0] == b[0] and np.array_equal(a[1], b[1])
                                                        for a, b in zip(ours, theirs)), side
            runs: dict[str, list[float]] = {k: [] for k in ("ours", "pillow", "embedders", "score")}
            for r in range(args.rounds):
                pair = [("ours", lambda im: regions.describe(im, regions.QUERY_WINDOWS)),
                        ("pillow", lambda im: pillow_windows(im, regions.QUERY_WINDOWS))]
                for name, fn in pair if r % 2 == 0 else pair[::-1]:
                    runs[name].append(timed(fn, imgs))
                runs["embedders"].append(timed(lambda im: emb.describe_queries([hashes.picture(im)]), imgs))
                runs["score"].append(timed(lambda data: scorer.score(decode(data, "query")), files))
            med = {k: statistics.median(v) for k, v in runs.items()}
            print(f"| {size[0]}x{size[1]} | {med['ours']:.1f} | {med['pillow']:.1f} | {med['pillow'] / med['ours']:.1f}x "
                  f"| {med['embedders']:.0f} | {med['score']:.0f} |", flush=True)
    return 0


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
