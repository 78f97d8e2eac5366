"""What a trained run emits, measured: memorised copies, recognisable parts, scrambled layouts, chimeras.

Every sample is compared with the training icons of the run's artist (memorisation) and explained
as a composite of that artist's parts (`generator.explain`). From the recognised parts follow:

    layout scramble  how far recognised parts sit from where the artist places them, relative to
                     the sample's own face frame (the median displacement of its parts)
    chimera          recognised parts that no single training icon has together
    novelty          distinct recognised part combinations absent from the training set

The rules are written into metrics.json next to the numbers, so a reader never has to guess.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from generator.dataset import load_manifest
from generator.diffusion import load_checkpoint, pick_device, sampler
from generator.explain import MARGIN, MIN_GAP, MIN_MASS, RHO, TAU, Explainer, Explanation, Part, load_library
from generator.html_report import write_report
from generator.parts import LAYERS
from generator.receptive import receptive_field
from generator.sample import MANIFEST, read_provenance, read_run, sample
from generator.train import LATEST, dataset_digest, load_icons, training_set

MEM_TILES = 4  # tiles per side for the patch-wise distance
MEM_RATIO = 0.5  # nearest / second-nearest tile distance at most this ...
MEM_MAX = 0.1  # ... and the nearest tile distance (RMS, colours in [0, 1]) at most this
NEAREST = 3  # training icons listed per sample
SENSITIVITY = (0.1, 0.15, 0.2)  # part thresholds the headline rates are recomputed at
ERF_ICONS = 8

RULES = {
    "memorisation": (
        f"d(x, y) = max over a {MEM_TILES}x{MEM_TILES} grid of tiles of the RMS difference (colours in [0, 1]), "
        "in the spirit of Carlini et al. 2023; a sample is memorised when d to its nearest training icon "
        f"is <= {MEM_RATIO} x d to the second nearest and <= {MEM_MAX}"
    ),
    "parts": (
        "the sample is fitted as the composite of one variant (or none) per layer of the artist's part library, "
        "each shifted within +-size/4 px (coordinate descent on L2 from the nearest icon's parts); a fitted part "
        f"is recognised when over its visible footprint (visible alpha >= {MIN_MASS} px in total) the weighted RMS "
        f"error is <= tau (={TAU}) and <= {RHO} x the error without the part, and the sample lies nearer the "
        f"chosen variant than the runner-up variant by margin >= {MARGIN} where the runner-up differs visibly "
        f"(summed squared difference >= {MIN_GAP}); recognised_fraction = recognised / not hidden layers"
    ),
    "layout": (
        "displacement = |offset| of a recognised part from where the artist draws it; relative displacement = "
        "|offset - median offset of the sample's recognised parts|; a sample is scrambled when it has >= 2 "
        "recognised parts and one is displaced relatively by more than max(1, size/16) px"
    ),
    "chimera": (
        "a sample is a chimera when >= 2 of its recognised parts are variants seen in training and no single "
        "training icon has all of them (sources = greedy cover by training icons)"
    ),
    "novelty": "fraction of the distinct recognised combinations (>= 2 seen parts) that no training icon contains",
    "unseen_variant_rate": (
        "recognised parts whose variant no training icon uses: the model never saw them, so this estimates "
        "false recognitions"
    ),
}


@dataclass
class Reference:
    """An artist's training icons at the analysis size, their part tuples, and an explainer of its parts."""

    artist: str
    size: int
    paths: list[str]
    icons: np.ndarray  # (N, H, W, 3) float32 in [0, 1]
    tuples: list[dict[str, int]]
    explainer: Explainer

    @property
    def seen(self) -> set[tuple[str, int]]:
        return {(layer, t[layer]) for t in self.tuples for layer in LAYERS}


