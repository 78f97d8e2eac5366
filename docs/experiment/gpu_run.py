"""The GPU run of docs/experiment.md: `seed` and `seed-baseline` for the same number of steps, in one time budget.

    PYTHONPATH=. python3 docs/experiment/gpu_run.py DATA WORK OUT --deadline 480 --n 128
    PYTHONPATH=. python3 docs/experiment/gpu_run.py DATA WORK OUT --steps 2350 --seed 1   # a replicate

1. probes both presets (a separate `Session`, 5 warm-up + 20 timed steps, and a 16-image DDIM call),
2. picks the one step count N that lets both trainings, their sampling and the receptive fields
   finish `--deadline` seconds after the script started (with a 10% margin on training);
   `--steps N` skips 1. and 2.,
3. for each preset: `generator.train.train` (`--seed`, N steps, one checkpoint at the end),
   `generator.sample.sample` (`--n` images, the preset's 50 DDIM steps, seed 0),
   `generator.analyze.measure_receptive_field`, and writes OUT/<preset>.tar with run.json,
   the per-step losses, the progress grids, the samples and receptive.json (OUT/<preset>-s<seed>.tar
   for a seed other than 0).

OUT/gpu.json (machine, probe timings, N, wall times) is rewritten after every phase, so a run
stopped early still says how far it got. The checkpoints stay in WORK: they are GBs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import tarfile
import time
from pathlib import Path

import torch

from generator.analyze import load_reference, measure_receptive_field
from generator.diffusion import ddim, load_checkpoint, resolve
from generator.sample import sample
from generator.train import LATEST, Session, dataset_digest, load_icons, seed_everything, train, training_set

PRESETS = ("seed", "seed-baseline")
WARMUP, TIMED = 5, 20


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gib() -> float | None:
    """Peak GPU memory since the last reset, then reset."""
    if not torch.cuda.is_available():
        return None
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return round(peak, 2)


def probe(preset: str, icons: torch.Tensor, device: torch.device) -> dict:
    """Seconds per training step and per 16-image DDIM step of a fresh model of `preset`."""
    config = resolve(preset)
    seed_everything(0)
    session = Session(config, icons, device)
    for _ in range(WARMUP):
        session.step()
    sync()
    t = time.perf_counter()
    for _ in range(TIMED):
        session.step()
    sync()
    step = (time.perf_counter() - t) / TIMED
    ddim(session.ema.ema_model, 16, 2, 0)
    sync()
    t = time.perf_counter()
    ddim(session.ema.ema_model, 16, 5, 0)
    sync()
    ddim_step = (time.perf_counter() - t) / 5
    params = sum(p.numel() for p in session.diffusion.parameters())
    del session
    return {"s_per_step": step, "s_per_ddim_step_16": ddim_step, "parameters": params, "peak_gib": peak_gib()}


def main() -> None:
    start = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--deadline", type=float, default=480, help="seconds after start by which all is written")
    parser.add_argument("--n", type=int, default=128, help="samples per run")
    parser.add_argument("--digest", default=None, help="expected dataset digest")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="train this many steps; no probe, no plan")
    parser.add_argument("--seed", type=int, default=0, help="training seed (sampling seed stays 0)")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to test this script")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}

    def elapsed() -> float:
        return time.monotonic() - start

    def save() -> None:
        report["elapsed_s"] = round(elapsed(), 1)
        (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")

    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError as e:
        smi = f"unavailable: {e}"
    device = torch.device(args.device)
    report["machine"] = {
        "host": platform.node(), "nvidia_smi": smi, "torch": torch.__version__, "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor(),
        "cpus": os.cpu_count(),
        "cudnn_tf32": torch.backends.cudnn.allow_tf32, "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    artist, files = training_set(args.data, None)
    report["dataset"] = {"digest": dataset_digest(files), "files": len(files), "artist": artist}
    if args.digest and report["dataset"]["digest"] != args.digest:
        raise SystemExit(f"dataset digest {report['dataset']['digest']} is not the expected {args.digest}")
    print(json.dumps(report, indent=2), flush=True)
    save()

    if args.steps:
        plan(args, report, args.steps)
    else:
        plan(args, report, None, load_icons(files, resolve("seed").image_size), device, elapsed)
    save()
    steps = report["plan"]["steps"]

    ref = load_reference(args.data, artist, resolve("seed").image_size)
    report["runs"] = {}
    for preset in PRESETS:
        name = preset if args.seed == 0 else f"{preset}-s{args.seed}"
        run = args.work / name
        phase: dict = {}
        report["runs"][name] = phase
        t = time.monotonic()
        info = train(args.data, run, preset, steps=steps, device=args.device, seed=args.seed,
                     sample_every=max(1, steps // 4), checkpoint_every=steps, keep_checkpoints=1)
        phase["train_wall_s"] = round(time.monotonic() - t, 1)
        phase.update(run=info["run"], train_seconds=info["train_seconds"], seconds_per_step=info["seconds_per_step"],
                     loss_first=info["loss"]["first"], loss_last=info["loss"]["last"],
                     peak_gib=peak_gib())
        save()
        t = time.monotonic()
        sample(run, args.n, run / "samples", seed=0, device=args.device)
        sync()
        phase["sample_wall_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        checkpoint = load_checkpoint(run / LATEST, torch.device("cpu"))
        (run / "receptive.json").write_text(json.dumps(measure_receptive_field(checkpoint, ref)) + "\n")
        phase["receptive_wall_s"] = round(time.monotonic() - t, 1)
        losses = torch.load(run / LATEST, map_location="cpu", weights_only=True, mmap=True)["losses"]
        (run / "losses.json").write_text(json.dumps(losses) + "\n")
        with tarfile.open(args.out / f"{name}.tar", "w") as tar:
            for path in [run / "run.json", run / "receptive.json", run / "losses.json", *sorted(run.glob("samples-*.png"))]:
                tar.add(path, arcname=f"{name}/{path.name}")
            tar.add(run / "samples", arcname=f"{name}/samples")
        print(json.dumps({name: phase}, indent=2), flush=True)
        save()
    report["done"] = True
    save()


def plan(args: argparse.Namespace, report: dict, steps: int | None, icons: torch.Tensor | None = None,
         device: torch.device | None = None, elapsed=None) -> None:
    """report["plan"]: the step count, given or fitted to the deadline from a probe of both presets."""
    if steps is not None:
        report["plan"] = {"steps": steps}
        return
    report["probe"] = {p: probe(p, icons, device) for p in PRESETS}
    print(json.dumps(report["probe"], indent=2), flush=True)

    # what the rest costs besides training: 4 progress grids (10 DDIM steps) and the samples (50 steps)
    batches = math.ceil(args.n / 16)
    sampling = {p: (batches * resolve(p).sampling_timesteps + 4 * 10) * report["probe"][p]["s_per_ddim_step_16"]
                for p in PRESETS}
    fixed = {"seed": 25.0, "seed-baseline": 15.0}  # model build, checkpoint write + copy, receptive field, tar
    left = args.deadline - elapsed() - sum(sampling.values()) - sum(fixed.values())
    per_step = sum(report["probe"][p]["s_per_step"] for p in PRESETS)
    steps = int(0.9 * left / per_step) // 50 * 50
    if args.max_steps:
        steps = min(steps, args.max_steps)
    if steps < min(50, args.max_steps or 50):
        raise SystemExit(f"only {left:.0f} s left for training: {steps} steps is too few")
    report["plan"] = {"steps": steps, "train_budget_s": round(left, 1), "sampling_estimate_s": sampling}
    print(json.dumps(report["plan"], indent=2), flush=True)


if __name__ == "__main__":
    main()
