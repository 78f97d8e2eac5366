"""Sampling a trained run, every PNG carrying its own provenance in PNG text chunks.

A generated icon that leaves the lab should say where it came from without a side database:
the run id, the checkpoint (name and sha256), the dataset digest, and the seed, batch, index and
DDIM steps that reproduce it. Batch b of a call is drawn with seed `batch_seed(seed, b * batch)`,
so any sample is reproducible from (checkpoint, seed, batch, steps) alone.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from tqdm import tqdm

from generator.diffusion import ddim, load_checkpoint, pick_device, sampler
from generator.train import LATEST, RUN_FILE

PREFIX = "chimera:"
INT_FIELDS = ("seed", "index", "batch", "steps", "step")
MANIFEST = "samples.jsonl"


def read_run(run: Path) -> dict[str, Any]:
    path = Path(run) / RUN_FILE
    if not path.is_file():
        raise ValueError(f"{run} is not a training run (no {RUN_FILE})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a run description ({e})") from None


def batch_seed(seed: int, start: int) -> int:
    """Independent noise per (seed, first index of the batch)."""
    return int(np.random.SeedSequence([seed, start]).generate_state(1)[0])


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_png(array: np.ndarray, path: Path, provenance: dict[str, Any]) -> None:
    info = PngImagePlugin.PngInfo()
    for key, value in provenance.items():
        info.add_text(PREFIX + key, str(value))
    Image.fromarray(array, "RGB").save(path, format="PNG", pnginfo=info, compress_level=6)


def read_provenance(path: Path) -> dict[str, Any] | None:
    """The `chimera:*` text chunks of a PNG (prefix dropped, counters as ints), or None if it has none."""
    with Image.open(path) as img:
        text = dict(getattr(img, "text", {}) or {})
    found = {k[len(PREFIX):]: v for k, v in text.items() if k.startswith(PREFIX)}
    for key in INT_FIELDS:
        if key in found:
            found[key] = int(found[key])
    return found or None


def sample(
    run: Path,
    n: int,
    out: Path,
    steps: int | None = None,
    seed: int = 0,
    checkpoint: Path | None = None,
    batch: int = 16,
    device: str = "auto",
    loaded: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Write `n` samples of `run` (EMA weights of `checkpoint`, default latest.pt) to `out/sample_NNNNN.png`.

    `steps` DDIM steps (default: the run's `sampling_timesteps`); `loaded`: the checkpoint's contents
    when the caller has read them already (`analyze`: a GPU-scale checkpoint is gigabytes). Returns the records of
    `out/samples.jsonl`: path (relative to `out`), run, checkpoint, checkpoint_sha256, step,
    dataset, seed, index, batch, steps.
    """
    if n < 1 or batch < 1 or seed < 0:
        raise ValueError(f"n and batch must be >= 1 and seed >= 0, got n={n}, batch={batch}, seed={seed}")
    run, out = Path(run), Path(out)
    info = read_run(run)
    ckpt_path = Path(checkpoint) if checkpoint is not None else run / LATEST
    dev = pick_device(device)
    ckpt = loaded if loaded is not None else load_checkpoint(ckpt_path, torch.device("cpu"))
    if ckpt["run"] != info["run"]:
        raise ValueError(f"checkpoint {ckpt_path} belongs to run {ckpt['run']}, not {info['run']}")
    config, model = sampler(ckpt, dev)
    steps = config.sampling_timesteps if steps is None else steps
    if not 1 <= steps <= config.timesteps:  # checked before `out` is made: a refused run leaves no folder
        raise ValueError(f"sampling steps must be in 1..{config.timesteps}, got {steps}")
    common = {
        "run": info["run"], "checkpoint": f"ckpt-{ckpt['step']}.pt", "checkpoint_sha256": file_sha256(ckpt_path),
        "step": ckpt["step"], "dataset": info["dataset"]["digest"], "seed": seed, "batch": batch, "steps": steps,
        "device": dev.type, "torch": torch.__version__,  # CUDA and CPU draw different samples from one seed
    }
    out.mkdir(parents=True, exist_ok=True)
    records = []
    bar = tqdm(total=n, unit="img", desc="sampling", disable=not sys.stderr.isatty())
    for start in range(0, n, batch):
        images = ddim(model, min(batch, n - start), steps, batch_seed(seed, start))
        bar.update(len(images))
        pixels = images.mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        for offset, array in enumerate(pixels):
            index = start + offset
            record = {"path": f"sample_{index:05d}.png", **common, "index": index}
            write_png(array, out / record["path"], {k: v for k, v in record.items() if k != "path"})
            records.append(record)
    bar.close()
    (out / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in records))
    return records