def load_reference(data: Path, artist: str, size: int) -> Reference:
    data = Path(data)
    artist, files = training_set(data, artist)
    by_path = {r["path"]: r for r in load_manifest(data, parts=True)}
    paths = [f.relative_to(data).as_posix() for f in files]
    if any("signature" in (by_path[p].get("boxes") or {}) for p in paths):
        raise ValueError(f"{artist}'s icons in {data} are signed (`dataset make --signed`): analysis explains an icon "
                         "by its parts alone, and would read the signature as parts moved; analyse a run "
                         "trained on an unsigned dataset")
    icons = load_icons(files, size).permute(0, 2, 3, 1).numpy()
    explainer = Explainer(load_library(data, artist, size), radius=max(1, size // 4))
    return Reference(artist, size, paths, icons, [by_path[p]["parts"] for p in paths], explainer)


def as_array(img: Image.Image, size: int) -> np.ndarray:
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255


def tile_distances(image: np.ndarray, icons: np.ndarray, tiles: int = MEM_TILES) -> np.ndarray:
    """(N,) max over tiles of the per-tile RMS difference between `image` and each icon."""
    n, h, w, c = icons.shape
    t, u = h // tiles, w // tiles
    diff = (icons[:, : t * tiles, : u * tiles] - image[None, : t * tiles, : u * tiles]) ** 2
    per_tile = diff.reshape(n, tiles, t, tiles, u, c).mean(axis=(2, 4, 5))
    return np.sqrt(per_tile).max(axis=(1, 2))


def memorisation(image: np.ndarray, ref: Reference) -> dict[str, Any]:
    d = tile_distances(image, ref.icons)
    order = np.argsort(d, kind="stable")
    d1, d2 = float(d[order[0]]), float(d[order[1]]) if len(d) > 1 else float("inf")
    ratio = d1 / d2 if d2 > 0 else 0.0
    return {
        "nearest": [{"path": ref.paths[i], "distance": round(float(d[i]), 4)} for i in order[:NEAREST]],
        "ratio": round(ratio, 4), "memorised": bool(d1 <= MEM_MAX and ratio <= MEM_RATIO),
    }


def cover(combination: dict[str, int], ref: Reference) -> list[dict[str, Any]]:
    """Training icons that supply the recognised parts, greedily: the fewest icons that explain the most."""
    left, sources = set(combination.items()), []
    while left:
        counts = [len(left & set(t.items())) for t in ref.tuples]
        best = int(np.argmax(counts))
        if counts[best] == 0:
            break
        took = left & set(ref.tuples[best].items())
        sources.append({"path": ref.paths[best], "layers": sorted((layer for layer, _ in took), key=LAYERS.index)})
        left -= took
    return sources


def judge(parts: dict[str, Part], ref: Reference, tau: float = TAU) -> dict[str, Any]:
    """Recognition, layout, chimera verdicts of one fitted sample at part threshold `tau`."""
    recognised = [layer for layer in LAYERS if parts[layer].recognised(tau)]
    visible = [layer for layer in LAYERS if not parts[layer].hidden()]
    seen = ref.seen
    combination = {layer: parts[layer].variant for layer in recognised if (layer, parts[layer].variant) in seen}
    sources = cover(combination, ref)
    shifts = np.array([parts[layer].offset for layer in recognised], dtype=float).reshape(-1, 2)
    relative = np.hypot(*(shifts - np.median(shifts, axis=0)).T) if len(shifts) else np.zeros(0)
    return {
        "recognised": recognised,
        "recognised_fraction": len(recognised) / len(visible) if visible else 0.0,
        "combination": combination,
        "unseen_variants": [layer for layer in recognised if layer not in combination],
        "sources": sources,
        "chimera": len(combination) >= 2 and len(sources) >= 2,
        "displacement_px": [round(float(d), 3) for d in np.hypot(*shifts.T)],
        "relative_displacement_px": [round(float(d), 3) for d in relative],
        "scrambled": bool(len(recognised) >= 2 and relative.max() > max(1, ref.size // 16)),
    }


def explain_image(image: np.ndarray, ref: Reference) -> tuple[dict[str, Any], Explanation]:
    """Per-sample record (memorisation, fitted parts, verdicts) and the explanation behind it."""
    mem = memorisation(image, ref)
    start = ref.tuples[ref.paths.index(mem["nearest"][0]["path"])]
    explanation = ref.explainer.explain(image, start)
    record = {
        "memorisation": mem, "fit_error": round(explanation.error, 4),
        "parts": {layer: part.as_dict() for layer, part in explanation.parts.items()},
        **judge(explanation.parts, ref),
    }
    return record, explanation


def rates(verdicts: list[dict[str, Any]], ref: Reference) -> dict[str, float | None]:
    """The headline rates of a set of verdicts. A rate over nothing (unseen variants where no part was
    recognised, novelty where no sample showed two parts) is None, not 0: "none of none" is no finding."""
    training = [set(t.items()) for t in ref.tuples]
    combos = {frozenset(v["combination"].items()) for v in verdicts if len(v["combination"]) >= 2}
    novel = [c for c in combos if not any(c <= t for t in training)]
    recognised = sum(len(v["recognised"]) for v in verdicts)
    return {
        "recognised_fraction": float(np.mean([v["recognised_fraction"] for v in verdicts])),
        "unseen_variant_rate": sum(len(v["unseen_variants"]) for v in verdicts) / recognised if recognised else None,
        "chimera_rate": float(np.mean([v["chimera"] for v in verdicts])),
        "novelty": len(novel) / len(combos) if combos else None,
    }


def mean(values: list) -> float | None:
    """None for no values: 'no recognised part' is not 'displacement 0'."""
    return float(np.mean(values)) if len(values) else None


def summarize(records: list[dict[str, Any]], explanations: list[Explanation], ref: Reference) -> dict[str, Any]:
    displacement = [d for r in records for d in r["displacement_px"]]
    relative = [d for r in records if len(r["recognised"]) >= 2 for d in r["relative_displacement_px"]]
    combos = {frozenset(r["combination"].items()) for r in records if len(r["combination"]) >= 2}
    headline = rates(records, ref)
    return {
        "samples": len(records),
        "memorisation": {
            "rate": mean([r["memorisation"]["memorised"] for r in records]),
            "median_nearest_distance": float(np.median([r["memorisation"]["nearest"][0]["distance"] for r in records])),
            "rule": RULES["memorisation"],
        },
        "parts": {
            "recognised_fraction": headline["recognised_fraction"],
            "mean_recognised": float(np.mean([len(r["recognised"]) for r in records])),
            "per_layer": {layer: mean([layer in r["recognised"] for r in records]) for layer in LAYERS},
            "unseen_variant_rate": headline["unseen_variant_rate"],
            "mean_fit_error": mean([r["fit_error"] for r in records]),
            "rule": RULES["parts"], "unseen_variant_rule": RULES["unseen_variant_rate"],
        },
        "layout": {
            "mean_displacement_px": mean(displacement),
            "mean_relative_displacement_px": mean(relative),
            "scrambled_rate": mean([r["scrambled"] for r in records]),
            "rule": RULES["layout"],
        },
        "chimera": {
            "rate": headline["chimera_rate"],
            "scrambled_rate": mean([r["chimera"] and r["scrambled"] for r in records]),
            "rule": RULES["chimera"],
        },
        "novelty": {"rate": headline["novelty"], "distinct_combinations": len(combos), "rule": RULES["novelty"]},
        "sensitivity": {
            str(tau): rates([judge(e.parts, ref, tau) for e in explanations], ref) for tau in SENSITIVITY
        },
    }


def sample_files(samples: Path, n: int) -> list[Path]:
    """The first `n` samples: in samples.jsonl order when there is one, else every PNG by name."""
    samples = Path(samples)
    if not samples.is_dir():
        raise ValueError(f"no samples directory at {samples}")
    if (samples / MANIFEST).is_file():
        try:
            files = [samples / json.loads(line)["path"] for line in (samples / MANIFEST).read_text().splitlines()
                     if line.strip()]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{samples / MANIFEST} is not a samples list ({type(e).__name__}: {e})") from None
    else:
        files = sorted(samples.glob("*.png"))
    if not files:
        raise ValueError(f"{samples} holds no samples")
    return files[:n]


def analyze_images(files: list[Path], ref: Reference, root: Path) -> tuple[list[dict], list[Explanation], list[np.ndarray]]:
    records, explanations, images = [], [], []
    for path in tqdm(files, unit="img", desc="analysing", disable=not sys.stderr.isatty()):
        try:
            with Image.open(path) as img:
                image = as_array(img, ref.size)
        except (OSError, SyntaxError, ValueError) as e:  # Pillow's messages do not name the file
            raise ValueError(f"sample {path} is not a readable image ({e})") from None
        record, explanation = explain_image(image, ref)
        records.append({"path": path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path),
                        "provenance": read_provenance(path), **record})
        explanations.append(explanation)
        images.append(image)
    return records, explanations, images


def analyze(run: Path, data: Path, out: Path, samples: Path | None = None, n: int = 64,
            receptive: dict[str, list] | None = None, steps: int | None = None) -> dict[str, Any]:
    """Write `out/metrics.json` and `out/report.html` for `n` samples of `run` (drawn into out/samples with
    `steps` DDIM steps, default the run's, if not given).

    The samples are judged against the training icons and part library of the run's artist in
    `data`, which must be the dataset the run was trained on (same digest). `receptive` is the
    run's `measure_receptive_field`, measured where its checkpoint is; without it, it is measured
    here from `run/latest.pt`.
    """
    if n < 1 or steps is not None and steps < 1:  # checked before `out` is made: a refusal leaves no folder
        raise ValueError(f"n and sampling steps must be >= 1, got n={n}, steps={steps}")
    run, data, out = Path(run), Path(data), Path(out)
    info = read_run(run)
    artist, files = training_set(data, info["artist"])
    if dataset_digest(files) != info["dataset"]["digest"]:
        raise ValueError(f"{data} is not the dataset run {info['run']} was trained on (digest differs)")
    latest = load_checkpoint(run / LATEST, torch.device("cpu")) if (run / LATEST).exists() else None
    out.mkdir(parents=True, exist_ok=True)
    if samples is None:
        samples = out / "samples"
        sample(run, n, samples, steps=steps, loaded=latest)  # read once, for sampling and the receptive field
    sample_paths = sample_files(Path(samples), n)
    now = latest["step"] if latest else info["steps"]  # what a sample of this run draws from
    if len(sample_paths) < n:
        print(f"chimera: analysing the {len(sample_paths)} samples in {samples} (asked for {n})", file=sys.stderr)
    for path in sample_paths:
        try:
            provenance = read_provenance(path)
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"sample {path} is not a readable image ({e})") from None
        if provenance and provenance.get("run") != info["run"]:
            raise ValueError(f"{path} was sampled from run {provenance.get('run')}, not {info['run']}")
        if provenance and provenance.get("step") != now:  # the report and receptive field are latest.pt's
            raise ValueError(f"{path} was sampled at step {provenance.get('step')}, and run {info['run']} is now at "
                             f"step {now}: sample it again, or analyse without --samples")
    ref = load_reference(data, artist, info["config"]["image_size"])
    records, explanations, images = analyze_images(sample_paths, ref, Path(samples))
    if receptive is None:
        if sys.stderr.isatty():  # minutes on a CPU, after the samples' bar has finished
            print("chimera: measuring the receptive field of latest.pt ...", file=sys.stderr)
        receptive = measure_receptive_field(latest or load_checkpoint(run / LATEST, torch.device("cpu")), ref)
    metrics = {
        "run": info["run"], "preset": info["preset"], "steps": info["steps"], "seed": info["seed"],
        "artist": artist, "dataset": info["dataset"]["digest"], "samples_dir": str(samples),
        **summarize(records, explanations, ref),
        "receptive_field": receptive,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "samples.json").write_text(json.dumps(records, indent=1) + "\n")
    write_report(out, metrics, records, explanations, images, ref, data)
    return metrics


def measure_receptive_field(checkpoint: dict[str, Any], ref: Reference) -> dict[str, list]:
    device = pick_device("auto")
    _, model = sampler(checkpoint, device)
    icons = torch.from_numpy(ref.icons[:ERF_ICONS]).permute(0, 3, 1, 2).contiguous()
    return receptive_field(model, icons)
