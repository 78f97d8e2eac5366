"""`chimera demo`: the main job on embedded defaults, end to end, in about a minute on a CPU.

Makes three synthetic artists with the generator, registers their reference icons
and signature samples in a fresh store, builds a handful of telling queries (an
edited copy, a collage of two works, a chimera from the part library, a new
original, a forged signature), scores them, and writes a report.
"""

from __future__ import annotations

import sys
import json
import random
import shutil
from pathlib import Path

from PIL import Image

from detector import augment
from detector.embedders import Embedders
from detector.images import load
from detector.score import Scorer
from index.store import Store
from service.ingest import add_images, load_paths
from service.report import describe, write_html


def _queries(data: Path, chimeras: list[dict], manifest: list[dict], out: Path) -> list[tuple[str, Path]]:
    """(what it is, path) for each demo query, written under out/queries."""
    rng = random.Random(0)
    q = out / "queries"
    q.mkdir(parents=True, exist_ok=True)
    refs = {a: [data / r["path"] for r in manifest if r["artist"] == a and r["split"] == "reference"]
            for a in sorted({r["artist"] for r in manifest})}
    held = {a: [data / r["path"] for r in manifest if r["artist"] == a and r["split"] == "heldout"] for a in refs}
    a, b = sorted(refs)[:2]
    first = load(refs[a][3]).image
    items = []
    for name, img in (("copy-rotated-jpeg-of-" + refs[a][3].stem, augment.copy_edits(first, rng)["rotate"]),
                      ("copy-cropped-of-" + refs[b][5].stem, augment.copy_edits(load(refs[b][5]).image, rng)["crop"]),
                      ("collage-half-swap", augment.half_swap(load(refs[a][7]).image, load(refs[a][9]).image)[0]),
                      ("new-original-by-" + a, load(held[a][0]).image)):
        items.append((name, img))
    sig = Image.open(data / b / "signatures" / "sig_1.png")
    forged, _ = augment.paste_signature(load(held[a][1]).image, sig, rng)
    items.append((f"{a}-work-signed-as-{b}", forged))
    paths = []
    for name, img in items:
        p = q / f"{name}.png"
        img.save(p)
        paths.append((name, p))
    chimera = next(c for c in chimeras if c["kind"] == "part_swap")
    p = q / "chimera-part-swap.png"
    shutil.copyfile(out / "chimeras" / chimera["path"], p)
    paths.append(("chimera-part-swap", p))
    return paths


MARK = ".chimera-demo"  # written first, so a demo stopped before it finished is still known as one
MADE = (MARK, "data", "chimeras", "queries", "store", "results.jsonl", "report.html")  # what a demo writes under --out


def _clear_previous(out: Path) -> None:
    """Remove a previous demo's output from `out`; refuse (ValueError) unless everything there is
    what a demo writes, so a user's own files are never deleted."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file: choose a folder for --out")
    if not out.exists() or not any(out.iterdir()):
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in MADE)
    # a finished demo from before MARK: all it wrote, not only a store and results (a user's own working
    # folder after `--store store` and `scan --out results.jsonl`)
    finished = all((out / d).is_dir() for d in ("data", "chimeras", "queries", "store")) and \
        (out / "results.jsonl").is_file() and (out / "data" / "manifest.jsonl").is_file()
    if foreign or not ((out / MARK).is_file() or finished):
        raise ValueError(f"{out} exists and is not a previous demo's folder"
                         f"{' (it holds ' + ', '.join(foreign[:3]) + ')' if foreign else ''}: choose another --out")
    for name in MADE:  # a previous demo's output: start afresh
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def run_demo(out: Path, clip: bool = True) -> int:
    from generator.chimeras import make_chimeras
    from generator.dataset import make_dataset
    _clear_previous(out.resolve())
    out.mkdir(parents=True, exist_ok=True)
    (out / MARK).write_text("made by `chimera demo`, which may replace everything here that it made\n")
    data = out / "data"
    print(f"1/4 drawing 3 synthetic artists into {data}")
    manifest = make_dataset(data, artists=3, per_artist=60, size=64, seed=0, holdout=4)
    chimeras = make_chimeras(data, out / "chimeras", n=8, seed=0)
    print("2/4 registering reference icons and signature samples")
    embedders = Embedders.load(use_clip=clip)
    with Store.open(out / "store", create=True) as store:
        return _register_and_score(out, data, manifest, chimeras, embedders, store)


def _register_and_score(out: Path, data: Path, manifest: list[dict], chimeras: list[dict], embedders: Embedders,
                        store: Store) -> int:
    for artist in sorted({r["artist"] for r in manifest}):
        failed: list = []
        report = add_images(store, embedders, artist, load_paths([data / artist / "icons"], failed))
        sigs = add_images(store, embedders, artist, load_paths([data / artist / "signatures"], failed),
                          signature=True)
        print(f"    {artist}: {report.summary()}; signatures: {sigs.summary()}")
        for warning in {r.warning for r in (report, sigs) if r.warning}:
            print(f"chimera: warning: {warning}", file=sys.stderr)
    print("3/4 scoring the demo queries")
    scorer = Scorer(store, embedders)
    results = []
    with open(out / "results.jsonl", "w") as f:
        for name, path in _queries(data, chimeras, manifest, out):
            r = scorer.score_path(path)
            results.append(r)
            f.write(json.dumps(r) + "\n")
            print(describe(r, notes=False))  # Embedders.load said once what is unavailable
    counts = {}
    for r in results:
        counts[r["verdict"]["label"]] = counts.get(r["verdict"]["label"], 0) + 1
    summary = f"{len(results)} demo queries: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    write_html(results, out / "report.html", summary, flagged_only=False, work_png=store.thumbnail)
    print(f"4/4 wrote {out / 'results.jsonl'} and {out / 'report.html'} ({summary})")
    return 0
